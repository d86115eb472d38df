//! PCM sample conversions shared by WAV files and sound-card streams:
//! float ↔ 16-bit and the downmix of interleaved channels to mono.

use cpal::{FromSample, Sample};

/// A float sample in -1..1 as 16-bit PCM, clipped.
pub fn f32_to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// A 16-bit PCM sample as a float in -1..1.
pub fn i16_to_f32(x: i16) -> f32 {
    f32::from(x) / 32768.0
}

/// Appends the mean of each interleaved frame of `channels` samples (any
/// sample format) to `mono`. A trailing partial frame is ignored.
pub fn downmix<S>(interleaved: &[S], channels: usize, mono: &mut Vec<f32>)
where
    S: Sample,
    f32: FromSample<S>,
{
    let channels = channels.max(1);
    mono.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().map(|s| s.to_sample::<f32>()).sum::<f32>() / channels as f32),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_clip_and_round_trip() {
        assert_eq!(f32_to_i16(2.0), 32767);
        assert_eq!(f32_to_i16(-2.0), -32767);
        assert_eq!(f32_to_i16(0.5), 16384);
        for s in [-32768i16, -1, 0, 1, 12345, 32767] {
            assert!((i32::from(f32_to_i16(i16_to_f32(s))) - i32::from(s)).abs() <= 1);
        }
    }

    #[test]
    fn downmix_averages_frames_of_any_format() {
        let mut mono = Vec::new();
        downmix(&[0.5f32, -0.5, 1.0, 0.0, 0.25], 2, &mut mono);
        assert_eq!(mono, [0.0, 0.5], "partial frame ignored");
        mono.clear();
        downmix(&[32768u16 + 16384; 6], 3, &mut mono);
        assert_eq!(mono, [0.5, 0.5]);
    }
}
