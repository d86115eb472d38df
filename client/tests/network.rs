//! The overlay with real processes on loopback: a login server and three
//! supernodes, users joined through different supernodes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::online::Online;
use common::{Cluster, assert_ok};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn users_on_different_supernodes_search_chat_and_see_presence() {
    let cluster = Cluster::start(3, None);
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user);
    }
    assert_ok(&cluster.run("bob", &["buddies", "add", "alice"], LIMIT));

    // bob joins through supernode 2 and watches alice.
    let bob = Online::start(&cluster, "bob", &cluster.sn(2));

    // alice, through supernode 0, finds bob across the overlay.
    let out = assert_ok(&cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "search", "bob"],
        LIMIT,
    ));
    assert!(out.contains("bob: online, reachable"), "{out}");
    let out = assert_ok(&cluster.run("alice", &["search", "nobody"], LIMIT));
    assert!(out.contains("nobody: not found"), "{out}");
    // carol was never online since registering: not in the directory.
    let out = assert_ok(&cluster.run("alice", &["search", "carol"], LIMIT));
    assert!(out.contains("carol: not found"), "{out}");

    // Chat to an online user: delivered, with a receipt.
    let out = assert_ok(&cluster.run("alice", &["chat", "bob", "hello bob"], LIMIT));
    assert!(out.contains("delivered to bob"), "{out}");
    bob.expect("message from alice: hello bob", LIMIT);

    // Presence: alice comes online (bob is subscribed) and then vanishes.
    let alice = Online::start(&cluster, "alice", &cluster.sn(1));
    bob.expect("presence alice online", LIMIT);
    drop(alice); // SIGKILL: the supernode notices through the idle timeout
    bob.expect("presence alice offline", LIMIT);
}

