//! How well received audio matches what was sent.
//!
//! The two signals are aligned first (the call adds an unknown delay), then
//! compared twice:
//!
//! * **envelope**: Pearson correlation of the 10 ms log-energy envelopes at the
//!   best lag within `max_lag_ms`. Speech through Opus keeps its envelope
//!   (> 0.9); silence, noise or another utterance do not.
//! * **waveform**: Pearson correlation of the 8 kHz-decimated waveforms,
//!   segment by segment: each second of speech gets its own best lag within
//!   +-45 ms of the envelope lag (an adaptive jitter buffer moves the delay by
//!   whole 20 ms frames during a call), and the segments' correlations are
//!   averaged, weighted by their energy. Garbage decrypted with a wrong key,
//!   or silence, scores near 0.
//!
//! Delays from `-LEAD_MS` to `max_lag_ms` are searched: a receiver plays
//! from the first frame it gets, so a recording whose first frames were lost
//! starts that many frames *early* (a negative delay) although every later
//! frame is in place.
//!
//! Both are 0 when either signal has no variance (silence).

/// The match between a sent and a received signal (48 kHz).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Delay of `received` relative to `sent`, in ms.
    pub lag_ms: f64,
    /// Envelope correlation, -1..1.
    pub envelope: f64,
    /// Waveform correlation at the best lag, -1..1.
    pub waveform: f64,
}

const ENVELOPE_MS: usize = 10;
/// How far ahead of the sent signal the received one may be, in ms (five
/// lost 20 ms frames at the start of a call).
pub const LEAD_MS: usize = 100;
const RATE: usize = 48_000;
const DECIMATE: usize = 6; // 48 kHz -> 8 kHz

/// Compares `received` with `sent`, searching delays of
/// -[`LEAD_MS`]..=`max_lag_ms`.
pub fn compare(sent: &[i16], received: &[i16], max_lag_ms: u32) -> Score {
    // Leading silence turns a negative delay into a positive one.
    let lead = RATE * LEAD_MS / 1000;
    let mut padded = vec![0i16; lead];
    padded.extend_from_slice(received);
    let score = compare_from_zero(sent, &padded, max_lag_ms + LEAD_MS as u32);
    Score {
        lag_ms: score.lag_ms - LEAD_MS as f64,
        ..score
    }
}

/// [`compare`] for delays of 0..=`max_lag_ms` only.
fn compare_from_zero(sent: &[i16], received: &[i16], max_lag_ms: u32) -> Score {
    let win = RATE * ENVELOPE_MS / 1000;
    let env_sent = envelope(sent, win);
    let env_recv = envelope(received, win);
    let max_lag = max_lag_ms as usize / ENVELOPE_MS;
    let (env_lag, env_corr) = best_lag(&env_sent, &env_recv, 0, max_lag);

    let dec_sent = decimate(sent);
    let dec_recv = decimate(received);
    let per_ms = RATE / DECIMATE / 1000;
    let centre = env_lag * ENVELOPE_MS * per_ms;
    let (fine_lag, _) = best_lag(
        &dec_sent,
        &dec_recv,
        centre.saturating_sub(5 * per_ms),
        centre + 5 * per_ms,
    );
    Score {
        lag_ms: fine_lag as f64 / per_ms as f64,
        envelope: env_corr,
        waveform: segmental(&dec_sent, &dec_recv, centre, 45 * per_ms, 1000 * per_ms),
    }
}

/// Energy-weighted mean of per-segment best correlations (lags within
/// `centre +- spread`, in decimated samples).
fn segmental(sent: &[f64], received: &[f64], centre: usize, spread: usize, segment: usize) -> f64 {
    let (mut weighted, mut total) = (0.0, 0.0);
    for start in (0..sent.len()).step_by(segment.max(1)) {
        let seg = &sent[start..(start + segment).min(sent.len())];
        let energy: f64 = seg.iter().map(|x| x * x).sum();
        // Only what the recording covers is compared (a call may end
        // before the sample does), as the envelope comparison does.
        let covered = start + centre + spread + seg.len() <= received.len();
        if seg.len() < segment / 2 || energy <= f64::EPSILON || !covered {
            continue;
        }
        let lo = start + centre.saturating_sub(spread);
        let hi = start + centre + spread;
        let best = (lo..=hi)
            .filter(|&at| at + seg.len() <= received.len())
            .map(|at| pearson(seg, &received[at..at + seg.len()]))
            .fold(0.0f64, f64::max);
        weighted += best * energy;
        total += energy;
    }
    if total <= f64::EPSILON {
        0.0
    } else {
        weighted / total
    }
}

