//! Issue 14, amplification: the real `natter-login` and `natter-supernode`
//! on loopback, probed from sockets that never complete anything (each
//! stands for a spoofed victim), send back at most 1.6 times what they got
//! for STUN and at most as much as they got for everything else before
//! authentication. No root needed.
//!
//! Needs the server binaries next to this crate's binary
//! (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use natter_interop_tests::amplification::{self, OTHER_TARGET, STUN_TARGET};

#[test]
fn no_unauthenticated_service_amplifies_beyond_its_target() {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_natter-interop-tests"))
        .parent()
        .unwrap()
        .to_path_buf();
    let report = amplification::run(&amplification::Options {
        bin_dir,
        // QUIC's first retransmission comes after about 1 s: a window of 3 s
        // sees the Initial flight and at least one retransmission when the
        // server sends them.
        window: Duration::from_secs(3),
    })
    .unwrap();
    println!("{}", report.table());

    // Not an empty result: every probe sent something, and each service
    // that must answer did (a dead server would pass every ratio).
    for row in &report.rows {
        if !row.service.contains("before the ClientHello") {
            assert!(row.bytes_in > 0, "{} sent nothing", row.service);
        }
    }
    for answered in [
        "STUN binding request (bare 20-byte header)",
        "STUN binding request (Natter plain)",
        "STUN binding request (padded)",
        "relay bind (well-formed, unknown token)",
        "relay bind (unknown token, echoing its cookie)",
        "QUIC Initial to the supernode",
        "QUIC Initial to the login server",
        "TLS/TCP supernode: answer to a ClientHello",
        "TLS/TCP login server: answer to a ClientHello",
    ] {
        let row = report.row(answered).expect(answered);
        assert!(row.bytes_out > 0, "{answered}: no answer at all");
    }
    // The gossip probes reached the supernode and were refused.
    for gossip in ["gossip without a LinkHello", "gossip after a LinkHello"] {
        let row = report.row(gossip).expect(gossip);
        assert!(row.note.starts_with("refused"), "{gossip}: {}", row.note);
    }

    for row in &report.rows {
        if row.service.starts_with("STUN") {
            assert_eq!(row.target, Some(STUN_TARGET));
        }
        if row.service.starts_with("QUIC")
            || row.service.starts_with("relay")
            || row.service.starts_with("liveness")
        {
            assert_eq!(row.target, Some(OTHER_TARGET));
        }
        assert!(
            row.within_target(),
            "{}: {} bytes out for {} in (ratio {:.2}, target {:?})",
            row.service,
            row.bytes_out,
            row.bytes_in,
            row.ratio,
            row.target
        );
    }
}
