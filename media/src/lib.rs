//! # natter-media
//!
//! Natter's voice path, minus the sockets and the clock:
//!
//! | module | concept |
//! |---|---|
//! | [`codec`] | Opus at 48 kHz mono, 20 ms frames, 18 kb/s CBR wideband, in-band FEC on, DTX off; neural decoder (NoLACE, deep PLC) |
//! | [`session`] | one call's voice: encode every 20 ms, jitter buffer + decode (sealing and paths: `natter_proto::session`) |
//! | [`wav`] | WAV files in and out (headless audio I/O) |
//! | [`devices`] | sound-card capture and playback (cpal), as 48 kHz mono frames |
//! | [`resample`] | the one resampler (band-limited, `rubato`), for files and streams (any rate to and from 48 kHz) |
//! | [`pcm`] | sample conversions: float and 16-bit, downmix to mono |
//! | [`mix`] | mix-minus for a conference host: each leg hears the others, never itself |
//! | [`score`] | how well received audio matches what was sent |
//! | [`loopback`] | a caller and a callee back to back in memory (tests and benches) |
//! | [`emodel`] | estimated MOS of a call (ITU-T G.107 E-model) from delay and loss |
//!
//! The shell (the `natter` client) owns the UDP socket and the 20 ms timer and
//! drives a [`session::MediaSession`] with `encode`, `handle_frame` and
//! `poll_audio`, next to the call's `natter_proto::session::CallSession`,
//! passing the time in.

pub mod codec;
pub mod devices;
pub mod emodel;
pub mod loopback;
pub mod mix;
pub mod pcm;
pub mod resample;
pub mod score;
pub mod session;
pub mod wav;

#[cfg(test)]
mod test_signal;

pub use codec::{FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
