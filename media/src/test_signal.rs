//! Test signals shared by the unit tests of this crate.

/// A sine of `hz` at `amplitude`, `secs` long.
pub fn tone(rate: u32, hz: f32, secs: f32, amplitude: f32) -> Vec<f32> {
    (0..(rate as f32 * secs) as usize)
        .map(|i| amplitude * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
        .collect()
}

/// Frequency estimate from upward zero crossings.
pub fn frequency(samples: &[f32], rate: u32) -> f32 {
    let crossings = samples
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    crossings as f32 * rate as f32 / samples.len() as f32
}

/// Uneven piece sizes covering `0..len`, like real audio callbacks.
pub fn pieces(len: usize) -> Vec<std::ops::Range<usize>> {
    let sizes = [1usize, 7, 441, 512, 13, 1024, 480, 3];
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    while start < len {
        let end = (start + sizes[i % sizes.len()]).min(len);
        out.push(start..end);
        start = end;
        i += 1;
    }
    out
}
