//! Sample-rate conversion: the one resampler of this crate, used for WAV
//! files ([`resample`], a whole buffer at once) and sound-card streams
//! ([`Resampler`], callback-sized pieces).
//!
//! Linear interpolation, preceded when downsampling by a moving-average
//! low-pass over the decimation ratio. It is simple and adequate for speech
//! fed to a 16 kb/s codec.
//!
//! Output sample `k` lies at input position `k * from / to`, computed in
//! integers, so a stream cut into pieces of any size produces exactly the
//! samples of the whole buffer: no clicks and no drift at piece boundaries.
//! A stream holds back the output that needs the next input sample to
//! interpolate towards; [`Resampler::finish`] releases it at the end of a
//! file by holding the last sample, so a whole buffer of `n` samples becomes
//! every output sample whose time falls inside it: `n * to / from`, rounded
//! up.

/// Converts `input` sampled at `from` Hz to `to` Hz (a rate of 0, or equal
/// rates, pass the input through).
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    let mut resampler = Resampler::new(from, to);
    if resampler.is_passthrough() {
        return input.to_vec();
    }
    let expected = (input.len() as u64)
        .saturating_mul(u64::from(to))
        .div_ceil(u64::from(from));
    let mut out = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    resampler.process(input, &mut out);
    resampler.finish(&mut out);
    out
}

/// A streaming resampler from `from` Hz to `to` Hz that keeps its state
/// between calls.
#[derive(Debug, Clone)]
pub struct Resampler {
    from: u32,
    to: u32,
    /// Index of the next output sample, since the origin.
    next_out: u64,
    /// Input samples consumed since the origin. The origin moves forward by
    /// whole periods (`to` outputs = `from` inputs) so neither grows forever.
    consumed: u64,
    /// Last (filtered) input sample consumed: input index `consumed - 1`.
    prev: f32,
    lowpass: Option<MovingAverage>,
    /// Low-passed input (reused between calls).
    scratch: Vec<f32>,
}

/// A running mean over the last `width` samples.
#[derive(Debug, Clone)]
struct MovingAverage {
    ring: Vec<f32>,
    next: usize,
    filled: usize,
    sum: f64,
}

impl MovingAverage {
    fn new(width: usize) -> Self {
        Self {
            ring: vec![0.0; width.max(1)],
            next: 0,
            filled: 0,
            sum: 0.0,
        }
    }

    fn push(&mut self, x: f32) -> f32 {
        let width = self.ring.len();
        self.sum += f64::from(x) - f64::from(self.ring[self.next]);
        self.ring[self.next] = x;
        self.next += 1;
        if self.next == width {
            self.next = 0;
            // Re-sum once per lap so rounding errors cannot accumulate.
            self.sum = self.ring.iter().map(|v| f64::from(*v)).sum();
        }
        self.filled = (self.filled + 1).min(width);
        (self.sum / self.filled as f64) as f32
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz (a rate of 0 passes through).
    pub fn new(from: u32, to: u32) -> Self {
        let lowpass = (from > to && to > 0).then(|| MovingAverage::new(from.div_ceil(to) as usize));
        Self {
            from,
            to,
            next_out: 0,
            consumed: 0,
            prev: 0.0,
            lowpass,
            scratch: Vec::new(),
        }
    }

    /// True when input passes through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.from == self.to || self.from == 0 || self.to == 0
    }

    /// Input position of output sample `k`: the index of the sample before
    /// it and the fraction of the way to the next one.
    fn position(from: u32, to: u32, k: u64) -> (u64, f32) {
        let num = k * u64::from(from);
        let to = u64::from(to);
        (num / to, ((num % to) as f64 / to as f64) as f32)
    }

