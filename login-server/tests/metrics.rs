//! `--metrics`: the login server's Prometheus page counts requests by type
//! and outcome (a registration, a good login, a wrong password) and the
//! connections open, on the address it was given.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client, start, test_config, user_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut page))
        .await
        .expect("no answer")
        .unwrap();
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    page
}

fn sample(page: &str, prefix: &str) -> Option<u64> {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_page_counts_requests_by_outcome_and_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let server = start(config).await;
    let addr = server.metrics_addr().expect("metrics on");
    assert!(addr.ip().is_loopback());
    let page = scrape(addr).await;
    assert_eq!(sample(&page, "natter_login_connections"), Some(0), "{page}");
    assert!(!page.contains("outcome="), "no request yet: {page}");

    let c = client(&server).await;
    c.register("bob", "password123").await.unwrap();
    let key = user_key(0);
    c.login("bob", "password123", &key, &[0x11; 32])
        .await
        .unwrap();
    for _ in 0..2 {
        c.login("bob", "not the password", &key, &[0x11; 32])
            .await
            .unwrap_err();
    }
    let page = scrape(addr).await;
    assert_eq!(sample(&page, "natter_login_connections"), Some(1), "{page}");
    let requests = |kind: &str, outcome: &str| {
        sample(
            &page,
            &format!("natter_login_requests_total{{request=\"{kind}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(requests("register_request", "ok"), Some(1), "{page}");
    assert_eq!(requests("login_request", "ok"), Some(1), "{page}");
    assert_eq!(
        requests("login_request", "WRONG_PASSWORD"),
        Some(2),
        "{page}"
    );
    c.close().await;
    server.shutdown().await;
}
