//! One call's voice, sans-IO: the codec and the jitter buffer.
//!
//! The network side of a call (paths, relay binds, the TCP fallback,
//! sealing and opening, frame numbers) is [`natter_proto::session::CallSession`];
//! this is the voice side. Drive loop of the shell (every 20 ms, from one
//! timer), with `call` the proto session:
//!
//! ```text
//! let payload = media.encode(&captured_frame)?;  call.send_voice(payload, now_ms)?
//! media.poll_audio(now_ms, &mut playout_frame)?;  speaker / WAV
//! on Event::Voice { number, payload } from call: media.handle_frame(number, &payload, now_ms)
//! ```
//!
//! `encode` is called every frame period whether the user speaks or not:
//! silence is encoded and sent like speech (no silence suppression).

use natter_proto::jitter::{JitterBuffer, JitterConfig, JitterDrop, JitterStats, Playout};

use crate::codec::{
    CodecConfig, CodecError, Decoder, Encoder, FRAME_SAMPLES, MAX_PACKET, voice_activity,
};
use crate::emodel;

/// Settings of a media session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaConfig {
    pub codec: CodecConfig,
    pub jitter: JitterConfig,
}

/// A failure that stops sending or playing (not a dropped frame).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Counters of one call's voice, for the call report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaStats {
    /// Frames encoded (one per frame period).
    pub encoded_frames: u64,
    /// Frames handed to the jitter buffer (late and duplicate ones included).
    pub received_frames: u64,
    pub decode_errors: u64,
    /// Frames the sender numbered but that never arrived in time.
    pub lost: u64,
    pub jitter: JitterStats,
    pub jitter_ms: f64,
    pub jitter_buffer_delay_ms: u32,
    /// Median and 95th percentile of the delay the jitter buffer added to
    /// the frames it played, ms (`None` before one played).
    pub added_delay_p50_ms: Option<u32>,
    pub added_delay_p95_ms: Option<u32>,
    /// Frames that came after their playout time, percent of those that came.
    pub late_loss_pct: f64,
    /// Runs of consecutive frames that did not arrive in time (FEC or
    /// concealment), for the burstiness of the loss.
    pub loss_runs: u64,
}

/// The estimated quality of what this side hears (ITU-T G.107 E-model; see
/// [`crate::emodel`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quality {
    /// Estimated MOS, 1..=4.5; 0 before any frame was played (nothing
    /// heard, nothing to estimate).
    pub mos: f64,
    /// Estimated one-way mouth-to-ear delay, in ms (sound cards excluded).
    pub delay_ms: f64,
    /// Frames that did not arrive in time, percent of the frames played.
    pub loss_percent: f64,
    /// G.107 burst ratio of those losses (1: random).
    pub burst_ratio: f64,
}

/// Opus's look-ahead at 48 kHz (`OPUS_GET_LOOKAHEAD`: 312 samples).
const LOOKAHEAD_MS: f64 = 6.5;

impl MediaStats {
    /// The E-model's estimate for this side's listening, with `rtt_ms` the
    /// path's round-trip time (half of it counts as network delay). The
    /// delay is packetisation (one frame) + Opus's look-ahead + half the RTT
    /// + the jitter buffer's current delay.
    pub fn quality(&self, rtt_ms: Option<u64>) -> Quality {
        let j = &self.jitter;
        let missing = j.fec + j.concealed;
        let frames = j.played + missing;
        let loss = if frames == 0 {
            0.0
        } else {
            missing as f64 / frames as f64
        };
        // G.107: BurstR = mean burst length x (1 - loss) (1 for random loss).
        let burst_ratio = if self.loss_runs == 0 {
            1.0
        } else {
            (missing as f64 / self.loss_runs as f64 * (1.0 - loss)).max(1.0)
        };
        let delay_ms = f64::from(crate::FRAME_MS)
            + LOOKAHEAD_MS
            + rtt_ms.map_or(0.0, |r| r as f64 / 2.0)
            + f64::from(self.jitter_buffer_delay_ms);
        let conditions = emodel::Conditions {
            delay_ms,
            loss_percent: 100.0 * loss,
            burst_ratio,
        };
        Quality {
            mos: if frames == 0 {
                0.0
            } else {
                emodel::estimate(emodel::OPUS_18K_WB, conditions)
            },
            delay_ms,
            loss_percent: 100.0 * loss,
            burst_ratio,
        }
    }
}

