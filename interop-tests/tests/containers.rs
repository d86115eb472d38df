//! The container smoke test: deploy/build-images builds the images here (no
//! registry: the cached debootstrap root file system, `docker import`ed, plus
//! the binaries of this build), deploy/compose.yaml starts the private network
//! (login server, three supernodes, bob answers, alice calls with the speech
//! sample) under a project name of its own, and the test reads what the call
//! left in the `calls` volume: bob's call report (media received from alice)
//! and what he heard (the speech sample, by correlation). A supernode restarted
//! keeps its node id (its key is on its volume). Everything the test made
//! (containers, network, volumes, its image tags) goes in a Drop guard, also on
//! failure; it never touches anything else of the Docker engine.
//!
//! Only where no Docker engine answers does the test skip, saying so. Needs the
//! binaries of this build (NATTER_BIN_DIR, else next to this crate's binary:
//! `cargo build --bins`), and debootstrap's first download (cached in
//! ~/.cache/natter/) as root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::bin_dir;
use natter_proto::path::PathKind;
use natter_proto::report::CallReport;

/// Seconds alice talks (the images default to 10; shorter keeps CI quick).
const CALL_SECONDS: u32 = 6;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// stdout of `cmd`, which must succeed.
fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn docker_engine() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `docker compose` (v2) where it exists, else `docker-compose` (v1).
fn compose_program() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if v2 {
        return vec!["docker".into(), "compose".into()];
    }
    let v1 = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        v1,
        "a Docker engine answers but neither `docker compose` nor `docker-compose` runs"
    );
    vec!["docker-compose".into()]
}

const IMAGES: [&str; 4] = [
    "natter-login",
    "natter-supernode",
    "natter",
    "natter-router",
];

