//! The node core (`src/core`) stays sans-IO: no runtime, no sockets, no
//! clock, no OS randomness. The shell passes the time and a seed in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const FORBIDDEN: &[&str] = &[
    "tokio",
    "quinn",
    "natter_net",
    "std::net::UdpSocket",
    "std::net::TcpStream",
    "std::net::TcpListener",
    "socket2",
    "mio",
    "Instant::now",
    "SystemTime::now",
    "OsRng",
    "thread_rng",
    "std::thread",
    "std::fs",
];

#[test]
fn the_node_core_opens_no_socket_spawns_no_task_and_reads_no_clock() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/core");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for bad in FORBIDDEN {
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code.contains(bad),
                    "{}:{}: the node core uses {bad}: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for expected in [
        "mod.rs",
        "state.rs",
        "requests.rs",
        "routing.rs",
        "directory.rs",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not checked: {checked:?}"
        );
    }
}
