//! natter-proto stays sans-IO: no async runtime, no socket crate, no clock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "socket2",
    "async-std",
    "smol",
    "quinn",
    "quinn-udp",
    "futures-io",
    "rustls",
    "hyper",
    "libc-socket",
];

#[test]
fn proto_depends_on_no_runtime_or_socket_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "natter-proto",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tree = String::from_utf8_lossy(&output.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"prost"), "tree looks wrong: {tree}");
    for bad in FORBIDDEN_CRATES {
        assert!(!crates.contains(bad), "natter-proto depends on {bad}");
    }
}

#[test]
fn proto_sources_open_no_socket_and_read_no_clock() {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    let mut checked = 0;
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for bad in [
            "UdpSocket",
            "TcpStream",
            "TcpListener",
            "Instant::now",
            "SystemTime::now",
            "thread::sleep",
            "OsRng",
            "thread_rng",
        ] {
            assert!(!text.contains(bad), "{} uses {bad}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} source files found");
}
