//! Pure parts of the lab (no root needed): expected paths, rulesets, parsing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use natter_interop_tests::nat::{self, Impairment, NatType};
use natter_interop_tests::scenario::{self, Percentiles, expected_path};

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
    assert!(Impairment::profile("wifi").is_err());
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
