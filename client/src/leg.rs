//! The port between a conference ([`crate::conference`]) and one of its
//! legs: an ordinary two-party call ([`crate::call`]) whose audio ends are
//! bounded channels of 20 ms frames instead of a WAV or a sound card, and
//! which hands the conference messages it receives to the conference and
//! sends the ones the conference gives it.
//!
//! Every queue is bounded: a frame that finds its queue full is dropped
//! and counted ([`LegAudio::dropped`]); a leg whose audio queue holds more
//! than [`AUDIO_BACKLOG`] frames drops the oldest, so that two 20 ms clocks
//! that drift apart cannot build up delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use natter_media::FRAME_SAMPLES;
use natter_proto::conference::ID_LEN;
use natter_proto::messages::ConferenceSignal;
use tokio::sync::mpsc;

/// Frames a direction of a leg's audio queue holds.
pub const AUDIO_QUEUE: usize = 8;
/// Frames a reader lets wait before it drops the oldest (80 ms: the legs
/// and the conference tick in one task, and a late task catches up in a
/// burst).
pub const AUDIO_BACKLOG: usize = 4;
/// Commands and events queued between a leg and its conference.
pub const CONTROL_QUEUE: usize = 64;

/// What the conference tells a leg, in order.
#[derive(Debug)]
pub enum LegCommand {
    /// Send this conference message to the peer (MACed on the call).
    Signal(ConferenceSignal),
    /// Hang up (after the messages queued before).
    Hangup,
}

/// What a leg tells its conference.
#[derive(Debug)]
pub enum LegEvent {
    /// The call connected; its media runs.
    Up { invite_id: [u8; 16], peer: String },
    /// A conference message from the peer (its MAC checked by the call).
    Signal {
        invite_id: [u8; 16],
        peer: String,
        signal: ConferenceSignal,
    },
}

/// One direction of 20 ms frames, and what was dropped on it.
#[derive(Debug)]
pub struct FrameQueue {
    rx: mpsc::Receiver<Vec<i16>>,
    dropped: Arc<AtomicU64>,
}

impl FrameQueue {
    /// The next frame into `pcm` (true), or nothing waiting (false, `pcm`
    /// untouched). Drops the oldest beyond [`AUDIO_BACKLOG`].
    pub fn next_into(&mut self, pcm: &mut [i16]) -> bool {
        while self.rx.len() > AUDIO_BACKLOG {
            if self.rx.try_recv().is_ok() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        match self.rx.try_recv() {
            Ok(frame) if frame.len() == pcm.len() => {
                pcm.copy_from_slice(&frame);
                true
            }
            _ => false,
        }
    }
}

/// The sending end of a [`FrameQueue`].
#[derive(Debug, Clone)]
pub struct FrameSender {
    tx: mpsc::Sender<Vec<i16>>,
    dropped: Arc<AtomicU64>,
}

impl FrameSender {
    /// Queues one frame; a full queue drops it (counted).
    pub fn send(&self, frame: &[i16]) {
        if self.tx.try_send(frame.to_vec()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A bounded queue of 20 ms frames; the drop counter is shared by both ends.
pub fn frame_queue(dropped: &Arc<AtomicU64>) -> (FrameSender, FrameQueue) {
    let (tx, rx) = mpsc::channel(AUDIO_QUEUE);
    (
        FrameSender {
            tx,
            dropped: dropped.clone(),
        },
        FrameQueue {
            rx,
            dropped: dropped.clone(),
        },
    )
}

/// A leg's audio ends: what it sends comes from `input`, what it hears
/// goes to `output`.
#[derive(Debug)]
pub struct LegAudio {
    pub input: FrameQueue,
    pub output: FrameSender,
}

impl LegAudio {
    /// The next frame to send (silence when the conference had none).
    pub fn next_frame(&mut self, pcm: &mut [i16]) {
        if !self.input.next_into(pcm) {
            pcm.fill(0);
        }
    }

    /// One frame heard from the peer, for the conference.
    pub fn play(&mut self, frame: &[i16]) {
        debug_assert_eq!(frame.len(), FRAME_SAMPLES);
        self.output.send(frame);
    }
}

/// What a leg's call takes from the conference (in
/// [`crate::call::CallOptions::leg`]); the call takes the receiving ends
/// once, when its media starts.
#[derive(Debug)]
pub struct LegPort {
    /// The conference the leg belongs to (a placed leg's invite carries it).
    pub conference_id: [u8; ID_LEN],
    /// A placed leg's invite id (chosen by the conference, which routes the
    /// call's pushes by it).
    pub invite_id: Option<[u8; 16]>,
    audio: std::sync::Mutex<Option<LegAudio>>,
    commands: std::sync::Mutex<Option<mpsc::Receiver<LegCommand>>>,
    pub events: mpsc::Sender<LegEvent>,
}

impl LegPort {
    pub fn new(
        conference_id: [u8; ID_LEN],
        invite_id: Option<[u8; 16]>,
        audio: LegAudio,
        commands: mpsc::Receiver<LegCommand>,
        events: mpsc::Sender<LegEvent>,
    ) -> Self {
        Self {
            conference_id,
            invite_id,
            audio: std::sync::Mutex::new(Some(audio)),
            commands: std::sync::Mutex::new(Some(commands)),
            events,
        }
    }

    /// The audio ends (once).
    pub fn take_audio(&self) -> Option<LegAudio> {
        self.audio.lock().ok()?.take()
    }

    /// The command queue (once).
    pub fn take_commands(&self) -> Option<mpsc::Receiver<LegCommand>> {
        self.commands.lock().ok()?.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; FRAME_SAMPLES]
    }

    #[test]
    fn a_full_queue_drops_the_new_frame_and_a_backlog_the_oldest() {
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = frame_queue(&dropped);
        for v in 0..=AUDIO_QUEUE as i16 {
            tx.send(&frame(v));
        }
        // The queue holds AUDIO_QUEUE frames: the last one found it full.
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        let mut pcm = vec![0i16; FRAME_SAMPLES];
        // The reader keeps AUDIO_BACKLOG waiting: the oldest go first.
        assert!(rx.next_into(&mut pcm));
        let skipped = AUDIO_QUEUE - AUDIO_BACKLOG;
        assert_eq!(pcm[0], skipped as i16);
        assert_eq!(dropped.load(Ordering::Relaxed), 1 + skipped as u64);
        for v in skipped + 1..AUDIO_QUEUE {
            assert!(rx.next_into(&mut pcm));
            assert_eq!(pcm[0], v as i16);
        }
        // Empty: nothing, and the frame is left alone.
        assert!(!rx.next_into(&mut pcm));
        assert_eq!(pcm[0], (AUDIO_QUEUE - 1) as i16);
    }

    #[test]
    fn a_leg_sends_silence_when_the_conference_has_nothing() {
        let dropped = Arc::new(AtomicU64::new(0));
        let (_to_leg, input) = frame_queue(&dropped);
        let (output, mut heard) = frame_queue(&dropped);
        let mut leg = LegAudio { input, output };
        let mut pcm = vec![7i16; FRAME_SAMPLES];
        leg.next_frame(&mut pcm);
        assert!(pcm.iter().all(|&s| s == 0));
        leg.play(&frame(3));
        assert!(heard.next_into(&mut pcm));
        assert!(pcm.iter().all(|&s| s == 3));
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
    }
}
