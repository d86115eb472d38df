//! The terminal UI run for real: `natter ui` in a pseudo-terminal (a
//! private tmux server: keys in with send-keys, the screen out with
//! capture-pane) against a private network of real processes. bob's chat
//! stored while alice was away shows when she joins; bob calls
//! alice with the CLI (a speech WAV); alice sees it ring, accepts with a
//! key, writes to bob during the call; after it, bob answers by chat and
//! comes online; alice sees it all on her screen, and quits with a key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::call::{field, speech};
use common::online::Online;
use common::{Cluster, assert_ok, wait_output};

/// A tmux server of this test's own (its socket in the test's directory),
/// killed on drop.
struct Tmux {
    socket: String,
}

const SESSION: &str = "ui";

impl Tmux {
    /// Runs `program args` in a new 110x24 terminal with `env` set; the
    /// server's socket is `dir/tmux.sock`.
    fn start(dir: &Path, program: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        let tmux = Self {
            socket: dir.join("tmux.sock").to_str().unwrap().to_owned(),
        };
        let mut cmd = Command::new("tmux");
        cmd.args(["-S", &tmux.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-s", SESSION, "-x", "110", "-y", "24"]);
        for (k, v) in env {
            cmd.args(["-e", &format!("{k}={v}")]);
        }
        let out = cmd
            .arg("--")
            .arg(program)
            .args(args)
            .output()
            .expect("tmux is needed for this test: run scripts/deps");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-S", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    /// The screen's text now (empty once the program has exited).
    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p", "-t", SESSION]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        assert!(self.tmux(&args).status.success());
    }

    fn type_text(&self, text: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", SESSION, "-l", text])
                .status
                .success()
        );
    }

    /// Waits (up to 60 s) until the screen shows every one of `needles`;
    /// returns that screen.
    #[track_caller]
    fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_until(&format!("{needles:?}"), |screen| {
            needles.iter().all(|n| screen.contains(n))
        })
    }