fn envelope(samples: &[i16], win: usize) -> Vec<f64> {
    samples
        .chunks(win)
        .map(|c| {
            let energy =
                c.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / c.len() as f64;
            (energy + 1.0).ln()
        })
        .collect()
}

fn decimate(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks(DECIMATE)
        .map(|c| c.iter().map(|&s| f64::from(s)).sum::<f64>() / c.len() as f64)
        .collect()
}

/// The lag in `lo..=hi` (samples of `b` after `a`) with the highest Pearson correlation.
fn best_lag(a: &[f64], b: &[f64], lo: usize, hi: usize) -> (usize, f64) {
    (lo..=hi)
        .filter(|&lag| lag < b.len())
        .map(|lag| {
            let n = a.len().min(b.len() - lag);
            (lag, pearson(&a[..n], &b[lag..lag + n]))
        })
        .fold(
            (lo, 0.0),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        )
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (dx, dy) = (x - ma, y - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa <= f64::EPSILON || sbb <= f64::EPSILON {
        return 0.0;
    }
    sab / (saa.sqrt() * sbb.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A speech-like test signal: tone bursts of varying pitch and loudness.
    fn bursts(seed: u64) -> Vec<i16> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        for _ in 0..20 {
            let hz: f64 = rng.gen_range(120.0..400.0);
            let amp: f64 = rng.gen_range(2000.0..12000.0);
            let len = rng.gen_range(2400..9600);
            out.extend((0..len).map(|i| {
                (amp * (i as f64 * hz * 2.0 * std::f64::consts::PI / 48_000.0).sin()) as i16
            }));
            out.extend(std::iter::repeat_n(0i16, rng.gen_range(1000..5000)));
        }
        out
    }

    #[test]
    fn a_delayed_copy_matches_and_its_delay_is_found() {
        let sent = bursts(1);
        let mut received = vec![0i16; 4800]; // 100 ms
        received.extend(&sent);
        let score = compare(&sent, &received, 500);
        assert!(score.envelope > 0.99, "{score:?}");
        assert!(score.waveform > 0.99, "{score:?}");
        assert!((score.lag_ms - 100.0).abs() < 1.0, "{score:?}");
    }

    #[test]
    fn a_recording_shorter_than_the_sample_is_compared_where_it_exists() {
        let sent = bursts(1);
        let mut received = vec![0i16; 4800];
        received.extend(&sent[..sent.len() * 2 / 3]);
        let score = compare(&sent, &received, 500);
        assert!(score.waveform > 0.95, "{score:?}");
    }

    #[test]
    fn a_delay_that_changes_by_a_frame_mid_call_still_matches() {
        let sent = bursts(1);
        let mut received = vec![0i16; 4800];
        let half = sent.len() / 2;
        received.extend(&sent[..half]);
        received.extend(std::iter::repeat_n(0i16, 960)); // the buffer grew by a frame
        received.extend(&sent[half..]);
        let score = compare(&sent, &received, 500);
        assert!(score.waveform > 0.9, "{score:?}");
    }

    #[test]
    fn a_recording_that_lost_its_first_frames_matches_at_a_negative_delay() {
        // The first two 20 ms frames never arrived: playback starts with the
        // third, so the recording runs 40 ms ahead of what was sent (seen in
        // the 5 % loss call test, where a lost first frame failed it).
        let sent = bursts(1);
        let received = sent[2 * 960..].to_vec();
        let score = compare(&sent, &received, 500);
        assert!(score.envelope > 0.95, "{score:?}");
        assert!(score.waveform > 0.95, "{score:?}");
        assert!((score.lag_ms + 40.0).abs() < 1.0, "{score:?}");
    }

    #[test]
    fn silence_noise_and_other_audio_do_not_match() {
        let sent = bursts(1);
        let silence = vec![0i16; sent.len()];
        assert_eq!(compare(&sent, &silence, 500).waveform, 0.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let noise: Vec<i16> = (0..sent.len())
            .map(|_| rng.gen_range(-8000..8000))
            .collect();
        let s = compare(&sent, &noise, 500);
        assert!(s.waveform < 0.2 && s.envelope < 0.3, "noise {s:?}");
        let other = bursts(2);
        let s = compare(&sent, &other, 500);
        assert!(s.waveform < 0.3, "other {s:?}");
    }
}
