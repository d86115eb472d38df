//! Sample-rate conversion to Natter's 48 kHz.
//!
//! Linear interpolation, preceded when downsampling by a moving-average
//! low-pass over the decimation ratio. It is simple and adequate for speech
//! files fed to a 16 kb/s codec; a sound-card path that needs better can use a
//! polyphase resampler behind the same function.

/// Converts `input` sampled at `from` Hz to `to` Hz.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let filtered;
    let source = if from > to {
        let width = from.div_ceil(to) as usize;
        filtered = moving_average(input, width);
        &filtered
    } else {
        input
    };
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    let step = f64::from(from) / f64::from(to);
    (0..out_len)
        .map(|i| {
            let pos = i as f64 * step;
            let idx = pos as usize;
            let frac = (pos - idx as f64) as f32;
            let a = source.get(idx).copied().unwrap_or(0.0);
            let b = source.get(idx + 1).copied().unwrap_or(a);
            a + (b - a) * frac
        })
        .collect()
}

fn moving_average(input: &[f32], width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(input.len());
    let mut sum = 0.0f32;
    for i in 0..input.len() {
        sum += input[i];
        if i >= width {
            sum -= input[i - width];
        }
        out.push(sum / (i + 1).min(width) as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_signal::frequency;

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        crate::test_signal::tone(rate, hz, secs, 1.0)
    }

    #[test]
    fn keeps_pitch_and_duration_when_upsampling_and_downsampling() {
        for from in [8_000u32, 16_000, 22_050, 44_100, 96_000] {
            let input = tone(from, 440.0, 1.0);
            let out = resample(&input, from, 48_000);
            assert!(
                (out.len() as i64 - 48_000).abs() <= 1,
                "{from}: {}",
                out.len()
            );
            let f = frequency(&out, 48_000);
            assert!(
                (f - 440.0).abs() < 5.0,
                "{from} Hz input came out at {f} Hz"
            );
        }
    }

    #[test]
    fn same_rate_is_identity() {
        let input = tone(48_000, 100.0, 0.1);
        assert_eq!(resample(&input, 48_000, 48_000), input);
    }
}
