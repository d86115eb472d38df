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