    /// Waits (up to 60 s) until the screen satisfies `ready`; returns it.
    #[track_caller]
    fn wait_until(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the screen never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.tmux(&["has-session", "-t", SESSION]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

#[test]
fn alice_in_the_ui_takes_bobs_call_chats_and_sees_him_come_and_go() {
    let cluster = Cluster::start(2, None);
    let dir = cluster.dir.path();
    // `register` logs in: no `login` step.
    for user in ["alice", "bob"] {
        let out = assert_ok(&cluster.run(user, &["register", user], Duration::from_secs(30)));
        assert!(out.contains("logged in as"), "{out}");
    }
    assert_ok(&cluster.run("alice", &["buddies", "add", "bob"], Duration::from_secs(10)));
    // bob writes while alice is away (she joined once, so the directory
    // has her certificate): stored, it comes when she joins.
    assert_ok(&cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "search", "alice"],
        Duration::from_secs(30),
    ));
    let stored = assert_ok(&cluster.run(
        "bob",
        &[
            "--bootstrap",
            &cluster.sn(1),
            "chat",
            "alice",
            "while you were away",
        ],
        Duration::from_secs(30),
    ));
    assert!(stored.contains("stored for alice"), "{stored}");
    let speech = speech(dir);
    let heard = dir.join("alice-heard.wav");
    let alice_json = dir.join("alice.json");
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let args: Vec<String> = [
        "--home",
        &path(&cluster.home("alice")),
        "--login",
        &cluster.login_addr.to_string(),
        "--login-key",
        &path(&cluster.login_key),
        "--bootstrap",
        &cluster.sn(0),
        "ui",
        "--audio-out",
        &path(&heard),
        "--stats-json",
        &path(&alice_json),
    ]
    .map(str::to_owned)
    .to_vec();
    let ui = Tmux::start(
        dir,
        Path::new(env!("CARGO_BIN_EXE_natter")),
        &args,
        &[("NATTER_PASSWORD", common::PASSWORD)],
    );
    let screen = ui.wait_for(&[
        "natter: alice",
        "via 127.0.0.1:",
        "bob: while you were away",
    ]);
    assert!(screen.contains("Contacts"), "{screen}");

    // bob calls with the CLI: speech, then silence, 12 s in all.
    let bob_json = dir.join("bob.json");
    let bob = cluster
        .natter(
            "bob",
            &[
                "--bootstrap",
                &cluster.sn(1),
                "call",
                "alice",
                "--audio-in",
                &path(&speech),
                "--duration",
                "12",
                "--stats-json",
                &path(&bob_json),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ui.wait_for(&["Incoming call from bob", "[a] accept  [d] decline"]);
    ui.keys(&["a"]);
    let in_call = ui.wait_for(&["In call with bob", "path ", "MOS", "out: WAV"]);
    assert!(in_call.contains("RTT"), "{in_call}");
    assert!(in_call.contains("in: silence"), "{in_call}");

    // alice writes to bob during the call (bob's `call` does not read
    // chat: it waits for him in the mailbox).
    ui.keys(&["Enter"]);
    ui.wait_for(&["to bob> _"]);
    ui.type_text("hello bob");
    ui.keys(&["Enter"]);
    ui.wait_for(&["alice: hello bob [sent]"]);
    // Mute: the screen follows the call's state, and its live figures
    // move (packets received, a measured RTT).
    ui.keys(&["m"]);
    let live = ui.wait_until("muted, with packets received and an RTT", |s| {
        s.contains("MUTED") && !s.contains("received 0 ") && !s.contains("RTT -")
    });
    // The screen for the README (NATTER_TUI_CAPTURE=FILE).
    if let Some(path) = std::env::var_os("NATTER_TUI_CAPTURE") {
        std::fs::write(path, &live).unwrap();
    }
    ui.keys(&["m"]);
    ui.wait_until("unmuted", |s| !s.contains("MUTED"));
    // Hold and resume (the packets keep flowing: see bob's report below).
    ui.keys(&["h"]);
    ui.wait_for(&["ON HOLD"]);
    ui.keys(&["h"]);
    ui.wait_until("resumed", |s| !s.contains("ON HOLD"));

    let bob_out = wait_output(bob, Duration::from_secs(60));
    let report = assert_ok(&bob_out);
    assert!(report.contains("call with alice"), "{report}");
    let ended = ui.wait_for(&["call with bob ended"]);
    assert!(!ended.contains("In call with"), "{ended}");

    // bob answers by chat: it shows on alice's screen as it arrives.
    let chat = assert_ok(&cluster.run(
        "bob",
        &["--bootstrap", &cluster.sn(1), "chat", "alice", "hi alice"],
        Duration::from_secs(30),
    ));
    assert!(chat.contains("delivered to alice"), "{chat}");
    ui.wait_for(&["bob: hi alice"]);

    // bob comes online: alice sees his presence, and he gets her message
    // from the mailbox, which marks it delivered on her screen.
    let online = Online::start(&cluster, "bob", &cluster.sn(1));
    let (line, _) = online.expect("hello bob", Duration::from_secs(30));
    assert!(line.ends_with("message from alice: hello bob"), "{line}");
    ui.wait_for(&["bob online", "alice: hello bob [delivered]"]);
    drop(online);
    let gone = ui.wait_for(&["bob offline, seen"]);
    assert!(
        gone.contains("seen just now") || gone.contains("s ago"),
        "{gone}"
    );

    // q quits: the program leaves the overlay and ends.
    ui.keys(&["q"]);
    let start = Instant::now();
    while ui.alive() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "natter ui did not quit"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // bob's report: alice's audio came (silence, 50 packets/s, through
    // mute and hold); alice's report and WAV: bob's speech came.
    let bob_json = std::fs::read_to_string(&bob_json).unwrap();
    assert!(
        field(&bob_json, "media_packets_received") > 200.0,
        "{bob_json}"
    );
    // Muted and on hold for a while, alice still sent 50 packets/s.
    let rate = field(&bob_json, "media_packets_received") / field(&bob_json, "duration_s");
    assert!(
        (40.0..=55.0).contains(&rate),
        "received {rate}/s in {bob_json}"
    );
    assert!(field(&bob_json, "first_audio_ms") > 0.0, "{bob_json}");
    let alice_json = std::fs::read_to_string(&alice_json).unwrap();
    assert!(
        field(&alice_json, "media_packets_received") > 200.0,
        "{alice_json}"
    );
    let sent = natter_media::wav::read_mono_48k(&speech).unwrap();
    let got = natter_media::wav::read_mono_48k(&heard).unwrap();
    let score = natter_media::score::compare(&sent, &got, 1000);
    // Part of the speech fell into the hold (played as silence), so the
    // match is below a clean call's 0.85; silence or garbage score near 0.
    assert!(score.envelope > 0.5, "{score:?}");
}
