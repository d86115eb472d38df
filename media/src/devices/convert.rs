//! Converting between a device's samples (any format, channel count and
//! rate) and Natter's 48 kHz mono 20 ms `i16` frames, in callback-sized
//! pieces. Pure: tested without hardware. Rates go through the crate's one
//! [`Resampler`], the same that converts WAV files.

use cpal::{FromSample, Sample};

use crate::codec::{FRAME_SAMPLES, SAMPLE_RATE};
use crate::pcm;
use crate::resample::Resampler;

/// Converts interleaved device samples (any format, channel count and rate)
/// into 48 kHz mono frames of [`FRAME_SAMPLES`] `i16` samples.
#[derive(Debug)]
pub struct CaptureConverter {
    channels: usize,
    resampler: Resampler,
    mono: Vec<f32>,
    resampled: Vec<f32>,
    frame: Vec<i16>,
    fill: usize,
}

impl CaptureConverter {
    /// A converter for a device delivering `channels` interleaved channels at
    /// `sample_rate` Hz.
    pub fn new(channels: u16, sample_rate: u32) -> Self {
        Self {
            channels: usize::from(channels.max(1)),
            resampler: Resampler::new(sample_rate, SAMPLE_RATE),
            mono: Vec::with_capacity(8192),
            resampled: Vec::with_capacity(8192),
            frame: vec![0; FRAME_SAMPLES],
            fill: 0,
        }
    }

    /// Feeds one callback's worth of interleaved samples; calls `emit` with
    /// every complete 20 ms frame. A trailing partial device frame (fewer
    /// samples than channels) is ignored.
    pub fn push<S>(&mut self, interleaved: &[S], mut emit: impl FnMut(&[i16]))
    where
        S: Sample,
        f32: FromSample<S>,
    {
        self.mono.clear();
        pcm::downmix(interleaved, self.channels, &mut self.mono);
        self.resampled.clear();
        self.resampler.process(&self.mono, &mut self.resampled);
        for &x in &self.resampled {
            self.frame[self.fill] = pcm::f32_to_i16(x);
            self.fill += 1;
            if self.fill == FRAME_SAMPLES {
                emit(&self.frame);
                self.fill = 0;
            }
        }
    }
}

/// Converts 48 kHz mono `i16` frames into interleaved device samples for any
/// format, channel count and rate, pulling frames as the device needs them.
#[derive(Debug)]
pub struct PlaybackConverter {
    channels: usize,
    resampler: Resampler,
    frame: Vec<i16>,
    frame_f32: Vec<f32>,
    pending: Vec<f32>,
    read: usize,
}

impl PlaybackConverter {
    /// A converter for a device playing `channels` interleaved channels at
    /// `sample_rate` Hz.
    pub fn new(channels: u16, sample_rate: u32) -> Self {
        Self {
            channels: usize::from(channels.max(1)),
            resampler: Resampler::new(SAMPLE_RATE, sample_rate),
            frame: vec![0; FRAME_SAMPLES],
            frame_f32: Vec::with_capacity(FRAME_SAMPLES),
            pending: Vec::with_capacity(4 * FRAME_SAMPLES),
            read: 0,
        }
    }

    /// Fills `out` (interleaved) with audio, calling `next_frame` for another
    /// 48 kHz frame whenever the converted audio runs out. When `next_frame`
    /// returns false (nothing queued) the rest of `out` is silence and this
    /// returns false.
    pub fn fill<S>(&mut self, out: &mut [S], mut next_frame: impl FnMut(&mut [i16]) -> bool) -> bool
    where
        S: Sample + FromSample<f32>,
    {
        let channels = self.channels;
        let mut written = 0;
        let mut complete = true;
        while written < out.len() {
            if self.read == self.pending.len() {
                self.pending.clear();
                self.read = 0;
                if !next_frame(&mut self.frame) {
                    complete = false;
                    break;
                }
                self.frame_f32.clear();
                self.frame_f32
                    .extend(self.frame.iter().copied().map(pcm::i16_to_f32));
                self.resampler.process(&self.frame_f32, &mut self.pending);
                continue;
            }
            let value = S::from_sample(self.pending[self.read]);
            self.read += 1;
            let end = (written + channels).min(out.len());
            out[written..end].fill(value);
            written = end;
        }
        out[written..].fill(S::EQUILIBRIUM);
        complete
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::test_signal::{frequency, pieces};

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        crate::test_signal::tone(rate, hz, secs, 0.5)
    }

