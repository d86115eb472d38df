//! Supernode load bench (issue 4). Two figures, all on 127.0.0.1, no login
//! server needed:
//!
//! 1. **Capacity**: the `natter-supernode` binary (built by cargo for this
//!    bench) runs as a child process; idle clients join it in steps
//!    (default 200, 500, 1000, 2000) and after each step the bench reads the
//!    child's `/proc/<pid>/status` (VmRSS), counts its file descriptors and
//!    its CPU use while the sessions sit idle (QUIC keep-alives only), and
//!    checks that the sessions are held (connections alive, a sample of the
//!    users found online by search). Memory per client is the RSS growth over
//!    the freshly started process divided by the clients, plus the marginal
//!    cost between steps. The child's `--login` points at a loopback UDP port
//!    the bench holds and never reads, so the announcements just time out.
//! 2. **Search latency**: three in-process supernodes (their own 2-thread
//!    runtime, the clients on another) mesh; users join spread over them and
//!    searchers on the first one look up users homed there, users homed on
//!    the others (split by whether the first HRW replica of the name is the
//!    searcher's node or a peer) and unknown names. Closed loop, each
//!    searcher paced below the per-session rate limit; p50/p90/p99/p99.9/max
//!    from the sorted latencies.
//!
//! All users share one RSA key pair (the published test vectors: issuer and
//! user key), each with its own certificate and name. Clients share a few
//! QUIC endpoints (one UDP socket carries many connections).
//!
//! Run: `cargo bench -p natter-supernode --bench load`. Sizes come from the
//! environment (defaults in brackets):
//!
//! - `NATTER_LOAD_STEPS` [200,500,1000,2000]: client counts of part 1;
//! - `NATTER_LOAD_CONNS_PER_ENDPOINT` [250]: client connections per QUIC endpoint;
//! - `NATTER_LOAD_JOIN_CONCURRENCY` [32]: joins in flight;
//! - `NATTER_LOAD_CAPACITY_SECS` [80]: time bound of part 1's joining;
//! - `NATTER_LOAD_USERS_PER_NODE` [300]: users homed on each of the 3 supernodes;
//! - `NATTER_LOAD_REPLICAS` [3]: directory replicas (K) in part 2;
//! - `NATTER_LOAD_SEARCHERS` [32]: searching sessions on the first supernode;
//! - `NATTER_LOAD_SEARCHES` [6000]: searches measured;
//! - `NATTER_LOAD_SEARCH_RATE` [40]: searches per second per searcher (the
//!   supernode allows 50/s per session);
//! - `NATTER_LOAD_MISS_PERCENT` [5]: searches for names nobody has;
//! - `NATTER_LOAD_SEARCH_SECS` [40]: time bound of part 2's searching;
//! - `NATTER_LOAD_PARTS` [capacity,search]: which parts to run.
//!
//! Without `--bench` on the command line (`cargo test --benches`) the
//! defaults shrink to a smoke run of a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_client::supernode::{SessionError, SupernodeSession};
use natter_net::TransportSettings;
use natter_proto::cert::{Identity, Issuer};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{PresenceStatus, SearchReply, SearchRequest};
use natter_supernode::{Config, Handle, NodeId, Supernode, hrw};
use quinn::Endpoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{RsaPrivateKey, RsaPublicKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Upper bound of one join (connect + two round trips).
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of one search.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Linux USER_HZ: the unit of utime/stime in /proc/<pid>/stat.
const CLOCK_TICKS: f64 = 100.0;

// ------------------------------------------------------------------ settings

#[derive(Debug, Clone)]
struct Settings {
    steps: Vec<usize>,
    conns_per_endpoint: usize,
    join_concurrency: usize,
    capacity_secs: u64,
    users_per_node: usize,
    replicas: usize,
    searchers: usize,
    searches: usize,
    search_rate: f64,
    miss_percent: f64,
    search_secs: u64,
    capacity: bool,
    search: bool,
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} does not parse")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env(quick: bool) -> Self {
        let steps = std::env::var("NATTER_LOAD_STEPS")
            .unwrap_or_else(|_| if quick { "20,50" } else { "200,500,1000,2000" }.into());
        let mut steps: Vec<usize> = steps
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("NATTER_LOAD_STEPS: comma-separated counts")
            })
            .collect();
        steps.sort_unstable();
        steps.dedup();
        steps.retain(|&n| n > 0);
        let parts = std::env::var("NATTER_LOAD_PARTS").unwrap_or_else(|_| "capacity,search".into());
        Self {
            steps,
            conns_per_endpoint: env_or("NATTER_LOAD_CONNS_PER_ENDPOINT", 250usize).max(1),
            join_concurrency: env_or("NATTER_LOAD_JOIN_CONCURRENCY", 32usize).max(1),
            capacity_secs: env_or("NATTER_LOAD_CAPACITY_SECS", 80),
            users_per_node: env_or("NATTER_LOAD_USERS_PER_NODE", if quick { 20 } else { 300 })
                .max(1),
            replicas: env_or("NATTER_LOAD_REPLICAS", 3usize).max(1),
            searchers: env_or("NATTER_LOAD_SEARCHERS", if quick { 4 } else { 32 }).max(1),
            searches: env_or("NATTER_LOAD_SEARCHES", if quick { 200 } else { 6000 }),
            search_rate: env_or("NATTER_LOAD_SEARCH_RATE", 40.0f64).clamp(0.1, 1000.0),
            miss_percent: env_or("NATTER_LOAD_MISS_PERCENT", 5.0f64).clamp(0.0, 100.0),
            search_secs: env_or("NATTER_LOAD_SEARCH_SECS", 40),
            capacity: parts.contains("capacity"),
            search: parts.contains("search"),
        }
    }
}