#[test]
fn chat_to_an_offline_user_is_delivered_when_they_join() {
    let cluster = Cluster::start(3, None);
    for user in ["alice", "dave"] {
        cluster.add_user(user);
    }
    // dave has been online once (so the directory knows him), then
    // vanished (SIGKILL): his supernode ends the session once his beacons
    // stop (docs/PROTOCOL.md 7.5, "Liveness beacons": 5 s of silence).
    let dave = Online::start(&cluster, "dave", &cluster.sn(1));
    drop(dave);
    let killed = Instant::now();
    let out = loop {
        let out = assert_ok(&cluster.run(
            "alice",
            &["--bootstrap", &cluster.sn(0), "search", "dave"],
            LIMIT,
        ));
        if out.contains("dave: offline") || killed.elapsed() > Duration::from_secs(15) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(out.contains("dave: offline, not reachable"), "{out}");
    let out = assert_ok(&cluster.run("alice", &["chat", "dave", "see you tomorrow"], LIMIT));
    assert!(out.contains("stored for dave"), "{out}");
    // dave joins through another supernode and finds the message.
    let out = assert_ok(&cluster.run("dave", &["--bootstrap", &cluster.sn(2), "inbox"], LIMIT));
    assert!(out.contains("alice: see you tomorrow"), "{out}");
}

#[test]
fn a_client_survives_the_loss_of_its_supernode_within_five_seconds() {
    let mut cluster = Cluster::start(3, None);
    for user in ["alice", "bob"] {
        cluster.add_user(user);
    }
    let bob = Online::start(&cluster, "bob", &cluster.sn(1));
    let cache = std::fs::read_to_string(cluster.home("bob").join("hostcache.txt")).unwrap();
    assert!(
        cache.lines().filter(|l| !l.starts_with('#')).count() >= 3,
        "{cache}"
    );

    // Kill the supernode bob actually joined through.
    let home = cluster
        .supernodes
        .iter()
        .position(|a| *a == bob.via)
        .unwrap();
    let other = (home + 1) % 3;
    cluster.kill_supernode(home);
    let killed = Instant::now();
    let (line, _) = bob.expect("rejoined via", Duration::from_secs(10));
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "rejoined after {took:?}: {line}"
    );
    assert!(!line.ends_with(&format!("via {}", bob.via)), "{line}");

    // Search still finds bob, now through his new supernode.
    let mut found = String::new();
    for _ in 0..20 {
        found = assert_ok(&cluster.run(
            "alice",
            &["--bootstrap", &cluster.sn(other), "search", "bob"],
            LIMIT,
        ));
        if found.contains("online") {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(found.contains("bob: online, reachable"), "{found}");
}

#[test]
fn the_host_cache_is_persisted_reused_and_bootstrap_fills_an_empty_one() {
    let cluster = Cluster::start(2, None);
    cluster.add_user("erin");
    let cache_path = cluster.home("erin").join("hostcache.txt");
    // An empty cache and no bootstrap: a clear error.
    let _ = std::fs::remove_file(&cache_path);
    let out = cluster.run("erin", &["search", "erin"], LIMIT);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("host cache is empty"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The bootstrap address fills it ...
    assert_ok(&cluster.run(
        "erin",
        &["--bootstrap", &cluster.sn(0), "search", "erin"],
        LIMIT,
    ));
    let cache = std::fs::read_to_string(&cache_path).unwrap();
    for addr in &cluster.supernodes {
        assert!(
            cache.contains(&addr.to_string()),
            "{addr} missing from {cache}"
        );
    }
    // ... and the next start uses it without any bootstrap.
    assert_ok(&cluster.run("erin", &["search", "erin"], LIMIT));
    // A damaged line does not stop the client.
    std::fs::write(&cache_path, format!("{cache}garbage line\n")).unwrap();
    assert_ok(&cluster.run("erin", &["search", "erin"], LIMIT));
}

#[test]
fn netcheck_reads_the_supernode_reflector() {
    let cluster = Cluster::start(2, None);
    // Supernodes serve STUN on their QUIC port + 1.
    let stun: Vec<String> = cluster
        .supernodes
        .iter()
        .map(|a| std::net::SocketAddr::new(a.ip(), a.port() + 1).to_string())
        .collect();
    let out = assert_ok(&cluster.run(
        "nobody",
        &["netcheck", "--stun", &stun[0], "--stun", &stun[1], "--json"],
        LIMIT,
    ));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["udp"], true, "{out}");
    assert_eq!(report["behind_nat"], false, "{out}");
    assert_eq!(report["mapping"], "endpoint-independent", "{out}");
    assert_eq!(report["filtering"], "not-port-dependent", "{out}");
    assert_eq!(report["mapped"].as_array().unwrap().len(), 2, "{out}");
    // Nothing answers on a closed port: UDP looks blocked, said plainly.
    let out = assert_ok(&cluster.run("nobody", &["netcheck", "--stun", "127.0.0.1:9"], LIMIT));
    assert!(out.contains("UDP: blocked"), "{out}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_peers_control_characters_never_reach_the_terminal_and_the_home_is_private() {
    use std::os::unix::fs::PermissionsExt;

    let cluster = Cluster::start(1, None);
    for user in ["alice", "bob"] {
        cluster.add_user(user);
    }
    // A carriage return and "erase line" would overwrite "message from
    // alice:" with a line that seems to come from mallory.
    let faked = "\r\x1b[2Kmallory: hi";
    // (A buddy list too, so that file is in the home when it is checked.)
    assert_ok(&cluster.run("bob", &["buddies", "add", "alice"], LIMIT));
    let bob = Online::start(&cluster, "bob", &cluster.sn(0));
    let out = assert_ok(&cluster.run("alice", &["chat", "bob", faked], LIMIT));
    assert!(out.contains("delivered to bob"), "{out}");
    let (line, _) = bob.expect("message from alice: ", LIMIT);
    assert!(!line.contains(['\r', '\x1b']), "{line:?}");
    assert!(
        line.ends_with("message from alice: \\u{d}\\u{1b}[2Kmallory: hi"),
        "{line:?}"
    );
    drop(bob);

    // The inbox file and `natter inbox` hold the escaped text only.
    let out = assert_ok(&cluster.run("bob", &["inbox"], LIMIT));
    assert!(!out.contains(['\r', '\x1b']), "{out:?}");
    assert!(
        out.contains("alice: \\u{d}\\u{1b}[2Kmallory: hi"),
        "{out:?}"
    );
    let home = cluster.home("bob");
    let inbox = std::fs::read(home.join("inbox.txt")).unwrap();
    assert!(!inbox.contains(&0x1b) && !inbox.contains(&b'\r'));

    // Every file the client wrote in its home is readable by its user only.
    let files = files_under(&home);
    for name in [
        natter_client::inbox::FILE_NAME,
        natter_client::hostcache::FILE_NAME,
        natter_client::buddy_list::LIST_FILE,
        natter_client::home::KEY_FILE,
        natter_client::home::CERT_FILE,
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(name)),
            "no {name}: {files:?}"
        );
    }
    for file in files {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    }
}
