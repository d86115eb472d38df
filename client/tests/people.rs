//! The command line as a new user meets it, against real login-server and
//! supernode processes: `register` logs in (the next `search` works
//! without `login`), a command logs in by itself when the certificate is
//! missing and a password is at hand, and times read as words.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::online::Online;
use common::{Cluster, assert_ok, wait_output};

const LIMIT: Duration = Duration::from_secs(30);

/// No ten-digit number (a raw unix time) in `text`.
#[track_caller]
fn no_raw_unix_time(text: &str) {
    let digits_run = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(digits_run < 10, "a raw unix time in {text:?}");
}

#[test]
fn register_logs_in_and_search_shows_last_seen_in_words() {
    let cluster = Cluster::start(1, None);
    let out = assert_ok(&cluster.run("alice", &["register", "alice"], LIMIT));
    assert!(out.contains("registered alice"), "{out}");
    assert!(out.contains("logged in as alice"), "{out}");
    no_raw_unix_time(&out);
    assert_ok(&cluster.run("bob", &["register", "bob"], LIMIT));

    // No `login` anywhere: search straight after register.
    let online = Online::start(&cluster, "bob", &cluster.sn(0));
    let found = assert_ok(&cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "search", "bob"],
        LIMIT,
    ));
    assert!(found.contains("bob: online, reachable"), "{found}");
    no_raw_unix_time(&found);

    // bob leaves: "last seen" is a time in words, not a unix time.
    drop(online);
    let start = Instant::now();
    let offline = loop {
        let out = assert_ok(&cluster.run(
            "alice",
            &["--bootstrap", &cluster.sn(0), "search", "bob"],
            LIMIT,
        ));
        if out.contains("offline") {
            break out;
        }
        assert!(start.elapsed() < LIMIT, "bob never went offline: {out}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let seen = offline
        .split("last seen ")
        .nth(1)
        .unwrap_or_else(|| panic!("no last seen in {offline:?}"))
        .trim();
    assert!(
        seen == "just now" || seen.ends_with(" s ago") || seen.ends_with(" min ago"),
        "{offline}"
    );
    no_raw_unix_time(&offline);

    // Stored chat reads with its time in words too.
    assert_ok(&cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "chat", "bob", "see you"],
        LIMIT,
    ));
    let inbox = assert_ok(&cluster.run("bob", &["--bootstrap", &cluster.sn(0), "inbox"], LIMIT));
    assert!(
        inbox.contains("just now: alice: see you") || inbox.contains(" s ago: alice: see you"),
        "{inbox}"
    );
}

#[test]
fn a_command_logs_in_by_itself_when_the_certificate_is_missing() {
    let cluster = Cluster::start(1, None);
    assert_ok(&cluster.run("carol", &["register", "carol"], LIMIT));
    let cert = cluster.home("carol").join("identity.cert");
    std::fs::remove_file(&cert).unwrap();

    // No password at hand: the error says what to do.
    let out = wait_output(
        cluster
            .natter("carol", &["--bootstrap", &cluster.sn(0), "search", "carol"])
            .env_remove("NATTER_PASSWORD")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        LIMIT,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not logged in"), "{err}");

    // NATTER_PASSWORD and the account's name: it logs in, then searches.
    let out = cluster.run(
        "carol",
        &[
            "--user",
            "carol",
            "--bootstrap",
            &cluster.sn(0),
            "search",
            "carol",
        ],
        LIMIT,
    );
    let found = assert_ok(&out);
    assert!(found.starts_with("carol: "), "{found}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("logged in as carol"), "{err}");
    assert!(cert.exists(), "the new certificate is stored");
}

#[test]
fn natter_alone_without_a_terminal_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_natter"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a command is needed"), "{err}");
}

/// The command-line equivalents of the UI's call keys: `answer --decline`
/// (the `d` key), and a `q` line on `call`'s standard input (the `x` key).
#[test]
fn answer_declines_and_a_typed_q_hangs_up() {
    use std::io::{BufRead, BufReader, Write};
    let cluster = Cluster::start(2, None);
    for user in ["alice", "bob"] {
        assert_ok(&cluster.run(user, &["register", user], LIMIT));
    }
    let sn1 = cluster.sn(1);
    let bob_answers = |extra: &[&str]| {
        let mut args = vec!["--bootstrap", sn1.as_str(), "answer"];
        args.extend(extra);
        let mut bob = cluster
            .natter("bob", &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(bob.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.contains("waiting for calls"), "{first}");
        bob
    };

    // Declined: the caller is told, the callee's answer is over.
    let bob = bob_answers(&["--decline"]);
    let alice = cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "call", "bob"],
        LIMIT,
    );
    assert!(!alice.status.success());
    let err = String::from_utf8_lossy(&alice.stderr);
    assert!(err.contains("bob declined the call"), "{err}");
    assert!(wait_output(bob, LIMIT).status.success());

    // Answered; alice types q once the call is up: both sides end long
    // before the 60 s she asked for.
    let mut bob = bob_answers(&[]);
    let bob_err = BufReader::new(bob.stderr.take().unwrap());
    let mut alice = cluster
        .natter(
            "alice",
            &[
                "--bootstrap",
                &cluster.sn(0),
                "call",
                "bob",
                "--duration",
                "60",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // bob's stderr is read to its end (a closed pipe would fail his writes).
    let (rang, ringing) = std::sync::mpsc::sync_channel(4);
    std::thread::spawn(move || {
        for line in bob_err.lines().map_while(Result::ok) {
            if line.contains("call from alice") {
                let _ = rang.try_send(());
            }
        }
    });
    ringing.recv_timeout(LIMIT).expect("bob never saw the call");
    // The call connects right after the invite; the hang-up is sent after
    // media flowed for a moment.
    std::thread::sleep(Duration::from_secs(2));
    writeln!(alice.stdin.as_mut().unwrap(), "q").unwrap();
    let alice = wait_output(alice, LIMIT);
    let report = assert_ok(&alice);
    assert!(report.contains("call with bob"), "{report}");
    let secs: f64 = report
        .split("call with bob: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {report}"));
    assert!(secs < 30.0, "{report}");
    assert!(
        String::from_utf8_lossy(&alice.stderr).contains("hanging up"),
        "{}",
        String::from_utf8_lossy(&alice.stderr)
    );
    let bob = assert_ok(&wait_output(bob, LIMIT));
    assert!(bob.contains("call with alice"), "{bob}");
}
