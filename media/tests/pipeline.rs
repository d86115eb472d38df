//! Two call sides (proto call session + media session) wired back to back in memory, with a virtual 20 ms clock:
//! audio quality, loss recovery, packet size and rate, and bad datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};

use natter_media::session::{MediaConfig, MediaSession, MediaStats};
use natter_media::{FRAME_SAMPLES, score};
use natter_proto::handshake::{DirectionKeys, KeySchedule};
use natter_proto::messages::{Candidate, CandidateKind, TransportKind};
use natter_proto::path::Target;
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup, SessionStats};
use rand::{Rng, SeedableRng};

/// A voiced, speech-like test signal: harmonic bursts with pauses (5 s).
fn speech_like(seed: u64) -> Vec<i16> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    while out.len() < 5 * 48_000 {
        let f0: f64 = rng.gen_range(100.0..250.0);
        let amp: f64 = rng.gen_range(1500.0..6000.0);
        let len = rng.gen_range(4_000..14_000);
        for i in 0..len {
            let t = i as f64 / 48_000.0;
            let env = (std::f64::consts::PI * i as f64 / len as f64).sin();
            let v: f64 = (1..6)
                .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
                .sum();
            out.push((amp * env * v) as i16);
        }
        out.extend(std::iter::repeat_n(0i16, rng.gen_range(2_000..8_000)));
    }
    out.truncate(5 * 48_000);
    out
}

/// One side of the call: the proto session (seal, open, paths) and the
/// media session (codec, jitter buffer).
struct Side {
    call: CallSession,
    media: MediaSession,
}

const CALLER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5000);
const CALLEE: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 5000);

fn side(
    send: &DirectionKeys,
    recv: &DirectionKeys,
    start: u16,
    seed: u64,
    peer: SocketAddr,
) -> Side {
    let setup = SessionSetup {
        udp_blocked: false,
        behind_nat: false,
        start_index: start,
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
    Side {
        call,
        media: MediaSession::new(MediaConfig::default()).unwrap(),
    }
}

fn pair(wrong_key: bool) -> (Side, Side) {
    let s = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32]);
    let other = KeySchedule::derive(&[9; 16], &[2; 32], &[3; 32]);
    let caller = side(&s.c2s, &s.s2c, 40_000, 1, CALLEE);
    let callee_recv = if wrong_key { &other.c2s } else { &s.c2s };
    let callee = side(&s.s2c, callee_recv, 7, 2, CALLER);
    (caller, callee)
}

struct Run {
    received: Vec<i16>,
    sender: SessionStats,
    receiver: SessionStats,
    receiver_media: MediaStats,
    max_datagram: usize,
    datagrams: usize,
}

/// Streams `input` from caller to callee; `loss` is the fraction dropped;
/// `mangle` may alter each datagram in flight. Only voice flows (neither
/// side's timeout is driven, so no connectivity checks are sent).
fn run(input: &[i16], loss: f64, wrong_key: bool, mangle: impl Fn(usize, &mut Vec<u8>)) -> Run {
    let (mut caller, mut callee) = pair(wrong_key);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut received = Vec::new();
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let (mut max_datagram, mut datagrams) = (0, 0);
    let frames = input.len() / FRAME_SAMPLES;
    // Run 10 frames past the end so the jitter buffer drains.
    for tick in 0..frames + 10 {
        let now = tick as u64 * 20;
        let start = (tick * FRAME_SAMPLES).min(input.len());
        let mut pcm = input[start..(start + FRAME_SAMPLES).min(input.len())].to_vec();
        pcm.resize(FRAME_SAMPLES, 0);
        let payload = caller.media.encode(&pcm).unwrap();
        assert!(caller.call.send_voice(payload, now).unwrap(), "no path");
        while let Some(t) = caller.call.poll_transmit() {
            assert_eq!(t.to, Target::Udp(CALLEE));
            let mut datagram = t.bytes;
            max_datagram = max_datagram.max(datagram.len());
            datagrams += 1;
            mangle(tick, &mut datagram);
            if rng.gen_bool(1.0 - loss) {
                callee
                    .call
                    .handle_datagram(Target::Udp(CALLER), &datagram, now + 5)
                    .unwrap();
            }
        }
        while let Some(event) = callee.call.poll_event() {
            if let Event::Voice { number, payload } = event {
                let _ = callee.media.handle_frame(number, &payload, now + 5);
            }
        }
        if callee.media.poll_audio(now + 10, &mut frame).unwrap() {
            received.extend_from_slice(&frame);
        }
    }
    assert!(
        callee.call.poll_transmit().is_none(),
        "the callee only listens"
    );
    Run {
        received,
        sender: caller.call.stats(),
        receiver: callee.call.stats(),
        receiver_media: callee.media.stats(),
        max_datagram,
        datagrams,
    }
}

#[test]
fn clean_channel_audio_matches_and_packets_fit_67_bytes() {
    let input = speech_like(1);
    let r = run(&input, 0.0, false, |_, _| {});
    let s = score::compare(&input, &r.received, 500);
    assert!(s.envelope > 0.9, "{s:?}");
    assert!(s.waveform > 0.6, "{s:?}");
    assert!(
        r.max_datagram <= 67,
        "voice datagram of {} bytes",
        r.max_datagram
    );
    assert_eq!(r.receiver_media.jitter.concealed, 0);
    assert_eq!(
        r.receiver.received_media_packets,
        r.sender.sent_media_packets
    );
}

#[test]
fn five_percent_loss_is_recovered_by_fec_and_concealment() {
    let input = speech_like(1);
    let r = run(&input, 0.05, false, |_, _| {});
    let s = score::compare(&input, &r.received, 500);
    assert!(
        r.receiver_media.jitter.fec > 0,
        "no FEC recovery: {:?}",
        r.receiver_media
    );
    assert!(r.receiver_media.lost > 0);
    assert!(s.envelope > 0.8, "{s:?}");
    assert!(s.waveform > 0.4, "{s:?}");
}

#[test]
fn silence_is_sent_at_fifty_packets_per_second() {
    let silence = vec![0i16; 5 * 48_000];
    let r = run(&silence, 0.0, false, |_, _| {});
    // 250 frames of input plus 10 drain ticks, every one of them sent.
    assert_eq!(r.datagrams, 260);
    assert_eq!(r.sender.sent_media_packets, 260);
    assert_eq!(r.receiver.received_media_packets, 260);
}

#[test]
fn a_wrong_key_yields_nothing_playable() {
    let input = speech_like(1);
    let r = run(&input, 0.0, true, |_, _| {});
    assert_eq!(r.receiver.dropped_auth, r.datagrams as u64);
    assert!(r.received.is_empty(), "played audio without a key");
    let s = score::compare(&input, &r.received, 500);
    assert!(s.waveform < 0.1);
}

#[test]
fn tampered_datagrams_are_dropped_and_counted_and_the_call_continues() {
    let input = speech_like(1);
    let r = run(&input, 0.0, false, |tick, d| {
        if tick % 10 == 3 {
            let last = d.len() - 1;
            d[last] ^= 1;
        }
    });
    assert_eq!(r.receiver.dropped_auth, 26, "{:?}", r.receiver);
    let s = score::compare(&input, &r.received, 500);
    assert!(s.envelope > 0.8, "{s:?}");
}
