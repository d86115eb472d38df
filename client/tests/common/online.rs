//! A long-running `natter online` of one test user, its stdout lines on a
//! channel (one helper for every test that watches a user stay joined).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::Cluster;

/// Longest wait for the "online as" line.
const START: Duration = Duration::from_secs(30);

/// `natter online`, killed on drop.
pub struct Online {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: PathBuf,
    /// The supernode it joined through ("online as NAME via ADDR").
    pub via: SocketAddr,
}

impl Online {
    /// Starts `natter online` for `user` through `bootstrap` and waits until
    /// it is joined.
    pub fn start(cluster: &Cluster, user: &str, bootstrap: &str) -> Self {
        Self::start_with(cluster, user, bootstrap, &[])
    }

    /// [`Online::start`] with options of `natter online` (`--no-promote`,
    /// `--promote-after SECS`, ...).
    pub fn start_with(cluster: &Cluster, user: &str, bootstrap: &str, options: &[&str]) -> Self {
        let stderr = cluster.dir.path().join(format!("{user}-online.err"));
        let mut args = vec!["--bootstrap", bootstrap, "online"];
        args.extend_from_slice(options);
        let mut child = cluster
            .natter(user, &args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::sync_channel(256);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut online = Self {
            child,
            lines,
            stderr,
            via: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let (line, _) = online.expect("online as", START);
        online.via = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no supernode address in {line:?}"));
        online
    }

    /// Waits up to `limit` for a line containing `needle`; returns it and
    /// every line before it. On a timeout, panics with the client's stderr
    /// and the supernodes' logs.
    pub fn expect(&self, needle: &str, limit: Duration) -> (String, Vec<String>) {
        let start = Instant::now();
        let mut before = Vec::new();
        loop {
            let left = limit.saturating_sub(start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return (line, before),
                Ok(line) => before.push(line),
                Err(_) => {
                    let dir = self.stderr.parent().unwrap();
                    let logs: String = (0..3)
                        .map(|i| {
                            let log = std::fs::read_to_string(dir.join(format!("sn{i}.log")));
                            format!("\n== sn{i}.log\n{}", log.unwrap_or_default())
                        })
                        .collect();
                    panic!(
                        "no line with {needle:?} within {limit:?} (got {before:?}); stderr: {}{logs}",
                        std::fs::read_to_string(&self.stderr).unwrap_or_default()
                    )
                }
            }
        }
    }
}

impl Online {
    /// Every line printed within `span`.
    pub fn lines_for(&self, span: Duration) -> Vec<String> {
        let start = Instant::now();
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(span.saturating_sub(start.elapsed()))
        {
            lines.push(line);
        }
        lines
    }

    /// Sends SIGTERM (what a service manager or `kill` sends) and waits up
    /// to `limit` for the process to exit; its exit status and the lines it
    /// printed meanwhile.
    pub fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.lines_for(Duration::from_millis(200)));
            }
            assert!(
                start.elapsed() < limit,
                "natter online did not exit within {limit:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
