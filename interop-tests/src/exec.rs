//! Running commands with a deadline: every wait in the lab is bounded.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// A command line as text, for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion within `timeout` (killed after that), feeding it
/// `stdin`; does not look at the exit status.
pub fn run_unchecked(mut cmd: Command, stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let line = describe(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Small inputs (nft rulesets) fit the pipe buffer; a failed write shows
        // up as the command's own error.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            kill(&mut child);
            return Err(LabError::Timeout { cmd: line, timeout });
        }
    };
    let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

/// Runs `cmd` like [`run_unchecked`] and fails with the command line and its
/// stderr unless it exits 0.
pub fn run(cmd: Command, stdin: Option<&str>, timeout: Duration) -> Result<Output> {
    let line = describe(&cmd);
    let out = run_unchecked(cmd, stdin, timeout)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_owned(),
        });
    }
    Ok(out)
}

fn reader<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Waits up to `timeout` for `child`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            // Cannot wait (already reaped?): treat as finished with failure.
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` (SIGKILL) and reaps it.
pub fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = wait_timeout(child, Duration::from_secs(5));
}

/// Sends `signal` (e.g. "TERM", "INT") to `pid` with kill(1): the crate does
/// not use unsafe code, so no libc.
pub fn signal(pid: u32, signal: &str) {
    let mut c = Command::new("kill");
    c.arg(format!("-{signal}")).arg(pid.to_string());
    let _ = run_unchecked(c, None, Duration::from_secs(5));
}

/// Asks `child` to stop with SIGTERM, waits up to `grace`, then kills it.
pub fn stop(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    signal(child.id(), "TERM");
    if let Some(s) = wait_timeout(child, grace) {
        return Some(s);
    }
    kill(child);
    None
}
