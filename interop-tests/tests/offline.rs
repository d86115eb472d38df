//! Pure parts of the lab (no root needed): expected paths, rulesets, parsing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_interop_tests::nat::{self, Impairment, NatType};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use natter_interop_tests::scenario::{
    self, Binaries, MatrixOptions, MidCall, Percentiles, call_path, expected_path, path_rank,
};

#[test]
fn expected_paths_follow_the_documented_table() {
    use NatType::*;
    assert_eq!(expected_path(Open, Open), "direct");
    assert_eq!(expected_path(Open, Symmetric), "hole-punched");
    assert_eq!(expected_path(FullCone, Symmetric), "hole-punched");
    assert_eq!(
        expected_path(PortRestricted, PortRestricted),
        "hole-punched"
    );
    assert_eq!(expected_path(PortRestricted, Symmetric), "relayed");
    assert_eq!(expected_path(Symmetric, PortRestricted), "relayed");
    assert_eq!(expected_path(Symmetric, Symmetric), "relayed");
    for t in NatType::ALL {
        assert_eq!(expected_path(t, UdpBlocked), "tcp-relay");
        assert_eq!(expected_path(UdpBlocked, t), "tcp-relay");
        for u in NatType::ALL {
            assert_eq!(expected_path(t, u), expected_path(u, t), "{t} x {u}");
        }
    }
    assert_eq!(scenario::all_cells().len(), 36);
}

