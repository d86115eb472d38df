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

use crate::codec::{CodecConfig, CodecError, Decoder, Encoder, FRAME_SAMPLES, MAX_PACKET};

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
}

/// The voice of one call.
#[derive(Debug)]
pub struct MediaSession {
    encoder: Encoder,
    decoder: Decoder,
    jitter: JitterBuffer,
    stats: MediaStats,
    packet: [u8; MAX_PACKET],
}

impl MediaSession {
    /// A session with `config`.
    pub fn new(config: MediaConfig) -> Result<Self, MediaError> {
        Ok(Self {
            encoder: Encoder::new(config.codec)?,
            decoder: Decoder::new()?,
            jitter: JitterBuffer::new(config.jitter),
            stats: MediaStats::default(),
            packet: [0; MAX_PACKET],
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
    /// buffer. A late or duplicate frame is dropped and counted there.
    pub fn handle_frame(
        &mut self,
        number: u16,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<(), JitterDrop> {
        self.stats.received_frames += 1;
        self.jitter.handle_frame(number, payload.to_vec(), now_ms)
    }

    /// Fills `out` (one frame, 960 samples) with what to play now; call once
    /// per frame period. Returns `false` (and silence) before playout starts.
    pub fn poll_audio(&mut self, now_ms: u64, out: &mut [i16]) -> Result<bool, MediaError> {
        if out.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(out.len()).into());
        }
        let Some(playout) = self.jitter.poll_playout(now_ms) else {
            out.fill(0);
            return Ok(false);
        };
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
            lost: jitter.fec + jitter.concealed,
            ..self.stats
        }
    }

    /// The codec settings in use.
    pub fn codec(&self) -> CodecConfig {
        self.encoder.config()
    }
}