// ------------------------------------------------------------------ identities

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn read_key(path: &str) -> RsaPrivateKey {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
}

/// The issuer and the one key pair every bench user shares.
#[derive(Debug)]
struct Keys {
    issuer: Issuer,
    user_key: RsaPrivateKey,
    user_public: RsaPublicKey,
}

impl Keys {
    fn load() -> Self {
        let user_key = read_key("../proto/tests/vectors/alice.pem");
        Self {
            issuer: Issuer::new(read_key("../proto/tests/vectors/issuer.pem")),
            user_public: user_key.to_public_key(),
            user_key,
        }
    }

    /// A certificate for `name` (valid for an hour) on the shared key.
    fn identity(&self, name: &str, serial: u64) -> Identity {
        let now = unix_now();
        let certificate = self.issuer.issue(
            &mut StdRng::seed_from_u64(serial),
            &natter_proto::cert::Subject::User {
                name,
                key: &self.user_public,
                chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
            },
            serial,
            now - 300,
            now + 3600,
        );
        Identity {
            key: self.user_key.clone(),
            certificate,
            chat_secret: [0x11; 32],
        }
    }
}

// ------------------------------------------------------------------ joining

#[derive(Debug, Clone)]
struct Job {
    name: String,
    serial: u64,
    addr: SocketAddr,
    endpoint: usize,
}

#[derive(Debug, Default)]
struct Joined {
    /// (job index, session, join time), in job order.
    sessions: Vec<(usize, SupernodeSession, Duration)>,
    failures: Vec<String>,
    elapsed: Duration,
}

/// Joins every job (`concurrency` at a time), stopping at `deadline`.
async fn join_all(
    keys: Arc<Keys>,
    endpoints: Arc<Vec<Endpoint>>,
    jobs: Vec<Job>,
    concurrency: usize,
    deadline: Instant,
) -> Joined {
    let started = Instant::now();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(jobs.len()) {
        let (keys, endpoints, jobs, next) = (
            Arc::clone(&keys),
            Arc::clone(&endpoints),
            Arc::clone(&jobs),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            let mut out = Joined::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs.len() || Instant::now() >= deadline {
                    break;
                }
                let job = &jobs[i];
                let identity = keys.identity(&job.name, job.serial);
                let t = Instant::now();
                match SupernodeSession::join(
                    &endpoints[job.endpoint],
                    job.addr,
                    &identity,
                    &keys.issuer.public_key(),
                    JOIN_TIMEOUT,
                )
                .await
                {
                    Ok(session) => out.sessions.push((i, session, t.elapsed())),
                    Err(e) => out.failures.push(format!("{}: {e}", job.name)),
                }
            }
            out
        });
    }
    let mut all = Joined::default();
    while let Some(done) = workers.join_next().await {
        let done = done.expect("join worker panicked");
        all.sessions.extend(done.sessions);
        all.failures.extend(done.failures);
    }
    all.sessions.sort_by_key(|(i, _, _)| *i);
    all.elapsed = started.elapsed();
    all
}

