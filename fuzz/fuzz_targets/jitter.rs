//! The receiver's jitter buffer, `proto::jitter::JitterBuffer`, fed frame
//! numbers and payloads a peer chooses (they are authenticated, but the peer
//! is not trusted), at arrival times that only move forward. Total; the
//! buffer never holds more than its capacity; what is played was received.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_proto::jitter::{JitterBuffer, JitterConfig, Playout};

#[derive(Debug, Arbitrary)]
enum Op {
    Frame { number: u16, payload: Vec<u8> },
    Play { after_ms: u16 },
}

fuzz_target!(|ops: Vec<Op>| {
    let config = JitterConfig::default();
    let mut buffer = JitterBuffer::new(config);
    let mut now = 0u64;
    let mut received = std::collections::HashSet::new();
    for op in ops {
        match op {
            Op::Frame { number, payload } => {
                if buffer.handle_frame(number, payload.clone(), now).is_ok() {
                    received.insert(payload);
                }
            }
            Op::Play { after_ms } => {
                now += u64::from(after_ms);
                match buffer.poll_playout(now) {
                    Some(Playout::Frame(p) | Playout::Fec(p)) => {
                        assert!(received.contains(&p), "played a frame never received")
                    }
                    Some(Playout::Conceal) | None => {}
                }
            }
        }
        assert!(
            buffer.depth() <= config.capacity,
            "jitter buffer over capacity"
        );
    }
});
