//! The one Prometheus endpoint of the login server and the supernode: the
//! text exposition format (version 0.0.4) written by [`Exposition`] and
//! served on `GET /metrics` by [`serve`], a deliberately small HTTP/1.1
//! responder (no keep-alive, no chunking) for an operator's scraper.
//!
//! Off unless the operator gives `--metrics`, which binds loopback by
//! default. Even so it is written as if a stranger could reach it: at most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at once), a
//! request head of at most [`MAX_REQUEST`] bytes read within
//! [`REQUEST_TIMEOUT`], anything but `GET /metrics` answered 404 or 400, and
//! nothing in a request reaches the program.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time allowed to send the request head and to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A metrics page being written: `# HELP`, `# TYPE` and the samples of each
/// metric, in the order they are added.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter (`_total` is appended to `name`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "_total", "counter", help, &[(&[], value)]);
    }

    /// A gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "", "gauge", help, &[(&[], value)]);
    }

    /// A counter with one sample per label set (`_total` appended). Label
    /// values are escaped.
    pub fn counters(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) {
        self.family(name, "_total", "counter", help, samples);
    }

    fn family(
        &mut self,
        name: &str,
        suffix: &str,
        kind: &str,
        help: &str,
        samples: &[(&[(&str, &str)], u64)],
    ) {
        let t = &mut self.text;
        let _ = writeln!(t, "# HELP {name}{suffix} {}", help.replace('\n', " "));
        let _ = writeln!(t, "# TYPE {name}{suffix} {kind}");
        for (labels, value) in samples {
            let _ = write!(t, "{name}{suffix}");
            if !labels.is_empty() {
                let inner: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(t, "{{{}}}", inner.join(","));
            }
            let _ = writeln!(t, " {value}");
        }
    }

    /// The page.
    pub fn finish(self) -> String {
        self.text
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What one endpoint allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Serves `GET /metrics` with the page `render` writes, until the task is
/// dropped.
pub async fn serve<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    serve_with(listener, Limits::default(), render).await;
}

/// [`serve`] with other limits (tests).
pub async fn serve_with<F>(listener: TcpListener, limits: Limits, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: too many connections, closed");
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let _permit = permit;
            let answered =
                tokio::time::timeout(limits.request_timeout, answer(stream, &*render)).await;
            if !matches!(answered, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics request failed or timed out");
            }
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if head.len() >= MAX_REQUEST {
            break false;
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break false;
        }
        let room = MAX_REQUEST - head.len();
        head.extend_from_slice(&buf[..n.min(room)]);
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (status, body) = if !complete || !version.is_some_and(|v| v.starts_with(b"HTTP/1.")) {
        ("400 Bad Request", "bad request\n".to_owned())
    } else if method == Some(b"GET") && target == Some(b"/metrics") {
        ("200 OK", render())
    } else {
        ("404 Not Found", "not found: GET /metrics\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_format() {
        let mut e = Exposition::new();
        e.counter("natter_x_forwarded", "Datagrams\nrelayed.", 7);
        e.gauge("natter_x_sessions", "Sessions now.", 3);
        e.counters(
            "natter_x_requests",
            "Requests by outcome.",
            &[(&[("request", "login"), ("outcome", "a\"b")], 2)],
        );
        assert_eq!(
            e.finish(),
            "# HELP natter_x_forwarded_total Datagrams relayed.\n\
             # TYPE natter_x_forwarded_total counter\n\
             natter_x_forwarded_total 7\n\
             # HELP natter_x_sessions Sessions now.\n\
             # TYPE natter_x_sessions gauge\n\
             natter_x_sessions 3\n\
             # HELP natter_x_requests_total Requests by outcome.\n\
             # TYPE natter_x_requests_total counter\n\
             natter_x_requests_total{request=\"login\",outcome=\"a\\\"b\"} 2\n"
        );
    }

    async fn get(addr: std::net::SocketAddr, request: &[u8]) -> String {
        // A refused connection may be reset: what was read until then.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_get_metrics_and_refuses_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let c = Arc::clone(&count);
        let task = tokio::spawn(serve(listener, move || {
            let n = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let mut e = Exposition::new();
            e.counter("natter_test_scrapes", "Scrapes.", n);
            e.finish()
        }));
        let ok = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("natter_test_scrapes_total 1\n"), "{ok}");
        let other = get(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 404"), "{post}");
        let garbage = get(addr, b"\x16\x03\x01\x00\x05hello\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
        // A head that never ends: cut at MAX_REQUEST and refused, no page.
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_REQUEST * 2, b'a');
        let long = get(addr, &long).await;
        assert!(long.starts_with("HTTP/1.1 400"), "{long}");
        // Only the one GET /metrics rendered the page.
        assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
        task.abort();
    }

    /// Connections that never send a request hold at most `max_connections`
    /// slots: a request over the cap is closed unanswered, and the slots
    /// come back when the idle ones time out.
    #[tokio::test]
    async fn idle_connections_are_capped_and_timed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 3,
            request_timeout: Duration::from_secs(60),
        };
        let task = tokio::spawn(serve_with(listener, limits, || "x\n".to_owned()));
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let over = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(over, "", "over the cap: closed unanswered");
        drop(idle);
        task.abort();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            max_connections: 1,
            request_timeout: Duration::from_millis(200),
        };
        let task = tokio::spawn(serve_with(listener, limits, || "x\n".to_owned()));
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 16];
        // Closed by the server when its time is up (not by this test).
        assert_eq!(silent.read(&mut buf).await.unwrap_or(0), 0);
        let ok = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        task.abort();
    }
}
