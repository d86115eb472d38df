//! Opus, configured the way Natter sends voice: 48 kHz mono, 20 ms frames,
//! VoIP application, constant bitrate (18 kb/s by default), wideband forced,
//! in-band FEC on, DTX off (no silence suppression: a frame every 20 ms,
//! speech or not).
//!
//! 18 kb/s CBR is 45 bytes of Opus per 20 ms frame, so a voice datagram is
//! 3 (SoM header) + 2 (frame number) + 45 + 16 (GCM tag) = 66 bytes of UDP
//! payload, within Skype's observed 67-byte datagrams (18.4 kb/s would fill
//! them to the byte, 46 bytes of Opus, and scores the same in the quality
//! bench: docs/results/voice-quality.md). Constant bitrate keeps every
//! datagram that size, so packet sizes do not leak speech activity.
//!
//! The encoder is pinned to wideband (16 kHz audio band, SILK; a test asserts
//! every packet's TOC): with no band set, libopus's VoIP encoder may choose a
//! narrower band at these rates, and the decoder's speech enhancement
//! (below) works on wideband SILK. (Natter's 16 kb/s encoder capped the band
//! at wideband and, on the demo's speech, ran wideband SILK on every frame.)
//!
//! The decoder runs libopus 1.6's neural features, built by the `osce`
//! feature of `opusic-c` (its `dred` feature is on only because the crate
//! gates `Decoder::set_complexity` behind it; no DRED data is sent: it would
//! not fit the datagram, and the encoder's DRED duration stays 0). Decoder
//! complexity (libopus `OPUS_SET_COMPLEXITY` on a decoder) switches them on:
//! 5 and up conceals lost frames with deep PLC, 6 adds LACE and 7 and up
//! NoLACE speech enhancement of every decoded SILK frame. Natter runs 10
//! ([`DECODER_COMPLEXITY`]). These are receiver-side only: the bitstream is
//! plain Opus, and an older peer decodes it as before.

/// Samples per second.
pub const SAMPLE_RATE: u32 = 48_000;
/// Duration of a frame, in ms.
pub const FRAME_MS: u32 = 20;
/// Samples in one frame.
pub const FRAME_SAMPLES: usize = (SAMPLE_RATE / 1000 * FRAME_MS) as usize;
/// Largest encoded frame accepted or produced.
pub const MAX_PACKET: usize = 400;
/// Natter's voice bitrate, in b/s (45 bytes per 20 ms frame).
pub const BITRATE: i32 = 18_000;
/// Decoder complexity: deep PLC (5+) and NoLACE (7+) on.
pub const DECODER_COMPLEXITY: u8 = 10;

/// Codec settings: the encoder's (what goes on the wire) and the local
/// decoder's complexity (receiver-side only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecConfig {
    /// Bits per second.
    pub bitrate: i32,
    /// Opus in-band forward error correction.
    pub fec: bool,
    /// Loss the encoder plans its FEC for, in percent.
    pub expected_loss_percent: i32,
    /// Decoder complexity, 0..=10 (0: the plain decoder, no neural features).
    pub decoder_complexity: u8,
}

impl Default for CodecConfig {
    fn default() -> Self {
        Self {
            bitrate: BITRATE,
            fec: true,
            expected_loss_percent: 10,
            decoder_complexity: DECODER_COMPLEXITY,
        }
    }
}

/// A codec failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("opus: {0}")]
    Opus(&'static str),
    #[error("a frame must have {FRAME_SAMPLES} samples, got {0}")]
    FrameSize(usize),
    #[error("{0} is not a setting Opus takes")]
    Setting(String),
}

fn opus_err(e: opusic_c::ErrorCode) -> CodecError {
    CodecError::Opus(e.message())
}

/// The audio band of an Opus packet (from its TOC byte, RFC 6716 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    Narrow,
    Medium,
    Wide,
    SuperWide,
    Full,
}

/// The coding mode and audio band of an Opus packet, from its TOC byte
/// (RFC 6716 section 3.1); `None` for an empty packet.
pub fn packet_mode(packet: &[u8]) -> Option<(&'static str, Band)> {
    let config = packet.first()? >> 3;
    Some(match config {
        0..=3 => ("silk", Band::Narrow),
        4..=7 => ("silk", Band::Medium),
        8..=11 => ("silk", Band::Wide),
        12..=13 => ("hybrid", Band::SuperWide),
        14..=15 => ("hybrid", Band::Full),
        16..=19 => ("celt", Band::Narrow),
        20..=23 => ("celt", Band::Wide),
        24..=27 => ("celt", Band::SuperWide),
        _ => ("celt", Band::Full),
    })
}

