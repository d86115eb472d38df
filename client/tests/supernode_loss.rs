//! A call survives the loss of the supernode both parties joined through:
//! real login-server, supernode and `natter` processes on loopback.
//!
//! Both parties join supernode 0 of three; it is killed (SIGKILL) 3 s into
//! an 8 s direct call. The media goes on peer to peer; each side's session
//! dies with the supernode, each rejoins through another supernode during
//! the call, and the caller's hangup at the end reaches the callee through
//! the new supernodes (before, the callee stayed in the call until its
//! media timeout, 10 s later).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::call::{LIMIT, field, speech};
use common::{Cluster, assert_ok, wait_output};
use natter_media::score;
use natter_media::wav::read_mono_48k;

#[test]
fn a_hangup_reaches_the_peer_after_their_supernode_died_mid_call() {
    let mut cluster = Cluster::start(3, None);
    cluster.add_user("alice");
    cluster.add_user("bob");
    let dir = cluster.dir.path().to_owned();
    let speech = speech(&dir);
    let heard = dir.join("bob-heard.wav");
    let sn0 = cluster.sn(0);
    // Both join supernode 0: an empty host cache takes the bootstrap
    // address (the join fills the cache with the others, the alternates).
    for user in ["alice", "bob"] {
        let _ = std::fs::remove_file(cluster.home(user).join("hostcache.txt"));
    }
    let mut bob = cluster
        .natter(
            "bob",
            &[
                "--bootstrap",
                &sn0,
                "answer",
                "--calls",
                "1",
                "--audio-out",
                heard.to_str().unwrap(),
                "--stats-json",
                dir.join("bob.json").to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bob_out = BufReader::new(bob.stdout.take().unwrap());
    let mut first = String::new();
    bob_out.read_line(&mut first).unwrap();
    assert!(first.contains(&format!("via {sn0}")), "{first}");
    let alice = cluster
        .natter(
            "alice",
            &[
                "--bootstrap",
                &sn0,
                "call",
                "bob",
                "--duration",
                "8",
                "--audio-in",
                speech.to_str().unwrap(),
                "--stats-json",
                dir.join("alice.json").to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    cluster.kill_supernode(0);
    let killed = Instant::now();

    let caller = wait_output(alice, LIMIT);
    let caller_done = Instant::now();
    let callee = wait_output(bob, LIMIT);
    let callee_after = caller_done.elapsed();
    eprintln!(
        "caller done {:?} after the kill, callee {callee_after:?} after the caller",
        caller_done - killed
    );
    assert_ok(&caller);
    assert_ok(&callee);
    let alice_json = std::fs::read_to_string(dir.join("alice.json")).unwrap();
    let bob_json = std::fs::read_to_string(dir.join("bob.json")).unwrap();
    let caller_err = String::from_utf8_lossy(&caller.stderr);
    let callee_err = String::from_utf8_lossy(&callee.stderr);

    // Both lost supernode 0 and rejoined through another one mid-call.
    for (err, json) in [(&caller_err, &alice_json), (&callee_err, &bob_json)] {
        assert!(
            err.contains(&format!("supernode {sn0} lost; rejoined via")),
            "{err}"
        );
        assert!(field(json, "rejoins") >= 1.0, "{json}");
    }
    // The caller hung up after its 8 s; the hangup reached the callee
    // through the new supernodes: its call ended with the caller's, not by
    // its 10 s media timeout.
    assert!(bob_json.contains("\"ended_by_peer\":true"), "{bob_json}");
    assert!(
        callee_after < Duration::from_secs(4),
        "the callee ended {callee_after:?} after the caller"
    );
    let (a, b) = (
        field(&alice_json, "duration_s"),
        field(&bob_json, "duration_s"),
    );
    assert!(b < a + 3.0, "caller {a} s, callee {b} s");
    // The media went on peer to peer through it all.
    assert!(field(&bob_json, "max_media_gap_ms") < 1_000.0, "{bob_json}");
    let sent = read_mono_48k(&speech).unwrap();
    let s = score::compare(&sent, &read_mono_48k(&heard).unwrap(), 1000);
    assert!(s.envelope > 0.8, "{s:?}");
}