#[test]
fn rulesets_follow_the_nat_lab_recipes() {
    let r = |t| nat::ruleset(t, "203.0.113.1", "10.1.0.0/24", 42).unwrap_or_default();
    assert!(nat::ruleset(NatType::Open, "203.0.113.1", "10.1.0.0/24", 42).is_none());
    assert!(r(NatType::Symmetric).contains("masquerade fully-random"));
    assert!(!r(NatType::PortRestricted).contains("random"));
    assert!(r(NatType::PortRestricted).contains(r#"iifname "wan0" drop"#));
    assert!(r(NatType::UdpBlocked).contains("tcp dport { 80, 443 } accept"));
    // udp-blocked: the only way from the LAN out is TCP to 80 and 443 (the
    // servers' TLS listeners are on 443), nothing UDP
    let fw = r(NatType::UdpBlocked);
    let out: Vec<&str> = fw
        .lines()
        .filter(|l| l.contains(r#"iifname "lan0" oifname "wan0""#))
        .collect();
    assert_eq!(
        out,
        vec!["\t\tiifname \"lan0\" oifname \"wan0\" tcp dport { 80, 443 } accept"]
    );
    assert!(fw.contains("policy drop;"), "{fw}");
    assert!(!fw.contains("udp"), "{fw}");
    for t in [NatType::FullCone, NatType::AddressRestricted] {
        let s = r(t);
        assert!(s.contains("priority srcnat + 10"), "{s}");
        assert!(s.contains("timeout 42s"), "{s}");
        assert!(s.contains(r#"iifname "wan0" drop"#), "{s}");
    }
    assert!(r(NatType::AddressRestricted).contains("@adf accept"));
    assert!(!r(NatType::FullCone).contains("@adf"));
}

#[test]
fn impairment_profiles() {
    assert_eq!(Impairment::profile("clean").unwrap(), Impairment::CLEAN);
    let l = Impairment::profile("loss2").unwrap();
    assert_eq!(l.loss_pct, 2);
    assert!(l.nft_script().contains("numgen random mod 100 < 2 drop"));
    assert!(!Impairment::CLEAN.nft_script().contains("numgen"));
    assert!(!l.needs_wire() && !Impairment::CLEAN.needs_wire());
    // the issue's profiles, each way: through the wire, which also does the loss
    for (name, delay, jitter, loss, burst) in [
        ("wifi", 30_000, 20_000, 0.01, 2.0),
        ("4g", 60_000, 30_000, 0.02, 1.0),
        ("bad", 120_000, 60_000, 0.05, 3.0),
    ] {
        let imp = Impairment::profile(name).unwrap();
        assert!(imp.needs_wire(), "{name}");
        assert!(!imp.nft_script().contains("numgen"), "{name}");
        let p = imp.link_params();
        assert_eq!((p.delay_us, p.jitter_us), (delay, jitter), "{name}");
        assert_eq!((p.loss, p.burst), (loss, burst), "{name}");
    }
    let err = Impairment::profile("lte").unwrap_err();
    assert!(err.contains("wifi, 4g, bad"), "{err}");
}

#[test]
fn cells_and_percentiles() {
    let c = scenario::parse_cells("open:sym, full-cone:udp-blocked").unwrap();
    assert_eq!(
        c,
        vec![
            (NatType::Open, NatType::Symmetric),
            (NatType::FullCone, NatType::UdpBlocked)
        ]
    );
    assert!(scenario::parse_cells("open").is_err());
    assert!(scenario::parse_cells("open:nat64").is_err());
    let p = Percentiles::of(&[5.0, 1.0, 3.0, 2.0, 4.0]);
    assert_eq!(p.p50, Some(3.0));
    assert_eq!(p.p95, Some(5.0));
    assert_eq!(Percentiles::of(&[]).p50, None);
}

#[test]
fn the_call_path_is_the_less_direct_side() {
    let order = ["direct", "hole-punched", "relayed", "tcp-relay"];
    for (i, p) in order.iter().enumerate() {
        assert_eq!(usize::from(path_rank(p)), i);
    }
    assert!(path_rank("none") > path_rank("tcp-relay"));
    let cp = |a, b| call_path(a, b);
    assert_eq!(
        cp(Some("tcp-relay"), Some("relayed")).as_deref(),
        Some("tcp-relay")
    );
    assert_eq!(
        cp(Some("relayed"), Some("tcp-relay")).as_deref(),
        Some("tcp-relay")
    );
    assert_eq!(
        cp(Some("hole-punched"), Some("hole-punched")).as_deref(),
        Some("hole-punched")
    );
    assert_eq!(
        cp(Some("hole-punched"), Some("relayed")).as_deref(),
        Some("relayed")
    );
    assert_eq!(cp(None, Some("direct")).as_deref(), Some("direct"));
    assert_eq!(cp(Some("direct"), None).as_deref(), Some("direct"));
    assert_eq!(cp(Some("none"), Some("direct")).as_deref(), Some("none"));
    assert_eq!(cp(None, None), None);
    // a side's paths from its call report
    let report = serde_json::json!({
        "path": "tcp-relay", "path_start": "relayed", "path_end": "tcp-relay",
        "switches": [{"at_ms": 0, "path": "relayed"}, {"at_ms": 900, "path": "hole-punched"},
                     {"at_ms": 6100, "path": "tcp-relay"}]
    });
    let side = scenario::SidePaths::of_report(&report);
    assert_eq!(side.start.as_deref(), Some("relayed"));
    assert_eq!(side.end.as_deref(), Some("tcp-relay"));
    assert_eq!(side.switches, ["relayed", "hole-punched", "tcp-relay"]);
    let old = scenario::SidePaths::of_report(&serde_json::json!({"path": "relayed"}));
    assert_eq!(old.start.as_deref(), Some("relayed"));
    assert_eq!(old.end.as_deref(), Some("relayed"));
}

fn opts() -> MatrixOptions {
    MatrixOptions::new(
        PathBuf::from("/nonexistent"),
        scenario::all_cells(),
        Binaries {
            login: "natter-login".into(),
            supernode: "natter-supernode".into(),
            client: "natter".into(),
        },
        "natter-interop-tests".into(),
    )
}

#[test]
fn mid_call_changes_and_their_expected_paths() {
    use NatType::*;
    let plain = opts();
    assert!(plain.mid_call().is_empty());
    assert_eq!(plain.late_audio_from_s(), None);
    for (a, b) in scenario::all_cells() {
        assert_eq!(plain.expected_path(a, b), expected_path(a, b));
    }
    let broken = MatrixOptions {
        call_secs: 8,
        break_direct_after_s: Some(3),
        ..opts()
    };
    assert_eq!(broken.expected_path(FullCone, FullCone), "relayed");
    assert_eq!(broken.expected_path(Symmetric, Symmetric), "relayed");
    assert_eq!(broken.expected_path(UdpBlocked, Open), "tcp-relay");
    assert_eq!(broken.late_audio_from_s(), None, "8 s: too short");
    let blocked = MatrixOptions {
        call_secs: 12,
        block_udp_after_s: Some(4),
        ..opts()
    };
    for (a, b) in scenario::all_cells() {
        assert_eq!(blocked.expected_path(a, b), "tcp-relay");
    }
    assert_eq!(blocked.mid_call(), vec![(4, MidCall::BlockUdp)]);
    assert_eq!(blocked.late_audio_from_s(), Some(8));
    let both = MatrixOptions {
        break_direct_after_s: Some(5),
        ..blocked.clone()
    };
    assert_eq!(
        both.mid_call(),
        vec![(4, MidCall::BlockUdp), (5, MidCall::BreakDirect)]
    );
    // A promoted relay stepping down: another relay serves, so the cell's
    // own expected path stands, and the late audio starts 4 s after it.
    let promoted = MatrixOptions {
        call_secs: 10,
        promoted_relay: Some(Open),
        stop_promoted_after_s: Some(3),
        ..opts()
    };
    assert_eq!(promoted.mid_call(), vec![(3, MidCall::StopPromoted)]);
    assert_eq!(promoted.expected_path(PortRestricted, Symmetric), "relayed");
    assert_eq!(promoted.expected_path(Open, Open), "direct");
    assert_eq!(promoted.late_audio_from_s(), Some(7));
}

#[test]
fn mid_call_rules_stay_in_router_a() {
    let peer = [Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(10, 2, 0, 2)];
    let brk = MidCall::BreakDirect.nft_script(&peer).unwrap();
    assert!(brk.contains("table ip natter_break"), "{brk}");
    assert!(brk.contains("{ 203.0.113.2, 10.2.0.2 }"), "{brk}");
    let blk = MidCall::BlockUdp.nft_script(&peer).unwrap();
    assert!(blk.contains("hook forward priority -20"), "{blk}");
    assert!(blk.contains("meta l4proto udp drop"), "{blk}");
    assert!(blk.contains("tcp dport != { 80, 443 } drop"), "{blk}");
    assert!(!blk.contains("203.0.113.2"), "all UDP, not only B's: {blk}");
    assert_eq!(MidCall::KillSupernode.nft_script(&peer), None, "no rule");
    assert_eq!(MidCall::StopPromoted.nft_script(&peer), None, "no rule");
}

#[test]
fn late_audio_match_finds_audio_after_a_gap() {
    // 10 s of a 1 Hz amplitude-modulated tone, "heard" 200 ms late
    let rate = 48_000usize;
    let sent: Vec<i16> = (0..10 * rate)
        .map(|i| {
            let t = i as f64 / rate as f64;
            let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 0.7 * t).sin();
            (env * 8000.0 * (2.0 * std::f64::consts::PI * 300.0 * t).sin()) as i16
        })
        .collect();
    let mut heard = vec![0i16; rate / 5];
    heard.extend_from_slice(&sent);
    // a 3 s outage (concealed as silence) from 4 s on
    for s in &mut heard[4 * rate..7 * rate] {
        *s = 0;
    }
    assert!(scenario::late_audio_match(&sent, &heard, 7) > 0.9);
    assert!(scenario::late_audio_match(&sent, &heard, 3) < 0.9);
    // nothing heard after the gap
    let mut cut = heard.clone();
    for s in &mut cut[4 * rate..] {
        *s = 0;
    }
    assert!(scenario::late_audio_match(&sent, &cut, 7) < 0.1);
    // heard starting 0.5 s into the speech (first frames lost)
    let early = sent[rate / 2..].to_vec();
    assert!(scenario::late_audio_match(&sent, &early, 7) > 0.9);
}

#[test]
fn the_matrix_shows_both_sides_and_the_udp_blocked_summary() {
    use scenario::{CellResult, MatrixReport, MinScore, SidePaths, TrialResult};
    let side = |p: &str| SidePaths {
        start: Some(p.into()),
        end: Some(p.into()),
        switches: vec![p.into()],
        relays: Vec::new(),
    };
    let trial = |a: &str, b: &str, first: f64| TrialResult {
        trial: 1,
        connected: true,
        path_end: call_path(Some(a), Some(b)),
        a: side(a),
        b: side(b),
        first_audio_ms: Some(first),
        audio_match: Some(0.95),
        passed: true,
        ..TrialResult::default()
    };
    let cell = |a, b, t: TrialResult, both: &str| CellResult {
        a,
        b,
        expected: expected_path(a, b).into(),
        trials: 1,
        connected: 1,
        final_path: [(t.path_end.clone().unwrap(), 1)].into(),
        side_paths: [(both.to_owned(), 1)].into(),
        first_audio_ms: Percentiles::of(&[t.first_audio_ms.unwrap()]),
        audio_match: MinScore { min: Some(0.95) },
        self_check: true,
        trial_results: vec![t],
    };
    let report = MatrixReport {
        profile: "clean".into(),
        self_check_table: String::new(),
        clients: None,
        backend: None,
        cells: vec![
            cell(
                NatType::Open,
                NatType::Open,
                trial("direct", "direct", 60.0),
                "direct/direct",
            ),
            cell(
                NatType::UdpBlocked,
                NatType::Open,
                trial("tcp-relay", "relayed", 900.0),
                "tcp-relay/relayed",
            ),
            cell(
                NatType::Open,
                NatType::UdpBlocked,
                trial("relayed", "tcp-relay", 1100.0),
                "relayed/tcp-relay",
            ),
        ],
    };
    let md = scenario::matrix_markdown(&report);
    assert!(
        md.contains("1/1 tcp-relay×1 (A/B tcp-relay/relayed×1) [tcp-relay]"),
        "{md}"
    );
    assert!(md.contains("1/1 direct×1 [direct] |"), "{md}");
    assert!(md.contains("| relayed/tcp-relay×1 |"), "{md}");
    let summary = scenario::udp_blocked_summary(&report).unwrap();
    assert!(
        summary.starts_with("2 cells: 2/2 trials connected"),
        "{summary}"
    );
    assert!(summary.contains("first audio p50 900 ms"), "{summary}");
    assert!(
        summary.contains("worst cell p50: open x udp-blocked 1100 ms"),
        "{summary}"
    );
    assert!(summary.ends_with(": met"), "{summary}");
    assert!(md.contains(&summary), "{md}");
    let udp_only = MatrixReport {
        cells: report.cells[..1].to_vec(),
        ..report.clone()
    };
    assert!(scenario::udp_blocked_summary(&udp_only).is_none());
}

#[test]
fn the_sequential_symmetric_nat_is_an_extra_type_with_a_counter_snat() {
    assert_eq!(NatType::ALL.len(), 6, "the default matrix stays 6x6");
    assert!(!NatType::ALL.contains(&NatType::SymmetricSeq));
    assert_eq!(
        "symmetric-seq".parse::<NatType>(),
        Ok(NatType::SymmetricSeq)
    );
    assert_eq!("sym-seq".parse::<NatType>(), Ok(NatType::SymmetricSeq));
    assert_eq!(NatType::SymmetricSeq.to_string(), "symmetric-seq");
    assert!(!NatType::SymmetricSeq.endpoint_independent_mapping());
    let r = nat::ruleset(NatType::SymmetricSeq, "203.0.113.2", "10.2.0.0/24", 42).unwrap();
    assert!(
        r.contains(
            "meta l4proto udp snat to 203.0.113.2 : numgen inc mod 1024 map { 0 : 20000, 1 : 20001,"
        ),
        "{r}"
    );
    assert!(r.contains("1023 : 21023 }"), "{r}");
    assert!(r.contains(r#"iifname "wan0" drop"#), "{r}");
    assert!(!r.contains("random"), "{r}");
    // selectable in --cells
    assert_eq!(
        scenario::parse_cells("port:symmetric-seq").unwrap(),
        vec![(NatType::PortRestricted, NatType::SymmetricSeq)]
    );
    use NatType::*;
    assert_eq!(expected_path(PortRestricted, SymmetricSeq), "hole-punched");
    assert_eq!(expected_path(SymmetricSeq, PortRestricted), "hole-punched");
    assert_eq!(expected_path(FullCone, SymmetricSeq), "hole-punched");
    assert_eq!(expected_path(Symmetric, SymmetricSeq), "relayed");
    assert_eq!(expected_path(SymmetricSeq, SymmetricSeq), "relayed");
    assert_eq!(expected_path(SymmetricSeq, UdpBlocked), "tcp-relay");
}

#[test]
fn sequential_ports_are_small_regular_steps() {
    use natter_interop_tests::probe::sequential_ports;
    assert!(sequential_ports(&[20_000, 20_001, 20_002, 20_003, 20_004]));
    assert!(sequential_ports(&[20_000, 20_002, 20_003]));
    assert!(!sequential_ports(&[20_000, 20_005]));
    assert!(!sequential_ports(&[41_234, 7_001, 55_000]));
    assert!(!sequential_ports(&[20_001, 20_000]), "backwards");
    assert!(!sequential_ports(&[20_000]), "one port says nothing");
    assert!(sequential_ports(&[65_535, 0]), "the counter wraps");
}

#[test]
fn a_refused_protocol_version_marks_the_trial_incompatible() {
    let dir = std::env::temp_dir().join(format!("natter-incompat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // a NAT failure is not an incompatibility
    std::fs::write(dir.join("lab1a-register.log"), "registered lab1a\n").unwrap();
    let call_log = dir.join("t1-a-call.log");
    std::fs::write(&call_log, "natter: call failed: no path to lab1b\n").unwrap();
    assert_eq!(
        scenario::incompatibility(
            Some("`natter call` exited 1"),
            &dir,
            std::slice::from_ref(&call_log)
        ),
        None
    );
    // the login server's close reason, as the client prints it
    let line = "natter: login server closed the connection: malformed request: bad frame: \
                unsupported protocol version 3 (this side speaks 2)";
    std::fs::write(dir.join("lab1a-register.log"), format!("\n{line}\n")).unwrap();
    assert_eq!(
        scenario::incompatibility(None, &dir, &[call_log]).as_deref(),
        Some(line)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
