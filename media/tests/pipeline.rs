//! Two call sides (proto call session + media session) wired back to back in memory, with a virtual 20 ms clock:
//! audio quality, loss recovery, packet size and rate, and bad datagrams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_media::emodel;
use natter_media::loopback::Loopback;
use natter_media::session::{MediaConfig, MediaStats};
use natter_media::{FRAME_SAMPLES, score};
use natter_proto::session::SessionStats;
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

struct Run {
    received: Vec<i16>,
    sender: SessionStats,
    receiver: SessionStats,
    receiver_media: MediaStats,
    max_datagram: usize,
    min_datagram: usize,
    datagrams: usize,
}

/// Streams `input` from caller to callee; `loss` is the fraction dropped;
/// `mangle` may alter each datagram in flight.
fn run(input: &[i16], loss: f64, wrong_key: bool, mangle: impl Fn(usize, &mut Vec<u8>)) -> Run {
    let config = MediaConfig::default();
    let mut link = Loopback::new(config, config, wrong_key).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut received = Vec::new();
    let mut frame = vec![0i16; FRAME_SAMPLES];
    let (mut max_datagram, mut min_datagram, mut datagrams) = (0, usize::MAX, 0);
    let frames = input.len() / FRAME_SAMPLES;
    // Run 10 frames past the end so the jitter buffer drains.
    for tick in 0..frames + 10 {
        let start = (tick * FRAME_SAMPLES).min(input.len());
        let mut pcm = input[start..(start + FRAME_SAMPLES).min(input.len())].to_vec();
        pcm.resize(FRAME_SAMPLES, 0);
        let t = link
            .tick(
                &pcm,
                |datagram| {
                    min_datagram = min_datagram.min(datagram.len());
                    mangle(tick, datagram);
                    rng.gen_bool(1.0 - loss)
                },
                &mut frame,
            )
            .unwrap();
        max_datagram = max_datagram.max(t.max_datagram);
        datagrams += t.sent;
        if t.played {
            received.extend_from_slice(&frame);
        }
    }
    assert!(
        link.callee.call.poll_transmit().is_none(),
        "the callee only listens"
    );
    Run {
        received,
        sender: link.caller.call.stats(),
        receiver: link.callee.call.stats(),
        receiver_media: link.callee.media.stats(),
        max_datagram,
        min_datagram,
        datagrams,
    }
}

#[test]
fn clean_channel_audio_matches_and_packets_are_66_bytes() {
    let input = speech_like(1);
    let r = run(&input, 0.0, false, |_, _| {});
    let s = score::compare(&input, &r.received, 500);
    assert!(s.envelope > 0.9, "{s:?}");
    assert!(s.waveform > 0.6, "{s:?}");
    // 3 header + 2 frame number + 45 Opus (18 kb/s CBR) + 16 tag, every
    // one: within Skype's 67 bytes, and sizes do not follow speech.
    assert_eq!(
        (r.min_datagram, r.max_datagram),
        (66, 66),
        "voice datagrams of {}..={} bytes",
        r.min_datagram,
        r.max_datagram
    );
    assert_eq!(r.receiver_media.jitter.concealed, 0);
    // The E-model's estimate: no loss, delay = frame + look-ahead + RTT/2 +
    // jitter buffer; the MOS is Opus's own impairment at that delay.
    let q = r.receiver_media.quality(Some(40));
    assert_eq!((q.loss_percent, q.burst_ratio), (0.0, 1.0));
    let delay = 20.0 + 6.5 + 20.0 + f64::from(r.receiver_media.jitter_buffer_delay_ms);
    assert_eq!(q.delay_ms, delay);
    let expected = emodel::estimate(
        emodel::OPUS_18K_WB,
        emodel::Conditions {
            delay_ms: delay,
            loss_percent: 0.0,
            burst_ratio: 1.0,
        },
    );
    assert_eq!(q.mos, expected);
    assert!((3.5..4.0).contains(&q.mos), "{q:?}");
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
    // The report's loss is what the listener missed, about the 5 % dropped,
    // and the estimate falls below a clean call's.
    let q = r.receiver_media.quality(Some(40));
    assert!((2.5..8.0).contains(&q.loss_percent), "{q:?}");
    let clean = run(&input, 0.0, false, |_, _| {})
        .receiver_media
        .quality(Some(40));
    assert!(q.mos < clean.mos - 0.3, "{q:?} vs {clean:?}");
}

/// Losses in bursts raise the G.107 burst ratio above 1 and cost more MOS
/// than the same number of single losses.
#[test]
fn bursty_loss_is_seen_as_bursty() {
    let input = speech_like(1);
    // 4 frames of every 80 lost (an empty datagram is dropped as
    // malformed): one every 20 frames, or 4 in a row.
    let frames_lost = |burst: usize| {
        move |tick: usize, d: &mut Vec<u8>| {
            if (40..40 + burst).contains(&(tick % 80)) {
                d.clear();
            }
        }
    };
    let single = run(&input, 0.0, false, |tick, d| {
        if tick % 20 == 7 {
            d.clear();
        }
    });
    let burst = run(&input, 0.0, false, frames_lost(4));
    let (qs, qb) = (
        single.receiver_media.quality(None),
        burst.receiver_media.quality(None),
    );
    assert!(
        (qs.loss_percent - qb.loss_percent).abs() < 1.0,
        "{qs:?} {qb:?}"
    );
    assert!(qs.burst_ratio < 1.1, "{qs:?}");
    assert!(qb.burst_ratio > 3.0, "{qb:?}");
    assert!(qb.mos < qs.mos, "{qs:?} {qb:?}");
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
    assert_eq!(
        r.receiver_media.quality(Some(40)).mos,
        0.0,
        "no estimate of nothing"
    );
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
