//! Calls end to end through the lab, with the real natter-login,
//! natter-supernode and natter binaries (needs root, and the binaries built:
//! NATTER_BIN_DIR, else next to this crate's binary).
//!
//! The tests take turns (one lab at a time): on a 2-core CI machine, calls of
//! several labs at once would compete for the CPU and make the timing
//! assertions (gaps, first audio) flaky.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bin_dir, one_lab_at_a_time};
use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::{self, Binaries, MatrixOptions};

/// Options for `cells` with output in a fresh temp dir named after `tag`.
fn options(tag: &str, cells: Vec<(NatType, NatType)>) -> MatrixOptions {
    let out = std::env::temp_dir().join(format!("natter-lab-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    MatrixOptions::new(
        out,
        cells,
        Binaries::in_dir(&bin_dir()).expect("natter binaries"),
        env!("CARGO_BIN_EXE_natter-interop-tests").into(),
    )
}

/// The quick subset of the NAT matrix (README's test command): each cell
/// connects over the path theory expects, with audio that matches. The
/// udp-blocked cells (last, so that a failure there does not hide the UDP
/// cells' results) go through the TLS/TCP fallback: login, join, signaling
/// and media over TCP 443 to the servers; their calls are `tcp-relay` calls.
#[test]
fn quick_subset_connects_over_the_expected_paths() {
    let _turn = one_lab_at_a_time();
    let cells = vec![
        (NatType::Open, NatType::Open),
        (NatType::PortRestricted, NatType::PortRestricted),
        (NatType::Symmetric, NatType::FullCone),
        (NatType::Symmetric, NatType::Symmetric),
        (NatType::UdpBlocked, NatType::PortRestricted),
        (NatType::UdpBlocked, NatType::UdpBlocked),
    ];
    let opts = options("quick", cells);
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    assert_eq!(report.cells.len(), 6);
    for cell in &report.cells {
        let t = &cell.trial_results[0];
        assert!(cell.self_check, "self-check failed: {cell:?}");
        assert_eq!(cell.connected, 1, "{:?} x {:?}: {t:?}", cell.a, cell.b);
        assert_eq!(
            cell.final_path.get(&cell.expected),
            Some(&1),
            "{:?} x {:?} expected {:?}: {t:?}",
            cell.a,
            cell.b,
            cell.expected
        );
        assert!(t.first_audio_ms.is_some(), "trial: {t:?}");
        assert!(cell.audio_match.min.unwrap() > 0.8, "trial: {t:?}");
        assert!(
            t.pcaps.is_empty(),
            "captures are kept only for failed trials"
        );
    }
    assert!(out.join("results.json").is_file());
    assert!(out.join("matrix.md").is_file());
    let _ = std::fs::remove_dir_all(&out);
}

/// Port prediction against a sequential symmetric NAT (not in the 36-cell
/// matrix: `--cells port-restricted:symmetric-seq`): the callee's NAT gives
/// each new mapping the next port, its client sends the next ports as
/// predicted candidates, and the caller behind a port-restricted NAT punches
/// a hole to one of them. The call ends hole-punched, not relayed (as
/// port-restricted x symmetric with random ports is), to an address B
/// predicted, and the audio arrives.
#[test]
fn a_port_restricted_caller_reaches_a_sequential_symmetric_callee_at_a_predicted_port() {
    let _turn = one_lab_at_a_time();
    let opts = options(
        "predict",
        vec![(NatType::PortRestricted, NatType::SymmetricSeq)],
    );
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert!(
        cell.self_check,
        "self-check failed: {}",
        report.self_check_table
    );
    assert_eq!(cell.expected, "hole-punched");
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    assert_eq!(t.path_end.as_deref(), Some("hole-punched"), "trial: {t:?}");
    let read = |side: &str| {
        let p = std::path::Path::new(&t.dir).join(format!("{side}-stats.json"));
        natter_proto::report::CallReport::from_json(&std::fs::read_to_string(&p).unwrap()).unwrap()
    };
    let (a, b) = (read("a"), read("b"));
    assert!(
        !b.predicted_candidates.is_empty(),
        "B predicted no ports: {b:?}"
    );
    assert!(a.predicted_candidates.is_empty(), "A's NAT keeps its port");
    let remote = a.remote_addr.expect("A's final remote");
    assert!(
        b.predicted_candidates.contains(&remote),
        "A ends at {remote}, not one of B's predicted {:?}",
        b.predicted_candidates
    );
    assert!(cell.audio_match.min.unwrap() > 0.8, "trial: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The direct path dies in the middle of a call (router A starts dropping
/// everything to and from B): the call falls back to the relay and goes on.
#[test]
fn a_call_whose_direct_path_dies_falls_back_to_the_relay() {
    let _turn = one_lab_at_a_time();
    let opts = MatrixOptions {
        call_secs: 8,
        break_direct_after_s: Some(3),
        ..options("break", vec![(NatType::FullCone, NatType::FullCone)])
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    let punched = t.switches.iter().position(|p| p == "hole-punched");
    let relayed_after = punched.and_then(|i| t.switches[i..].iter().position(|p| p == "relayed"));
    assert!(
        relayed_after.is_some(),
        "relayed after hole-punched: {:?}",
        t.switches
    );
    assert_eq!(t.path_end.as_deref(), Some("relayed"), "trial: {t:?}");
    // The audio kept flowing through the switch: the gap while the dead
    // path is detected stays under a second (50 frames), and what B heard
    // still matches what A said (silence or garbage score about 0).
    assert!(t.packets_lost.unwrap() < 50.0, "gap too long: {t:?}");
    assert!(cell.audio_match.min.unwrap() > 0.6, "trial: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// UDP is blocked in the middle of a call (router A starts dropping every UDP
/// packet and lets out only TCP to ports 80 and 443, as a udp-blocked
/// firewall does): A's supernode session and media move to TLS/TCP, the
/// call goes on over the supernode's TCP relay and the audio comes back.
#[test]
fn a_call_whose_udp_gets_blocked_moves_to_tcp() {
    let _turn = one_lab_at_a_time();
    let (call_secs, block_at) = (12, 4);
    let opts = MatrixOptions {
        call_secs,
        block_udp_after_s: Some(block_at),
        ..options(
            "udp-block",
            vec![(NatType::PortRestricted, NatType::PortRestricted)],
        )
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert_eq!(cell.expected, "tcp-relay");
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    assert_eq!(
        t.events.len(),
        1,
        "the block happened during the call: {t:?}"
    );
    // it started on UDP (hole-punched, after the relay A starts with) ...
    let udp =
        t.a.switches
            .iter()
            .position(|p| p == "hole-punched" || p == "direct");
    assert!(udp.is_some(), "A used a UDP path first: {t:?}");
    // ... and ended on TCP
    let tcp_after = udp.and_then(|i| t.a.switches[i..].iter().position(|p| p == "tcp-relay"));
    assert!(tcp_after.is_some(), "tcp-relay after UDP: {t:?}");
    assert_eq!(t.a.end.as_deref(), Some("tcp-relay"), "trial: {t:?}");
    assert_eq!(t.path_end.as_deref(), Some("tcp-relay"), "trial: {t:?}");
    assert!(t.passed, "trial: {t:?}");
    // the call ran to its end (A hung up after call_secs) ...
    let lasted = t.call_duration_s.unwrap();
    assert!(lasted >= f64::from(call_secs) - 0.5, "ended early: {t:?}");
    // ... and B kept receiving after the block: before it, B can have got at
    // most 50 packets/s x block_at s; at least 2 s more came after it
    let received = t.media_packets_received.unwrap();
    assert!(
        received >= f64::from(50 * block_at + 100),
        "too little media after the block: {t:?}"
    );
    // what B heard in the last part of the call (from 4 s after the block)
    // still matches what A said
    assert!(t.audio_match_late.unwrap() > 0.6, "trial: {t:?}");
    // A's QUIC session died with UDP: A rejoined over TLS during the call,
    // and its hangup reached B (B's call ended with A's, not by B's media
    // timeout 10 s later)
    assert!(t.rejoins[0] >= 1, "A rejoined: {t:?}");
    assert_eq!(t.signaling[0].as_deref(), Some("tcp"), "trial: {t:?}");
    assert_eq!(t.b_ended_by_peer, Some(true), "trial: {t:?}");
    assert!(
        t.b_duration_s.unwrap() < lasted + 3.0,
        "B outlasted A: {t:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// UDP is blocked on A's side 3 s into a relayed call (port-restricted x
/// symmetric: no hole punching) and unblocked at 7 s: the call moves to the
/// TLS relay leg and, once UDP works again, back to the UDP relay, and B
/// hears A to the end. End to end, this is whichever UDP bind reaches the
/// relay first (the relay forwards to a side's last bind): here usually the
/// binds of the allocation A's relay migration made, which are still being
/// retried when UDP comes back; the rule that a side on a TLS leg binds its
/// UDP legs again (2, 4, 8, 16 s after moving) is what brings back a call
/// whose binds had given up, tested on its own in `proto/tests/tcp_return.rs`.
/// The call ends at 14 s, before the binds' 15 s refresh.
#[test]
fn a_call_on_tcp_comes_back_to_udp_once_udp_works_again() {
    let _turn = one_lab_at_a_time();
    let (call_secs, block_at, unblock_at) = (14, 3, 7);
    let opts = MatrixOptions {
        call_secs,
        block_udp_after_s: Some(block_at),
        unblock_udp_after_s: Some(unblock_at),
        ..options(
            "udp-back",
            vec![(NatType::PortRestricted, NatType::Symmetric)],
        )
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    assert_eq!(t.events.len(), 2, "both changes during the call: {t:?}");
    // UDP first, then the TLS leg, then UDP again, and the call ended there.
    let s = &t.a.switches;
    let tcp = s
        .iter()
        .position(|p| p == "tcp-relay")
        .unwrap_or_else(|| panic!("A never moved to TCP: {t:?}"));
    assert!(
        s[..tcp].iter().any(|p| p != "tcp-relay"),
        "A used UDP before TCP: {t:?}"
    );
    assert!(
        s[tcp..].iter().any(|p| p != "tcp-relay"),
        "A came back to UDP: {t:?}"
    );
    assert_eq!(t.a.end.as_deref(), Some("relayed"), "A ended on UDP: {t:?}");
    assert_eq!(cell.expected, "relayed");
    assert!(t.passed, "trial: {t:?}");
    let lasted = t.call_duration_s.unwrap();
    assert!(lasted >= f64::from(call_secs) - 0.5, "ended early: {t:?}");
    // B heard A after the return (the last part of the call matches).
    assert!(t.audio_match_late.unwrap() > 0.6, "trial: {t:?}");
    assert_eq!(t.b_ended_by_peer, Some(true), "trial: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// UDP is blocked on A's side in the middle of a call and then B hangs up:
/// the hangup reaches A over the TLS session A rejoined with, and A's call
/// ends with B's.
#[test]
fn a_callee_hangup_reaches_a_caller_whose_udp_got_blocked() {
    let _turn = one_lab_at_a_time();
    let opts = MatrixOptions {
        call_secs: 20,
        block_udp_after_s: Some(3),
        callee_secs: Some(9),
        ..options(
            "udp-block-b-hangs-up",
            vec![(NatType::PortRestricted, NatType::PortRestricted)],
        )
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let t = &report.cells[0].trial_results[0];
    assert_eq!(report.cells[0].connected, 1, "trial: {t:?}");
    assert_eq!(t.events.len(), 1, "blocked during the call: {t:?}");
    assert_eq!(t.b_ended_by_peer, Some(false), "B hung up: {t:?}");
    assert_eq!(t.a_ended_by_peer, Some(true), "A was told: {t:?}");
    assert_eq!(t.signaling[0].as_deref(), Some("tcp"), "trial: {t:?}");
    // A's call ended with B's hangup, long before its own 20 s.
    let (a, b) = (t.call_duration_s.unwrap(), t.b_duration_s.unwrap());
    assert!(a < b + 3.0, "A {a} s, B {b} s: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The supernode both parties of a port-restricted x symmetric call joined
/// through, and whose relay carries the call, is killed (SIGKILL) mid-call:
/// both rejoin through the other supernode, allocate a relay there and
/// move the call to it. The audio gap at B stays under 2 s, the audio after
/// it matches, and A's hangup at the end reaches B.
#[test]
fn a_relayed_call_moves_to_another_relay_when_its_supernode_dies() {
    let _turn = one_lab_at_a_time();
    let (call_secs, kill_at) = (10, 3);
    let opts = MatrixOptions {
        call_secs,
        same_supernode: true,
        kill_supernode_after_s: Some(kill_at),
        ..options(
            "relay-loss",
            vec![(NatType::PortRestricted, NatType::Symmetric)],
        )
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert_eq!(cell.expected, "relayed");
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    assert!(t.passed, "ended relayed: {t:?}");
    assert_eq!(t.events.len(), 1, "killed during the call: {t:?}");
    // Both sides found every path dead, asked to migrate and rejoined.
    assert!(t.relay_migrations.iter().all(|n| *n >= 1), "{t:?}");
    assert!(t.rejoins.iter().all(|n| *n >= 1), "{t:?}");
    // The gap B heard (the longest time without a media datagram).
    let gap = t.b_max_media_gap_ms.unwrap();
    println!("relay loss: audio gap at B {gap} ms");
    assert!(gap < 2_000, "gap {gap} ms: {t:?}");
    // The audio after the gap (from 4 s after the kill) matches.
    assert!(t.audio_match_late.unwrap() > 0.6, "trial: {t:?}");
    // The call ran to its end, and A's hangup reached B.
    assert!(t.call_duration_s.unwrap() >= f64::from(call_secs) - 0.5);
    assert_eq!(t.b_ended_by_peer, Some(true), "trial: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// Supernode promotion in the NAT lab, and a promoted node quitting
/// mid-call (issue 18). A client on an open network stays online with
/// `--promote-after 2` and is promoted (the lab's login server runs with
/// `--auto-approve-users 0`); A's login puts it into A's host cache, and
/// it serves A's search for its own user (online through an operator
/// supernode) when A joins through it only. A (port-restricted) and B
/// (symmetric) join through it only, so their relayed call's relay is on
/// the promoted node. 3 s into the call its `natter online` gets SIGTERM:
/// it steps down ("stepped down (quit)") and exits 0, and the call moves
/// to an operator supernode's relay by relay migration: the audio gap at
/// B stays under 2 s, the audio after it matches, the call runs to its
/// end and A's hang-up reaches B.
#[test]
fn a_promoted_client_relays_a_call_and_the_call_survives_its_step_down() {
    let _turn = one_lab_at_a_time();
    let (call_secs, stop_at) = (10, 3);
    let opts = MatrixOptions {
        call_secs,
        promoted_relay: Some(NatType::Open),
        stop_promoted_after_s: Some(stop_at),
        ..options(
            "promoted-relay",
            vec![(NatType::PortRestricted, NatType::Symmetric)],
        )
    };
    let out = opts.out.clone();
    let report = scenario::run_matrix(&opts).expect("matrix run");
    let cell = &report.cells[0];
    let t = &cell.trial_results[0];
    assert!(cell.self_check, "{}", report.self_check_table);
    let p = t
        .promoted
        .as_ref()
        .unwrap_or_else(|| panic!("no promoted relay: {t:?}"));
    assert_eq!(p.nat, Some(NatType::Open));

    // Promoted after its threshold, at its own (open, public) address.
    let after = p
        .promoted_after_ms
        .unwrap_or_else(|| panic!("not promoted: {t:?}"));
    let addr: std::net::SocketAddr = p.addr.as_deref().unwrap().parse().unwrap();
    println!("promoted relay: serving at {addr} {after} ms after joining (threshold 2000 ms)");
    assert!(after >= 2_000, "promoted before the threshold: {p:?}");
    assert_eq!(
        addr.ip().to_string(),
        "192.0.2.3",
        "the open host's address: {p:?}"
    );
    // In another client's host cache (A's login: the login server lists it).
    assert!(p.in_host_cache, "not in A's host cache: {p:?}");
    // It served A's search: its own user, online through an operator
    // supernode, found by a client joined through the promoted node only.
    let joined_via = p.joined_via.as_deref().unwrap();
    assert!(joined_via.starts_with("198.51.100."), "{p:?}");
    let search = p.search.as_deref().unwrap_or_default();
    assert!(search.starts_with("lab1p: online"), "search: {search:?}");
    assert!(
        search.contains(&format!("via supernode {joined_via}")),
        "search: {search:?}"
    );

    // The call: relayed, first through the promoted node's relay (both
    // sides), then through an operator supernode's.
    assert_eq!(cell.expected, "relayed");
    assert_eq!(cell.connected, 1, "trial: {t:?}");
    assert!(t.passed, "ended relayed: {t:?}");
    for side in [&t.a, &t.b] {
        let ips: Vec<String> = side
            .relays
            .iter()
            .map(|r| r.parse::<std::net::SocketAddr>().unwrap().ip().to_string())
            .collect();
        assert_eq!(
            ips.first().map(String::as_str),
            Some("192.0.2.3"),
            "first relay on the promoted node: {t:?}"
        );
        assert!(
            ips.last().is_some_and(|ip| ip.starts_with("198.51.100.")),
            "last relay an operator supernode's: {t:?}"
        );
    }

    // The step-down: SIGTERM mid-call, "stepped down (quit)", exit 0.
    assert_eq!(t.events.len(), 1, "stopped during the call: {t:?}");
    assert!(
        p.stepped_down
            .iter()
            .any(|l| l.contains("supernode: stepped down (quit)")),
        "{p:?}"
    );
    assert_eq!(p.exit_ok, Some(true), "{p:?}");
    // Both sides found every path dead, asked to migrate and rejoined.
    assert!(t.relay_migrations.iter().all(|n| *n >= 1), "{t:?}");
    assert!(t.rejoins.iter().all(|n| *n >= 1), "{t:?}");
    let gap = t.b_max_media_gap_ms.unwrap();
    let late = t.audio_match_late.unwrap();
    println!("promoted relay stepped down: audio gap at B {gap} ms, late audio match {late:.2}");
    assert!(gap < 2_000, "gap {gap} ms: {t:?}");
    assert!(late > 0.6, "trial: {t:?}");
    // The call ran to its end, and A's hangup reached B.
    assert!(t.call_duration_s.unwrap() >= f64::from(call_secs) - 0.5);
    assert_eq!(t.b_ended_by_peer, Some(true), "trial: {t:?}");
    let _ = std::fs::remove_dir_all(&out);
}
