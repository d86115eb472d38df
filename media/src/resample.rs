//! Sample-rate conversion: the one resampler of this crate, used for WAV
//! files ([`resample`], a whole buffer at once) and sound-card streams
//! ([`Resampler`], callback-sized pieces).
//!
//! Band-limited: `rubato`'s synchronous FFT resampler (a fixed ratio, the
//! spectrum of each block cut at the lower Nyquist frequency with a
//! Blackman-Harris window), so a 44.1 kHz file or sound card neither aliases
//! nor loses its upper band on the way to 48 kHz.
//!
//! Input is gathered into blocks of about 10 ms (a whole number of the ratio's
//! smallest block: 147 samples in, 160 out for 44.1 -> 48 kHz), so a stream
//! cut into pieces of any size produces exactly the samples of the whole
//! buffer. The resampler's start-up delay (half a block) is dropped, so output
//! sample `k` lies at input time `k / to` like the input's; a stream holds
//! back the samples of an unfinished block (and the block's filter delay);
//! [`Resampler::finish`] releases them at the end of a file by feeding
//! silence, so a whole buffer of `n` samples becomes every output sample whose
//! time falls inside it: `n * to / from`, rounded up.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

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

/// Block length aimed at, in ms of input.
const BLOCK_MS: u32 = 10;

/// A streaming resampler from `from` Hz to `to` Hz that keeps its state
/// between calls.
pub struct Resampler {
    from: u32,
    to: u32,
    /// `None`: passthrough.
    fft: Option<Box<Fft<f32>>>,
    /// Input samples per block, output samples per block.
    block_in: usize,
    block_out: usize,
    /// Input not yet making up a whole block.
    pending: Vec<f32>,
    /// One block of output (reused).
    block: Vec<f32>,
    /// Start-up delay still to drop, in output samples.
    skip: usize,
    /// Input taken and output given since the start (or the last `finish`).
    consumed: u64,
    produced: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("block_in", &self.block_in)
            .field("block_out", &self.block_out)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Resampler {
    /// A resampler from `from` Hz to `to` Hz (a rate of 0 passes through).
    pub fn new(from: u32, to: u32) -> Self {
        let fft = if from == to || from == 0 || to == 0 {
            None
        } else {
            let hint = (from * BLOCK_MS / 1000).max(1) as usize;
            // Fails only for a rate or a block of 0, excluded above.
            Fft::<f32>::new(from as usize, to as usize, hint, 1, FixedSync::Both)
                .ok()
                .map(Box::new)
        };
        let (block_in, block_out, skip) = fft.as_ref().map_or((0, 0, 0), |f| {
            (
                f.input_frames_next(),
                f.output_frames_next(),
                f.output_delay(),
            )
        });
        Self {
            from,
            to,
            fft,
            block_in,
            block_out,
            pending: Vec::with_capacity(2 * block_in),
            block: vec![0.0; block_out],
            skip,
            consumed: 0,
            produced: 0,
        }
    }

    /// True when input passes through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.fft.is_none()
    }

    /// Output samples at most held back by a stream (an unfinished block and
    /// the filter's delay).
    pub fn held_back_max(&self) -> usize {
        self.block_out + self.fft.as_ref().map_or(0, |f| f.output_delay())
    }

    /// Runs the first `block_in` samples of `pending` (zero-padded when
    /// shorter) through the filter and drops them from `pending`, appending
    /// up to `limit` output samples in all. False if the filter failed (it
    /// cannot: the buffers have exactly the sizes it asks for), so no loop
    /// over blocks can spin.
    fn run_block(&mut self, out: &mut Vec<f32>, limit: u64) -> bool {
        let Some(fft) = self.fft.as_mut() else {
            return false;
        };
        self.pending
            .resize(self.pending.len().max(self.block_in), 0.0);
        let written = match (
            InterleavedSlice::new(&self.pending[..self.block_in], 1, self.block_in),
            InterleavedSlice::new_mut(&mut self.block, 1, self.block_out),
        ) {
            (Ok(input), Ok(mut output)) => fft
                .process_into_buffer(&input, &mut output, None)
                .map(|(_, written)| written)
                .ok(),
            _ => None,
        };
        self.pending.drain(..self.block_in);
        let Some(written) = written else {
            return false;
        };
        let fresh = &self.block[self.skip.min(written)..written];
        self.skip -= self.skip.min(written);
        let room = usize::try_from(limit.saturating_sub(self.produced)).unwrap_or(usize::MAX);
        let fresh = &fresh[..fresh.len().min(room)];
        out.extend_from_slice(fresh);
        self.produced += fresh.len() as u64;
        true
    }

