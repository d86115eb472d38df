//! What /proc says about a process: memory, threads, fds, CPU time, and
//! the namespace's UDP receive-buffer drops.

use std::time::{Duration, Instant};

/// Linux USER_HZ: the unit of utime/stime in /proc/<pid>/stat.
const CLOCK_TICKS: f64 = 100.0;

/// One sample of a process's /proc figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub threads: u64,
    pub fds: usize,
    pub cpu_ticks: u64,
}

pub fn proc_stats(pid: &str) -> ProcStats {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| -> u64 { fields.get(i - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    ProcStats {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
        threads: field("Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        cpu_ticks: tick(14) + tick(15),
    }
}

/// UDP datagrams dropped for a full socket receive buffer, network-namespace
/// wide (`RcvbufErrors` in /proc/net/snmp).
pub fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU use (percent of one core) of the supernode and of this process over `window`.
pub async fn idle_cpu(pid: &str, window: Duration) -> (f64, f64) {
    let (sn0, me0) = (proc_stats(pid).cpu_ticks, proc_stats("self").cpu_ticks);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t.elapsed().as_secs_f64();
    let (sn1, me1) = (proc_stats(pid).cpu_ticks, proc_stats("self").cpu_ticks);
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / CLOCK_TICKS / secs * 100.0;
    (pct(sn0, sn1), pct(me0, me1))
}

/// Datagrams the kernel dropped on the UDP socket bound to `addr` (the
/// `drops` column of /proc/net/udp), 0 when there is none.
pub fn udp_socket_drops(addr: std::net::SocketAddr) -> u64 {
    let std::net::SocketAddr::V4(v4) = addr else {
        return 0;
    };
    // /proc/net/udp writes the address as the in-memory u32 in hex.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.get(1) == Some(&want.as_str()))
                .then(|| fields.last().and_then(|d| d.parse::<u64>().ok()))
                .flatten()
        })
        .sum()
}
