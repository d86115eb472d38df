//! SoM framing + AES-256-GCM: cost of sealing and opening one voice datagram
//! (61 bytes: 3 header + 2 frame number + 40 payload + 16 tag; voice at 18 kb/s
//! is 45 bytes of Opus, 66 in all). Target: < 1 us each.
//!
//! `cargo bench -p natter-proto --bench som`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use natter_proto::handshake::DirectionKeys;
use natter_proto::media::{Opener, Sealer};
use natter_proto::replay::ReplayWindow;
use natter_proto::som::{Function, Header};

const PAYLOAD: [u8; 42] = [0x5a; 42];

fn keys() -> DirectionKeys {
    DirectionKeys {
        key: [7; 32],
        iv: [9; 12],
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("som");
    group.throughput(Throughput::Elements(1));

    let mut sealer = Sealer::new(&keys(), 1);
    let mut out = Vec::with_capacity(128);
    group.bench_function("seal_voice_datagram", |b| {
        b.iter(|| {
            out.clear();
            sealer
                .seal(Function::Data, 3, black_box(&PAYLOAD), &mut out)
                .expect("seal");
        })
    });

    // Pre-seal a long run so each open sees a fresh index, as on a real call.
    let mut sealer = Sealer::new(&keys(), 1);
    let datagrams: Vec<Vec<u8>> = (0..200_000)
        .map(|_| {
            let mut d = Vec::new();
            sealer
                .seal(Function::Data, 3, &PAYLOAD, &mut d)
                .expect("seal");
            d
        })
        .collect();
    let mut opener = Opener::new(&keys());
    let mut next = datagrams.iter().cycle();
    let mut plain = Vec::with_capacity(128);
    group.bench_function("open_voice_datagram", |b| {
        b.iter(|| {
            let d = next.next().expect("cycle");
            // After a full cycle the indices repeat: a fresh opener keeps
            // measuring the accept path rather than the replay drop.
            if opener.open(black_box(d), &mut plain).is_err() {
                opener = Opener::new(&keys());
            }
        })
    });

    group.bench_function("header_decode", |b| {
        let d = &datagrams[0];
        b.iter(|| Header::decode(black_box(d)).expect("header"))
    });

    group.bench_function("index_estimate_and_check", |b| {
        let mut window = ReplayWindow::new();
        window.accept(70_000);
        b.iter(|| {
            let i = window.estimate(black_box(4470)).expect("estimate");
            window.check(i)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