/// Whether the sender's encoder marked an Opus packet as speech: the voice
/// activity flags of its first frame's SILK frames (RFC 6716 section 4.2.3:
/// the LP layer starts with one VAD flag per 20 ms SILK frame, each coded
/// with probability one half, so they are the top bits of the frame's first
/// byte). `None` for a packet that is not SILK only (hybrid and CELT have no
/// such flag) or that is malformed; an empty frame (DTX) is not speech.
pub fn voice_activity(packet: &[u8]) -> Option<bool> {
    let (mode, _) = packet_mode(packet)?;
    if mode != "silk" {
        return None;
    }
    let toc = packet[0];
    // SILK frames in one Opus frame: 10 and 20 ms one, 40 ms two, 60 ms three
    let silk_frames = match (toc >> 3) & 3 {
        0 | 1 => 1,
        2 => 2,
        _ => 3,
    };
    let frame = match toc & 3 {
        // one frame, or two of the same size: the first starts after the TOC
        0 | 1 => packet.get(1..)?,
        // two frames, the first one's length in one or two bytes
        2 => {
            let len_bytes = if *packet.get(1)? < 252 { 1 } else { 2 };
            packet.get(1 + len_bytes..)?
        }
        // a frame count byte, padding, and in VBR the frames' lengths
        _ => {
            let count_byte = *packet.get(1)?;
            let count = usize::from(count_byte & 0x3f);
            if count == 0 {
                return None;
            }
            let mut i = 2;
            let mut padding = 0usize;
            if count_byte & 0x40 != 0 {
                loop {
                    let b = *packet.get(i)?;
                    i += 1;
                    padding += usize::from(b.min(254));
                    if b != 255 {
                        break;
                    }
                }
            }
            let end = packet.len().checked_sub(padding)?;
            if count_byte & 0x80 != 0 {
                for _ in 1..count {
                    i += if *packet.get(i)? < 252 { 1 } else { 2 };
                }
            } else if end.checked_sub(i)? / count == 0 {
                return Some(false);
            }
            packet.get(i..end)?
        }
    };
    let Some(first) = frame.first() else {
        return Some(false);
    };
    Some(first >> (8 - silk_frames) != 0)
}

/// The Opus encoder of one outgoing stream.
pub struct Encoder {
    inner: opusic_c::Encoder,
    config: CodecConfig,
    /// The frame as libopus's 16-bit input (`opusic-c` takes `u16`).
    pcm: Vec<u16>,
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
        use opusic_c::{Application, Bandwidth, Bitrate, Channels, InbandFec, SampleRate};
        let bitrate = u32::try_from(config.bitrate)
            .map_err(|_| CodecError::Setting(format!("bitrate {}", config.bitrate)))?;
        let loss = u8::try_from(config.expected_loss_percent)
            .ok()
            .filter(|p| *p <= 100)
            .ok_or_else(|| {
                CodecError::Setting(format!("expected loss {}%", config.expected_loss_percent))
            })?;
        let mut inner =
            opusic_c::Encoder::new(Channels::Mono, SampleRate::Hz48000, Application::Voip)
                .map_err(opus_err)?;
        inner
            .set_bitrate(Bitrate::Value(bitrate))
            .map_err(opus_err)?;
        inner.set_vbr(false).map_err(opus_err)?;
        inner
            .set_inband_fec(if config.fec {
                InbandFec::Mode1
            } else {
                InbandFec::Off
            })
            .map_err(opus_err)?;
        inner.set_packet_loss(loss).map_err(opus_err)?;
        inner.set_dtx(false).map_err(opus_err)?;
        inner.set_bandwidth(Bandwidth::Wide).map_err(opus_err)?;
        Ok(Self {
            inner,
            config,
            pcm: vec![0; FRAME_SAMPLES],
        })
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
        for (dst, src) in self.pcm.iter_mut().zip(pcm) {
            // The same 16 bits: libopus reads them as opus_int16.
            *dst = *src as u16;
        }
        self.inner.encode_to_slice(&self.pcm, out).map_err(opus_err)
    }
}

/// The Opus decoder of one incoming stream.
pub struct Decoder {
    inner: opusic_c::Decoder,
    pcm: Vec<u16>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    /// A decoder at 48 kHz mono with complexity `complexity` (0..=10; see
    /// the module documentation).
    pub fn new(complexity: u8) -> Result<Self, CodecError> {
        if complexity > 10 {
            return Err(CodecError::Setting(format!(
                "decoder complexity {complexity}"
            )));
        }
        let mut inner =
            opusic_c::Decoder::new(opusic_c::Channels::Mono, opusic_c::SampleRate::Hz48000)
                .map_err(opus_err)?;
        inner.set_complexity(complexity).map_err(opus_err)?;
        Ok(Self {
            inner,
            pcm: vec![0; FRAME_SAMPLES],
        })
    }

