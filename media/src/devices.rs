//! Sound-card audio I/O through `cpal`: listing devices, capturing the
//! microphone and playing to the speakers, always as Natter's 48 kHz mono
//! 20 ms frames of [`FRAME_SAMPLES`] `i16` samples.
//!
//! ```text
//!  input callback ──► CaptureConverter ──► FrameQueue (bounded) ──► Capture::next_frame
//!  (any format,        (downmix, resample     (drops + counts         (non-blocking,
//!   channels, rate)     to 48k, chunk)         overruns when full)      silence on underrun)
//!
//!  Playback::push_frame ──► FrameQueue (bounded) ──► PlaybackConverter ──► output callback
//! ```
//!
//! A cpal stream is not `Send` on every platform, so each [`Capture`] and
//! [`Playback`] owns a dedicated thread that opens the device, builds and
//! starts the stream, reports success or a [`DeviceError`] within
//! [`OPEN_TIMEOUT`], and keeps the stream alive until the handle is dropped.
//! The handles themselves are `Send` and talk to the audio callback only
//! through bounded channels and atomics: the callback never blocks and never
//! waits on the application.
//!
//! The conversion pieces ([`CaptureConverter`], [`PlaybackConverter`],
//! [`StreamResampler`], [`frame_queue`]) are pure and tested without hardware.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SampleFormat};

use crate::codec::{FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};

/// How long [`Capture::open`] and [`Playback::open`] wait for the stream
/// thread to open and start the device.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`list`] waits for enumeration (which opens every device to read
/// its default configuration).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames (of 20 ms) buffered between the input callback and
/// [`Capture::next_frame`]: 200 ms.
pub const CAPTURE_QUEUE_FRAMES: usize = 10;

