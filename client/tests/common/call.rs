//! A real call between two `natter` processes on a [`Cluster`]: bob
//! answers through supernode 1, alice calls through supernode 0, audio in
//! and out as WAV files, both call reports kept (voice and flood tests).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use super::{Cluster, assert_ok, wait_output};

pub const LIMIT: Duration = Duration::from_secs(60);

/// A few seconds of real speech, made with espeak-ng (installed by scripts/deps).
pub fn speech(dir: &Path) -> PathBuf {
    let path = dir.join("speech.wav");
    let out = std::process::Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(&path)
        .arg("This is a test call over Natter. One two three four five. The quick brown fox jumps over the lazy dog.")
        .output()
        .expect("espeak-ng is needed for the voice tests: run scripts/deps");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// Extracts a number field from the flat JSON call report.
pub fn field(json: &str, name: &str) -> f64 {
    let key = format!("\"{name}\":");
    let start = json
        .find(&key)
        .unwrap_or_else(|| panic!("{name} missing in {json}"))
        + key.len();
    let rest = &json[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end]
        .trim_matches('"')
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {}", &rest[..end]))
}

pub fn text_field<'a>(json: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\":\"");
    let start = json.find(&key).unwrap() + key.len();
    let end = json[start..].find('"').unwrap();
    &json[start..start + end]
}

pub struct Call {
    pub caller: Output,
    pub callee: Output,
    pub caller_json: String,
    pub callee_json: String,
    pub heard: PathBuf,
}

/// bob answers (through supernode 1), alice calls (through supernode 0).
/// `during` runs while the call is up, with bob's process id.
pub fn call(
    cluster: &Cluster,
    audio_in: Option<&Path>,
    secs: u32,
    during: impl FnOnce(u32),
) -> Call {
    call_with(cluster, audio_in, secs, None, during)
}

/// As [`call`]; `callee_secs` makes the callee hang up first.
pub fn call_with(
    cluster: &Cluster,
    audio_in: Option<&Path>,
    secs: u32,
    callee_secs: Option<u32>,
    during: impl FnOnce(u32),
) -> Call {
    call_with_args(cluster, audio_in, secs, callee_secs, &[], during)
}

/// As [`call_with`], with more arguments for the caller's `natter call`.
pub fn call_with_args(
    cluster: &Cluster,
    audio_in: Option<&Path>,
    secs: u32,
    callee_secs: Option<u32>,
    caller_args: &[&str],
    during: impl FnOnce(u32),
) -> Call {
    let dir = cluster.dir.path();
    let heard = dir.join("bob-heard.wav");
    let mut bob_args = vec![
        "--bootstrap".to_owned(),
        cluster.supernodes[1].to_string(),
        "answer".into(),
        "--calls".into(),
        "1".into(),
        "--audio-out".into(),
        heard.to_str().unwrap().into(),
        "--stats-json".into(),
        dir.join("bob.json").to_str().unwrap().into(),
    ];
    if let Some(secs) = callee_secs {
        bob_args.push("--duration".into());
        bob_args.push(secs.to_string());
    }
    let bob_args: Vec<&str> = bob_args.iter().map(String::as_str).collect();
    let mut bob: Child = cluster
        .natter("bob", &bob_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until bob is joined and listening.
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap());
    let mut first = String::new();
    bob_out.read_line(&mut first).unwrap();
    assert!(first.contains("waiting for calls"), "{first}");
    let bob_pid = bob.id();

    let mut args = vec![
        "--bootstrap".to_owned(),
        cluster.supernodes[0].to_string(),
        "call".into(),
        "bob".into(),
        "--duration".into(),
        secs.to_string(),
        "--stats-json".into(),
        dir.join("alice.json").to_str().unwrap().into(),
    ];
    if let Some(path) = audio_in {
        args.push("--audio-in".into());
        args.push(path.to_str().unwrap().into());
    }
    args.extend(caller_args.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let alice = cluster
        .natter("alice", &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    during(bob_pid);
    let caller = wait_output(alice, LIMIT);
    let mut callee = wait_output(bob, LIMIT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut bob_out, &mut rest).unwrap();
    callee.stdout = format!("{first}{rest}").into_bytes();
    assert_ok(&caller);
    assert_ok(&callee);
    Call {
        caller_json: std::fs::read_to_string(dir.join("alice.json")).unwrap(),
        callee_json: std::fs::read_to_string(dir.join("bob.json")).unwrap(),
        caller,
        callee,
        heard,
    }
}
