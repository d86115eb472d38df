//! The key log is off unless asked for (docs/SECURITY.md): a real call on
//! loopback with `NATTER_KEYLOG` unset, and with `SSLKEYLOGFILE` (the
//! variable other TLS programs honour) pointing at a file, writes no call
//! key and no TLS secret anywhere: not to that file, not into either home,
//! and says nothing about a key log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::Cluster;
use common::call::{call, field};

/// Every regular file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            files(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

#[test]
fn without_natter_keylog_no_key_is_written_anywhere() {
    assert!(
        std::env::var_os("NATTER_KEYLOG").is_none(),
        "run this test without NATTER_KEYLOG in the environment: it checks that nothing is logged when it is unset"
    );
    let mut cluster = Cluster::start(2, None);
    let ssl_key_log = cluster.dir.path().join("sslkeylog.txt");
    cluster
        .natter_env
        .push(("SSLKEYLOGFILE".into(), ssl_key_log.clone()));
    cluster.add_user("alice");
    cluster.add_user("bob");
    let c = call(&cluster, None, 2, |_| {});
    // A real call happened: media flowed both ways.
    assert!(
        field(&c.callee_json, "media_packets_received") > 0.0,
        "{}",
        c.callee_json
    );
    assert!(
        field(&c.caller_json, "media_packets_received") > 0.0,
        "{}",
        c.caller_json
    );

    for out in [&c.caller, &c.callee] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("NATTER_KEYLOG"), "{stderr}");
    }
    assert!(!ssl_key_log.exists(), "SSLKEYLOGFILE was honoured");
    let mut all = Vec::new();
    files(cluster.dir.path(), &mut all);
    assert!(all.len() > 4, "the homes hold the users' files: {all:?}");
    for path in all {
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for label in [
            "NATTER_CALL",
            "CLIENT_TRAFFIC_SECRET_0",
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
        ] {
            assert!(!text.contains(label), "{label} in {}", path.display());
        }
    }
}
