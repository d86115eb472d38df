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
use natter_media::session::{MediaConfig, MediaSession};
use natter_proto::handshake::KeySchedule;

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
    let keys = KeySchedule::derive(&[1; 16], &[2; 32], &[3; 32], &[4; 32]);
    let frames: Vec<Vec<i16>> = (0..50).map(frame).collect();

    let mut sender = MediaSession::new(&keys.c2s, &keys.s2c, 1, 1, MediaConfig::default()).unwrap();
    let mut datagram = Vec::new();
    sender.poll_transmit(&frames[0], &mut datagram).unwrap();
    println!("voice datagram UDP payload: {} bytes", datagram.len());

    let mut i = 0;
    c.bench_function("send_path_encode_and_seal", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            sender
                .poll_transmit(black_box(&frames[i]), &mut datagram)
                .unwrap();
        })
    });

    // Pre-build a long stream so every receive sees a new, in-order datagram.
    let mut sender = MediaSession::new(&keys.c2s, &keys.s2c, 1, 1, MediaConfig::default()).unwrap();
    let stream: Vec<Vec<u8>> = (0..20_000)
        .map(|n| {
            let mut d = Vec::new();
            sender
                .poll_transmit(&frames[n % frames.len()], &mut d)
                .unwrap();
            d
        })
        .collect();
    let new_receiver =
        || MediaSession::new(&keys.s2c, &keys.c2s, 1, 2, MediaConfig::default()).unwrap();
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
            let _ = receiver.handle_datagram(black_box(&stream[n]), now);
            receiver.poll_audio(now + 100, &mut out).unwrap();
            n += 1;
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
