//! The stream thread: a cpal stream is not `Send` on every platform, so each
//! stream lives on a thread of its own that finds and opens the device,
//! builds and starts the stream, reports success or a [`DeviceError`] within
//! [`OPEN_TIMEOUT`], and keeps the stream alive until its handle goes. The
//! audio callbacks run the converters and touch only their end of a bounded
//! frame queue: they never block and never wait on the application.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cpal::traits::{DeviceTrait, StreamTrait};
use cpal::{Sample, SampleFormat};

use super::backend_log;
use super::convert::{CaptureConverter, PlaybackConverter};
use super::enumerate::{AudioConfig, choose_config, find_device};
use super::error::{DeviceError, Direction, one_line, open_failed};
use super::queue::{
    CAPTURE_QUEUE_FRAMES, Counters, FrameReceiver, FrameSender, PLAYBACK_QUEUE_FRAMES, frame_queue,
};
use crate::codec::FRAME_MS;

/// How long [`Capture::open`](super::Capture::open) and
/// [`Playback::open`](super::Playback::open) wait for the stream thread to
/// open and start the device.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// An open stream as its handle holds it: the thread keeping it alive, what
/// it was opened as, the handle's end of its frame queue, and the errors its
/// callback reported.
#[derive(Debug)]
pub(super) struct Opened<Q> {
    pub(super) thread: StreamThread,
    pub(super) info: StreamInfo,
    pub(super) frames: Q,
    pub(super) state: Arc<StreamState>,
}

/// Opens an input stream (`None`: the default device): device samples →
/// [`CaptureConverter`] → a queue of [`CAPTURE_QUEUE_FRAMES`] frames.
pub(super) fn open_capture(name: Option<&str>) -> Result<Opened<FrameReceiver>, DeviceError> {
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
    Ok(Opened {
        thread,
        info,
        frames,
        state,
    })
}

/// Opens an output stream (`None`: the default device): a queue of
/// [`PLAYBACK_QUEUE_FRAMES`] frames → [`PlaybackConverter`] → device samples.
pub(super) fn open_playback(name: Option<&str>) -> Result<Opened<FrameSender>, DeviceError> {
    let state = Arc::new(StreamState::default());
    let (thread, info, frames) =
        open_stream(Direction::Output, name, &state, |supported, state| {
            let (sender, receiver) = frame_queue(PLAYBACK_QUEUE_FRAMES);
            let errors = state.error_callback(Arc::clone(&receiver.counters));
            let callback = PlaybackCallback {
                converter: PlaybackConverter::new(supported.channels(), supported.sample_rate()),
                receiver,
            };
            (callback, errors, sender)
        })?;
    Ok(Opened {
        thread,
        info,
        frames,
        state,
    })
}

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
pub(super) struct StreamState {
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

    pub(super) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }
}

/// Keeps a stream thread alive; dropping it tells the thread to stop (and
/// drop the stream) without waiting for it.
#[derive(Debug)]
pub(super) struct StreamThread {
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
}