fn client_endpoints(n: usize) -> Vec<Endpoint> {
    (0..n)
        .map(|_| {
            natter_net::client_endpoint("127.0.0.1:0".parse().unwrap(), &TransportSettings::OVERLAY)
                .expect("client endpoint")
        })
        .collect()
}

async fn search(session: &SupernodeSession, name: &str) -> Result<SearchReply, SessionError> {
    let body = Body::SearchRequest(SearchRequest { name: name.into() });
    match session.request(body, SEARCH_TIMEOUT).await? {
        Body::SearchReply(reply) => Ok(reply),
        other => Err(SessionError::Unexpected(other.type_name())),
    }
}

/// Whether `reply` says the user is online at `home` (or, with `None`,
/// that nobody has the name).
fn reply_matches(reply: &SearchReply, home: Option<SocketAddr>) -> bool {
    match home {
        None => !reply.found,
        Some(home) => {
            reply.found
                && reply.status != PresenceStatus::Offline as i32
                && reply
                    .supernode
                    .as_ref()
                    .and_then(|a| SocketAddr::try_from(a).ok())
                    == Some(home)
        }
    }
}

// ------------------------------------------------------------------ /proc

#[derive(Debug, Clone, Copy, Default)]
struct ProcStats {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    threads: u64,
    fds: usize,
    cpu_ticks: u64,
}

