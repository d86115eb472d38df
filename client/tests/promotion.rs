//! Supernode promotion (issue 18, item 1) with real processes on loopback:
//! a login server that approves the supernodes of users in good standing
//! (`--auto-approve-users 0`), one operator supernode, and `natter online`
//! clients. On loopback the netcheck finds no NAT (open), so the policy
//! turns on the time online (`--promote-after`); `--promote-max-load` is
//! set high because this shared machine's load says nothing about the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::online::Online;
use common::{Cluster, assert_ok, wait_for};

/// The promoted client's options: 2 s online first.
const PROMOTE: &[&str] = &["--promote-after", "2", "--promote-max-load", "1000"];

/// The address in "supernode: promoted, serving at ADDR (node id ...)".
fn serving_addr(line: &str) -> SocketAddr {
    line.split("serving at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn host_cache(cluster: &Cluster, user: &str) -> String {
    std::fs::read_to_string(cluster.home(user).join("hostcache.txt")).unwrap_or_default()
}

#[test]
fn an_online_client_is_promoted_serves_a_search_and_steps_down_on_sigterm() {
    let cluster = Cluster::start_with(1, None, &["--auto-approve-users", "0"]);
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user);
    }
    let sn0 = cluster.sn(0);

    // Alice stays online and is promoted a few seconds after her 2 s.
    let mut alice = Online::start_with(&cluster, "alice", &sn0, PROMOTE);
    let online_at = Instant::now();
    let (line, before) = alice.expect("supernode: promoted, serving at", Duration::from_secs(30));
    let time_to_promotion = online_at.elapsed();
    println!("time to promotion: {time_to_promotion:?} (threshold 2 s; lines before: {before:?})");
    assert!(
        time_to_promotion >= Duration::from_secs(2),
        "promoted before the threshold: {time_to_promotion:?}"
    );
    assert!(
        before.iter().any(|l| l.contains("supernode: starting at")),
        "{before:?}"
    );
    let promoted = serving_addr(&line);

    // `natter status` shows it (from HOME/supernode.status).
    let status = assert_ok(&cluster.run("alice", &["status"], Duration::from_secs(30)));
    assert!(
        status.contains(&format!("supernode: serving at {promoted}")),
        "{status}"
    );

    // Bob (not promoted) learns the promoted node into his host cache from
    // the operator's supernode, which the promoted node linked to.
    let bob = Online::start_with(&cluster, "bob", &sn0, &["--no-promote"]);
    assert_eq!(bob.via.to_string(), sn0);
    wait_for(
        || host_cache(&cluster, "bob").contains(&promoted.to_string()),
        "the promoted supernode in bob's host cache",
    );

    // Carol logs in again (the login server lists the promoted node, as it
    // is certified) and joins only through it: her host cache keeps that
    // one entry. It serves her search for bob, who joined the operator's
    // supernode: the promoted node is a full member of the directory.
    let login = assert_ok(&cluster.run(
        "carol",
        &["login", "carol", "--force"],
        Duration::from_secs(30),
    ));
    assert!(login.contains("2 supernode(s) known"), "{login}");
    let cache = host_cache(&cluster, "carol");
    let only_promoted: String = cache
        .lines()
        .filter(|l| l.starts_with('#') || l.starts_with(&promoted.to_string()))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(only_promoted.contains(&promoted.to_string()), "{cache}");
    std::fs::write(cluster.home("carol").join("hostcache.txt"), only_promoted).unwrap();
    let found = assert_ok(&cluster.run("carol", &["search", "bob"], Duration::from_secs(30)));
    assert!(found.contains("bob: online"), "{found}");
    assert!(found.contains(&format!("via supernode {sn0}")), "{found}");
    let chat = assert_ok(&cluster.run(
        "carol",
        &["chat", "bob", "via a promoted node"],
        Duration::from_secs(30),
    ));
    assert!(chat.contains("delivered"), "{chat}");
    bob.expect(
        "message from carol: via a promoted node",
        Duration::from_secs(15),
    );

    // SIGTERM: alice steps down and exits cleanly; the supernode's sockets
    // are closed (its reflector no longer answers) and the status says so.
    let (exit, lines) = alice.terminate(Duration::from_secs(15));
    assert!(exit.success(), "{exit:?} {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("supernode: stepped down (quit)")),
        "{lines:?}"
    );
    let status = assert_ok(&cluster.run("alice", &["status"], Duration::from_secs(30)));
    assert!(status.contains("supernode: stepped down"), "{status}");
    let reflector = SocketAddr::new(promoted.ip(), promoted.port() + 1);
    let check = assert_ok(&cluster.run(
        "carol",
        &["netcheck", "--stun", &reflector.to_string()],
        Duration::from_secs(30),
    ));
    assert!(check.contains("UDP: blocked"), "{check}");
    // Bob, on the operator's supernode, is not disturbed.
    drop(bob);
}