    /// Resamples the next piece of input, appending to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.is_passthrough() {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        self.consumed += input.len() as u64;
        while self.pending.len() >= self.block_in {
            // Drops the block from `pending` whatever happens.
            self.run_block(out, u64::MAX);
        }
    }

    /// Ends the stream: appends the output held back (the unfinished block
    /// and the filter's delay, flushed with silence), then starts over as if
    /// new.
    pub fn finish(&mut self, out: &mut Vec<f32>) {
        if !self.is_passthrough() {
            let expected = self
                .consumed
                .saturating_mul(u64::from(self.to))
                .div_ceil(u64::from(self.from));
            while self.produced < expected && self.run_block(out, expected) {}
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

    /// Root-mean-square of `x`.
    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
    }

    #[test]
    fn keeps_pitch_level_and_duration_when_upsampling_and_downsampling() {
        for from in [8_000u32, 16_000, 22_050, 44_100, 96_000] {
            let input = tone(from, 440.0, 1.0);
            let out = resample(&input, from, 48_000);
            assert_eq!(out.len(), 48_000, "{from}");
            let f = frequency(&out, 48_000);
            assert!(
                (f - 440.0).abs() < 5.0,
                "{from} Hz input came out at {f} Hz"
            );
            // Away from the edges (the filter's ramp in and out) the level
            // is that of the input: a sine of amplitude 1.
            let level = rms(&out[2_400..45_600]);
            assert!((level - 0.707).abs() < 0.01, "{from}: rms {level}");
        }
    }

    /// Band-limited: a 3 kHz tone at 44.1 kHz keeps its level at 48 kHz
    /// (linear interpolation lost high-band level), a tone above the
    /// target's Nyquist frequency is removed instead of folding back
    /// (aliasing), and an 8 kHz file's band stays within 4 kHz.
    #[test]
    fn passes_the_band_and_stops_what_would_alias() {
        // 44.1 kHz -> 48 kHz, 7 kHz (the top of Opus wideband).
        let out = resample(&tone(44_100, 7_000.0, 1.0), 44_100, 48_000);
        let level = rms(&out[2_400..45_600]);
        assert!((level - 0.707).abs() < 0.02, "7 kHz at rms {level}");

        // 48 kHz -> 8 kHz: a 6 kHz tone lies above 4 kHz and must vanish
        // (linear interpolation would fold it to 2 kHz).
        let out = resample(&tone(48_000, 6_000.0, 1.0), 48_000, 8_000);
        let level = rms(&out[400..7_600]);
        assert!(level < 0.01, "6 kHz folded in at rms {level}");

        // 48 kHz -> 16 kHz keeps 3 kHz.
        let out = resample(&tone(48_000, 3_000.0, 1.0), 48_000, 16_000);
        let level = rms(&out[800..15_200]);
        assert!((level - 0.707).abs() < 0.02, "3 kHz at rms {level}");
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
            (4410, 44_100, 48_000),
        ] {
            let out = resample(&vec![0.25; n], from, to);
            assert_eq!(
                out.len() as u64,
                (n as u64 * u64::from(to)).div_ceil(u64::from(from)),
                "{n} {from}->{to}"
            );
        }
        // A long constant stays constant in the middle (DC passes).
        let out = resample(&vec![0.25; 44_100], 44_100, 48_000);
        assert!(out[2_400..45_600].iter().all(|x| (x - 0.25).abs() < 1e-3));
    }

    /// The output is aligned with the input: the filter's delay is dropped.
    #[test]
    fn output_is_not_delayed() {
        for from in [8_000u32, 16_000, 44_100] {
            // A click at 0.5 s comes out at 0.5 s.
            let mut input = vec![0.0f32; from as usize];
            input[from as usize / 2] = 1.0;
            let out = resample(&input, from, 48_000);
            let peak = out
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(i, _)| i)
                .unwrap_or(0);
            assert!((peak as i64 - 24_000).abs() <= 2, "{from}: peak at {peak}");
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
            let held = whole.len() - streamed.len();
            assert!(held <= r.held_back_max(), "{from}->{to}: {held} held");
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
            let held = i64::from(to) - out.len() as i64;
            assert!(
                held >= 0 && held as usize <= r.held_back_max(),
                "{to}: {}",
                out.len()
            );
            let f = frequency(&out, to);
            assert!((f - 440.0).abs() < 5.0, "{to} Hz output at {f} Hz");
        }
    }

    #[test]
    fn a_long_stream_does_not_drift() {
        // A minute of 44.1 kHz in 10 ms pieces: exactly a minute at 48 kHz
        // once finished; blocks are whole ratios, nothing accumulates.
        let mut r = Resampler::new(44_100, 48_000);
        let piece = vec![0.0f32; 441];
        let mut out = Vec::new();
        let mut total = 0usize;
        for _ in 0..6_000 {
            r.process(&piece, &mut out);
            total += out.len();
            out.clear();
        }
        r.finish(&mut out);
        total += out.len();
        assert_eq!(total, 60 * 48_000);
    }
}
