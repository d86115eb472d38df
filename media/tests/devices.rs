//! Sound-card I/O against whatever this machine has: these pass with a real
//! card, with only ALSA's `null` device, and with nothing at all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use natter_media::FRAME_SAMPLES;
use natter_media::devices::{self, Capture, DeviceError, OPEN_TIMEOUT, Playback};

/// An error a user sees: one line, and it tells them about WAV files.
fn assert_clear(e: &DeviceError) {
    let text = e.to_string();
    assert!(!text.is_empty());
    assert!(!text.contains('\n'), "not one line: {text:?}");
    assert!(
        text.to_lowercase().contains("wav") || matches!(e, DeviceError::Backend(_)),
        "does not mention WAV: {text}"
    );
}

#[test]
fn listing_never_panics_and_prints_one_line_per_device() {
    match devices::list() {
        Ok(list) => {
            for d in &list {
                let line = d.to_string();
                assert!(!line.contains('\n'), "{line:?}");
                assert!(line.contains(&d.name), "{line}");
                assert!(!d.host.is_empty());
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "{text:?}");
        }
    }
}

#[test]
fn unknown_name_is_not_found_with_the_available_list() {
    let name = "no such card, surely (natter test)";
    let listed = devices::list().unwrap_or_default();
    for (what, result) in [
        ("input", Capture::open(Some(name)).err()),
        ("output", Playback::open(Some(name)).err()),
    ] {
        let err = result.expect("a nonexistent device opened");
        assert_clear(&err);
        let DeviceError::NotFound {
            name: asked,
            available,
            ..
        } = &err
        else {
            panic!("{what}: expected NotFound, got {err:?}");
        };
        assert_eq!(asked, name);
        let text = err.to_string();
        assert!(text.contains(name) && text.contains("available"), "{text}");
        // Every name offered is a device that list() shows for that direction.
        for label in available {
            assert!(text.contains(label.as_str()), "{text}");
            assert!(
                listed.iter().any(|d| {
                    let usable = if what == "input" { d.input } else { d.output };
                    usable && label.starts_with(&d.name)
                }),
                "{label} is not in list()"
            );
        }
    }
}

#[test]
fn default_devices_open_or_fail_clearly_and_quickly() {
    let started = Instant::now();
    match Capture::open(None) {
        Ok(mut capture) => {
            // Non-blocking whether or not audio has arrived yet.
            let mut frame = vec![1i16; FRAME_SAMPLES];
            let t = Instant::now();
            let _ = capture.next_frame(&mut frame);
            assert!(t.elapsed() < Duration::from_millis(50));
            assert!(capture.info().config.sample_rate > 0);
        }
        Err(e) => assert_clear(&e),
    }
    match Playback::open(None) {
        Ok(mut playback) => {
            let t = Instant::now();
            for _ in 0..50 {
                playback.push_frame(&[0; FRAME_SAMPLES]);
            }
            assert!(t.elapsed() < Duration::from_millis(50), "push blocked");
        }
        Err(e) => assert_clear(&e),
    }
    assert!(started.elapsed() < 2 * OPEN_TIMEOUT + Duration::from_secs(1));
}

/// ALSA's `null` device runs real cpal streams without hardware. It is not
/// paced (its callbacks spin), so this stays brief.
#[test]
fn null_device_streams_end_to_end_when_present() {
    let mut capture = match Capture::open(Some("null")) {
        Ok(c) => c,
        Err(e) => {
            assert_clear(&e);
            eprintln!("no usable `null` device here ({e}); skipping");
            return;
        }
    };
    // Handles are Send: drive the capture from another thread.
    let got = std::thread::spawn(move || {
        let mut frame = vec![1i16; FRAME_SAMPLES];
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if capture.next_frame(&mut frame) {
                return Some((frame, capture.stats()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    })
    .join()
    .unwrap();
    let (frame, _stats) = got.expect("no frame from the null device within 2 s");
    assert_eq!(frame, vec![0i16; FRAME_SAMPLES], "null captures silence");

    let mut playback = Playback::open(Some("null")).expect("null opens for input but not output");
    let t = Instant::now();
    while playback.stats().underruns == 0 && t.elapsed() < Duration::from_secs(2) {
        playback.push_frame(&[1000; FRAME_SAMPLES]);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The device drained the queue and then played silence, counting it.
    assert!(playback.stats().underruns > 0, "{:?}", playback.stats());
    assert_eq!(playback.last_error(), None);
}
