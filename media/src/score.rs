//! How well received audio matches what was sent.
//!
//! The two signals are aligned first (the call adds an unknown delay), then
//! compared twice:
//!
//! * **envelope**: Pearson correlation of the 10 ms log-energy envelopes,
//!   found at the best lag within `max_lag_ms`, then followed half-second
//!   by half-second within +-40 ms of it (a jitter buffer moves the delay
//!   by whole frames: a skip in one pause and a growth in another move it
//!   twice, and one lag for the whole call scored such a recording 0.55
//!   although every frame was there). Speech through Opus keeps its envelope (> 0.9);
//!   silence, noise, another utterance or frames cut out of it do not.
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
/// How far the envelope's delay may move from its best lag.
const ENVELOPE_FOLLOW_MS: usize = 40;
/// How far ahead of the sent signal the received one may be, in ms (five
/// lost 20 ms frames at the start of a call).
pub const LEAD_MS: usize = 100;
const RATE: usize = 48_000;
const DECIMATE: usize = 6; // 48 kHz -> 8 kHz

/// The conference tests' tones: one per participant, a whole number of
/// cycles per 20 ms frame each, inside the wideband voice band.
pub const CONFERENCE_TONES_HZ: [f64; 5] = [300.0, 500.0, 700.0, 1_100.0, 1_700.0];
/// Their amplitude at the source.
pub const CONFERENCE_TONE_AMPLITUDE: f64 = 5_000.0;
/// A tone a participant hears is above this (of 5,000 at the source: each
/// Opus pass keeps most of it; media/tests/conference.rs).
pub const TONE_HEARD_MIN: f64 = 2_000.0;
/// A tone a participant must not hear (its own) stays below this.
pub const TONE_ABSENT_MAX: f64 = 250.0;

