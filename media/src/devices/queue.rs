//! The bounded, non-blocking queue of 20 ms frames between an audio
//! callback and the application, and the loss counters of a stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

use crate::codec::FRAME_SAMPLES;

/// Frames (of 20 ms) buffered between the input callback and
/// [`Capture::next_frame`](super::Capture::next_frame): 200 ms.
pub const CAPTURE_QUEUE_FRAMES: usize = 10;

/// Frames (of 20 ms) buffered between
/// [`Playback::push_frame`](super::Playback::push_frame) and the output
/// callback: 200 ms.
pub const PLAYBACK_QUEUE_FRAMES: usize = 10;

/// Counters shared between a queue's two ends.
#[derive(Debug, Default)]
pub(super) struct Counters {
    overruns: AtomicU64,
    underruns: AtomicU64,
    /// Counted by the stream's error callback.
    pub(super) xruns: AtomicU64,
}

/// How often audio was lost on the way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudioStats {
    /// Frames dropped because the queue was full (the consumer fell behind).
    pub overruns: u64,
    /// Frames asked for when the queue was empty (silence was used).
    pub underruns: u64,
    /// Over- or underruns reported by the device driver itself.
    pub xruns: u64,
}

/// A bounded, non-blocking queue of 20 ms frames: `capacity` frames at most,
/// never grows, never blocks either end. Returns the producer and consumer
/// ends; buffers are recycled from consumer to producer, so a steady stream
/// allocates nothing.
pub fn frame_queue(capacity: usize) -> (FrameSender, FrameReceiver) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::sync_channel(capacity);
    let (pool_tx, pool_rx) = mpsc::sync_channel(capacity + 2);
    let counters = Arc::new(Counters::default());
    (
        FrameSender {
            tx,
            pool: pool_rx,
            spare: None,
            counters: Arc::clone(&counters),
        },
        FrameReceiver {
            rx,
            pool: pool_tx,
            counters,
        },
    )
}

/// The producing end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameSender {
    tx: SyncSender<Box<[i16]>>,
    pool: Receiver<Box<[i16]>>,
    spare: Option<Box<[i16]>>,
    pub(super) counters: Arc<Counters>,
}

impl FrameSender {
    /// Queues a copy of `frame` (truncated or zero-padded to
    /// [`FRAME_SAMPLES`]). When the queue is full the frame is dropped and
    /// counted as an overrun; returns whether it was queued.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        let mut buf = match self.spare.take() {
            Some(b) => b,
            None => match self.pool.try_recv() {
                Ok(b) => b,
                Err(_) => vec![0; FRAME_SAMPLES].into_boxed_slice(),
            },
        };
        let n = frame.len().min(FRAME_SAMPLES);
        buf[..n].copy_from_slice(&frame[..n]);
        buf[n..].fill(0);
        match self.tx.try_send(buf) {
            Ok(()) => true,
            Err(TrySendError::Full(buf) | TrySendError::Disconnected(buf)) => {
                self.spare = Some(buf);
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AudioStats {
        stats_of(&self.counters)
    }
}

/// The consuming end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameReceiver {
    rx: Receiver<Box<[i16]>>,
    pool: SyncSender<Box<[i16]>>,
    pub(super) counters: Arc<Counters>,
}

impl FrameReceiver {
    /// Copies the oldest queued frame into `out` (its first
    /// [`FRAME_SAMPLES`] samples; the rest zeroed). When nothing is queued,
    /// fills `out` with silence, counts an underrun and returns false.
    pub fn pop(&mut self, out: &mut [i16]) -> bool {
        match self.rx.try_recv() {
            Ok(buf) => {
                let n = out.len().min(buf.len());
                out[..n].copy_from_slice(&buf[..n]);
                out[n..].fill(0);
                let _ = self.pool.try_send(buf);
                true
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                out.fill(0);
                self.counters.underruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AudioStats {
        stats_of(&self.counters)
    }
}

fn stats_of(c: &Counters) -> AudioStats {
    AudioStats {
        overruns: c.overruns.load(Ordering::Relaxed),
        underruns: c.underruns.load(Ordering::Relaxed),
        xruns: c.xruns.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_queue_is_bounded_drops_newest_and_counts() {
        let (mut tx, mut rx) = frame_queue(3);
        let frame = |v: i16| vec![v; FRAME_SAMPLES];
        let queued: Vec<bool> = (1..=5).map(|v| tx.push(&frame(v))).collect();
        assert_eq!(queued, [true, true, true, false, false]);
        assert_eq!(tx.stats().overruns, 2);

        let mut out = vec![7i16; FRAME_SAMPLES];
        for v in 1..=3 {
            assert!(rx.pop(&mut out));
            assert_eq!(out, frame(v), "oldest first");
        }
        assert!(!rx.pop(&mut out));
        assert_eq!(out, frame(0), "silence on underrun");
        assert_eq!(
            rx.stats(),
            AudioStats {
                overruns: 2,
                underruns: 1,
                xruns: 0
            }
        );

        // Recycled buffers and partial frames: zero-padded, never stale.
        for _ in 0..100 {
            assert!(tx.push(&[9; 10]));
            assert!(rx.pop(&mut out));
            assert_eq!(&out[..10], &[9; 10]);
            assert!(out[10..].iter().all(|s| *s == 0));
        }
        // A consumer that is gone: pushes are dropped and counted, not queued.
        drop(rx);
        assert!(!tx.push(&frame(1)));
        assert_eq!(tx.stats().overruns, 3);
    }
}
