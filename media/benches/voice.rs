//! Per-frame cost of the voice path at the default settings (16 kb/s CBR,
//! FEC on): the send path (Opus encode + SoM frame + AES-256-GCM seal) and the
//! receive path (open + jitter buffer + Opus decode). Also prints the UDP
//! payload size of a voice datagram.
//!
//! `cargo bench -p natter-media --bench voice`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use natter_media::FRAME_SAMPLES;
use std::net::SocketAddr;

use natter_media::session::{MediaConfig, MediaSession};
use natter_proto::handshake::{DirectionKeys, KeySchedule};
use natter_proto::messages::{Candidate, CandidateKind, TransportKind};
use natter_proto::path::Target;
use natter_proto::session::{CallSession, Event, SessionConfig, SessionSetup};

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
    5000,
);

/// A call session sending to (and hearing from) one host candidate.
fn call(send: &DirectionKeys, recv: &DirectionKeys, seed: u64) -> CallSession {
    let setup = SessionSetup {
        udp_blocked: false,
        behind_nat: false,
        start_index: 1,
        seed,
    };
    let mut call = CallSession::new(send, recv, setup, SessionConfig::default(), 0);
    call.add_candidates(
        &[Candidate {
            kind: CandidateKind::Host as i32,
            transport: TransportKind::Udp as i32,
            addr: Some(PEER.into()),
            priority: 100,
            relay_token: Vec::new(),
        }],
        0,
    );
    call
}

/// Encodes and seals one frame; returns the datagram.
fn send(media: &mut MediaSession, call: &mut CallSession, pcm: &[i16]) -> Vec<u8> {
    let payload = media.encode(pcm).unwrap();
    call.send_voice(payload, 0).unwrap();
    call.poll_transmit().unwrap().bytes
}

fn frame(i: usize) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|n| {
            let t = (i * FRAME_SAMPLES + n) as f64 / 48_000.0;
            (4000.0 * (2.0 * std::f64::consts::PI * 180.0 * t).sin()
                + 1500.0 * (2.0 * std::f64::consts::PI * 540.0 * t).sin()) as i16
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let keys = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32]);
    let frames: Vec<Vec<i16>> = (0..50).map(frame).collect();

    let mut media = MediaSession::new(MediaConfig::default()).unwrap();
    let mut sender = call(&keys.c2s, &keys.s2c, 1);
    let datagram = send(&mut media, &mut sender, &frames[0]);
    println!("voice datagram UDP payload: {} bytes", datagram.len());

    let mut i = 0;
    c.bench_function("send_path_encode_and_seal", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            black_box(send(&mut media, &mut sender, black_box(&frames[i])));
        })
    });

    // Pre-build a long stream so every receive sees a new, in-order datagram.
    let mut media = MediaSession::new(MediaConfig::default()).unwrap();
    let mut sender = call(&keys.c2s, &keys.s2c, 1);
    let stream: Vec<Vec<u8>> = (0..20_000)
        .map(|n| send(&mut media, &mut sender, &frames[n % frames.len()]))
        .collect();
    let new_receiver = || {
        (
            call(&keys.s2c, &keys.c2s, 2),
            MediaSession::new(MediaConfig::default()).unwrap(),
        )
    };
    let mut receiver = new_receiver();
    let mut out = vec![0i16; FRAME_SAMPLES];
    let mut n = 0usize;
    c.bench_function("receive_path_open_jitter_decode", |b| {
        b.iter(|| {
            if n == stream.len() {
                n = 0;
                receiver = new_receiver();
            }
            let now = n as u64 * 20;
            let (call, media) = &mut receiver;
            call.handle_datagram(Target::Udp(PEER), black_box(&stream[n]), now)
                .unwrap();
            while let Some(event) = call.poll_event() {
                if let Event::Voice { number, payload } = event {
                    let _ = media.handle_frame(number, &payload, now);
                }
            }
            media.poll_audio(now + 100, &mut out).unwrap();
            n += 1;
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
