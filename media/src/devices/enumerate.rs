//! Finding sound cards: listing every device of every audio host for
//! `natter devices`, finding the one a user named, and choosing a stream
//! configuration whose sample format the converters handle.

use std::fmt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::Duration;

use cpal::SampleFormat;
use cpal::traits::{DeviceTrait, HostTrait};

use super::backend_log;
use super::error::{DeviceError, Direction, one_line, open_failed};
use crate::codec::SAMPLE_RATE;

/// How long [`list`] waits for enumeration (which opens every device to read
/// its default configuration).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sample formats the streams accept, in order of preference.
const SUPPORTED_FORMATS: [SampleFormat; 9] = [
    SampleFormat::F32,
    SampleFormat::I16,
    SampleFormat::I32,
    SampleFormat::I24,
    SampleFormat::U16,
    SampleFormat::F64,
    SampleFormat::I8,
    SampleFormat::U8,
    SampleFormat::U32,
];

/// A stream configuration, as reported by a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    /// Interleaved channels.
    pub channels: u16,
    /// Frames per second.
    pub sample_rate: u32,
    /// Sample format, e.g. "f32", "i16".
    pub sample_format: String,
}

impl fmt::Display for AudioConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ch, {} Hz, {}",
            self.channels, self.sample_rate, self.sample_format
        )
    }
}

impl AudioConfig {
    pub(super) fn new(channels: u16, sample_rate: u32, format: SampleFormat) -> Self {
        Self {
            channels,
            sample_rate,
            sample_format: format_name(format),
        }
    }
}

fn format_name(format: SampleFormat) -> String {
    format!("{format:?}").to_ascii_lowercase()
}

/// One device of one audio host, for `natter devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Audio host (backend), e.g. "ALSA".
    pub host: String,
    /// Human-readable name; what `--audio-device` style options match.
    pub name: String,
    /// The backend's own identifier (e.g. ALSA's `hw:0,0`); unique within a
    /// host, and also accepted by
    /// [`Capture::open`](super::Capture::open) and [`Playback::open`](super::Playback::open).
    pub id: String,
    /// It can be opened for capture.
    pub input: bool,
    /// It can be opened for playback.
    pub output: bool,
    /// The host's default input device.
    pub default_input: bool,
    /// The host's default output device.
    pub default_output: bool,
    /// Default capture configuration, when it does input and could be queried.
    pub input_config: Option<AudioConfig>,
    /// Default playback configuration, when it does output and could be queried.
    pub output_config: Option<AudioConfig>,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.host, self.name)?;
        if self.id != self.name {
            write!(f, " (id {})", self.id)?;
        }
        let mut parts = Vec::new();
        if self.input {
            let default = if self.default_input { "default " } else { "" };
            match &self.input_config {
                Some(c) => parts.push(format!("{default}input: {c}")),
                None => parts.push(format!("{default}input: config unavailable")),
            }
        }
        if self.output {
            let default = if self.default_output { "default " } else { "" };
            match &self.output_config {
                Some(c) => parts.push(format!("{default}output: {c}")),
                None => parts.push(format!("{default}output: config unavailable")),
            }
        }
        if parts.is_empty() {
            parts.push("no usable input or output".to_owned());
        }
        write!(f, " - {}", parts.join("; "))
    }
}

/// Every device of every available audio host, with its capabilities and
/// default configurations. Runs on a helper thread and gives up after
/// [`LIST_TIMEOUT`] if the backend hangs.
pub fn list() -> Result<Vec<DeviceInfo>, DeviceError> {
    let (tx, rx) = mpsc::sync_channel(1);
    thread::Builder::new()
        .name("natter-audio-list".to_owned())
        .spawn(move || {
            let _ = tx.send(list_blocking());
        })
        .map_err(|e| DeviceError::Backend(one_line(format!("cannot start a thread: {e}"))))?;
    match rx.recv_timeout(LIST_TIMEOUT) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(DeviceError::Backend(format!(
            "listing audio devices did not finish within {} s",
            LIST_TIMEOUT.as_secs()
        ))),
        Err(RecvTimeoutError::Disconnected) => Err(DeviceError::Backend(
            "listing audio devices failed inside the audio backend".to_owned(),
        )),
    }
}

