//! The self-check classifies every NAT type as declared (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use natter_interop_tests::lab::{Lab, LabConfig};
use natter_interop_tests::nat::{Impairment, NatType};
use natter_interop_tests::probe;

fn config() -> LabConfig {
    LabConfig::new(env!("CARGO_BIN_EXE_natter-interop-tests"))
}

/// Every type of the matrix and the extra ones (the sequential symmetric
/// NAT) classify as declared.
#[test]
fn every_nat_type_classifies_as_declared() {
    let mut lab = Lab::new(config()).expect("build lab");
    let types: Vec<NatType> = NatType::ALL.into_iter().chain(NatType::EXTRA).collect();
    let verdicts = probe::selfcheck_types(&mut lab, &types, Duration::from_secs(1)).expect("probe");
    eprint!("{}", probe::verdict_table(&verdicts));
    assert_eq!(verdicts.len(), types.len());
    probe::require_all_ok(&verdicts).expect("every router behaves as declared");
    // the details NAT-LAB.md reports
    let by = |t: NatType| verdicts.iter().find(|v| v.declared == t).unwrap();
    assert_eq!(
        by(NatType::Symmetric).report.mapping.as_deref(),
        Some("APDM")
    );
    // both symmetric NATs map per destination; only one of them predictably
    let seq = &by(NatType::SymmetricSeq).report;
    assert_eq!(seq.mapping.as_deref(), Some("APDM"));
    assert_eq!(seq.filtering.as_deref(), Some("APDF"));
    assert_eq!(seq.sequential, Some(true), "{}", seq.summary());
    assert_eq!(by(NatType::Symmetric).report.sequential, Some(false));
    assert_eq!(by(NatType::PortRestricted).report.sequential, None);
    // five destinations, five ports (in the order sent: each one the one
    // before + 1, which is what `sequential` says)
    let ports: std::collections::BTreeSet<u16> = seq
        .map_detail
        .values()
        .map(|m| {
            m.as_deref()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(ports.len(), 5, "{:?}", seq.map_detail);
    assert_eq!(
        by(NatType::PortRestricted).report.port_preserved,
        Some(true)
    );
    let fw = &by(NatType::UdpBlocked).report;
    assert!(!fw.udp);
    assert_eq!(fw.tcp.get(&443), Some(&true));
    assert_eq!(fw.tcp.get(&8080), Some(&false));
}

#[test]
fn a_mislabelled_router_fails_the_self_check() {
    let mut lab = Lab::new(config()).expect("build lab");
    let c = lab.add_client(1, NatType::PortRestricted).unwrap();
    // Claim it is full-cone: the self-check must catch it.
    let mut liar = c.clone();
    liar.nat = NatType::FullCone;
    let v = probe::selfcheck(&lab, &[liar], Duration::from_millis(500)).unwrap();
    assert!(!v[0].ok, "{}", probe::verdict_table(&v));
    let err = probe::require_all_ok(&v).unwrap_err().to_string();
    assert!(err.contains("declared full-cone"), "{err}");
}

#[test]
fn loss_impairment_keeps_the_classification_and_drops_packets() {
    let mut lab = Lab::new(config()).expect("build lab");
    let c = lab.add_client(1, NatType::PortRestricted).unwrap();
    lab.set_impairment(&c, &Impairment::profile("loss2").unwrap())
        .unwrap();
    let rules = lab
        .exec(
            &c.router_ns,
            "nft",
            &["list", "table", "ip", "nt_impair"],
            &[],
            Duration::from_secs(5),
        )
        .unwrap()
        .stdout;
    assert!(rules.contains("numgen random mod 100 < 2"), "{rules}");
    let v = probe::selfcheck(&lab, std::slice::from_ref(&c), Duration::from_secs(1)).unwrap();
    probe::require_all_ok(&v).unwrap();
    // 100 % loss: nothing gets through, and clearing restores it
    let all = Impairment {
        loss_pct: 100,
        ..Impairment::CLEAN
    };
    lab.set_impairment(&c, &all).unwrap();
    let v = probe::selfcheck(&lab, std::slice::from_ref(&c), Duration::from_millis(300)).unwrap();
    assert!(!v[0].report.udp, "{}", probe::verdict_table(&v));
    lab.set_impairment(&c, &Impairment::CLEAN).unwrap();
    let v = probe::selfcheck(&lab, &[c], Duration::from_millis(500)).unwrap();
    probe::require_all_ok(&v).unwrap();
}
