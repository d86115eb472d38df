//! alsa-lib prints its diagnostics ("ALSA lib pcm.c:…: Unknown PCM default")
//! straight to stderr. On the threads that enumerate and open devices they
//! are captured instead, and the last one is folded into our error.

#[cfg(target_os = "linux")]
use std::cell::RefCell;
#[cfg(target_os = "linux")]
use std::rc::Rc;

/// Captures alsa-lib messages on the current thread from now on.
#[cfg(target_os = "linux")]
pub(super) struct Capture(Option<Rc<RefCell<alsa::Output>>>);

/// Captures backend messages (none outside Linux).
#[cfg(not(target_os = "linux"))]
pub(super) struct Capture;

/// Starts capturing on the current thread.
pub(super) fn capture() -> Capture {
    #[cfg(target_os = "linux")]
    {
        Capture(alsa::Output::local_error_handler().ok())
    }
    #[cfg(not(target_os = "linux"))]
    {
        Capture
    }
}

impl Capture {
    /// The last message captured, if any.
    #[cfg(target_os = "linux")]
    pub(super) fn last(&self) -> Option<String> {
        let output = self.0.as_ref()?;
        let text = output.try_borrow().ok()?.to_string();
        let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
        // "ALSA lib pcm.c:2666:(snd_pcm_open_noupdate) Unknown PCM default"
        let message = line.rsplit_once(") ").map_or(line, |(_, m)| m);
        Some(message.to_owned())
    }

    /// The last message captured: none outside Linux.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn last(&self) -> Option<String> {
        None
    }
}
