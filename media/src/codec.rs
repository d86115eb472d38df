//! Opus, configured the way Natter sends voice: 48 kHz mono, 20 ms frames,
//! VoIP application, constant bitrate (16 kb/s by default), in-band FEC on,
//! DTX off (no silence suppression: a frame every 20 ms, speech or not).
//!
//! Constant bitrate keeps every voice datagram the same size (61 bytes of UDP
//! payload at 16 kb/s), inside Skype's observed 67 bytes, and does not leak
//! speech activity through packet sizes.

/// Samples per second.
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of a frame, in ms.
pub const FRAME_MS: u32 = 20;
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
/// Largest encoded frame accepted or produced.
pub const MAX_PACKET: usize = 400;

/// Encoder settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecConfig {
    /// Bits per second.
    pub bitrate: i32,
    /// Opus in-band forward error correction.
    pub fec: bool,
    /// Loss the encoder plans its FEC for, in percent.
    pub expected_loss_percent: i32,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            bitrate: 16_000,
            fec: true,
            expected_loss_percent: 10,
        }
    }
}

/// A codec failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("opus: {0}")]
    Opus(String),
    #[error("a frame must have {FRAME_SAMPLES} samples, got {0}")]
    FrameSize(usize),
}

fn opus_err(e: opus::Error) -> CodecError {
    CodecError::Opus(e.to_string())
}

/// The Opus encoder of one outgoing stream.
pub struct Encoder {
    inner: opus::Encoder,
    config: CodecConfig,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("config", &self.config)
            .finish()
    }
}

impl Encoder {
    /// An encoder with `config`.
    pub fn new(config: CodecConfig) -> Result<Self, CodecError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(opus_err)?;
        inner
            .set_bitrate(opus::Bitrate::Bits(config.bitrate))
            .map_err(opus_err)?;
        inner.set_vbr(false).map_err(opus_err)?;
        inner.set_inband_fec(config.fec).map_err(opus_err)?;
        inner
            .set_packet_loss_perc(config.expected_loss_percent)
            .map_err(opus_err)?;
        inner.set_dtx(false).map_err(opus_err)?;
        // Wideband is plenty for speech at 16 kb/s and leaves bits for FEC.
        inner
            .set_max_bandwidth(opus::Bandwidth::Wideband)
            .map_err(opus_err)?;
        Ok(Self { inner, config })
    }

    /// The settings in use.
    pub fn config(&self) -> CodecConfig {
        self.config
    }

    /// Encodes one 20 ms frame into `out`, returning the packet length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        if pcm.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(pcm.len()));
        }
        self.inner.encode(pcm, out).map_err(opus_err)
    }
}

/// The Opus decoder of one incoming stream.
pub struct Decoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    /// A decoder at 48 kHz mono.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono).map_err(opus_err)?,
        })
    }

    fn frame(&mut self, packet: &[u8], out: &mut [i16], fec: bool) -> Result<(), CodecError> {
        if out.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(out.len()));
        }
        let n = self.inner.decode(packet, out, fec).map_err(opus_err)?;
        if n != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(n));
        }
        Ok(())
    }

    /// Decodes a received frame.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16]) -> Result<(), CodecError> {
        self.frame(packet, out, false)
    }

    /// Rebuilds a lost frame from the FEC data in the packet that followed it.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [i16]) -> Result<(), CodecError> {
        self.frame(next_packet, out, true)
    }

    /// Synthesises a frame for a loss (packet-loss concealment).
    pub fn conceal(&mut self, out: &mut [i16]) -> Result<(), CodecError> {
        self.frame(&[], out, false)
    }
}