    /// Resamples the next piece of input, appending to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.is_passthrough() {
            out.extend_from_slice(input);
            return;
        }
        let Some(&last_in) = input.last() else {
            return;
        };
        let source: &[f32] = match &mut self.lowpass {
            Some(lp) => {
                self.scratch.clear();
                self.scratch.extend(input.iter().map(|x| lp.push(*x)));
                &self.scratch
            }
            None => input,
        };
        let base = self.consumed;
        let end = base + source.len() as u64;
        let sample = |i: u64, prev: f32| {
            if i < base {
                prev
            } else {
                source[(i - base) as usize]
            }
        };
        loop {
            let (i, frac) = Self::position(self.from, self.to, self.next_out);
            if i + 1 >= end {
                break;
            }
            // The next output never needs more than one sample of the past.
            let a = sample(i, self.prev);
            let b = sample(i + 1, self.prev);
            out.push(a + (b - a) * frac);
            self.next_out += 1;
        }
        self.prev = *source.last().unwrap_or(&last_in);
        self.consumed = end;
        let periods =
            (self.next_out / u64::from(self.to)).min(self.consumed / u64::from(self.from));
        self.next_out -= periods * u64::from(self.to);
        self.consumed -= periods * u64::from(self.from);
    }

    /// Ends the stream: appends the output held back for want of a next
    /// input sample (the last sample, held), then starts over as if new.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if !self.is_passthrough() {
            let to = u64::from(self.to);
            // Outputs before the end of the input: k * from < consumed * to.
            while self.next_out * u64::from(self.from) < self.consumed * to {
                out.push(self.prev);
                self.next_out += 1;
            }
        }
        *self = Self::new(self.from, self.to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_signal::{frequency, pieces};

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        crate::test_signal::tone(rate, hz, secs, 1.0)
    }

    #[test]
    fn keeps_pitch_and_duration_when_upsampling_and_downsampling() {
        for from in [8_000u32, 16_000, 22_050, 44_100, 96_000] {
            let input = tone(from, 440.0, 1.0);
            let out = resample(&input, from, 48_000);
            assert_eq!(out.len(), 48_000, "{from}");
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
        assert_eq!(resample(&input, 0, 48_000), input);
    }

    #[test]
    fn length_is_input_times_ratio_rounded_up() {
        for (n, from, to) in [
            (0usize, 8_000u32, 48_000u32),
            (1, 8_000, 48_000),
            (7, 44_100, 48_000),
            (1001, 48_000, 8_000),
            (333, 48_000, 44_100),
            (13, 48_000, 44_100),
        ] {
            let out = resample(&vec![0.25; n], from, to);
            assert_eq!(
                out.len() as u64,
                (n as u64 * u64::from(to)).div_ceil(u64::from(from)),
                "{n} {from}->{to}"
            );
            assert!(out.iter().all(|x| (x - 0.25).abs() < 1e-6), "DC stays DC");
        }
    }

    /// The stream path and the file path are one resampler: cut into
    /// callback-sized pieces, the stream yields exactly the samples of the
    /// whole buffer, and `finish` yields exactly the rest.
    #[test]
    fn stream_in_pieces_equals_whole_buffer_exactly() {
        for (from, to) in [
            (8_000u32, 48_000u32),
            (16_000, 48_000),
            (22_050, 48_000),
            (44_100, 48_000),
            (96_000, 48_000),
            (48_000, 8_000),
            (48_000, 44_100),
            (48_000, 96_000),
        ] {
            let input = tone(from, 440.0, 1.0);
            let whole = resample(&input, from, to);
            let mut r = Resampler::new(from, to);
            let mut streamed = Vec::new();
            for piece in pieces(input.len()) {
                r.process(&input[piece], &mut streamed);
            }
            // Held back: at most the outputs between the last two input samples.
            let held = whole.len() - streamed.len();
            assert!(
                held as u32 <= to.div_ceil(from),
                "{from}->{to}: {held} held"
            );
            assert_eq!(streamed[..], whole[..streamed.len()], "{from}->{to}");
            r.finish(&mut streamed);
            assert_eq!(streamed, whole, "{from}->{to} after finish");
            let f = frequency(&streamed, to);
            assert!((f - 440.0).abs() < 5.0, "{from}->{to} came out at {f} Hz");
        }
    }

    #[test]
    fn stream_converts_48k_down_to_device_rates() {
        for to in [8_000u32, 44_100, 48_000, 96_000] {
            let input = tone(48_000, 440.0, 1.0);
            let mut r = Resampler::new(48_000, to);
            let mut out = Vec::new();
            for frame in input.chunks(crate::FRAME_SAMPLES) {
                r.process(frame, &mut out);
            }
            assert!(
                (out.len() as i64 - i64::from(to)).abs() <= 2,
                "{to}: {}",
                out.len()
            );
            let f = frequency(&out, to);
            assert!((f - 440.0).abs() < 5.0, "{to} Hz output at {f} Hz");
        }
    }

    #[test]
    fn a_long_stream_does_not_drift() {
        // Ten minutes of 44.1 kHz in 10 ms pieces: exactly ten minutes at
        // 48 kHz once finished; positions are integers, nothing accumulates.
        let mut r = Resampler::new(44_100, 48_000);
        let piece = vec![0.0f32; 441];
        let mut out = Vec::new();
        let mut total = 0usize;
        for _ in 0..60_000 {
            r.process(&piece, &mut out);
            total += out.len();
            out.clear();
        }
        r.finish(&mut out);
        total += out.len();
        assert_eq!(total, 600 * 48_000);
    }
}