    fn to_f32(frames: &[i16]) -> Vec<f32> {
        frames.iter().copied().map(pcm::i16_to_f32).collect()
    }

    /// The stream path (device samples in callback pieces through the
    /// capture converter) and the file path (a whole WAV's samples through
    /// `resample` and `wav::to_i16`) give the same 16-bit samples: one
    /// resampler, one conversion. The stream only lacks what it has not
    /// framed yet (a partial frame and the samples held back).
    #[test]
    fn stream_path_and_file_path_resample_identically() {
        for rate in [8_000u32, 16_000, 22_050, 44_100, 48_000, 96_000] {
            let signal = tone(rate, 440.0, 1.0);
            let file = crate::wav::to_i16(&crate::resample::resample(&signal, rate, SAMPLE_RATE));

            let mut conv = CaptureConverter::new(1, rate);
            let mut stream: Vec<i16> = Vec::new();
            for piece in pieces(signal.len()) {
                conv.push(&signal[piece], |f| stream.extend_from_slice(f));
            }
            assert_eq!(stream.len() % FRAME_SAMPLES, 0);
            assert!(
                file.len() - stream.len() < FRAME_SAMPLES + SAMPLE_RATE.div_ceil(rate) as usize + 1,
                "{rate}: {} streamed of {}",
                stream.len(),
                file.len()
            );
            assert_eq!(stream[..], file[..stream.len()], "{rate} Hz");

            // Stereo with the same signal on both channels: the same again.
            let stereo: Vec<f32> = signal.iter().flat_map(|x| [*x, *x]).collect();
            let mut conv = CaptureConverter::new(2, rate);
            let mut both: Vec<i16> = Vec::new();
            conv.push(&stereo, |f| both.extend_from_slice(f));
            assert_eq!(both, stream, "{rate} Hz stereo");
        }
    }