/// `seconds` of the `hz` tone at [`CONFERENCE_TONE_AMPLITUDE`], 48 kHz,
/// starting `from_sample` samples into it.
pub fn conference_tone(hz: f64, from_sample: usize, samples: usize) -> Vec<i16> {
    (from_sample..from_sample + samples)
        .map(|n| {
            let t = n as f64 / RATE as f64;
            (CONFERENCE_TONE_AMPLITUDE * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// The amplitude of the `hz` component of `x` (48 kHz): its correlation
/// with a sine and a cosine of that frequency, whatever the phase (so
/// whatever delay the path added).
pub fn tone_amplitude(x: &[i16], hz: f64) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    let (mut s, mut c) = (0.0, 0.0);
    for (n, &v) in x.iter().enumerate() {
        let w = 2.0 * std::f64::consts::PI * hz * n as f64 / RATE as f64;
        s += f64::from(v) * w.sin();
        c += f64::from(v) * w.cos();
    }
    2.0 * (s * s + c * c).sqrt() / x.len() as f64
}

/// Frames (20 ms) of `audio` in which the `hz` tone is heard (above
/// [`TONE_HEARD_MIN`]).
pub fn tone_frames(audio: &[i16], hz: f64) -> Vec<bool> {
    audio
        .chunks_exact(crate::FRAME_SAMPLES)
        .map(|f| tone_amplitude(f, hz) > TONE_HEARD_MIN)
        .collect()
}

/// The longest run of `false` between the first and the last `true` of
/// `frames` (20 ms each), in ms; `None` if no frame is `true`.
pub fn longest_gap_ms(frames: &[bool]) -> Option<usize> {
    let first = frames.iter().position(|&f| f)?;
    let last = frames.iter().rposition(|&f| f)?;
    let mut longest = 0;
    let mut run = 0;
    for &f in &frames[first..=last] {
        run = if f { 0 } else { run + 1 };
        longest = longest.max(run);
    }
    Some(longest * crate::FRAME_MS as usize)
}

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
    let (env_lag, _) = best_lag(&env_sent, &env_recv, 0, max_lag);
    let env_corr = followed(
        &env_sent,
        &env_recv,
        env_lag,
        ENVELOPE_FOLLOW_MS / ENVELOPE_MS,
        500 / ENVELOPE_MS,
    );

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

/// Where in `received` the part of `sent` at `start..start + seg.len()`
/// matches best, searching `start + centre +- spread`, and how well; `None`
/// when the recording does not cover that whole search (a call may end
/// before the sample does: only what both have is compared).
fn segment_lag(
    seg: &[f64],
    received: &[f64],
    start: usize,
    centre: usize,
    spread: usize,
) -> Option<(usize, f64)> {
    if start + centre + spread + seg.len() > received.len() {
        return None;
    }
    let lo = start + centre.saturating_sub(spread);
    let hi = start + centre + spread;
    Some(
        (lo..=hi)
            .map(|at| (at, pearson(seg, &received[at..at + seg.len()])))
            .fold(
                (lo, f64::MIN),
                |best, cur| if cur.1 > best.1 { cur } else { best },
            ),
    )
}

/// Pearson correlation of `sent` with `received` where each `segment` of
/// `sent` is put at its own best lag within `centre +- spread`
/// ([`segment_lag`]): one correlation over all the aligned pairs, so a
/// segment of silence counts as much as it lasts.
fn followed(sent: &[f64], received: &[f64], centre: usize, spread: usize, segment: usize) -> f64 {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for start in (0..sent.len()).step_by(segment.max(1)) {
        let seg = &sent[start..(start + segment).min(sent.len())];
        if seg.len() < segment / 2 {
            continue;
        }
        // A segment that is one value (silence) has no best lag: keep the
        // global one.
        let at = match segment_lag(seg, received, start, centre, spread) {
            Some((at, corr)) if corr > 0.0 => at,
            Some(_) => start + centre,
            None => continue,
        };
        a.extend_from_slice(seg);
        b.extend_from_slice(&received[at..at + seg.len()]);
    }
    pearson(&a, &b)
}

/// Energy-weighted mean of per-segment best correlations (lags within
/// `centre +- spread`, in decimated samples).
fn segmental(sent: &[f64], received: &[f64], centre: usize, spread: usize, segment: usize) -> f64 {
    let (mut weighted, mut total) = (0.0, 0.0);
    for start in (0..sent.len()).step_by(segment.max(1)) {
        let seg = &sent[start..(start + segment).min(sent.len())];
        let energy: f64 = seg.iter().map(|x| x * x).sum();
        if seg.len() < segment / 2 || energy <= f64::EPSILON {
            continue;
        }
        let Some((_, corr)) = segment_lag(seg, received, start, centre, spread) else {
            continue;
        };
        weighted += corr.max(0.0) * energy;
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

/// Pearson correlation of two signals at zero lag (the shorter length),
/// -1..1; 0 when either has no variance. Also how the conference tests tell
/// which sources a mix contains.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
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

    #[test]
    fn a_tone_gap_is_measured_between_its_first_and_last_frame() {
        let hz = CONFERENCE_TONES_HZ[1];
        let frame = crate::FRAME_SAMPLES;
        // 10 frames of silence, 20 of tone, 7 of silence, 5 of tone, silence.
        let mut audio = vec![0i16; 10 * frame];
        audio.extend(conference_tone(hz, 0, 20 * frame));
        audio.extend(vec![0i16; 7 * frame]);
        audio.extend(conference_tone(hz, 0, 5 * frame));
        audio.extend(vec![0i16; 30 * frame]);
        let frames = tone_frames(&audio, hz);
        assert_eq!(frames.iter().filter(|&&f| f).count(), 25);
        assert_eq!(longest_gap_ms(&frames), Some(7 * 20));
        // Another tone is not this one.
        assert_eq!(
            longest_gap_ms(&tone_frames(&audio, CONFERENCE_TONES_HZ[0])),
            None
        );
    }

    /// A speech-like test signal: tone bursts of varying pitch and loudness.
    fn bursts(seed: u64) -> Vec<i16> {
        burst_parts(seed)
            .into_iter()
            .flat_map(|(burst, pause)| burst.into_iter().chain(std::iter::repeat_n(0, pause)))
            .collect()
    }

    /// [`bursts`] as (tone burst, length of the pause after it).
    fn burst_parts(seed: u64) -> Vec<(Vec<i16>, usize)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..20)
            .map(|_| {
                let hz: f64 = rng.gen_range(120.0..400.0);
                let amp: f64 = rng.gen_range(2000.0..12000.0);
                let len = rng.gen_range(2400..9600);
                let burst = (0..len)
                    .map(|i| {
                        (amp * (i as f64 * hz * 2.0 * std::f64::consts::PI / 48_000.0).sin()) as i16
                    })
                    .collect();
                (burst, rng.gen_range(1000..5000))
            })
            .collect()
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
    fn a_delay_moved_twice_in_the_pauses_keeps_the_envelope() {
        // The jitter buffer skipped a frame in one pause (-20 ms) and grew
        // by two in a later one (+40 ms): every frame is there, at three
        // delays; one lag for the whole recording scores this 0.70 (a lab
        // call 0.55), followed it scores 0.95.
        let sent = bursts(3);
        let mut received = vec![0i16; 4800];
        for (i, (burst, pause)) in burst_parts(3).into_iter().enumerate() {
            received.extend(&burst);
            let pause = match i {
                6 => pause.saturating_sub(960),
                13 => pause + 2 * 960,
                _ => pause,
            };
            received.extend(std::iter::repeat_n(0i16, pause));
        }
        let score = compare(&sent, &received, 500);
        assert!(score.envelope > 0.93, "{score:?}");
        assert!(score.waveform > 0.8, "{score:?}");
    }

    #[test]
    fn frames_cut_out_all_along_still_lower_the_envelope() {
        // Following the delay must not hide lost audio: one 20 ms frame in
        // ten cut out all along (skips during speech) scores far under the
        // call tests' 0.85 (0.41 here).
        let sent = bursts(3);
        let mut received = vec![0i16; 4800];
        for (i, frame) in sent.chunks(960).enumerate() {
            if i % 10 != 9 {
                received.extend(frame);
            }
        }
        let score = compare(&sent, &received, 500);
        assert!(score.envelope < 0.85, "{score:?}");
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