/// The voice of one call.
#[derive(Debug)]
pub struct MediaSession {
    encoder: Encoder,
    decoder: Decoder,
    jitter: JitterBuffer,
    stats: MediaStats,
    packet: [u8; MAX_PACKET],
    /// The last frame played was a loss (FEC or concealment).
    in_loss: bool,
}

impl MediaSession {
    /// A session with `config`.
    pub fn new(config: MediaConfig) -> Result<Self, MediaError> {
        Ok(Self {
            encoder: Encoder::new(config.codec)?,
            decoder: Decoder::new(config.codec.decoder_complexity)?,
            jitter: JitterBuffer::new(config.jitter),
            stats: MediaStats::default(),
            packet: [0; MAX_PACKET],
            in_loss: false,
        })
    }

    /// Encodes one captured 20 ms frame (silence included); returns the
    /// codec packet, to be sealed by the call session.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<&[u8], MediaError> {
        let n = self.encoder.encode(pcm, &mut self.packet)?;
        self.stats.encoded_frames += 1;
        Ok(&self.packet[..n])
    }

    /// Files a received frame (its number and codec packet) in the jitter
    /// buffer, with the sender's voice activity flag (a frame of speech is
    /// not skipped to shrink the delay; a packet without the flag counts as
    /// speech). A late or duplicate frame is dropped and counted there.
    pub fn handle_frame(
        &mut self,
        number: u16,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), JitterDrop> {
        self.stats.received_frames += 1;
        let speech = voice_activity(payload).unwrap_or(true);
        self.jitter
            .handle_speech_frame(number, payload.to_vec(), now_ms, speech)
    }

    /// Fills `out` (one frame, 960 samples) with what to play now; call once
    /// per frame period. Returns `false` (and silence) before playout starts.
    pub fn poll_audio(&mut self, now_ms: u64, out: &mut [i16]) -> Result<bool, MediaError> {
        if out.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(out.len()).into());
        }
        let held_before = self.jitter.stats().held;
        let Some(playout) = self.jitter.poll_playout(now_ms) else {
            out.fill(0);
            return Ok(false);
        };
        // A period the buffer held to grow its delay is concealed, but no
        // frame was lost by it: it does not start a loss run.
        let held = self.jitter.stats().held > held_before;
        let lost = !held && !matches!(playout, Playout::Frame(_));
        if lost && !self.in_loss {
            self.stats.loss_runs += 1;
        }
        self.in_loss = lost;
        let decoded = match &playout {
            Playout::Frame(packet) => self.decoder.decode(packet, out),
            Playout::Fec(next) => self.decoder.decode_fec(next, out),
            Playout::Conceal => self.decoder.conceal(out),
        };
        if decoded.is_err() {
            // A corrupt packet that authenticated (a broken sender): conceal.
            self.stats.decode_errors += 1;
            self.decoder.conceal(out)?;
        }
        Ok(true)
    }

    /// Counters so far.
    pub fn stats(&self) -> MediaStats {
        let jitter = self.jitter.stats();
        MediaStats {
            jitter,
            jitter_ms: self.jitter.jitter_ms(),
            jitter_buffer_delay_ms: self.jitter.current_delay_ms(),
            added_delay_p50_ms: self.jitter.added_delay_ms(0.5),
            added_delay_p95_ms: self.jitter.added_delay_ms(0.95),
            late_loss_pct: self.jitter.late_loss_pct(),
            lost: jitter.fec + jitter.concealed,
            ..self.stats
        }
    }

    /// The codec settings in use.
    pub fn codec(&self) -> CodecConfig {
        self.encoder.config()
    }
}