    #[test]
    fn capture_converter_downmixes_resamples_and_frames_any_format() {
        // Stereo 44.1 kHz i16, the same tone on both channels, in uneven pieces.
        let rate = 44_100;
        let mono = tone(rate, 440.0, 1.0);
        let stereo: Vec<i16> = mono
            .iter()
            .flat_map(|x| {
                let s = pcm::f32_to_i16(*x);
                [s, s]
            })
            .collect();
        let mut conv = CaptureConverter::new(2, rate);
        let mut frames: Vec<Vec<i16>> = Vec::new();
        for piece in pieces(stereo.len() / 2) {
            let range = piece.start * 2..piece.end * 2;
            conv.push(&stereo[range], |f| frames.push(f.to_vec()));
        }
        // One second at 48 kHz = 50 frames of 960 (the last maybe partial).
        assert!((49..=50).contains(&frames.len()), "{}", frames.len());
        assert!(frames.iter().all(|f| f.len() == FRAME_SAMPLES));
        let out = to_f32(&frames.concat());
        let f = frequency(&out, SAMPLE_RATE);
        assert!((f - 440.0).abs() < 5.0, "came out at {f} Hz");
        let peak = out.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!((peak - 0.5).abs() < 0.02, "peak {peak}");

        // Opposite channels cancel in the downmix.
        let mut conv = CaptureConverter::new(2, SAMPLE_RATE);
        let opposite: Vec<f32> = (0..FRAME_SAMPLES).flat_map(|_| [0.5f32, -0.5]).collect();
        let mut got = Vec::new();
        conv.push(&opposite, |f| got.push(f.to_vec()));
        assert_eq!(got, vec![vec![0i16; FRAME_SAMPLES]]);

        // u16 (unsigned, origin 32768), 4 channels, 48 kHz: DC at +0.5.
        let mut conv = CaptureConverter::new(4, SAMPLE_RATE);
        let dc: Vec<u16> = vec![32768 + 16384; FRAME_SAMPLES * 4];
        let mut got = Vec::new();
        conv.push(&dc, |f| got.push(f.to_vec()));
        assert_eq!(got.len(), 1);
        assert!(got[0].iter().all(|s| (i32::from(*s) - 16384).abs() <= 1));

        // f32 mono at 16 kHz: 20 ms in gives one 20 ms frame out once the
        // resampler's block (10 ms) and filter delay (5 ms) are filled, so
        // feed 30 ms; 20 ms is not yet enough.
        let mut conv = CaptureConverter::new(1, 16_000);
        let mut got = 0;
        conv.push(&vec![0.25f32; 320], |_| got += 1);
        assert_eq!(got, 0);
        conv.push(&vec![0.25f32; 160], |_| got += 1);
        assert_eq!(got, 1);

        // A trailing partial device frame is ignored, not misaligned.
        let mut conv = CaptureConverter::new(3, SAMPLE_RATE);
        let mut got = Vec::new();
        conv.push(&[0.5f32; FRAME_SAMPLES * 3 + 2], |f| got.push(f.to_vec()));
        assert_eq!(got.len(), 1);
        assert!(got[0].iter().all(|s| *s == pcm::f32_to_i16(0.5)));
    }

    #[test]
    fn playback_converter_resamples_upmixes_and_plays_silence_on_underrun() {
        let rate = 44_100;
        let source: Vec<i16> = tone(SAMPLE_RATE, 440.0, 1.0)
            .iter()
            .map(|x| pcm::f32_to_i16(*x))
            .collect();
        let mut frames = source.chunks(FRAME_SAMPLES);
        let mut conv = PlaybackConverter::new(2, rate);
        let mut out = vec![0.0f32; 2 * 512];
        let mut played = Vec::new();
        loop {
            let complete = conv.fill(&mut out, |dst| match frames.next() {
                Some(f) => {
                    dst.copy_from_slice(f);
                    true
                }
                None => false,
            });
            assert!(out.chunks(2).all(|lr| lr[0] == lr[1]), "channels differ");
            played.extend(out.iter().step_by(2).copied());
            if !complete {
                break;
            }
        }
        // Everything came out at 44.1 kHz (but what the resampler holds
        // back: a stream is never finished), then silence.
        let audible = played.iter().rposition(|x| *x != 0.0).unwrap() + 1;
        let held = Resampler::new(SAMPLE_RATE, rate).held_back_max() as i64;
        assert!(
            (0..=held).contains(&(i64::from(rate) - audible as i64)),
            "{audible}"
        );
        assert!(played[audible..].iter().all(|x| *x == 0.0));
        let f = frequency(&played[..audible], rate);
        assert!((f - 440.0).abs() < 5.0, "played at {f} Hz");

        // u16 output: silence is the unsigned midpoint.
        let mut conv = PlaybackConverter::new(1, SAMPLE_RATE);
        let mut out = vec![0u16; 100];
        assert!(!conv.fill(&mut out, |_| false));
        assert!(out.iter().all(|s| *s == 32768));

        // i16 output at 48 kHz mono is a straight copy.
        let mut conv = PlaybackConverter::new(1, SAMPLE_RATE);
        let mut out = vec![0i16; FRAME_SAMPLES];
        let frame: Vec<i16> = (0..FRAME_SAMPLES as i16).collect();
        assert!(conv.fill(&mut out, |dst| {
            dst.copy_from_slice(&frame);
            true
        }));
        assert_eq!(out, frame);
    }
}