fn proc_stats(pid: &str) -> ProcStats {
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
fn udp_rcvbuf_errors() -> u64 {
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

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU use (percent of one core) of the supernode and of this process over `window`.
async fn idle_cpu(pid: &str, window: Duration) -> (f64, f64) {
    let (sn0, me0) = (proc_stats(pid).cpu_ticks, proc_stats("self").cpu_ticks);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t.elapsed().as_secs_f64();
    let (sn1, me1) = (proc_stats(pid).cpu_ticks, proc_stats("self").cpu_ticks);
    let pct = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / CLOCK_TICKS / secs * 100.0;
    (pct(sn0, sn1), pct(me0, me1))
}

// ------------------------------------------------------------------ part 1

/// The supernode binary as a child process; killed when dropped.
struct SupernodeProcess {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pid: String,
    addr: SocketAddr,
}

async fn start_supernode(
    login: SocketAddr,
    login_key: &std::path::Path,
    issuer_key: &std::path::Path,
) -> SupernodeProcess {
    let binary = env!("CARGO_BIN_EXE_natter-supernode");
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--login"])
        .arg(login.to_string())
        .arg("--login-key")
        .arg(login_key)
        .arg("--issuer-key")
        .arg(issuer_key)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    let pid = child.id().expect("child pid").to_string();
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stdout.read_line(&mut line))
        .await
        .expect("the supernode did not start within 10 s")
        .expect("reading the supernode's stdout");
    // "natter-supernode listening on 127.0.0.1:PORT node id HEX"
    let addr = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from the supernode: {line:?}"));
    SupernodeProcess {
        child,
        _stdout: stdout,
        pid,
        addr,
    }
}

async fn capacity(settings: &Settings, keys: Arc<Keys>) {
    println!("== 1. idle clients held by one supernode (natter-supernode child process)");
    let Some(&max) = settings.steps.last() else {
        println!("no steps");
        return;
    };
    // The login server address: a loopback port held (never read) by the
    // bench, so nothing else answers there.
    let login_sink = UdpSocket::bind("127.0.0.1:0").expect("bind login sink");
    let login = login_sink.local_addr().unwrap();
    let dir = tempfile::tempdir().expect("tempdir");
    let key_path = dir.path().join("login-key.pub");
    let pem = keys
        .issuer
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&key_path, pem).unwrap();

    // The login server is unreachable: the supernode certifies itself with
    // the test issuer's key (the single-box mode).
    let issuer_path = format!(
        "{}/../proto/tests/vectors/issuer.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut sn = start_supernode(login, &key_path, std::path::Path::new(&issuer_path)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = proc_stats(&sn.pid);
    let n_endpoints = max.div_ceil(settings.conns_per_endpoint);
    let endpoints = Arc::new(client_endpoints(n_endpoints));
    println!(
        "supernode pid {} at {} (login -> {login}, unreachable); {} client endpoints, \
         {} connections each at most; join concurrency {}",
        sn.pid, sn.addr, n_endpoints, settings.conns_per_endpoint, settings.join_concurrency
    );
    println!(
        "baseline: VmRSS {:.1} MiB, RssAnon {:.1} MiB, {} threads, {} fds; client process fds {}",
        mib(base.rss_kib),
        mib(base.anon_kib),
        base.threads,
        base.fds,
        proc_stats("self").fds
    );
    println!(
        "{:>7} {:>7} {:>6} {:>6} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7} {:>7} {:>4} {:>9}",
        "clients",
        "joined",
        "alive",
        "probe",
        "join s",
        "joins/s",
        "join p50",
        "join p99",
        "RSS MiB",
        "+RSS MiB",
        "KiB/clnt",
        "marg KiB",
        "SN cpu%",
        "bench%",
        "fds",
        "udp drops"
    );

    let deadline = Instant::now() + Duration::from_secs(settings.capacity_secs);
    let mut sessions: Vec<SupernodeSession> = Vec::new();
    let mut previous = (0usize, base.rss_kib);
    let mut rng = StdRng::seed_from_u64(1);
    let mut failures = Vec::new();
    for &step in &settings.steps {
        if Instant::now() >= deadline {
            println!("(time bound of {} s reached)", settings.capacity_secs);
            break;
        }
        let have = sessions.len();
        let drops = udp_rcvbuf_errors();
        let jobs: Vec<Job> = (have..step)
            .map(|i| Job {
                name: format!("idle{i:06}"),
                serial: i as u64 + 1,
                addr: sn.addr,
                endpoint: i / settings.conns_per_endpoint,
            })
            .collect();
        let joined = join_all(
            Arc::clone(&keys),
            Arc::clone(&endpoints),
            jobs,
            settings.join_concurrency,
            deadline,
        )
        .await;
        let mut times: Vec<Duration> = joined.sessions.iter().map(|(_, _, t)| *t).collect();
        times.sort_unstable();
        let new = joined.sessions.len();
        sessions.extend(joined.sessions.into_iter().map(|(_, s, _)| s));
        failures.extend(joined.failures);

        // Let the joins settle (finish_join, allocator), then measure.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let alive = sessions.iter().filter(|s| s.is_alive()).count();
        let mut probed_ok = 0;
        let probes = 10.min(sessions.len());
        for _ in 0..probes {
            let k = rng.gen_range(0..sessions.len());
            let name = format!("idle{k:06}");
            if let Ok(reply) = search(&sessions[0], &name).await
                && reply_matches(&reply, Some(sn.addr))
            {
                probed_ok += 1;
            }
        }
        let stats = proc_stats(&sn.pid);
        let (sn_cpu, bench_cpu) = idle_cpu(&sn.pid, Duration::from_secs(2)).await;
        let n = sessions.len();
        let grown = stats.rss_kib.saturating_sub(base.rss_kib);
        let per_client = grown as f64 / n.max(1) as f64;
        let marginal = stats.rss_kib as f64 - previous.1 as f64;
        let marginal = marginal / (n - previous.0).max(1) as f64;
        previous = (n, stats.rss_kib);
        println!(
            "{:>7} {:>7} {:>6} {:>3}/{:<2} {:>7.2} {:>8.0} {:>6.1}ms {:>6.1}ms {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>7.1} {:>7.1} {:>4} {:>9}",
            step,
            n,
            alive,
            probed_ok,
            probes,
            joined.elapsed.as_secs_f64(),
            new as f64 / joined.elapsed.as_secs_f64().max(1e-9),
            percentile(&times, 50.0).as_secs_f64() * 1e3,
            percentile(&times, 99.0).as_secs_f64() * 1e3,
            mib(stats.rss_kib),
            mib(grown),
            per_client,
            marginal,
            sn_cpu,
            bench_cpu,
            stats.fds,
            udp_rcvbuf_errors().saturating_sub(drops)
        );
        if n < step {
            println!("(stopped: {} of {step} clients joined)", n);
            break;
        }
    }
    let end = proc_stats(&sn.pid);
    println!(
        "{} of {} sessions still alive at the end",
        sessions.iter().filter(|s| s.is_alive()).count(),
        sessions.len()
    );
    println!(
        "supernode at the end: VmRSS {:.1} MiB (peak VmHWM {:.1} MiB), RssAnon {:.1} MiB, \
         {} threads, {} fds; client process fds {}",
        mib(end.rss_kib),
        mib(end.hwm_kib),
        mib(end.anon_kib),
        end.threads,
        end.fds,
        proc_stats("self").fds
    );
    if !failures.is_empty() {
        println!("{} joins failed, e.g.:", failures.len());
        for f in failures.iter().take(5) {
            println!("  {f}");
        }
    }
    println!(
        "udp drops: datagrams dropped on full socket receive buffers (namespace-wide) during \
         the step; a lost QUIC Initial costs a ~1 s retransmit, hence the join p99"
    );
    println!(
        "limits: the supernode admits at most Config::max_connections (default 10000) \
         connections; it uses one UDP socket for all of them, so fds do not grow per \
         client. Each idle session costs QUIC keep-alives (1 s interval, 3 s idle timeout)."
    );
    for s in &sessions {
        s.close();
    }
    drop(sessions);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = sn.child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), sn.child.wait()).await;
    drop(login_sink);
}

