//! Sound-card audio I/O through `cpal`: listing devices, capturing the
//! microphone and playing to the speakers, always as Natter's 48 kHz mono
//! 20 ms frames of [`FRAME_SAMPLES`](crate::FRAME_SAMPLES) `i16` samples.
//!
//! ```text
//!  input callback ──► CaptureConverter ──► FrameQueue (bounded) ──► Capture::next_frame
//!  (any format,        (downmix, resample     (drops + counts         (non-blocking,
//!   channels, rate)     to 48k, chunk)         overruns when full)      silence on underrun)
//!
//!  Playback::push_frame ──► FrameQueue (bounded) ──► PlaybackConverter ──► output callback
//! ```
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the public handles [`Capture`] and [`Playback`] |
//! | `error.rs` | [`Direction`] and [`DeviceError`]: one line, pointing to the WAV options |
//! | `enumerate.rs` | [`list`], finding a device by name, choosing its configuration |
//! | `convert.rs` | [`CaptureConverter`], [`PlaybackConverter`]: formats, channels, the one [`Resampler`](crate::resample::Resampler), framing |
//! | `queue.rs` | [`frame_queue`]: bounded, non-blocking, counted |
//! | `stream.rs` | the stream thread and the audio callbacks |
//! | `backend_log.rs` | alsa-lib's stderr chatter folded into errors |
//!
//! The handles are `Send` and talk to the audio callback only through
//! bounded channels and atomics. The conversion pieces and the queue are
//! pure and tested without hardware. The files import in one direction:
//! `mod.rs` → `stream.rs` → (`enumerate.rs`, `convert.rs`, `queue.rs`) →
//! `error.rs`; none imports `mod.rs`.

mod backend_log;
mod convert;
mod enumerate;
mod error;
mod queue;
mod stream;

use std::sync::Arc;

pub use convert::{CaptureConverter, PlaybackConverter};
pub use enumerate::{AudioConfig, DeviceInfo, LIST_TIMEOUT, list};
pub use error::{DeviceError, Direction};
pub use queue::{
    AudioStats, CAPTURE_QUEUE_FRAMES, FrameReceiver, FrameSender, PLAYBACK_QUEUE_FRAMES,
    frame_queue,
};
pub use stream::{OPEN_TIMEOUT, StreamInfo};

use stream::{StreamState, StreamThread};

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
        let opened = stream::open_capture(name)?;
        Ok(Capture {
            frames: opened.frames,
            info: opened.info,
            state: opened.state,
            _thread: opened.thread,
        })
    }

    /// Non-blocking: copies the next 20 ms frame into `out` (normally
    /// [`FRAME_SAMPLES`](crate::FRAME_SAMPLES) long) and returns true, or fills `out` with silence,
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
        let opened = stream::open_playback(name)?;
        Ok(Playback {
            frames: opened.frames,
            info: opened.info,
            state: opened.state,
            _thread: opened.thread,
        })
    }

    /// Non-blocking: queues one 20 ms frame ([`FRAME_SAMPLES`](crate::FRAME_SAMPLES) samples;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send() {
        fn send<T: Send>() {}
        send::<Capture>();
        send::<Playback>();
        send::<FrameSender>();
        send::<FrameReceiver>();
    }
}