fn list_blocking() -> Result<Vec<DeviceInfo>, DeviceError> {
    let _quiet = backend_log::capture();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for host_id in cpal::available_hosts() {
        let host = match cpal::host_from_id(host_id) {
            Ok(h) => h,
            Err(e) => {
                errors.push(format!("{}: {}", host_id.name(), one_line(e)));
                continue;
            }
        };
        let default_in = host.default_input_device().and_then(|d| d.id().ok());
        let default_out = host.default_output_device().and_then(|d| d.id().ok());
        let devices = match host.devices() {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("{}: {}", host_id.name(), one_line(e)));
                continue;
            }
        };
        for device in devices {
            let id = device.id().ok();
            let (name, id_text) = names_of(&device);
            let is_default_in = id.is_some() && id == default_in;
            let is_default_out = id.is_some() && id == default_out;
            let input_config = if device.supports_input() || is_default_in {
                device.default_input_config().ok()
            } else {
                None
            };
            let output_config = if device.supports_output() || is_default_out {
                device.default_output_config().ok()
            } else {
                None
            };
            out.push(DeviceInfo {
                host: host_id.name().to_owned(),
                name,
                id: id_text,
                input: device.supports_input() || input_config.is_some(),
                output: device.supports_output() || output_config.is_some(),
                default_input: is_default_in,
                default_output: is_default_out,
                input_config: input_config
                    .map(|c| AudioConfig::new(c.channels(), c.sample_rate(), c.sample_format())),
                output_config: output_config
                    .map(|c| AudioConfig::new(c.channels(), c.sample_rate(), c.sample_format())),
            });
        }
    }
    if out.is_empty() && !errors.is_empty() {
        return Err(DeviceError::Backend(errors.join("; ")));
    }
    Ok(out)
}

/// The device's display name and backend id (never panics: `Device`'s own
/// `Display` can fail).
fn names_of(device: &cpal::Device) -> (String, String) {
    let id = device.id().ok().map(|id| id.id().to_owned());
    let name = device
        .description()
        .ok()
        .map(|d| d.name().trim().to_owned())
        .filter(|n| !n.is_empty());
    match (name, id) {
        (Some(name), Some(id)) => (name, id),
        (Some(name), None) => (name.clone(), name),
        (None, Some(id)) => (id.clone(), id),
        (None, None) => ("unnamed device".to_owned(), "unnamed device".to_owned()),
    }
}

/// Finds the device to open: the default host's default device, or the first
/// device of any host whose name, id or `host:id` is exactly `name`.
pub(super) fn find_device(
    name: Option<&str>,
    direction: Direction,
) -> Result<(cpal::Device, String), DeviceError> {
    let Some(wanted) = name else {
        let host = cpal::default_host();
        let device = match direction {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        }
        .ok_or(DeviceError::NoDevice { direction })?;
        let (name, _) = names_of(&device);
        return Ok((device, name));
    };
    let mut available = Vec::new();
    for host_id in cpal::available_hosts() {
        let Ok(host) = cpal::host_from_id(host_id) else {
            continue;
        };
        let Ok(devices) = host.devices() else {
            continue;
        };
        for device in devices {
            let supports = match direction {
                Direction::Input => device.supports_input(),
                Direction::Output => device.supports_output(),
            };
            let (dev_name, id) = names_of(&device);
            let full_id = format!("{host_id}:{id}");
            if wanted == dev_name || wanted == id || wanted == full_id {
                return Ok((device, dev_name));
            }
            if supports {
                let label = if dev_name == id {
                    dev_name
                } else {
                    format!("{dev_name} [{id}]")
                };
                if !available.contains(&label) {
                    available.push(label);
                }
            }
        }
    }
    Err(DeviceError::NotFound {
        direction,
        name: wanted.to_owned(),
        available,
    })
}

/// Picks a configuration whose sample format this module converts: the
/// device's default if usable, else the best supported range (48 kHz or
/// 44.1 kHz when offered).
pub(super) fn choose_config(
    device: &cpal::Device,
    direction: Direction,
    name: &str,
    is_default: bool,
) -> Result<cpal::SupportedStreamConfig, DeviceError> {
    let open_error = |e: cpal::Error| open_failed(direction, name, is_default, e);
    let default = match direction {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    };
    if let Ok(config) = &default
        && SUPPORTED_FORMATS.contains(&config.sample_format())
        && config.channels() > 0
    {
        return Ok(*config);
    }
    let ranges: Vec<_> = match direction {
        Direction::Input => device.supported_input_configs().map(|r| r.collect()),
        Direction::Output => device.supported_output_configs().map(|r| r.collect()),
    }
    .map_err(|e| match &default {
        Err(d) => open_error(d.clone()),
        Ok(_) => open_error(e),
    })?;
    let best = ranges
        .iter()
        .filter(|r| r.channels() > 0)
        .filter_map(|r| {
            SUPPORTED_FORMATS
                .iter()
                .position(|f| *f == r.sample_format())
                .map(|rank| (rank, r))
        })
        .min_by_key(|(rank, r)| (*rank, !r.contains_rate(SAMPLE_RATE), r.channels()));
    match best {
        Some((_, range)) => {
            let range = *range;
            Ok(range
                .try_with_standard_sample_rate()
                .unwrap_or_else(|| range.with_max_sample_rate()))
        }
        None if ranges.is_empty() => Err(match default {
            Err(e) => open_error(e),
            Ok(_) => DeviceError::UnsupportedFormat {
                direction,
                name: name.to_owned(),
                formats: "none".to_owned(),
            },
        }),
        None => Err(DeviceError::UnsupportedFormat {
            direction,
            name: name.to_owned(),
            formats: ranges
                .iter()
                .map(|r| format_name(r.sample_format()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}
