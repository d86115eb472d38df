//! Two call sides back to back in memory: the caller's proto call session
//! and media session seal and send, the callee's open, buffer and play, on a
//! virtual 20 ms clock. No sockets, no wall clock: the whole voice path of a
//! call as the pipeline tests, the voice bench and the quality bench
//! (`examples/quality.rs`) drive it. Only voice flows one way (neither
//! side's timeout is driven, so no connectivity checks are sent).

use std::net::{Ipv4Addr, SocketAddr};

use natter_proto::handshake::{DirectionKeys, KeySchedule};
use natter_proto::media::SealError;
use natter_proto::messages::{Candidate, CandidateKind, TransportKind};
use natter_proto::path::Target;
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup};

use crate::session::{MediaConfig, MediaError, MediaSession};

/// The caller's address (documentation range).
pub const CALLER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5000);
/// The callee's address (documentation range).
pub const CALLEE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 5000);

/// A failure of the loopback (a real call would end).
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the caller has no path to the callee")]
    NoPath,
}

/// One side: the proto session (seal, open, paths) and the media session
/// (codec, jitter buffer).
#[derive(Debug)]
pub struct Side {
    pub call: CallSession,
    pub media: MediaSession,
}

impl Side {
    /// A side with keys `send`/`recv` whose one candidate is `peer`.
    pub fn new(
        send: &DirectionKeys,
        recv: &DirectionKeys,
        start_index: u16,
        seed: u64,
        peer: SocketAddr,
        media: MediaConfig,
    ) -> Result<Self, MediaError> {
        let setup = SessionSetup {
            udp_blocked: false,
            behind_nat: false,
            start_index,
            seed,
        };
        let mut call = CallSession::new(send, recv, setup, SessionConfig::default(), 0);
        call.add_candidates(
            &[Candidate {
                kind: CandidateKind::Host as i32,
                transport: TransportKind::Udp as i32,
                addr: Some(peer.into()),
                priority: 100,
                relay_token: Vec::new(),
            }],
            0,
        );
        Ok(Self {
            call,
            media: MediaSession::new(media)?,
        })
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// UDP payload sizes of the datagrams the caller sent.
    pub sent_bytes: usize,
    pub sent: usize,
    /// Largest datagram sent.
    pub max_datagram: usize,
    /// The callee played a frame (playout has started).
    pub played: bool,
}

/// A caller streaming to a callee.
#[derive(Debug)]
pub struct Loopback {
    pub caller: Side,
    pub callee: Side,
    tick: u64,
}

impl Loopback {
    /// A caller with `caller` media settings and a callee with `callee`'s;
    /// with `wrong_key` the callee opens with another call's key.
    pub fn new(
        caller: MediaConfig,
        callee: MediaConfig,
        wrong_key: bool,
    ) -> Result<Self, MediaError> {
        let keys = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32]);
        let other = KeySchedule::derive(&[9; 16], &[2; 32], &[3; 32]);
        let callee_recv = if wrong_key { &other.c2s } else { &keys.c2s };
        Ok(Self {
            caller: Side::new(&keys.c2s, &keys.s2c, 40_000, 1, CALLEE, caller)?,
            callee: Side::new(&keys.s2c, callee_recv, 7, 2, CALLER, callee)?,
            tick: 0,
        })
    }

    /// The virtual time of the next tick, in ms.
    pub fn now_ms(&self) -> u64 {
        self.tick * 20
    }

    /// One 20 ms frame period: the caller encodes and sends `pcm`; each
    /// datagram goes through `deliver` (which may alter it, and drops it by
    /// returning false) and arrives 5 ms later; the callee plays one frame
    /// into `out` 10 ms into the period.
    pub fn tick(
        &mut self,
        pcm: &[i16],
        mut deliver: impl FnMut(&mut Vec<u8>) -> bool,
        out: &mut [i16],
    ) -> Result<Tick, LoopbackError> {
        let now = self.now_ms();
        self.tick += 1;
        let payload = self.caller.media.encode(pcm)?;
        if !self.caller.call.send_voice(payload, now)? {
            return Err(LoopbackError::NoPath);
        }
        let mut t = Tick {
            sent_bytes: 0,
            sent: 0,
            max_datagram: 0,
            played: false,
        };
        while let Some(transmit) = self.caller.call.poll_transmit() {
            let mut datagram = transmit.bytes;
            t.sent += 1;
            t.sent_bytes += datagram.len();
            t.max_datagram = t.max_datagram.max(datagram.len());
            if deliver(&mut datagram) {
                self.callee
                    .call
                    .handle_datagram(Target::Udp(CALLER), &datagram, now + 5)?;
            }
        }
        while let Some(event) = self.callee.call.poll_event() {
            if let Event::Voice { number, payload } = event {
                // A late or duplicate frame is dropped and counted there.
                let _ = self.callee.media.handle_frame(number, &payload, now + 5);
            }
        }
        t.played = self.callee.media.poll_audio(now + 10, out)?;
        Ok(t)
    }
}
