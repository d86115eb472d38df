//! Real conferences between `natter` processes on loopback (a login server
//! and two supernodes): alice convenes (`natter call bob carol ...`), the
//! others join with `natter answer`. Every participant sends its own tone
//! (natter_media::score's conference tones) and records what it hears; per
//! source, by correlation with that tone's sine and cosine, a recording
//! must hold every other participant's tone and never its own, at the
//! thresholds of the in-memory conference test (media/tests/conference.rs).
//! alice declares the largest upstream, so the election (rule 2: an
//! upstream that carries the legs) makes her the host; the handover test
//! has her leave mid-conference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Cluster, assert_ok, wait_output};
use natter_media::score::{
    CONFERENCE_TONES_HZ, TONE_ABSENT_MAX, TONE_HEARD_MIN, conference_tone, longest_gap_ms,
    tone_amplitude, tone_frames,
};
use natter_media::wav::{read_mono_48k, write_mono_48k};

const NAMES: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const LIMIT: Duration = Duration::from_secs(90);
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// Samples in one analysis window (1 s).
const WINDOW: usize = 48_000;

/// What one participant recorded and reported.
struct Heard {
    name: &'static str,
    audio: Vec<i16>,
    json: serde_json::Value,
}

/// Runs a conference of `parties`: alice (the convener, 2,000 kb/s up)
/// for `host_secs`, the others (50 kb/s up: not enough to host) for
/// `others_secs` each from when they join. The last `added` of them are
/// not invited at first: alice types `add NAME` for each every 2 s from
/// 2 s to 10 s (before she hosts it is refused; once she does it goes
/// through, and a repeat is refused as a duplicate).
fn conference(parties: usize, added: usize, host_secs: u32, others_secs: u32) -> Vec<Heard> {
    // One conference at a time: up to five processes coding in real time
    // (the host four legs each way) on a small machine.
    let _one_at_a_time = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(2, None);
    for name in &NAMES[..parties] {
        cluster.add_user(name);
    }
    let dir = cluster.dir.path().to_owned();
    let tone = |i: usize| -> PathBuf {
        let path = dir.join(format!("{}-tone.wav", NAMES[i]));
        let secs = host_secs.max(others_secs) as usize + 5;
        write_mono_48k(
            &path,
            &conference_tone(CONFERENCE_TONES_HZ[i], 0, secs * 48_000),
        )
        .unwrap();
        path
    };
    let heard = |i: usize| dir.join(format!("{}-heard.wav", NAMES[i]));
    let json = |i: usize| dir.join(format!("{}.json", NAMES[i]));
    let path = |p: PathBuf| p.to_str().unwrap().to_owned();

    let mut children: Vec<(usize, Child)> = Vec::new();
    for (i, name) in NAMES.iter().enumerate().take(parties).skip(1) {
        let args = [
            "--bootstrap".to_owned(),
            cluster.supernodes[i % 2].to_string(),
            "answer".into(),
            "--calls".into(),
            "1".into(),
            "--duration".into(),
            others_secs.to_string(),
            "--upstream-kbps".into(),
            "50".into(),
            "--audio-in".into(),
            path(tone(i)),
            "--audio-out".into(),
            path(heard(i)),
            "--stats-json".into(),
            path(json(i)),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = cluster
            .natter(name, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("waiting for calls"), "{first}");
        children.push((i, child));
    }
    let mut args = vec![
        "--bootstrap".to_owned(),
        cluster.supernodes[0].to_string(),
        "call".into(),
    ];
    let invited = parties - added;
    args.extend(NAMES[1..invited].iter().map(|n| (*n).to_owned()));
    args.extend([
        "--duration".into(),
        host_secs.to_string(),
        "--upstream-kbps".into(),
        "2000".into(),
        "--audio-in".into(),
        path(tone(0)),
        "--audio-out".into(),
        path(heard(0)),
        "--stats-json".into(),
        path(json(0)),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut alice = cluster
        .natter("alice", &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = alice.stdin.take().unwrap();
    let typing = (added > 0).then(|| {
        let names: Vec<&str> = NAMES[invited..parties].to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut stdin = stdin;
            for _ in 0..5 {
                std::thread::sleep(Duration::from_secs(2));
                for name in &names {
                    let _ = writeln!(stdin, "add {name}");
                }
            }
        })
    });
    children.insert(0, (0, alice));
    let outputs: Vec<(usize, std::process::Output)> = children
        .into_iter()
        .map(|(i, child)| (i, wait_output(child, LIMIT)))
        .collect();
    drop(typing.map(|t| t.join()));
    outputs
        .iter()
        .map(|(i, out)| {
            assert_ok(out);
            let report = std::fs::read_to_string(json(*i)).unwrap();
            println!("{}: {}", NAMES[*i], summary(&report));
            Heard {
                name: NAMES[*i],
                audio: read_mono_48k(&heard(*i)).unwrap(),
                json: serde_json::from_str(&report).unwrap(),
            }
        })
        .collect()
}

/// The conference section and each leg's loss figures, for the log.
fn summary(report: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(report).unwrap();
    let mut s = v["conference"].to_string();
    for leg in v["legs"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n  leg {}: {} {} s, received {}, lost {}, late {}, concealed {}, max gap {} ms",
            leg["peer"],
            leg["path"],
            leg["duration_s"],
            leg["media_packets_received"],
            leg["packets_lost"],
            leg["packets_late"],
            leg["concealed_frames"],
            leg["max_media_gap_ms"],
        ));
    }
    s
}

