//! One call's media, sans-IO: what to send every 20 ms and what to play.
//!
//! Drive loop of the shell (every 20 ms, from one timer):
//!
//! ```text
//! session.poll_transmit(&captured_frame, &mut datagram)?;  socket.send(&datagram)
//! session.poll_audio(now_ms, &mut playout_frame)?;         speaker / WAV
//! on each received datagram: session.handle_datagram(&bytes, now_ms)
//! ```
//!
//! `poll_transmit` is called every frame period whether the user speaks or
//! not: silence is encoded and sent like speech (no silence suppression).

use natter_proto::handshake::DirectionKeys;
use natter_proto::jitter::{JitterBuffer, JitterConfig, JitterDrop, JitterStats, Playout};
use natter_proto::media::{
    MediaFrameError, OpenError, Opener, SealError, Sealer, decode_media_frame, encode_media_frame,
};
use natter_proto::som::Function;

use crate::codec::{CodecConfig, CodecError, Decoder, Encoder, FRAME_SAMPLES, MAX_PACKET};

/// Settings of a media session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaConfig {
    pub codec: CodecConfig,
    pub jitter: JitterConfig,
}

/// A failure that stops sending or playing (not a dropped datagram).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Why a received datagram was dropped (each is counted in [`MediaStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Frame(#[from] MediaFrameError),
    #[error(transparent)]
    Jitter(#[from] JitterDrop),
    #[error("probe reply does not carry a timestamp")]
    BadProbe,
}

/// What a received datagram was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A media frame, filed in the jitter buffer.
    Media,
    /// A keepalive.
    Ping,
    /// A connectivity probe: answer it with [`MediaSession::probe_reply`].
    Probe(Vec<u8>),
    /// The answer to one of our probes; the RTT was measured.
    ProbeReply { rtt_ms: u64 },
    /// Connection management.
    Connect(Vec<u8>),
}

/// Counters of one call's media, for the call report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaStats {
    pub sent_packets: u64,
    /// UDP payload bytes sent (SoM header + sealed frame).
    pub sent_bytes: u64,
    pub sent_media_packets: u64,
    pub received_packets: u64,
    pub received_bytes: u64,
    pub received_media_packets: u64,
    pub dropped_malformed: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub decode_errors: u64,
    /// Frames the sender numbered but that never arrived in time.
    pub lost: u64,
    pub last_rtt_ms: Option<u64>,
    pub jitter: JitterStats,
    pub jitter_ms: f64,
    pub jitter_buffer_delay_ms: u32,
}

/// The media of one call.
#[derive(Debug)]
pub struct MediaSession {
    sealer: Sealer,
    opener: Opener,
    encoder: Encoder,
    decoder: Decoder,
    jitter: JitterBuffer,
    next_frame: u16,
    rng: u64,
    stats: MediaStats,
    plain: Vec<u8>,
    packet: [u8; MAX_PACKET],
}

impl MediaSession {
    /// A session sending with `send` keys from index `start_index` and
    /// receiving with `recv`; `seed` feeds the SoM random bits.
    pub fn new(
        send: &DirectionKeys,
        recv: &DirectionKeys,
        start_index: u16,
        seed: u64,
        config: MediaConfig,
    ) -> Result<Self, MediaError> {
        Ok(Self {
            sealer: Sealer::new(send, start_index & natter_proto::media::MAX_START),
            opener: Opener::new(recv),
            encoder: Encoder::new(config.codec)?,
            decoder: Decoder::new()?,
            jitter: JitterBuffer::new(config.jitter),
            next_frame: 0,
            rng: seed | 1,
            stats: MediaStats::default(),
            plain: Vec::with_capacity(MAX_PACKET + 2),
            packet: [0; MAX_PACKET],
        })
    }

    fn random_bits(&mut self) -> u8 {
        // xorshift64: the three bits only need to look random on the wire.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 61) as u8
    }

    fn seal(&mut self, function: Function, out: &mut Vec<u8>) -> Result<(), MediaError> {
        out.clear();
        let random = self.random_bits();
        self.sealer.seal(function, random, &self.plain, out)?;
        self.stats.sent_packets += 1;
        self.stats.sent_bytes += out.len() as u64;
        Ok(())
    }

    /// Encodes one captured 20 ms frame (silence included) and seals it as
    /// one `Data` datagram into `out`.
    pub fn poll_transmit(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<(), MediaError> {
        let n = self.encoder.encode(pcm, &mut self.packet)?;
        let number = self.next_frame;
        self.next_frame = self.next_frame.wrapping_add(1);
        encode_media_frame(number, &self.packet[..n], &mut self.plain);
        self.seal(Function::Data, out)?;
        self.stats.sent_media_packets += 1;
        Ok(())
    }

    /// A keepalive datagram, for when no media flows.
    pub fn keepalive(&mut self, out: &mut Vec<u8>) -> Result<(), MediaError> {
        self.plain.clear();
        self.seal(Function::Ping, out)
    }

    /// A probe carrying `now_ms`, answered by the peer with a probe reply.
    pub fn probe(&mut self, now_ms: u64, out: &mut Vec<u8>) -> Result<(), MediaError> {
        self.plain.clear();
        self.plain.extend_from_slice(&now_ms.to_be_bytes());
        self.seal(Function::Probe, out)
    }

    /// The answer to a peer's probe: its payload echoed back.
    pub fn probe_reply(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        self.plain.clear();
        self.plain.extend_from_slice(payload);
        self.seal(Function::ProbeReply, out)
    }

    /// Handles one received datagram. Every drop is counted before it is returned.
    pub fn handle_datagram(&mut self, datagram: &[u8], now_ms: u64) -> Result<Received, Dropped> {
        self.stats.received_packets += 1;
        self.stats.received_bytes += datagram.len() as u64;
        let mut plain = std::mem::take(&mut self.plain);
        let result = self.handle_open(datagram, now_ms, &mut plain);
        self.plain = plain;
        result
    }

    fn handle_open(
        &mut self,
        datagram: &[u8],
        now_ms: u64,
        plain: &mut Vec<u8>,
    ) -> Result<Received, Dropped> {
        let opened = match self.opener.open(datagram, plain) {
            Ok(opened) => opened,
            Err(e) => {
                match e {
                    OpenError::Auth => self.stats.dropped_auth += 1,
                    OpenError::Replay(_) => self.stats.dropped_replay += 1,
                    OpenError::Som(_) | OpenError::NoTag(_) => self.stats.dropped_malformed += 1,
                }
                return Err(e.into());
            }
        };
        match opened.header.function {
            Function::Data => {
                let (number, payload) = decode_media_frame(plain).inspect_err(|_| {
                    self.stats.dropped_malformed += 1;
                })?;
                self.stats.received_media_packets += 1;
                self.jitter.handle_frame(number, payload.to_vec(), now_ms)?;
                Ok(Received::Media)
            }
            Function::Ping => Ok(Received::Ping),
            Function::Probe => Ok(Received::Probe(plain.clone())),
            Function::ProbeReply => {
                let sent: [u8; 8] = plain.as_slice().try_into().map_err(|_| Dropped::BadProbe)?;
                let rtt_ms = now_ms.saturating_sub(u64::from_be_bytes(sent));
                self.stats.last_rtt_ms = Some(rtt_ms);
                Ok(Received::ProbeReply { rtt_ms })
            }
            Function::Connect => Ok(Received::Connect(plain.clone())),
        }
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
