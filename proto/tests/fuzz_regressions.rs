//! Inputs found by the fuzz targets of `fuzz/` (docs/SECURITY.md, "Fuzzing"),
//! each kept as the smallest test that failed before its fix.

#![allow(clippy::unwrap_used)]

use natter_proto::jitter::{JitterBuffer, JitterConfig, Playout};

/// fuzz target `jitter`: frames a peer sent before playout started, far
/// ahead of the first one, stayed in the buffer beside the `capacity`
/// frames of the playout window (up to twice the capacity), and counted as
/// "too much buffered", so every frame that then arrived on time was skipped.
#[test]
fn frames_beyond_the_window_when_playout_starts_are_dropped() {
    let config = JitterConfig::default();
    let mut jb = JitterBuffer::new(config);
    jb.handle_frame(0, vec![0], 0).unwrap();
    // Before playout there is no window yet: these are accepted...
    let far = config.capacity as u16 - 1;
    for i in 0..far {
        jb.handle_frame(1000 + i, vec![0xee], 0).unwrap();
    }
    assert_eq!(jb.depth(), config.capacity);
    // ...and playout starts at frame 0: the window is 1..=capacity from here.
    assert_eq!(jb.poll_playout(1_000), Some(Playout::Frame(vec![0])));
    for n in 1..=(config.capacity as u16) {
        jb.handle_frame(n, vec![n as u8], 1_000 + u64::from(n) * 20)
            .unwrap();
        assert!(jb.depth() <= config.capacity, "{} frames held", jb.depth());
        assert_eq!(
            jb.poll_playout(1_000 + u64::from(n) * 20),
            Some(Playout::Frame(vec![n as u8])),
            "frame {n} arrived in time and was not played"
        );
    }
}

/// Found by the `stun` fuzz target: an ERROR-CODE with number 250 decoded as
/// code 850 and encoded back as 50, so decoding was not canonical. A class
/// outside 3..=6 or a number over 99 is now a malformed attribute.
#[test]
fn an_error_code_out_of_range_is_malformed() {
    use natter_proto::stun::{Message, StunError};
    let data: &[u8] = &[
        1, 1, 0, 60, 33, 18, 164, 66, 183, 231, 167, 1, 188, 52, 214, 134, 250, 135, 223, 174, 128,
        34, 0, 11, 116, 101, 115, 116, 32, 118, 101, 99, 116, 111, 114, 32, 0, 32, 0, 8, 0, 1, 161,
        71, 225, 18, 166, 67, 0, 9, 0, 20, 43, 145, 134, 250, 135, 223, 174, 128, 34, 0, 11, 116,
        101, 115, 116, 32, 118, 101, 99, 215, 37, 40, 0, 4, 192, 125, 76, 150,
    ];
    assert_eq!(Message::decode(data), Err(StunError::BadAttribute(0x0009)));
    // Every valid code still round-trips.
    for code in [300, 420, 487, 500, 699] {
        let mut m = Message::request([7; 12]);
        m.error_code = Some(code);
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }
}
