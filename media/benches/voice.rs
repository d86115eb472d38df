//! Per-frame cost of the voice path at the default settings (18 kb/s CBR,
//! FEC on): the send path (Opus encode + SoM frame + AES-256-GCM seal) and the
//! receive path (open + jitter buffer + Opus decode), the latter with the
//! neural decoder features on (decoder complexity 10: NoLACE on every frame,
//! deep PLC for lost ones) and off (complexity 0), with no loss and with
//! every fifth frame lost. Also prints the UDP payload size of a voice
//! datagram.
//!
//! `cargo bench -p natter-media --bench voice`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use natter_media::FRAME_SAMPLES;
use natter_media::codec::CodecConfig;
use natter_media::loopback::{CALLER, Loopback};
use natter_media::session::MediaConfig;
use natter_proto::path::Target;
use natter_proto::session::Event;

fn frame(i: usize) -> Vec<i16> {
    (0..FRAME_SAMPLES)
        .map(|n| {
            let t = (i * FRAME_SAMPLES + n) as f64 / 48_000.0;
            (4000.0 * (2.0 * std::f64::consts::PI * 180.0 * t).sin()
                + 1500.0 * (2.0 * std::f64::consts::PI * 540.0 * t).sin()) as i16
        })
        .collect()
}

fn with_complexity(decoder_complexity: u8) -> MediaConfig {
    MediaConfig {
        codec: CodecConfig {
            decoder_complexity,
            ..CodecConfig::default()
        },
        ..MediaConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let frames: Vec<Vec<i16>> = (0..50).map(frame).collect();
    let mut sink = vec![0i16; FRAME_SAMPLES];

    // Send path: encode and seal one frame (the callee never hears it).
    let mut link = Loopback::new(MediaConfig::default(), MediaConfig::default(), false).unwrap();
    let mut size = 0;
    link.tick(
        &frames[0],
        |d| {
            size = d.len();
            false
        },
        &mut sink,
    )
    .unwrap();
    println!("voice datagram UDP payload: {size} bytes");
    let mut i = 0;
    c.bench_function("send_path_encode_and_seal", |b| {
        b.iter(|| {
            i = (i + 1) % frames.len();
            let now = link.now_ms();
            let side = &mut link.caller;
            let payload = side.media.encode(black_box(&frames[i])).unwrap();
            side.call.send_voice(payload, now).unwrap();
            black_box(side.call.poll_transmit());
        })
    });

    // Pre-build a long stream so every receive sees a new, in-order datagram.
    let mut link = Loopback::new(MediaConfig::default(), MediaConfig::default(), false).unwrap();
    let mut stream: Vec<Vec<u8>> = Vec::with_capacity(20_000);
    for n in 0..20_000 {
        link.tick(
            &frames[n % frames.len()],
            |d| {
                stream.push(d.clone());
                false
            },
            &mut sink,
        )
        .unwrap();
    }
    for (name, complexity, lose_every) in [
        ("receive_path_open_jitter_decode_neural", 10, 0),
        ("receive_path_open_jitter_decode_plain", 0, 0),
        ("receive_path_20pct_loss_neural", 10, 5),
        ("receive_path_20pct_loss_plain", 0, 5),
    ] {
        let new_receiver =
            || Loopback::new(MediaConfig::default(), with_complexity(complexity), false).unwrap();
        let mut receiver = new_receiver();
        let mut out = vec![0i16; FRAME_SAMPLES];
        let mut n = 0usize;
        c.bench_function(name, |b| {
            b.iter(|| {
                if n == stream.len() {
                    n = 0;
                    receiver = new_receiver();
                }
                let now = n as u64 * 20;
                let side = &mut receiver.callee;
                if lose_every == 0 || n % lose_every != 3 {
                    side.call
                        .handle_datagram(Target::Udp(CALLER), black_box(&stream[n]), now)
                        .unwrap();
                }
                while let Some(event) = side.call.poll_event() {
                    if let Event::Voice { number, payload } = event {
                        let _ = side.media.handle_frame(number, &payload, now);
                    }
                }
                side.media.poll_audio(now + 100, &mut out).unwrap();
                n += 1;
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
