//! The ICE baseline (issue 20) on two cells, through the lab with the real
//! binaries (needs root, coturn's `turnserver`, and the binaries built:
//! NATTER_BIN_DIR, else next to this crate's binary): `open x open` and
//! `port-restricted x symmetric`, where STUN alone cannot help and the TURN
//! relay has to. The pair types asserted are derived from the cells' NAT
//! types ([`baseline::expected_class`], from Natter's expected path), not
//! copied from a run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{bin_dir, one_lab_at_a_time};
use natter_interop_tests::baseline::{self, BaselineReport, IceOptions};
use natter_interop_tests::ice::{IceClass, PairKind};
use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::{Binaries, MatrixOptions, MatrixReport};

#[test]
fn ice_baseline_selects_the_pairs_theory_expects() {
    let _turn = one_lab_at_a_time();
    let cells = vec![
        (NatType::Open, NatType::Open),
        (NatType::PortRestricted, NatType::Symmetric),
    ];
    let out = std::env::temp_dir().join(format!("natter-lab-ice-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = MatrixOptions::new(
        out.clone(),
        cells.clone(),
        Binaries::in_dir(&bin_dir()).expect("natter binaries"),
        env!("CARGO_BIN_EXE_natter-interop-tests").into(),
    );
    let report = baseline::run(&opts, &IceOptions::default()).expect("matrix with the baseline");
    assert_eq!(report.ice_baseline.len(), cells.len());
    for ((a, b), cell) in cells.iter().zip(&report.ice_baseline) {
        assert_eq!((cell.a, cell.b), (*a, *b));
        let expected = baseline::expected_class(*a, *b);
        assert_ne!(expected, IceClass::Failed, "both cells can connect");
        assert_eq!(cell.expected, expected);
        let t = &cell.trial_results[0];
        assert_eq!(cell.connected, 1, "{a} x {b}: {t:?}");
        assert_eq!(cell.worst_class(), expected, "{a} x {b}: {t:?}");
        assert_eq!(cell.passed, 1, "{a} x {b}: {t:?}");
        let (ra, rb) = (t.a.as_ref().unwrap(), t.b.as_ref().unwrap());
        // what each agent gathered: a host candidate always; behind a NAT
        // also a srflx one (from the supernode's STUN reflector); a relay
        // one (coturn) always
        for (r, nat) in [(ra, *a), (rb, *b)] {
            let has = |k: &str| r.local_candidates.iter().any(|c| c.kind == k);
            assert!(has("host"), "{nat}: {r:?}");
            assert!(has("relay"), "{nat}: {r:?}");
            if nat != NatType::Open {
                assert!(has("srflx"), "{nat}: {r:?}");
            }
            assert!(r.remote_candidates > 0, "{nat}: {r:?}");
            assert!(r.connected_ms.is_some() && r.checks_ms.is_some(), "{r:?}");
        }
        let pair = t.pair.expect("a selected pair");
        assert_eq!(pair.class(), expected, "{a} x {b}: {t:?}");
        if pair == PairKind::Relay {
            // the relay is coturn's address on one side of the pair
            let turn = baseline::TURN_IP.to_string();
            let on_relay = [ra, rb].iter().any(|r| {
                [r.local.as_ref(), r.remote.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|c| c.kind == "relay" && c.addr.starts_with(&format!("{turn}:")))
            });
            assert!(on_relay, "{t:?}");
        }
        if pair == PairKind::Host {
            // open x open: the agents' own public addresses on both ends
            let local = ra.local.as_ref().unwrap();
            assert!(local.addr.starts_with("192.0.2."), "{local:?}");
        }
    }
    // one results.json: Natter's report (render still reads it) and the baseline
    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let natter: MatrixReport = serde_json::from_str(&text).unwrap();
    assert_eq!(natter.cells.len(), cells.len());
    let both: BaselineReport = serde_json::from_str(&text).unwrap();
    assert_eq!(both.ice_baseline.len(), cells.len());
    let md = std::fs::read_to_string(out.join("matrix.md")).unwrap();
    assert!(md.contains("ICE baseline"), "{md}");
    assert!(md.contains("| port-restricted | symmetric |"), "{md}");
    let _ = std::fs::remove_dir_all(&out);
}