// ------------------------------------------------------------------ part 2

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

const CATEGORIES: [&str; 4] = [
    "local user (joined on SN0)",
    "remote user, SN0 first replica",
    "remote user, peer first replica",
    "unknown name (all K asked)",
];

#[derive(Debug, Clone)]
struct Target {
    name: String,
    home: Option<SocketAddr>,
    category: usize,
}

#[derive(Debug, Default)]
struct SearchOutcome {
    latencies: Vec<Vec<Duration>>,
    wrong: usize,
    errors: BTreeMap<String, usize>,
}

fn error_kind(e: &SessionError) -> String {
    match e {
        SessionError::Timeout(_) => "timeout".into(),
        SessionError::Remote { code, .. } => format!("{code:?}"),
        SessionError::Closed(_) => "closed".into(),
        SessionError::Busy => "busy".into(),
        other => other.to_string(),
    }
}

/// Runs `targets` from `session`, one search every `interval` at most.
async fn run_searches(
    session: Arc<SupernodeSession>,
    targets: Vec<Target>,
    interval: Duration,
    offset: Duration,
    deadline: Instant,
) -> SearchOutcome {
    let mut out = SearchOutcome {
        latencies: vec![Vec::new(); CATEGORIES.len()],
        ..Default::default()
    };
    tokio::time::sleep(offset).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for target in targets {
        ticker.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let t = Instant::now();
        match search(&session, &target.name).await {
            Ok(reply) => {
                out.latencies[target.category].push(t.elapsed());
                if !reply_matches(&reply, target.home) {
                    out.wrong += 1;
                }
            }
            Err(e) => *out.errors.entry(error_kind(&e)).or_default() += 1,
        }
    }
    out
}