/// Each tone's amplitude in each whole second of `audio`.
fn levels(audio: &[i16], parties: usize) -> Vec<Vec<f64>> {
    audio
        .chunks_exact(WINDOW)
        .map(|w| {
            CONFERENCE_TONES_HZ[..parties]
                .iter()
                .map(|&hz| tone_amplitude(w, hz))
                .collect()
        })
        .collect()
}

/// Every participant hears every other one's tone (in at least
/// `min_seconds` whole seconds where it hears all of them) and never its
/// own (in no second).
fn assert_hear_each_other(heard: &[Heard], parties: usize, min_seconds: usize) {
    assert_eq!(heard.len(), parties);
    for (p, h) in heard.iter().enumerate() {
        let seconds = levels(&h.audio, parties);
        assert!(
            seconds.len() >= min_seconds,
            "{}'s recording is {} s long",
            h.name,
            seconds.len()
        );
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
            .filter(|l| (0..parties).all(|q| q == p || l[q] > TONE_HEARD_MIN))
            .count();
        println!(
            "{} hears everyone else in {all} of {} s: {seconds:.0?}",
            h.name,
            seconds.len()
        );
        assert!(
            all >= min_seconds,
            "{} heard everyone else in only {all} s: {seconds:.0?}",
            h.name
        );
    }
}

fn conference_field<'a>(h: &'a Heard, name: &str) -> &'a serde_json::Value {
    &h.json["conference"][name]
}

fn assert_alice_hosted(heard: &[Heard], parties: usize) {
    for h in heard {
        assert_eq!(
            conference_field(h, "hosts")[0],
            "alice",
            "{}: {}",
            h.name,
            h.json
        );
    }
    let alice = &heard[0];
    // alice mixed, and her mixing time per frame is reported.
    assert!(
        conference_field(alice, "hosted_frames").as_u64().unwrap() > 100,
        "{}",
        alice.json
    );
    assert!(
        conference_field(alice, "mix_us_p99").as_f64().unwrap() > 0.0,
        "{}",
        alice.json
    );
    // One leg per other participant, each an ordinary call's report.
    let legs = alice.json["legs"].as_array().unwrap();
    assert_eq!(legs.len(), parties - 1, "{}", alice.json);
    for leg in legs {
        assert!(
            leg["media_packets_received"].as_u64().unwrap() > 100,
            "{leg}"
        );
        assert!(leg["mean_udp_payload"].as_f64().unwrap() <= 67.0, "{leg}");
    }
}

#[test]
fn three_parties_hear_each_other_and_not_themselves() {
    let heard = conference(3, 0, 10, 12);
    assert_alice_hosted(&heard, 3);
    assert_hear_each_other(&heard, 3, 4);
}

#[test]
fn five_parties_hear_each_other_and_not_themselves() {
    let heard = conference(5, 0, 14, 16);
    assert_alice_hosted(&heard, 5);
    assert_hear_each_other(&heard, 5, 4);
}

#[test]
fn the_host_leaves_and_the_other_two_go_on_as_a_call() {
    let heard = conference(3, 0, 6, 14);
    assert_alice_hosted(&heard, 3);
    let (bob, carol) = (&heard[1], &heard[2]);
    for (h, other) in [(bob, 2), (carol, 1)] {
        assert_eq!(
            conference_field(h, "ended_as_call"),
            true,
            "{}: {}",
            h.name,
            h.json
        );
        let alice_frames = tone_frames(&h.audio, CONFERENCE_TONES_HZ[0]);
        let other_frames = tone_frames(&h.audio, CONFERENCE_TONES_HZ[other]);
        // alice was heard, then she left; the other one is heard after.
        let alice_last = alice_frames.iter().rposition(|&f| f).expect("alice heard");
        let after = other_frames[alice_last..].iter().filter(|&&f| f).count();
        let gap = longest_gap_ms(&other_frames).expect("the other one heard");
        println!(
            "{}: alice last heard at {} ms, {} then heard {} ms more, longest gap {gap} ms",
            h.name,
            alice_last * 20,
            NAMES[other],
            after * 20
        );
        assert!(
            after * 20 >= 3_000,
            "{} heard {} only {} ms after alice left",
            h.name,
            NAMES[other],
            after * 20
        );
        assert!(
            gap < 2_000,
            "{} lost {} for {gap} ms at the handover",
            h.name,
            NAMES[other]
        );
        // Never itself.
        let own = levels(&h.audio, 3);
        let p = if h.name == "bob" { 1 } else { 2 };
        assert!(own.iter().all(|l| l[p] < TONE_ABSENT_MAX), "{own:.0?}");
    }
}

/// alice convenes bob and carol, then types `add dave`: dave's `natter
/// answer` joins the running conference, hears the three others and is
/// heard by them, nobody hearing itself.
#[test]
fn a_participant_added_to_a_running_conference_hears_and_is_heard() {
    let heard = conference(4, 1, 16, 12);
    assert_alice_hosted(&heard, 4);
    assert_hear_each_other(&heard, 4, 3);
}
