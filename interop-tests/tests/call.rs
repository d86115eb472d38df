//! An `open x open` call end to end through the lab, with the real
//! natter-login, natter-supernode and natter binaries (needs root, and the
//! binaries built: NATTER_BIN_DIR, else next to this crate's binary).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::{self, Binaries, MatrixOptions};

fn bin_dir() -> PathBuf {
    std::env::var_os("NATTER_BIN_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_BIN_EXE_natter-interop-tests"))
                .parent()
                .unwrap()
                .to_path_buf()
        },
        PathBuf::from,
    )
}

/// The quick subset of the NAT matrix (README's test command): each cell
/// connects over the path theory expects, with audio that matches.
#[test]
fn quick_subset_connects_over_the_expected_paths() {
    let out = std::env::temp_dir().join(format!("natter-lab-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cells = vec![
        (NatType::Open, NatType::Open),
        (NatType::PortRestricted, NatType::PortRestricted),
        (NatType::Symmetric, NatType::FullCone),
        (NatType::Symmetric, NatType::Symmetric),
    ];
    let opts = MatrixOptions {
        out: out.clone(),
        trials: 1,
        profile: "clean".into(),
        cells,
        bins: Binaries::in_dir(&bin_dir()).expect("natter binaries"),
        probe_exe: env!("CARGO_BIN_EXE_natter-interop-tests").into(),
        call_secs: 5,
        same_supernode: false,
        map_timeout_s: 300,
        break_direct_after_s: None,
    };
    let report = scenario::run_matrix(&opts).expect("matrix run");
    assert_eq!(report.cells.len(), 4);
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

/// The direct path dies in the middle of a call (router A starts dropping
/// everything to and from B): the call falls back to the relay and goes on.
#[test]
fn a_call_whose_direct_path_dies_falls_back_to_the_relay() {
    let out = std::env::temp_dir().join(format!("natter-lab-break-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = MatrixOptions {
        out: out.clone(),
        trials: 1,
        profile: "clean".into(),
        cells: vec![(NatType::FullCone, NatType::FullCone)],
        bins: Binaries::in_dir(&bin_dir()).expect("natter binaries"),
        probe_exe: env!("CARGO_BIN_EXE_natter-interop-tests").into(),
        call_secs: 8,
        same_supernode: false,
        map_timeout_s: 300,
        break_direct_after_s: Some(3),
    };
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