async fn search_latency(settings: &Settings, keys: Arc<Keys>, handles: &[Handle]) {
    let nodes: Vec<(SocketAddr, NodeId)> =
        handles.iter().map(|h| (h.addr(), h.node_id())).collect();
    let users = settings.users_per_node * nodes.len();
    let total = users + settings.searchers;
    let endpoints = Arc::new(client_endpoints(
        total.div_ceil(settings.conns_per_endpoint),
    ));
    let deadline = Instant::now() + Duration::from_secs(settings.search_secs + 30);

    // Users homed across the nodes, then the searchers on node 0.
    let mut jobs = Vec::with_capacity(total);
    for i in 0..users {
        let home = i % nodes.len();
        jobs.push(Job {
            name: format!("user{i:05}"),
            serial: i as u64 + 1,
            addr: nodes[home].0,
            endpoint: i / settings.conns_per_endpoint,
        });
    }
    for s in 0..settings.searchers {
        let i = users + s;
        jobs.push(Job {
            name: format!("searcher{s:03}"),
            serial: i as u64 + 1,
            addr: nodes[0].0,
            endpoint: i / settings.conns_per_endpoint,
        });
    }
    let joined = join_all(
        keys,
        endpoints,
        jobs.clone(),
        settings.join_concurrency,
        deadline,
    )
    .await;
    println!(
        "{} of {} users and {} searchers joined in {:.2} s ({} failed)",
        joined
            .sessions
            .iter()
            .filter(|(i, _, _)| *i < users)
            .count(),
        users,
        joined
            .sessions
            .iter()
            .filter(|(i, _, _)| *i >= users)
            .count(),
        joined.elapsed.as_secs_f64(),
        joined.failures.len()
    );
    for f in joined.failures.iter().take(5) {
        println!("  {f}");
    }
    let mut user_sessions = Vec::new();
    let mut searchers = Vec::new();
    let mut online = Vec::new();
    for (i, session, _) in joined.sessions {
        if i < users {
            online.push(i);
            user_sessions.push(session);
        } else {
            searchers.push(Arc::new(session));
        }
    }
    assert!(!searchers.is_empty(), "no searcher joined");
    assert!(!online.is_empty(), "no user joined");

    // Targets: the HRW order of the live nodes tells whether SN0 answers a
    // remote user from its own replica or asks a peer first.
    let live: Vec<NodeId> = nodes.iter().map(|(_, id)| *id).collect();
    let target = |i: usize| -> Target {
        let job = &jobs[i];
        let home = i % nodes.len();
        let category = if home == 0 {
            0
        } else if hrw::replicas(&job.name, &live, settings.replicas).first() == Some(&live[0]) {
            1
        } else {
            2
        };
        Target {
            name: job.name.clone(),
            home: Some(job.addr),
            category,
        }
    };

    // Warm-up: every joined user is found online at its home, retried
    // until the directory has the records.
    let warm_deadline = Instant::now() + Duration::from_secs(15);
    let interval = Duration::from_secs_f64(1.0 / settings.search_rate);
    let mut tasks = tokio::task::JoinSet::new();
    for (s, searcher) in searchers.iter().enumerate() {
        let mine: Vec<Target> = online
            .iter()
            .skip(s)
            .step_by(searchers.len())
            .map(|&i| target(i))
            .collect();
        let searcher = Arc::clone(searcher);
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            let mut missing = 0usize;
            for t in mine {
                loop {
                    ticker.tick().await;
                    if let Ok(reply) = search(&searcher, &t.name).await
                        && reply_matches(&reply, t.home)
                    {
                        break;
                    }
                    if Instant::now() >= warm_deadline {
                        missing += 1;
                        break;
                    }
                }
            }
            missing
        });
    }
    let mut missing = 0;
    while let Some(m) = tasks.join_next().await {
        missing += m.unwrap();
    }
    println!(
        "warm-up: {} of {} users found online at their home supernode; \
         sessions held per supernode: {:?} (SN0 includes the searchers)",
        online.len() - missing,
        online.len(),
        handles
            .iter()
            .map(Handle::session_count)
            .collect::<Vec<_>>()
    );

    // The measured searches, spread over the searchers.
    let per = settings.searches.div_ceil(searchers.len());
    let miss = settings.miss_percent / 100.0;
    let search_deadline = Instant::now() + Duration::from_secs(settings.search_secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut planned = 0;
    for (s, searcher) in searchers.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(s as u64 + 100);
        let count = per.min(settings.searches - planned);
        planned += count;
        let plan: Vec<Target> = (0..count)
            .map(|k| {
                if rng.gen_bool(miss) {
                    Target {
                        name: format!("nobody{s:03}x{k:05}"),
                        home: None,
                        category: 3,
                    }
                } else {
                    target(online[rng.gen_range(0..online.len())])
                }
            })
            .collect();
        let offset = interval.mul_f64(s as f64 / searchers.len() as f64);
        tasks.spawn(run_searches(
            Arc::clone(searcher),
            plan,
            interval,
            offset,
            search_deadline,
        ));
    }
    let mut all = SearchOutcome {
        latencies: vec![Vec::new(); CATEGORIES.len()],
        ..Default::default()
    };
    while let Some(done) = tasks.join_next().await {
        let done = done.unwrap();
        for (a, b) in all.latencies.iter_mut().zip(done.latencies) {
            a.extend(b);
        }
        all.wrong += done.wrong;
        for (k, v) in done.errors {
            *all.errors.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut overall: Vec<Duration> = all.latencies.iter().flatten().copied().collect();
    overall.sort_unstable();
    println!(
        "{} searches answered in {:.2} s ({:.0}/s; {} searchers at <= {} /s each), \
         {} wrong answers, errors: {:?}",
        overall.len(),
        elapsed,
        overall.len() as f64 / elapsed,
        searchers.len(),
        settings.search_rate,
        all.wrong,
        all.errors
    );
    println!(
        "{:<32} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "search latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    let row = |label: &str, sorted: &[Duration]| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<32} {:>6} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            label,
            sorted.len(),
            ms(percentile(sorted, 50.0)),
            ms(percentile(sorted, 90.0)),
            ms(percentile(sorted, 99.0)),
            ms(percentile(sorted, 99.9)),
            ms(sorted.last().copied().unwrap_or_default())
        );
    };
    for (label, mut latencies) in CATEGORIES.iter().zip(all.latencies) {
        latencies.sort_unstable();
        row(label, &latencies);
    }
    row("all", &overall);

    for s in searchers.iter() {
        s.close();
    }
    for s in &user_sessions {
        s.close();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

// ------------------------------------------------------------------ main

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let settings = Settings::from_env(quick);
    println!(
        "natter-supernode load bench{} ({} cores)",
        if quick {
            " (smoke run: no --bench)"
        } else {
            ""
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let keys = Arc::new(Keys::load());
    let clients = runtime("bench-clients");
    let t = Instant::now();

    if settings.capacity {
        clients.block_on(capacity(&settings, Arc::clone(&keys)));
        println!();
    }

    if settings.search {
        println!(
            "== 2. search latency, 3 meshed supernodes (in process, own 2-thread runtime), K = {}",
            settings.replicas
        );
        let supernodes = runtime("bench-supernodes");
        let handles: Vec<Handle> = supernodes.block_on(async {
            let config = |peers: Vec<SocketAddr>| {
                // No login server: `login` stays None.
                let mut c = Config::new("127.0.0.1:0".parse().unwrap(), keys.issuer.public_key());
                c.certification = natter_supernode::Certification::Local {
                    issuer: Arc::new(keys.issuer.clone()),
                    validity: Duration::from_secs(3600),
                };
                c.peers = peers;
                c.replicas = settings.replicas;
                c
            };
            let seed = Supernode::spawn(config(Vec::new())).expect("supernode");
            let seed_addr = seed.local_addr();
            let mut handles = vec![seed];
            for _ in 1..3 {
                handles.push(Supernode::spawn(config(vec![seed_addr])).expect("supernode"));
            }
            let meshed = Instant::now() + Duration::from_secs(15);
            while !handles.iter().all(|h| h.live_members().len() == 3) {
                assert!(
                    Instant::now() < meshed,
                    "the 3 supernodes did not mesh in 15 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            handles
        });
        clients.block_on(search_latency(&settings, Arc::clone(&keys), &handles));
        supernodes.block_on(async {
            for h in handles {
                h.shutdown().await;
            }
        });
        supernodes.shutdown_timeout(Duration::from_secs(2));
    }
    clients.shutdown_timeout(Duration::from_secs(2));
    println!("total {:.1} s", t.elapsed().as_secs_f64());
}