#[test]
fn no_promote_is_respected_by_flag_and_by_config_file() {
    let cluster = Cluster::start_with(1, None, &["--auto-approve-users", "0"]);
    for user in ["alice", "bob", "carol"] {
        cluster.add_user(user);
    }
    let sn0 = cluster.sn(0);
    let config = cluster.dir.path().join("natter.toml");
    std::fs::write(&config, "no-promote = true\n").unwrap();
    let config_arg = format!("--config={}", config.display());

    let refused_by_flag = Online::start_with(
        &cluster,
        "alice",
        &sn0,
        &[
            "--no-promote",
            "--promote-after",
            "1",
            "--promote-max-load",
            "1000",
        ],
    );
    // `--config` is an option of `natter` itself, before the subcommand.
    let bob_home = cluster.home("bob");
    let mut refused_by_file = cluster
        .natter(
            "bob",
            &[
                &config_arg,
                "--bootstrap",
                &sn0,
                "online",
                "--promote-after",
                "1",
            ],
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The control: the same options without --no-promote are promoted.
    let control = Online::start_with(
        &cluster,
        "carol",
        &sn0,
        &["--promote-after", "1", "--promote-max-load", "1000"],
    );
    control.expect("supernode: promoted, serving at", Duration::from_secs(30));
    let alice_lines = refused_by_flag.lines_for(Duration::from_secs(3));
    let _ = refused_by_file.kill();
    let bob_out = refused_by_file.wait_with_output().unwrap();
    let bob_lines = String::from_utf8_lossy(&bob_out.stdout).into_owned();
    assert!(bob_lines.contains("online as bob"), "{bob_lines}");
    assert!(!bob_lines.contains("supernode:"), "{bob_lines}");
    assert!(
        !alice_lines.iter().any(|l| l.contains("supernode:")),
        "{alice_lines:?}"
    );
    for home in [cluster.home("alice"), bob_home] {
        assert!(
            !home.join("supernode.status").exists(),
            "{}",
            home.display()
        );
        assert!(!home.join("supernode").exists(), "{}", home.display());
    }
}

#[test]
fn without_auto_approval_a_promoted_client_waits_for_the_operator() {
    // The login server's default: promoted clients' keys wait as pending.
    let cluster = Cluster::start(1, None);
    cluster.add_user("alice");
    let alice = Online::start_with(&cluster, "alice", &cluster.sn(0), PROMOTE);
    let (line, _) = alice.expect("supernode: starting at", Duration::from_secs(30));
    let addr: SocketAddr = line
        .split("starting at ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    // Pending in the operator's list, and not serving meanwhile.
    let login_dir = cluster.dir.path().join("login");
    let list = || {
        let out = std::process::Command::new(common::workspace_bin("natter-login"))
            .args(["supernodes", "list", "--data-dir"])
            .arg(&login_dir)
            .output()
            .unwrap();
        assert_ok(&out)
    };
    let mut pending = None;
    wait_for(
        || {
            pending = list()
                .lines()
                .find(|l| l.contains(&format!("addr={addr}")) && l.contains("\tpending\t"))
                .map(str::to_owned);
            pending.is_some()
        },
        "the promoted client's key pending at the login server",
    );
    let status = assert_ok(&cluster.run("alice", &["status"], Duration::from_secs(30)));
    assert!(
        status.contains(&format!(
            "supernode: starting at {addr}, waiting for its certificate"
        )),
        "{status}"
    );
    let early = alice.lines_for(Duration::from_secs(2));
    assert!(!early.iter().any(|l| l.contains("serving at")), "{early:?}");

    // The operator approves the fingerprint: certified on its next
    // announce, and serving.
    let pending = pending.unwrap();
    let fingerprint = pending.split('\t').next().unwrap();
    let approved = std::process::Command::new(common::workspace_bin("natter-login"))
        .args(["supernodes", "approve", "--data-dir"])
        .arg(&login_dir)
        .arg(fingerprint)
        .output()
        .unwrap();
    assert_ok(&approved);
    alice.expect(
        &format!("supernode: promoted, serving at {addr}"),
        Duration::from_secs(30),
    );
}