/// One compose project and its image tag; `down -v` and the tags removed on drop.
struct Project {
    name: String,
    compose: Vec<String>,
    file: PathBuf,
    images_built: bool,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .arg("-p")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.file)
            .env("NATTER_TAG", &self.name)
            .env("NATTER_CALL_SECONDS", CALL_SECONDS.to_string());
        c
    }

    fn container(&self, service: &str) -> String {
        let id = String::from_utf8(ok(self.compose().args(["ps", "-a", "-q", service]))).unwrap();
        let id = id.trim().to_owned();
        assert!(!id.is_empty(), "no container for service {service}");
        id
    }

    /// The file at `path` in the project's `calls` volume.
    fn read_call_file(&self, path: &str) -> Vec<u8> {
        ok(Command::new("docker").args([
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            &format!("{}_calls:/calls:ro", self.name),
            "--entrypoint",
            "cat",
            &format!("natter:{}", self.name),
            path,
        ]))
    }

    fn logs(&self) -> String {
        let out = run(self.compose().args(["logs", "--no-color"]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits for `container` to stop; its exit code.
    fn wait_exit(&self, container: &str, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            let state = String::from_utf8(ok(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                container,
            ])))
            .unwrap();
            let mut it = state.split_whitespace();
            if it.next() == Some("exited") {
                return it.next().unwrap().parse().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{container} still running after {limit:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until `container`'s health check passes.
    fn wait_healthy(&self, container: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let health = String::from_utf8(ok(Command::new("docker").args([
                "inspect",
                "-f",
                "{{.State.Health.Status}}",
                container,
            ])))
            .unwrap();
            if health.trim() == "healthy" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{container} not healthy after {limit:?} ({}); logs:\n{}",
                health.trim(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Containers, the project's network and its volumes.
        let down = self
            .compose()
            .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
            .output();
        if !down.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "containers smoke test: `down -v` of {} failed: {down:?}",
                self.name
            );
        }
        if self.images_built {
            // Only this test's tags: the layers they alone hold go with them.
            let tags: Vec<String> = IMAGES
                .iter()
                .map(|i| format!("{i}:{}", self.name))
                .collect();
            let _ = Command::new("docker").arg("rmi").args(&tags).output();
        }
    }
}

/// The node ids a supernode printed ("... node id HEX"), one per start.
fn node_ids(container: &str) -> Vec<String> {
    let out = run(Command::new("docker").args(["logs", container]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_once(" node id ")
                .map(|(_, id)| id.trim().to_owned())
        })
        .collect()
}

fn wav_samples(bytes: &[u8], dir: &Path, name: &str) -> Vec<i16> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    natter_media::wav::read_mono_48k(&p).unwrap()
}

#[test]
fn compose_network_places_a_call_and_a_supernode_keeps_its_identity() {
    if !docker_engine() {
        eprintln!(
            "SKIPPED containers smoke test: no Docker engine answers (`docker version` failed); \
             deploy/compose.yaml was not exercised"
        );
        return;
    }
    let t0 = Instant::now();
    let root = repo_root();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let mut project = Project {
        name: format!("natter-smoke-{}-{nanos:x}", std::process::id()),
        compose: compose_program(),
        file: root.join("deploy/compose.yaml"),
        images_built: false,
    };
    let bins = bin_dir();
    for b in ["natter", "natter-login", "natter-supernode"] {
        assert!(
            bins.join(b).is_file(),
            "no {} (build the binaries: cargo build --bins, or set NATTER_BIN_DIR)",
            bins.join(b).display()
        );
    }

    // The images, tagged for this run only.
    project.images_built = true;
    ok(Command::new(root.join("deploy/build-images"))
        .arg("--bin-dir")
        .arg(&bins)
        .args(["--tag", &project.name]));
    eprintln!("images built in {:.1} s", t0.elapsed().as_secs_f64());

    // `up -d` returns once every container started (dependents after their
    // dependencies are healthy): login, sn1..sn3, bob waiting, alice calling.
    ok(project.compose().args(["up", "-d"]));
    let alice = project.container("alice");
    let code = project.wait_exit(&alice, Duration::from_secs(120));
    assert_eq!(code, 0, "alice's call failed; logs:\n{}", project.logs());
    eprintln!("call done at {:.1} s", t0.elapsed().as_secs_f64());

    // bob's call report: a call with alice, direct on the one network, and
    // the media she sent received (50 frames a second).
    let json = String::from_utf8(project.read_call_file("/calls/bob/report.json")).unwrap();
    let report = CallReport::from_json(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(report.peer, "alice", "{json}");
    assert_eq!(report.path_end, Some(PathKind::Direct), "{json}");
    let min_frames = u64::from(CALL_SECONDS) * 50 * 8 / 10;
    assert!(
        report.media_packets_received >= min_frames,
        "bob received {} media frames, expected >= {min_frames}: {json}",
        report.media_packets_received
    );
    let alice_json = String::from_utf8(project.read_call_file("/calls/alice/report.json")).unwrap();
    let alice_report = CallReport::from_json(&alice_json).unwrap();
    assert_eq!(alice_report.peer, "bob", "{alice_json}");
    assert!(
        alice_report.media_packets_sent >= min_frames,
        "{alice_json}"
    );

    // What bob heard is the speech sample alice sent.
    let tmp = std::env::temp_dir().join(&project.name);
    std::fs::create_dir_all(&tmp).unwrap();
    let sent_wav = ok(Command::new("docker").args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "cat",
        &format!("natter:{}", project.name),
        "/usr/share/natter/speech.wav",
    ]));
    let sent = wav_samples(&sent_wav, &tmp, "sent.wav");
    let heard = wav_samples(
        &project.read_call_file("/calls/bob/heard.wav"),
        &tmp,
        "heard.wav",
    );
    let _ = std::fs::remove_dir_all(&tmp);
    let score = natter_media::score::compare(&sent, &heard, 3000);
    assert!(
        score.envelope > 0.8 && score.waveform > 0.5,
        "what bob heard does not match what alice sent: {score:?}"
    );
    // alice's container said so too (natter compare).
    let compare = String::from_utf8(project.read_call_file("/calls/alice/compare.txt")).unwrap();
    assert!(compare.starts_with("audio match:"), "{compare}");

    // A restarted supernode keeps its node id (the key is on its volume) and
    // is certified again.
    let sn1 = project.container("sn1");
    let before = node_ids(&sn1);
    assert_eq!(before.len(), 1, "{before:?}");
    ok(project.compose().args(["restart", "-t", "5", "sn1"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let ids = node_ids(&sn1);
        if ids.len() >= 2 {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "sn1 did not start again: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(after[1], before[0], "sn1 changed its node id on restart");
    project.wait_healthy(&sn1, Duration::from_secs(60));
    eprintln!("smoke test done in {:.1} s", t0.elapsed().as_secs_f64());
}