/// Frames (of 20 ms) buffered between [`Playback::push_frame`] and the
/// output callback: 200 ms.
pub const PLAYBACK_QUEUE_FRAMES: usize = 10;

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

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

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
    /// The backend did not answer within [`OPEN_TIMEOUT`].
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
fn one_line(message: impl fmt::Display) -> String {
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

/// alsa-lib prints its diagnostics ("ALSA lib pcm.c:…: Unknown PCM default")
/// straight to stderr. On the threads that enumerate and open devices they
/// are captured instead, and the last one is folded into our error.
#[cfg(target_os = "linux")]
mod backend_log {
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Captures alsa-lib messages on the current thread from now on.
    pub(super) struct Capture(Option<Rc<RefCell<alsa::Output>>>);

    pub(super) fn capture() -> Capture {
        Capture(alsa::Output::local_error_handler().ok())
    }

    impl Capture {
        /// The last message captured, if any.
        pub(super) fn last(&self) -> Option<String> {
            let output = self.0.as_ref()?;
            let text = output.try_borrow().ok()?.to_string();
            let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
            // "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default"
            let message = line.rsplit_once(") ").map_or(line, |(_, m)| m);
            Some(message.to_owned())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod backend_log {
    pub(super) struct Capture;

    pub(super) fn capture() -> Capture {
        Capture
    }

    impl Capture {
        pub(super) fn last(&self) -> Option<String> {
            None
        }
    }
}

// ---------------------------------------------------------------------------
// Listing
// ---------------------------------------------------------------------------

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
    fn new(channels: u16, sample_rate: u32, format: SampleFormat) -> Self {
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
    /// host, and also accepted by [`Capture::open`] and [`Playback::open`].
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
fn find_device(
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

/// The error for a device that failed to open. The default device being
/// "not available" means there is no usable device at all (e.g. ALSA's
/// `default` on a machine without a sound card).
fn open_failed(direction: Direction, name: &str, is_default: bool, e: cpal::Error) -> DeviceError {
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

/// Picks a configuration whose sample format this module converts: the
/// device's default if usable, else the best supported range (48 kHz or
/// 44.1 kHz when offered).
fn choose_config(
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

/// A buffer of one frame (20 ms) at the device's rate when the device allows
/// it, else the backend's default.
fn buffer_size_for(config: &cpal::SupportedStreamConfig) -> cpal::BufferSize {
    let wanted = config.sample_rate() * FRAME_MS / 1000;
    match *config.buffer_size() {
        cpal::SupportedBufferSize::Range { min, max } if min <= max && wanted > 0 => {
            cpal::BufferSize::Fixed(wanted.clamp(min, max))
        }
        _ => cpal::BufferSize::Default,
    }
}

// ---------------------------------------------------------------------------
// Pure conversion: resampling, downmix/upmix, framing, the bounded queue
// ---------------------------------------------------------------------------

/// A streaming linear-interpolation resampler: like
/// [`crate::resample::resample`] (same moving-average low-pass when
/// downsampling), but it keeps its state between calls so audio arriving in
/// callback-sized pieces comes out seamless, with no drift from rounding at
/// piece boundaries.
#[derive(Debug, Clone)]
pub struct StreamResampler {
    from: u32,
    to: u32,
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample, in input samples relative to the
    /// start of the next piece; -1 is `prev`.
    pos: f64,
    /// Last (filtered) input sample of the previous piece.
    prev: f32,
    lowpass: Option<MovingAverage>,
    /// Low-passed input (reused between calls).
    scratch: Vec<f32>,
}

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

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz (a rate of 0 passes through).
    pub fn new(from: u32, to: u32) -> Self {
        let lowpass = (from > to && to > 0).then(|| MovingAverage::new(from.div_ceil(to) as usize));
        Self {
            from,
            to,
            step: if to == 0 {
                1.0
            } else {
                f64::from(from) / f64::from(to)
            },
            pos: 0.0,
            prev: 0.0,
            lowpass,
            scratch: Vec::new(),
        }
    }

    /// True when input passes through unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.from == self.to || self.from == 0 || self.to == 0
    }

    /// Resamples the next piece of input, appending to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        if self.is_passthrough() {
            out.extend_from_slice(input);
            return;
        }
        if input.is_empty() {
            return;
        }
        let n = input.len();
        let scratch = &mut self.scratch;
        let source: &[f32] = match &mut self.lowpass {
            Some(lp) => {
                scratch.clear();
                scratch.extend(input.iter().map(|x| lp.push(*x)));
                scratch
            }
            None => input,
        };
        let last = (n - 1) as f64;
        while self.pos < last {
            let floor = self.pos.floor();
            let frac = (self.pos - floor) as f32;
            let (a, b) = if floor < 0.0 {
                (self.prev, source[0])
            } else {
                let i = floor as usize;
                (source[i], source[i + 1])
            };
            out.push(a + (b - a) * frac);
            self.pos += self.step;
        }
        self.pos -= n as f64;
        self.prev = source[n - 1];
    }
}

/// Converts interleaved device samples (any format, channel count and rate)
/// into 48 kHz mono frames of [`FRAME_SAMPLES`] `i16` samples.
#[derive(Debug)]
pub struct CaptureConverter {
    channels: usize,
    resampler: StreamResampler,
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
            resampler: StreamResampler::new(sample_rate, SAMPLE_RATE),
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
        let scale = 1.0 / self.channels as f32;
        self.mono.extend(
            interleaved
                .chunks_exact(self.channels)
                .map(|frame| frame.iter().map(|s| s.to_sample::<f32>()).sum::<f32>() * scale),
        );
        self.resampled.clear();
        self.resampler.process(&self.mono, &mut self.resampled);
        for &x in &self.resampled {
            self.frame[self.fill] = f32_to_i16(x);
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
    resampler: StreamResampler,
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
            resampler: StreamResampler::new(SAMPLE_RATE, sample_rate),
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
                    .extend(self.frame.iter().map(|s| f32::from(*s) / 32768.0));
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

fn f32_to_i16(x: f32) -> i16 {
    (x.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Counters shared between a queue's two ends.
#[derive(Debug, Default)]
struct Counters {
    overruns: AtomicU64,
    underruns: AtomicU64,
    xruns: AtomicU64,
}

/// How often audio was lost on the way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AudioStats {
    /// Frames dropped because the queue was full (the consumer fell behind).
    pub overruns: u64,
    /// Frames asked for when the queue was empty (silence was used).
    pub underruns: u64,
    /// Over- or underruns reported by the device driver itself.
    pub xruns: u64,
}

/// A bounded, non-blocking queue of 20 ms frames: `capacity` frames at most,
/// never grows, never blocks either end. Returns the producer and consumer
/// ends; buffers are recycled from consumer to producer, so a steady stream
/// allocates nothing.
pub fn frame_queue(capacity: usize) -> (FrameSender, FrameReceiver) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::sync_channel(capacity);
    let (pool_tx, pool_rx) = mpsc::sync_channel(capacity + 2);
    let counters = Arc::new(Counters::default());
    (
        FrameSender {
            tx,
            pool: pool_rx,
            spare: None,
            counters: Arc::clone(&counters),
        },
        FrameReceiver {
            rx,
            pool: pool_tx,
            counters,
        },
    )
}

/// The producing end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameSender {
    tx: SyncSender<Box<[i16]>>,
    pool: Receiver<Box<[i16]>>,
    spare: Option<Box<[i16]>>,
    counters: Arc<Counters>,
}

impl FrameSender {
    /// Queues a copy of `frame` (truncated or zero-padded to
    /// [`FRAME_SAMPLES`]). When the queue is full the frame is dropped and
    /// counted as an overrun; returns whether it was queued.
    pub fn push(&mut self, frame: &[i16]) -> bool {
        let mut buf = match self.spare.take() {
            Some(b) => b,
            None => match self.pool.try_recv() {
                Ok(b) => b,
                Err(_) => vec![0; FRAME_SAMPLES].into_boxed_slice(),
            },
        };
        let n = frame.len().min(FRAME_SAMPLES);
        buf[..n].copy_from_slice(&frame[..n]);
        buf[n..].fill(0);
        match self.tx.try_send(buf) {
            Ok(()) => true,
            Err(TrySendError::Full(buf) | TrySendError::Disconnected(buf)) => {
                self.spare = Some(buf);
                self.counters.overruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AudioStats {
        stats_of(&self.counters)
    }
}

/// The consuming end of a [`frame_queue`].
#[derive(Debug)]
pub struct FrameReceiver {
    rx: Receiver<Box<[i16]>>,
    pool: SyncSender<Box<[i16]>>,
    counters: Arc<Counters>,
}

impl FrameReceiver {
    /// Copies the oldest queued frame into `out` (its first
    /// [`FRAME_SAMPLES`] samples; the rest zeroed). When nothing is queued,
    /// fills `out` with silence, counts an underrun and returns false.
    pub fn pop(&mut self, out: &mut [i16]) -> bool {
        match self.rx.try_recv() {
            Ok(buf) => {
                let n = out.len().min(buf.len());
                out[..n].copy_from_slice(&buf[..n]);
                out[n..].fill(0);
                let _ = self.pool.try_send(buf);
                true
            }
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                out.fill(0);
                self.counters.underruns.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> AudioStats {
        stats_of(&self.counters)
    }
}

fn stats_of(c: &Counters) -> AudioStats {
    AudioStats {
        overruns: c.overruns.load(Ordering::Relaxed),
        underruns: c.underruns.load(Ordering::Relaxed),
        xruns: c.xruns.load(Ordering::Relaxed),
    }
}

// ---------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------

/// What a stream was opened as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The device's name.
    pub device: String,
    /// The configuration the device runs at (conversion to and from 48 kHz
    /// mono happens in this module).
    pub config: AudioConfig,
}

/// Shared between a handle and its stream's error callback.
#[derive(Debug, Default)]
struct StreamState {
    last_error: Mutex<Option<String>>,
}

impl StreamState {
    fn error_callback(
        self: &Arc<Self>,
        counters: Arc<Counters>,
    ) -> impl FnMut(cpal::Error) + Send + 'static + use<> {
        let state = Arc::clone(self);
        move |e: cpal::Error| {
            if e.kind() == cpal::ErrorKind::Xrun {
                counters.xruns.fetch_add(1, Ordering::Relaxed);
            } else if let Ok(mut last) = state.last_error.lock() {
                *last = Some(one_line(e));
            }
        }
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// Keeps a stream thread alive; dropping it tells the thread to stop (and
/// drop the stream) without waiting for it.
#[derive(Debug)]
struct StreamThread {
    _stop: SyncSender<()>,
}

/// Spawns the thread that owns a cpal stream. `build` runs on that thread
/// and returns the started stream plus the handle's end of its frame queue;
/// the caller waits at most `timeout` for it.
fn spawn_stream_thread<B, Q>(
    direction: Direction,
    name: Option<&str>,
    timeout: Duration,
    build: B,
) -> Result<(StreamThread, StreamInfo, Q), DeviceError>
where
    B: FnOnce() -> Result<(cpal::Stream, StreamInfo, Q), DeviceError> + Send + 'static,
    Q: Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = mpsc::sync_channel::<()>(1);
    let thread_name = match direction {
        Direction::Input => "natter-capture",
        Direction::Output => "natter-playback",
    };
    thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || match build() {
            Ok((stream, info, queue_end)) => {
                if ready_tx.send(Ok((info, queue_end))).is_ok() {
                    // Park until the handle is dropped (the sender goes away).
                    let _ = stop_rx.recv();
                }
                drop(stream);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| DeviceError::Backend(one_line(format!("cannot start a thread: {e}"))))?;
    let name = name.unwrap_or("default").to_owned();
    match ready_rx.recv_timeout(timeout) {
        Ok(Ok((info, queue_end))) => Ok((StreamThread { _stop: stop_tx }, info, queue_end)),
        Ok(Err(e)) => Err(e),
        Err(RecvTimeoutError::Timeout) => Err(DeviceError::Timeout {
            direction,
            name,
            after: timeout,
        }),
        Err(RecvTimeoutError::Disconnected) => Err(DeviceError::Open {
            direction,
            name,
            reason: "the audio backend failed while opening it".to_owned(),
        }),
    }
}

/// Builds and starts a stream, retrying with the backend's default buffer
/// size if a 20 ms buffer is refused. `make_callbacks` is called once per
/// attempt and returns the data callback, the error callback and the
/// handle's end of that attempt's frame queue, which is returned with the
/// stream that uses it.
fn build_stream<D, E, Q>(
    device: &cpal::Device,
    direction: Direction,
    name: &str,
    is_default: bool,
    supported: &cpal::SupportedStreamConfig,
    mut make_callbacks: impl FnMut() -> (D, E, Q),
) -> Result<(cpal::Stream, Q), DeviceError>
where
    D: StreamCallback,
    E: FnMut(cpal::Error) + Send + 'static,
{
    let open_error = |e: cpal::Error| open_failed(direction, name, is_default, e);
    let format = supported.sample_format();
    let mut attempt = |config: cpal::StreamConfig| {
        let (data, error, queue_end) = make_callbacks();
        let stream = match direction {
            Direction::Input => device.build_input_stream_raw(
                config,
                format,
                data.into_input(),
                error,
                Some(OPEN_TIMEOUT),
            ),
            Direction::Output => device.build_output_stream_raw(
                config,
                format,
                data.into_output(),
                error,
                Some(OPEN_TIMEOUT),
            ),
        };
        stream.map(|s| (s, queue_end))
    };
    let mut config = supported.config();
    config.buffer_size = buffer_size_for(supported);
    let (stream, queue_end) = match attempt(config) {
        Ok(built) => built,
        Err(first) if config.buffer_size != cpal::BufferSize::Default => {
            config.buffer_size = cpal::BufferSize::Default;
            attempt(config).map_err(|_| open_error(first))?
        }
        Err(e) => return Err(open_error(e)),
    };
    stream.play().map_err(open_error)?;
    Ok((stream, queue_end))
}

/// Finds, configures, builds and starts a stream on its own thread (see
/// [`spawn_stream_thread`]). `make` builds one attempt's callbacks and queue.
fn open_stream<D, E, Q>(
    direction: Direction,
    name: Option<&str>,
    state: &Arc<StreamState>,
    make: impl Fn(&cpal::SupportedStreamConfig, &Arc<StreamState>) -> (D, E, Q) + Send + 'static,
) -> Result<(StreamThread, StreamInfo, Q), DeviceError>
where
    D: StreamCallback,
    E: FnMut(cpal::Error) + Send + 'static,
    Q: Send + 'static,
{
    let wanted = name.map(str::to_owned);
    let state = Arc::clone(state);
    spawn_stream_thread(direction, name, OPEN_TIMEOUT, move || {
        let log = backend_log::capture();
        let is_default = wanted.is_none();
        let opened = find_device(wanted.as_deref(), direction).and_then(|(device, dev_name)| {
            let supported = choose_config(&device, direction, &dev_name, is_default)?;
            let (stream, queue_end) = build_stream(
                &device,
                direction,
                &dev_name,
                is_default,
                &supported,
                || make(&supported, &state),
            )?;
            Ok((stream, stream_info(dev_name, &supported), queue_end))
        });
        opened.map_err(|mut e| {
            if let (DeviceError::Open { reason, .. }, Some(detail)) = (&mut e, log.last()) {
                reason.push_str(" (ALSA: ");
                reason.push_str(&detail);
                reason.push(')');
            }
            e
        })
    })
}

/// A data callback usable for either direction (only the matching one is
/// ever called).
trait StreamCallback: Send + 'static {
    fn into_input(self) -> impl FnMut(&cpal::Data, &cpal::InputCallbackInfo) + Send + 'static;
    fn into_output(self)
    -> impl FnMut(&mut cpal::Data, &cpal::OutputCallbackInfo) + Send + 'static;
}

/// The input side: device samples → converter → bounded queue.
struct CaptureCallback {
    converter: CaptureConverter,
    sender: FrameSender,
}

impl StreamCallback for CaptureCallback {
    fn into_input(mut self) -> impl FnMut(&cpal::Data, &cpal::InputCallbackInfo) + Send + 'static {
        move |data: &cpal::Data, _: &cpal::InputCallbackInfo| {
            let Self { converter, sender } = &mut self;
            macro_rules! convert {
                ($($format:ident => $t:ty),* $(,)?) => {
                    match data.sample_format() {
                        $(SampleFormat::$format => {
                            if let Some(samples) = data.as_slice::<$t>() {
                                converter.push(samples, |frame| {
                                    sender.push(frame);
                                });
                            }
                        })*
                        _ => {}
                    }
                };
            }
            convert!(
                F32 => f32, I16 => i16, I32 => i32, I24 => cpal::I24, U16 => u16,
                F64 => f64, I8 => i8, U8 => u8, U32 => u32,
            );
        }
    }

    fn into_output(
        self,
    ) -> impl FnMut(&mut cpal::Data, &cpal::OutputCallbackInfo) + Send + 'static {
        |data: &mut cpal::Data, _: &cpal::OutputCallbackInfo| silence(data)
    }
}

/// The output side: bounded queue → converter → device samples.
struct PlaybackCallback {
    converter: PlaybackConverter,
    receiver: FrameReceiver,
}

impl StreamCallback for PlaybackCallback {
    fn into_input(self) -> impl FnMut(&cpal::Data, &cpal::InputCallbackInfo) + Send + 'static {
        |_: &cpal::Data, _: &cpal::InputCallbackInfo| {}
    }

    fn into_output(
        mut self,
    ) -> impl FnMut(&mut cpal::Data, &cpal::OutputCallbackInfo) + Send + 'static {
        move |data: &mut cpal::Data, _: &cpal::OutputCallbackInfo| {
            let Self {
                converter,
                receiver,
            } = &mut self;
            macro_rules! convert {
                ($($format:ident => $t:ty),* $(,)?) => {
                    match data.sample_format() {
                        $(SampleFormat::$format => {
                            if let Some(out) = data.as_slice_mut::<$t>() {
                                converter.fill(out, |frame| receiver.pop(frame));
                            } else {
                                silence(data);
                            }
                        })*
                        _ => silence(data),
                    }
                };
            }
            convert!(
                F32 => f32, I16 => i16, I32 => i32, I24 => cpal::I24, U16 => u16,
                F64 => f64, I8 => i8, U8 => u8, U32 => u32,
            );
        }
    }
}

/// Writes silence in whatever format `data` has.
fn silence(data: &mut cpal::Data) {
    macro_rules! zero {
        ($($format:ident => $t:ty),* $(,)?) => {
            match data.sample_format() {
                $(SampleFormat::$format => {
                    if let Some(out) = data.as_slice_mut::<$t>() {
                        out.fill(<$t as Sample>::EQUILIBRIUM);
                    }
                })*
                _ => data.bytes_mut().fill(0),
            }
        };
    }
    zero!(U8 => u8, U16 => u16, U32 => u32);
}

/// Microphone input as 48 kHz mono 20 ms frames.
///
/// `Send`: the cpal stream lives on its own thread; this handle holds the
/// receiving end of a bounded frame queue. Dropping it stops the stream.
#[derive(Debug)]
pub struct Capture {
    frames: FrameReceiver,
    info: StreamInfo,
    state: Arc<StreamState>,
    _thread: StreamThread,
}

impl Capture {
    /// Opens an input device: `None` for the default one, else the device
    /// whose name or id (as in [`list`]) is exactly `name`. Waits at most
    /// [`OPEN_TIMEOUT`] for the device to start.
    pub fn open(name: Option<&str>) -> Result<Capture, DeviceError> {
        let state = Arc::new(StreamState::default());
        let (thread, info, frames) =
            open_stream(Direction::Input, name, &state, |supported, state| {
                let (sender, receiver) = frame_queue(CAPTURE_QUEUE_FRAMES);
                let errors = state.error_callback(Arc::clone(&sender.counters));
                let callback = CaptureCallback {
                    converter: CaptureConverter::new(supported.channels(), supported.sample_rate()),
                    sender,
                };
                (callback, errors, receiver)
            })?;
        Ok(Capture {
            frames,
            info,
            state,
            _thread: thread,
        })
    }

    /// Non-blocking: copies the next 20 ms frame into `out` (normally
    /// [`FRAME_SAMPLES`] long) and returns true, or fills `out` with silence,
    /// counts an underrun and returns false when none is ready.
    pub fn next_frame(&mut self, out: &mut [i16]) -> bool {
        self.frames.pop(out)
    }

    /// The device and configuration in use.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Overruns (frames dropped because `next_frame` was not called often
    /// enough), underruns and driver xruns so far.
    pub fn stats(&self) -> AudioStats {
        self.frames.stats()
    }

    /// The last error the stream reported (e.g. the device was unplugged).
    pub fn last_error(&self) -> Option<String> {
        self.state.last_error()
    }
}

/// Speaker output fed with 48 kHz mono 20 ms frames.
///
/// `Send`: the cpal stream lives on its own thread; this handle holds the
/// sending end of a bounded frame queue. Dropping it stops the stream.
#[derive(Debug)]
pub struct Playback {
    frames: FrameSender,
    info: StreamInfo,
    state: Arc<StreamState>,
    _thread: StreamThread,
}

impl Playback {
    /// Opens an output device: `None` for the default one, else the device
    /// whose name or id (as in [`list`]) is exactly `name`. Waits at most
    /// [`OPEN_TIMEOUT`] for the device to start.
    pub fn open(name: Option<&str>) -> Result<Playback, DeviceError> {
        let state = Arc::new(StreamState::default());
        let (thread, info, frames) =
            open_stream(Direction::Output, name, &state, |supported, state| {
                let (sender, receiver) = frame_queue(PLAYBACK_QUEUE_FRAMES);
                let errors = state.error_callback(Arc::clone(&receiver.counters));
                let callback = PlaybackCallback {
                    converter: PlaybackConverter::new(
                        supported.channels(),
                        supported.sample_rate(),
                    ),
                    receiver,
                };
                (callback, errors, sender)
            })?;
        Ok(Playback {
            frames,
            info,
            state,
            _thread: thread,
        })
    }

    /// Non-blocking: queues one 20 ms frame ([`FRAME_SAMPLES`] samples;
    /// shorter is zero-padded, longer truncated). When the queue is full the
    /// frame is dropped and counted as an overrun; returns whether it was
    /// queued.
    pub fn push_frame(&mut self, frame: &[i16]) -> bool {
        self.frames.push(frame)
    }

    /// The device and configuration in use.
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Overruns (frames dropped because the device played slower than frames
    /// were pushed), underruns (device callbacks that found the queue empty
    /// and played silence) and driver xruns so far.
    pub fn stats(&self) -> AudioStats {
        self.frames.stats()
    }

    /// The last error the stream reported (e.g. the device was unplugged).
    pub fn last_error(&self) -> Option<String> {
        self.state.last_error()
    }
}

fn stream_info(device: String, supported: &cpal::SupportedStreamConfig) -> StreamInfo {
    StreamInfo {
        device,
        config: AudioConfig::new(
            supported.channels(),
            supported.sample_rate(),
            supported.sample_format(),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use crate::test_signal::frequency;

    fn tone(rate: u32, hz: f32, secs: f32) -> Vec<f32> {
        crate::test_signal::tone(rate, hz, secs, 0.5)
    }

    fn to_f32(frames: &[i16]) -> Vec<f32> {
        frames.iter().map(|s| f32::from(*s) / 32768.0).collect()
    }

    /// Uneven piece sizes, like real callbacks.
    fn pieces(len: usize) -> Vec<std::ops::Range<usize>> {
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

    #[test]
    fn stream_resampler_is_seamless_across_pieces_and_matches_whole_buffer() {
        for from in [8_000u32, 16_000, 22_050, 44_100, 48_000, 96_000] {
            let input = tone(from, 440.0, 1.0);
            let whole = crate::resample::resample(&input, from, SAMPLE_RATE);
            let mut r = StreamResampler::new(from, SAMPLE_RATE);
            let mut streamed = Vec::new();
            for piece in pieces(input.len()) {
                r.process(&input[piece], &mut streamed);
            }
            // Same length, less the output held back until the next input
            // sample arrives to interpolate towards.
            let held = i64::from(SAMPLE_RATE.div_ceil(from)) + 1;
            assert!(
                (streamed.len() as i64 - whole.len() as i64).abs() <= held,
                "{from}: {} vs {}",
                streamed.len(),
                whole.len()
            );
            // Same samples: no clicks or drift at piece boundaries.
            let n = streamed.len().min(whole.len()) - 2;
            for i in 0..n {
                assert!(
                    (streamed[i] - whole[i]).abs() < 1e-3,
                    "{from} Hz, sample {i}: {} vs {}",
                    streamed[i],
                    whole[i]
                );
            }
            let f = frequency(&streamed, SAMPLE_RATE);
            assert!((f - 440.0).abs() < 5.0, "{from} Hz came out at {f} Hz");
        }
    }

    #[test]
    fn stream_resampler_converts_48k_down_to_device_rates() {
        for to in [8_000u32, 44_100, 48_000, 96_000] {
            let input = tone(SAMPLE_RATE, 440.0, 1.0);
            let mut r = StreamResampler::new(SAMPLE_RATE, to);
            let mut out = Vec::new();
            for frame in input.chunks(FRAME_SAMPLES) {
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
    fn capture_converter_downmixes_resamples_and_frames_any_format() {
        // Stereo 44.1 kHz i16, the same tone on both channels, in uneven pieces.
        let rate = 44_100;
        let mono = tone(rate, 440.0, 1.0);
        let stereo: Vec<i16> = mono
            .iter()
            .flat_map(|x| {
                let s = f32_to_i16(*x);
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

        // f32 mono at 16 kHz: 20 ms in gives one 20 ms frame out (give or take
        // the sample held back for interpolation), so feed a bit more.
        let mut conv = CaptureConverter::new(1, 16_000);
        let mut got = 0;
        conv.push(&vec![0.25f32; 330], |_| got += 1);
        assert_eq!(got, 1);

        // A trailing partial device frame is ignored, not misaligned.
        let mut conv = CaptureConverter::new(3, SAMPLE_RATE);
        let mut got = Vec::new();
        conv.push(&[0.5f32; FRAME_SAMPLES * 3 + 2], |f| got.push(f.to_vec()));
        assert_eq!(got.len(), 1);
        assert!(got[0].iter().all(|s| *s == f32_to_i16(0.5)));
    }

    #[test]
    fn playback_converter_resamples_upmixes_and_plays_silence_on_underrun() {
        let rate = 44_100;
        let source: Vec<i16> = tone(SAMPLE_RATE, 440.0, 1.0)
            .iter()
            .map(|x| f32_to_i16(*x))
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
        // Everything came out at 44.1 kHz, then silence.
        let audible = played.iter().rposition(|x| *x != 0.0).unwrap() + 1;
        assert!((audible as i64 - i64::from(rate)).abs() <= 3, "{audible}");
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

    #[test]
    fn frame_queue_is_bounded_drops_newest_and_counts() {
        let (mut tx, mut rx) = frame_queue(3);
        let frame = |v: i16| vec![v; FRAME_SAMPLES];
        let queued: Vec<bool> = (1..=5).map(|v| tx.push(&frame(v))).collect();
        assert_eq!(queued, [true, true, true, false, false]);
        assert_eq!(tx.stats().overruns, 2);

        let mut out = vec![7i16; FRAME_SAMPLES];
        for v in 1..=3 {
            assert!(rx.pop(&mut out));
            assert_eq!(out, frame(v), "oldest first");
        }
        assert!(!rx.pop(&mut out));
        assert_eq!(out, frame(0), "silence on underrun");
        assert_eq!(
            rx.stats(),
            AudioStats {
                overruns: 2,
                underruns: 1,
                xruns: 0
            }
        );

        // Recycled buffers and partial frames: zero-padded, never stale.
        for _ in 0..100 {
            assert!(tx.push(&[9; 10]));
            assert!(rx.pop(&mut out));
            assert_eq!(&out[..10], &[9; 10]);
            assert!(out[10..].iter().all(|s| *s == 0));
        }
        // A consumer that is gone: pushes are dropped and counted, not queued.
        drop(rx);
        assert!(!tx.push(&frame(1)));
        assert_eq!(tx.stats().overruns, 3);
    }

    #[test]
    fn stream_thread_start_is_bounded_and_failures_are_errors() {
        let t = std::time::Instant::now();
        let slow =
            spawn_stream_thread::<_, ()>(Direction::Input, None, Duration::from_millis(50), || {
                thread::sleep(Duration::from_millis(300));
                Err(DeviceError::NoDevice {
                    direction: Direction::Input,
                })
            });
        assert!(t.elapsed() < Duration::from_millis(250));
        let err = slow.err().unwrap();
        assert!(matches!(err, DeviceError::Timeout { .. }), "{err:?}");
        assert!(
            err.to_string().contains("did not start within 0.1 s"),
            "{err}"
        );

        let failed =
            spawn_stream_thread::<_, ()>(Direction::Output, Some("x"), OPEN_TIMEOUT, || {
                Err(DeviceError::Backend("boom".to_owned()))
            });
        assert_eq!(failed.err(), Some(DeviceError::Backend("boom".to_owned())));
    }

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
                after: OPEN_TIMEOUT,
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

    #[test]
    fn handles_are_send() {
        fn send<T: Send>() {}
        send::<Capture>();
        send::<Playback>();
        send::<FrameSender>();
        send::<FrameReceiver>();
    }
}
