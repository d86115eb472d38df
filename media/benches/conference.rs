//! What hosting a conference costs: host CPU per 20 ms frame for 2 (a plain
//! call, for reference) to 5 parties, and how many conferences of each size
//! one core can host.
//!
//! Per frame the host decodes one frame from each of the `n - 1` legs (Opus
//! with the decoder settings calls use: complexity 10, NoLACE and deep PLC),
//! mixes mix-minus with its own microphone ([`natter_media::mix::Mixer`]),
//! and encodes one stream per leg (18 kb/s CBR, FEC on, as every call);
//! its own mix is played locally (not encoded). Each leg carries a
//! different speech-like voice (a harmonic series with a moving pitch).
//! SoM sealing and opening (a few microseconds a datagram:
//! `cargo bench -p natter-proto --bench som`) are not included.
//!
//! The figure is the CPU time of the bench thread (Linux
//! `/proc/thread-self/schedstat`; wall time where that is missing), so other
//! load on the machine slows the run down but barely moves it; the wall time
//! is printed next to it.
//!
//! `cargo bench -p natter-media --bench conference` (`NATTER_CONF_FRAMES`:
//! frames measured per size, 1,500 = 30 s of audio by default;
//! `NATTER_CONF_DECODER_COMPLEXITY=0` for the plain decoder, to compare).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use natter_media::FRAME_SAMPLES;
use natter_media::codec::{CodecConfig, Decoder, Encoder, MAX_PACKET};
use natter_media::mix::{MAX_LEGS, Mixer};

/// Speech-like voiced frames of one talker (`f0` Hz base pitch).
fn voice(f0: f64, frames: usize) -> Vec<[i16; FRAME_SAMPLES]> {
    (0..frames)
        .map(|k| {
            std::array::from_fn(|i| {
                let n = k * FRAME_SAMPLES + i;
                let t = n as f64 / 48_000.0;
                let pitch = f0 + 0.2 * f0 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
                // Syllables: on for 200 ms, quieter for 100 ms.
                let env = if (n / 4_800) % 3 == 2 { 0.15 } else { 1.0 };
                let v: f64 = (1..12)
                    .map(|h| (2.0 * std::f64::consts::PI * pitch * h as f64 * t).sin() / h as f64)
                    .sum();
                (env * 5_000.0 * v) as i16
            })
        })
        .collect()
}

/// Nanoseconds of CPU this thread has used.
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

struct Host {
    mixer: Mixer,
    decoders: Vec<Decoder>,
    encoders: Vec<Encoder>,
    /// Each leg's packets, as its talker's client encoded them.
    streams: Vec<Vec<Vec<u8>>>,
    mic: Vec<[i16; FRAME_SAMPLES]>,
    out: [u8; MAX_PACKET],
}

impl Host {
    fn new(parties: usize, frames: usize, config: CodecConfig) -> Self {
        let legs = parties - 1;
        let streams = (0..legs)
            .map(|leg| {
                let mut encoder = Encoder::new(config).unwrap();
                let mut buf = [0u8; MAX_PACKET];
                voice(110.0 + 35.0 * leg as f64, frames)
                    .iter()
                    .map(|pcm| {
                        let n = encoder.encode(pcm, &mut buf).unwrap();
                        buf[..n].to_vec()
                    })
                    .collect()
            })
            .collect();
        Host {
            mixer: Mixer::new(parties).unwrap(),
            decoders: (0..legs)
                .map(|_| Decoder::new(config.decoder_complexity).unwrap())
                .collect(),
            encoders: (0..legs).map(|_| Encoder::new(config).unwrap()).collect(),
            streams,
            mic: voice(260.0, 50),
            out: [0; MAX_PACKET],
        }
    }

    /// One 20 ms frame of hosting: decode every leg, mix, encode per leg.
    fn frame(&mut self, k: usize) -> usize {
        let mut bytes = 0;
        *self.mixer.input(0).unwrap() = self.mic[k % self.mic.len()];
        for (leg, decoder) in self.decoders.iter_mut().enumerate() {
            let stream = &self.streams[leg];
            let input = self.mixer.input(leg + 1).unwrap();
            decoder.decode(&stream[k % stream.len()], input).unwrap();
        }
        self.mixer.mix();
        black_box(self.mixer.output(0).unwrap());
        for (leg, encoder) in self.encoders.iter_mut().enumerate() {
            let pcm = self.mixer.output(leg + 1).unwrap();
            bytes += encoder.encode(pcm, &mut self.out).unwrap();
        }
        black_box(bytes)
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs it briefly.
    let quick = std::env::args().any(|a| a == "--test");
    let frames: usize = std::env::var("NATTER_CONF_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20 } else { 1_500 });
    let mut config = CodecConfig::default();
    if let Some(c) = std::env::var("NATTER_CONF_DECODER_COMPLEXITY")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.decoder_complexity = c;
    }
    println!(
        "conference host, per 20 ms frame ({frames} frames each; decoder complexity {}, {} b/s CBR):",
        config.decoder_complexity, config.bitrate
    );
    println!(
        "{:>7} {:>4} {:>13} {:>13} {:>13} {:>12} {:>11} {:>9}",
        "parties",
        "legs",
        "cpu ms/frame",
        "wall ms/frame",
        "p99 wall ms",
        "core % each",
        "per core",
        "parties"
    );
    for parties in 2..=MAX_LEGS {
        let mut host = Host::new(parties, 250, config);
        for k in 0..50 {
            host.frame(k);
        }
        let mut walls = Vec::with_capacity(frames);
        let cpu0 = thread_cpu_ns();
        let wall0 = Instant::now();
        for k in 0..frames {
            let t = Instant::now();
            host.frame(k);
            walls.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let wall = wall0.elapsed().as_secs_f64() * 1e3 / frames as f64;
        let cpu = match (cpu0, thread_cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e6 / frames as f64,
            _ => wall,
        };
        walls.sort_by(f64::total_cmp);
        let p99 = walls[(walls.len() * 99 / 100).min(walls.len() - 1)];
        // A conference needs its frame done every 20 ms.
        let per_core = (20.0 / cpu).floor() as u64;
        println!(
            "{parties:>7} {:>4} {cpu:>13.3} {wall:>13.3} {p99:>13.3} {:>11.1}% {per_core:>11} {:>9}",
            parties - 1,
            cpu / 20.0 * 100.0,
            per_core * parties as u64,
        );
    }
}