    /// The complexity the decoder runs at.
    pub fn complexity(&mut self) -> Result<u8, CodecError> {
        self.inner.get_complexity().map_err(opus_err)
    }

    fn frame(&mut self, packet: &[u8], out: &mut [i16], fec: bool) -> Result<(), CodecError> {
        if out.len() != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(out.len()));
        }
        let n = self
            .inner
            .decode_to_slice(packet, &mut self.pcm, fec)
            .map_err(opus_err)?;
        if n != FRAME_SAMPLES {
            return Err(CodecError::FrameSize(n));
        }
        for (dst, src) in out.iter_mut().zip(&self.pcm) {
            *dst = *src as i16;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Voiced, speech-like frames (a harmonic series with a moving pitch).
    fn voiced(frames: usize) -> Vec<i16> {
        (0..frames * FRAME_SAMPLES)
            .map(|n| {
                let t = n as f64 / 48_000.0;
                let f0 = 140.0 + 30.0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                let v: f64 = (1..12)
                    .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (3000.0 * v) as i16
            })
            .collect()
    }

    /// Every packet is 45 bytes (18 kb/s CBR), wideband SILK (the band
    /// NoLACE enhances), speech and silence alike.
    #[test]
    fn packets_are_45_bytes_of_wideband_silk() {
        let mut enc = Encoder::new(CodecConfig::default()).unwrap();
        let mut out = [0u8; MAX_PACKET];
        let mut pcm = voiced(100);
        pcm.extend(std::iter::repeat_n(0, 50 * FRAME_SAMPLES));
        for (i, frame) in pcm.chunks(FRAME_SAMPLES).enumerate() {
            let n = enc.encode(frame, &mut out).unwrap();
            assert_eq!(n, 45, "frame {i}");
            assert_eq!(
                packet_mode(&out[..n]),
                Some(("silk", Band::Wide)),
                "frame {i}: TOC {:#04x}",
                out[0]
            );
        }
    }

    #[test]
    fn the_voice_activity_flag_tells_speech_from_silence() {
        let mut enc = Encoder::new(CodecConfig::default()).unwrap();
        let mut out = [0u8; MAX_PACKET];
        let mut pcm = voiced(100);
        pcm.extend(std::iter::repeat_n(0, 50 * FRAME_SAMPLES));
        let flags: Vec<Option<bool>> = pcm
            .chunks(FRAME_SAMPLES)
            .map(|frame| {
                let n = enc.encode(frame, &mut out).unwrap();
                voice_activity(&out[..n])
            })
            .collect();
        // the onset of the voiced sound is speech (held steady for seconds,
        // the encoder's detector takes it for background noise: espeak-ng's
        // sentences were flagged speech in every frame above -40 dBFS), and
        // after a few frames of hangover the silence is not
        assert!(flags[2..20].iter().all(|f| *f == Some(true)), "{flags:?}");
        assert!(flags[110..].iter().all(|f| *f == Some(false)), "{flags:?}");
        // packets of both framings Natter's encoder sends (one frame, and
        // one frame padded to the constant bitrate) were among them
        assert!(flags.iter().all(Option::is_some));
        // not SILK, or malformed: unknown
        assert_eq!(voice_activity(&[]), None);
        assert_eq!(voice_activity(&[0xfc, 0xff]), None, "CELT");
        assert_eq!(voice_activity(&[0x4b]), None, "no count byte");
        assert_eq!(
            voice_activity(&[0x4b, 0x41, 0xff, 0xff]),
            None,
            "padding past the end"
        );
        assert_eq!(voice_activity(&[0x48]), Some(false), "empty frame (DTX)");
    }

    #[test]
    fn the_decoder_runs_at_the_configured_complexity() {
        assert_eq!(
            Decoder::new(DECODER_COMPLEXITY).unwrap().complexity(),
            Ok(10)
        );
        assert_eq!(Decoder::new(0).unwrap().complexity(), Ok(0));
        assert!(matches!(Decoder::new(11), Err(CodecError::Setting(_))));
    }

    /// The neural decoder changes the sound (NoLACE enhances every SILK
    /// frame, deep PLC fills losses), so its output differs from the plain
    /// decoder's on the same packets; both stay close to the input.
    #[test]
    fn the_neural_decoder_decodes_and_conceals_differently_from_the_plain_one() {
        let mut enc = Encoder::new(CodecConfig::default()).unwrap();
        let pcm = voiced(50);
        let mut packets = Vec::new();
        let mut out = [0u8; MAX_PACKET];
        for frame in pcm.chunks(FRAME_SAMPLES) {
            let n = enc.encode(frame, &mut out).unwrap();
            packets.push(out[..n].to_vec());
        }
        let run = |complexity| {
            let mut dec = Decoder::new(complexity).unwrap();
            let mut all = Vec::new();
            let mut frame = vec![0i16; FRAME_SAMPLES];
            for (i, p) in packets.iter().enumerate() {
                if i % 10 == 9 {
                    dec.conceal(&mut frame).unwrap();
                } else {
                    dec.decode(p, &mut frame).unwrap();
                }
                all.extend_from_slice(&frame);
            }
            all
        };
        let plain = run(0);
        let neural = run(DECODER_COMPLEXITY);
        // Frames 1-8 arrived (none concealed yet): only NoLACE (built by
        // the `osce` feature) can make them differ.
        let received = FRAME_SAMPLES..9 * FRAME_SAMPLES;
        assert_ne!(plain[received.clone()], neural[received]);
        assert_ne!(plain, neural);
        let energy = |x: &[i16]| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
        let ratio = energy(&neural) / energy(&plain);
        assert!((0.5..2.0).contains(&ratio), "energy ratio {ratio}");
    }

    /// Older peers sent 16 kb/s (40-byte packets) and decode at complexity 0
    /// (the `opus` crate had no decoder complexity): each side plays the
    /// other's packets (protocol 7.4).
    #[test]
    fn old_and_new_bitrates_decode_on_old_and_new_decoders() {
        let old = CodecConfig {
            bitrate: 16_000,
            ..CodecConfig::default()
        };
        let pcm = voiced(25);
        for (config, size) in [(old, 40), (CodecConfig::default(), 45)] {
            let mut enc = Encoder::new(config).unwrap();
            let mut packets = Vec::new();
            let mut out = [0u8; MAX_PACKET];
            for frame in pcm.chunks(FRAME_SAMPLES) {
                let n = enc.encode(frame, &mut out).unwrap();
                assert_eq!(n, size);
                packets.push(out[..n].to_vec());
            }
            for complexity in [0, DECODER_COMPLEXITY] {
                let mut dec = Decoder::new(complexity).unwrap();
                let mut frame = vec![0i16; FRAME_SAMPLES];
                let mut loud = 0;
                for p in &packets {
                    dec.decode(p, &mut frame).unwrap();
                    loud += usize::from(frame.iter().any(|s| s.unsigned_abs() > 1000));
                }
                assert!(loud >= 20, "{size} B at complexity {complexity}: {loud}");
            }
        }
    }

    #[test]
    fn bad_settings_and_frames_are_errors() {
        let bad = CodecConfig {
            expected_loss_percent: 101,
            ..CodecConfig::default()
        };
        assert!(matches!(Encoder::new(bad), Err(CodecError::Setting(_))));
        let mut enc = Encoder::new(CodecConfig::default()).unwrap();
        assert_eq!(
            enc.encode(&[0; 100], &mut [0; MAX_PACKET]),
            Err(CodecError::FrameSize(100))
        );
        let mut dec = Decoder::new(DECODER_COMPLEXITY).unwrap();
        let mut frame = vec![0i16; FRAME_SAMPLES];
        // A corrupt packet is an error, not a panic.
        assert!(dec.decode(&[0xff, 0xff, 0xff], &mut frame).is_err());
    }

    /// Whatever an authenticated but broken or hostile peer sends, the
    /// neural decoder returns a frame or an error, never a panic, and
    /// conceals afterwards.
    #[test]
    fn random_packets_never_break_the_neural_decoder() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut dec = Decoder::new(DECODER_COMPLEXITY).unwrap();
        let mut frame = vec![0i16; FRAME_SAMPLES];
        let (mut ok, mut err) = (0, 0);
        for i in 0..3_000 {
            let len = rng.gen_range(1..120);
            let mut packet: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            // Half of them wideband SILK 20 ms (the TOC Natter sends), so
            // the decoder gets past the TOC into SILK and NoLACE.
            if i % 2 == 0 {
                packet[0] = 9 << 3;
            }
            let result = if i % 3 == 0 {
                dec.decode_fec(&packet, &mut frame)
            } else {
                dec.decode(&packet, &mut frame)
            };
            match result {
                Ok(()) => ok += 1,
                Err(_) => err += 1,
            }
            if i % 7 == 0 {
                dec.conceal(&mut frame).unwrap();
            }
        }
        assert!(ok > 1_000 && err > 0, "{ok} decoded, {err} refused");
    }

    #[test]
    fn the_toc_byte_names_mode_and_band() {
        assert_eq!(packet_mode(&[]), None);
        assert_eq!(packet_mode(&[8 << 3]), Some(("silk", Band::Wide)));
        assert_eq!(packet_mode(&[0]), Some(("silk", Band::Narrow)));
        assert_eq!(packet_mode(&[13 << 3]), Some(("hybrid", Band::SuperWide)));
        assert_eq!(packet_mode(&[31 << 3]), Some(("celt", Band::Full)));
    }
}
