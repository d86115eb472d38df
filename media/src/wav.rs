//! WAV files in and out: the audio I/O of headless runs and tests.
//!
//! Input may be any sample rate, 8/16/24/32-bit integer or 32-bit float, any
//! channel count; it is mixed down to mono and resampled to 48 kHz. Output is
//! always 48 kHz mono 16-bit PCM.

use std::path::{Path, PathBuf};

use crate::SAMPLE_RATE;
use crate::resample::resample;

/// Why a WAV file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WavError {
    #[error("{path}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("{path}: the file has no audio channels")]
    NoChannels { path: PathBuf },
}

/// Reads `path` as 48 kHz mono samples.
pub fn read_mono_48k(path: &Path) -> Result<Vec<i16>, WavError> {
    let wav_err = |source| WavError::Wav {
        path: path.to_owned(),
        source,
    };
    let mut reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        return Err(WavError::NoChannels {
            path: path.to_owned(),
        });
    }
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
    };
    let mut mono = Vec::with_capacity(interleaved.len() / channels);
    crate::pcm::downmix(&interleaved, channels, &mut mono);
    Ok(to_i16(&resample(&mono, spec.sample_rate, SAMPLE_RATE)))
}

/// Converts float samples in -1..1 to 16-bit PCM, clipping.
pub fn to_i16(samples: &[f32]) -> Vec<i16> {
    samples
        .iter()
        .copied()
        .map(crate::pcm::f32_to_i16)
        .collect()
}

/// A 48 kHz mono 16-bit WAV file being written.
pub struct WavSink {
    writer: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
    path: PathBuf,
}

impl std::fmt::Debug for WavSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavSink").field("path", &self.path).finish()
    }
}

impl WavSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> Result<Self, WavError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|source| WavError::Wav {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            writer,
            path: path.to_owned(),
        })
    }

    /// Appends samples.
    pub fn write(&mut self, samples: &[i16]) -> Result<(), WavError> {
        for &s in samples {
            self.writer
                .write_sample(s)
                .map_err(|source| WavError::Wav {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the header's final lengths and closes the file.
    pub fn finish(self) -> Result<(), WavError> {
        let path = self.path;
        self.writer
            .finalize()
            .map_err(|source| WavError::Wav { path, source })
    }
}

/// Writes a whole 48 kHz mono file.
pub fn write_mono_48k(path: &Path, samples: &[i16]) -> Result<(), WavError> {
    let mut sink = WavSink::create(path)?;
    sink.write(samples)?;
    sink.finish()
}
