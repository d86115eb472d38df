//! Sound-card errors: which way the audio flows, and one user-facing,
//! one-line [`DeviceError`] per failure, each pointing to the WAV options.

use std::fmt;
use std::time::Duration;

/// Which way audio flows through a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Microphone, line in.
    Input,
    /// Speakers, headphones.
    Output,
}

impl Direction {
    /// The `natter` option that replaces this device with a WAV file.
    pub fn wav_flag(self) -> &'static str {
        match self {
            Direction::Input => "--audio-in",
            Direction::Output => "--audio-out",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Input => "input",
            Direction::Output => "output",
        })
    }
}

/// A sound-card failure. Every message is one line and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No device of this direction at all (no sound card, no audio host).
    #[error(
        "no audio {direction} device: this machine has no sound card; use {} FILE.wav",
        direction.wav_flag()
    )]
    NoDevice {
        /// Input or output.
        direction: Direction,
    },
    /// No device by that name.
    #[error(
        "no audio {direction} device named \"{name}\" (available: {}); use one of those or {} FILE.wav",
        join_or_none(available),
        direction.wav_flag()
    )]
    NotFound {
        /// Input or output.
        direction: Direction,
        /// The name asked for.
        name: String,
        /// The names (and ids) of the devices that exist for this direction.
        available: Vec<String>,
    },
    /// The device exists but could not be opened or started.
    #[error(
        "cannot open audio {direction} device \"{name}\": {reason}; use {} FILE.wav",
        direction.wav_flag()
    )]
    Open {
        /// Input or output.
        direction: Direction,
        /// The device's name.
        name: String,
        /// What the backend said, on one line.
        reason: String,
    },
    /// The device offers no sample format this module converts.
    #[error(
        "audio {direction} device \"{name}\" offers no usable sample format ({formats}); use {} FILE.wav",
        direction.wav_flag()
    )]
    UnsupportedFormat {
        /// Input or output.
        direction: Direction,
        /// The device's name.
        name: String,
        /// The formats it does offer.
        formats: String,
    },
    /// The backend did not answer within [`OPEN_TIMEOUT`](super::OPEN_TIMEOUT).
    #[error(
        "audio {direction} device \"{name}\" did not start within {:.1} s; use {} FILE.wav",
        after.as_secs_f32(),
        direction.wav_flag()
    )]
    Timeout {
        /// Input or output.
        direction: Direction,
        /// The device's name (or "default").
        name: String,
        /// How long we waited.
        after: Duration,
    },
    /// Anything else the audio backend reported.
    #[error("audio backend error: {0}")]
    Backend(String),
}

fn join_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// Squeezes a backend message onto one line.
pub(super) fn one_line(message: impl fmt::Display) -> String {
    let text = message.to_string();
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        "unknown error".to_owned()
    } else {
        joined
    }
}

/// The error for a device that failed to open. The default device being
/// "not available" means there is no usable device at all (e.g. ALSA's
/// `default` on a machine without a sound card).
pub(super) fn open_failed(
    direction: Direction,
    name: &str,
    is_default: bool,
    e: cpal::Error,
) -> DeviceError {
    if is_default && e.kind() == cpal::ErrorKind::DeviceNotAvailable {
        DeviceError::NoDevice { direction }
    } else {
        DeviceError::Open {
            direction,
            name: name.to_owned(),
            reason: one_line(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_one_line_and_point_to_wav() {
        let errors = [
            DeviceError::NoDevice {
                direction: Direction::Input,
            },
            DeviceError::NotFound {
                direction: Direction::Output,
                name: "USB".to_owned(),
                available: vec!["a".to_owned(), "b [hw:1,0]".to_owned()],
            },
            DeviceError::Open {
                direction: Direction::Input,
                name: "hw:0".to_owned(),
                reason: one_line("busy\n\n  try later\n"),
            },
            DeviceError::UnsupportedFormat {
                direction: Direction::Output,
                name: "dsd".to_owned(),
                formats: "dsdu8".to_owned(),
            },
            DeviceError::Timeout {
                direction: Direction::Input,
                name: "default".to_owned(),
                after: Duration::from_secs(5),
            },
        ];
        for e in &errors {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text:?}");
            assert!(text.contains("FILE.wav"), "{text}");
        }
        assert_eq!(
            errors[0].to_string(),
            "no audio input device: this machine has no sound card; use --audio-in FILE.wav"
        );
        assert_eq!(
            errors[1].to_string(),
            "no audio output device named \"USB\" (available: a, b [hw:1,0]); \
             use one of those or --audio-out FILE.wav"
        );
        assert!(errors[2].to_string().contains(": busy; try later;"));
    }
}
