//! A conference through the NAT lab (issue 19), with the real natter-login,
//! natter-supernode and natter binaries (needs root, and the binaries
//! built: NATTER_BIN_DIR, else next to this crate's binary).
//!
//! Three participants behind an open, a port-restricted and a symmetric
//! NAT, each sending its own tone; the symmetric one convenes (and
//! declares the largest upstream), so the open one hosts only if the
//! election really ranks reachability first. The host leaves after a
//! while; the other two (port-restricted x symmetric: a relayed pair) go
//! on as a plain call. Per source, by correlation with each tone, as the
//! loopback conference tests (client/tests/conference.rs) judge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bin_dir, one_lab_at_a_time};
use natter_interop_tests::conference::{
    ConferenceOptions, Heard, Participant, participant_name, run_conference,
};
use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::Binaries;
use natter_media::score::{
    TONE_ABSENT_MAX, TONE_HEARD_MIN, longest_gap_ms, tone_amplitude, tone_frames,
};

/// Seconds the open participant (the host) stays.
const HOST_SECS: u32 = 10;
/// Seconds the other two stay.
const OTHERS_SECS: u32 = 20;

fn field<'a>(h: &'a Heard, name: &str) -> &'a serde_json::Value {
    &h.json["conference"][name]
}

/// Each of `tones`' amplitude in each whole second of `audio`.
fn levels(audio: &[i16], tones: &[f64]) -> Vec<Vec<f64>> {
    audio
        .chunks_exact(48_000)
        .map(|w| tones.iter().map(|&hz| tone_amplitude(w, hz)).collect())
        .collect()
}

#[test]
fn open_hosts_a_conference_with_port_restricted_and_symmetric_and_leaves() {
    let _turn = one_lab_at_a_time();
    let out = std::env::temp_dir().join(format!("natter-lab-conference-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let participants = vec![
        Participant {
            nat: NatType::Open,
            secs: HOST_SECS,
            upstream_kbps: 500,
        },
        Participant {
            nat: NatType::PortRestricted,
            secs: OTHERS_SECS,
            upstream_kbps: 500,
        },
        // The convener, with four times the others' upstream: reachability
        // (rule 1) must still make the open one host.
        Participant {
            nat: NatType::Symmetric,
            secs: OTHERS_SECS,
            upstream_kbps: 2000,
        },
    ];
    let opts = ConferenceOptions {
        out: out.clone(),
        bins: Binaries::in_dir(&bin_dir()).expect("natter binaries"),
        probe_exe: env!("CARGO_BIN_EXE_natter-interop-tests").into(),
        participants,
        convener: 2,
    };
    let run = run_conference(&opts).expect("lab conference");
    println!("self-check:\n{}", run.self_check_table);
    println!("conference run took {:.1} s", run.secs);
    let heard = &run.heard;
    assert_eq!(heard.len(), 3);
    for h in heard {
        println!("{} ({}): {}", h.name, h.nat, h.json["conference"]);
        for leg in h.json["legs"].as_array().into_iter().flatten() {
            println!(
                "  leg {}: {} {} s, received {}, lost {}, max gap {} ms, first audio {} ms",
                leg["peer"],
                leg["path"],
                leg["duration_s"],
                leg["media_packets_received"],
                leg["packets_lost"],
                leg["max_media_gap_ms"],
                leg["first_audio_ms"],
            );
        }
        assert!(h.exit_ok, "{} failed:\n{}", h.name, h.log);
    }
    let tones: Vec<f64> = heard.iter().map(|h| h.tone_hz).collect();
    let host = participant_name(0, NatType::Open);

    // The open one was elected, by everyone, and mixed.
    for h in heard {
        assert_eq!(
            field(h, "hosts")[0],
            host.as_str(),
            "{}: {}",
            h.name,
            h.json
        );
    }
    let open = &heard[0];
    assert!(
        field(open, "hosted_frames").as_u64().unwrap() > 100,
        "{}",
        open.json
    );
    let legs = open.json["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2, "the host's legs: {}", open.json);
    for leg in legs {
        assert!(
            leg["media_packets_received"].as_u64().unwrap() > 100,
            "{leg}"
        );
        assert!(leg["mean_udp_payload"].as_f64().unwrap() <= 67.0, "{leg}");
    }

    // Everyone hears everyone else while the host is in, never itself.
    for (p, h) in heard.iter().enumerate() {
        let seconds = levels(&h.audio, &tones);
        for (s, l) in seconds.iter().enumerate() {
            assert!(
                l[p] < TONE_ABSENT_MAX,
                "{} hears itself at {:.0} in second {s}: {seconds:.0?}",
                h.name,
                l[p]
            );
        }
        let all = seconds
            .iter()
            .filter(|l| (0..3).all(|q| q == p || l[q] > TONE_HEARD_MIN))
            .count();
        println!(
            "{} hears both others in {all} of {} s: {seconds:.0?}",
            h.name,
            seconds.len()
        );
        assert!(
            all >= 3,
            "{} heard both others in only {all} s: {seconds:.0?}",
            h.name
        );
    }

    // The host leaves: the other two go on as a plain call, with a gap
    // in each other's tone under 2 s.
    for (me, other) in [(1, 2), (2, 1)] {
        let h = &heard[me];
        assert_eq!(field(h, "ended_as_call"), true, "{}: {}", h.name, h.json);
        let host_frames = tone_frames(&h.audio, tones[0]);
        let other_frames = tone_frames(&h.audio, tones[other]);
        let host_last = host_frames.iter().rposition(|&f| f).expect("host heard");
        let after = other_frames[host_last..].iter().filter(|&&f| f).count() * 20;
        let gap = longest_gap_ms(&other_frames).expect("the other one heard");
        println!(
            "{}: host last heard at {} ms, {} then heard {after} ms more, longest gap {gap} ms, handovers {}",
            h.name,
            host_last * 20,
            heard[other].name,
            field(h, "handovers"),
        );
        assert!(
            after >= 3_000,
            "{} heard {} only {after} ms after the host left",
            h.name,
            heard[other].name
        );
        assert!(
            gap < 2_000,
            "{} lost {} for {gap} ms at the handover",
            h.name,
            heard[other].name
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
