//! Supernode load bench (issues 4 and 15). Two figures, all on loopback, no
//! login server needed:
//!
//! 1. **Capacity** ([`capacity`]): the `natter-supernode` binary (built by
//!    cargo for this bench) runs as a child process; idle clients join it in
//!    steps (default 1000, 5000, 10000), each registering as `natter online`
//!    does (presence online, then a `PresenceSubscribe` for its buddies:
//!    [`Settings::buddies`] other bench users, some not joined yet). After
//!    each step the bench reads the child's `/proc/<pid>/status` (VmRSS),
//!    counts its file descriptors and its CPU use while the sessions sit
//!    idle (QUIC keep-alives only), and checks that the sessions are held
//!    (connections alive, a sample of the users found online by search).
//!    Memory per client is the RSS growth over the freshly started process
//!    divided by the clients, plus the marginal cost between steps; the last
//!    step is checked against issue 15's targets (at most 64 KiB per client,
//!    keep-alive CPU under 10 % of a core). The child's `--login` points at a
//!    loopback UDP port the bench holds and never reads, so the announcements
//!    just time out.
//! 2. **Search latency under load** ([`search`]): three in-process
//!    supernodes (their own 2-thread runtime, the clients on another) mesh;
//!    thousands of users join spread over them, subscribed to their buddies,
//!    and sit idle while searchers on the first one look up users homed
//!    there, users homed on the others (split by whether the first HRW
//!    replica of the name is the searcher's node or a peer) and unknown
//!    names. Closed loop, each searcher paced below the per-session rate
//!    limit; p50/p90/p99/p99.9/max from the sorted latencies.
//!
//! All users share one RSA key pair (the published test vectors: issuer and
//! user key), each with its own certificate and name. Clients share QUIC
//! endpoints (one UDP socket carries many connections), each endpoint on its
//! own loopback address (127.1.x.y, 127.2.x.y) because a supernode admits at
//! most 64 connections per address: 10,000 clients take 200 sockets, well
//! inside the default open-file limit.
//!
//! Run: `cargo bench -p natter-supernode --bench load`. Sizes come from the
//! environment (defaults in brackets):
//!
//! - `NATTER_LOAD_STEPS` [1000,5000,10000]: client counts of part 1 (the
//!   supernode admits at most 10,000 connections);
//! - `NATTER_LOAD_BUDDIES` [20]: names each client subscribes to;
//! - `NATTER_LOAD_CONNS_PER_ENDPOINT` [50]: client connections per QUIC
//!   endpoint (at most 64, the per-address limit);
//! - `NATTER_LOAD_JOIN_CONCURRENCY` [32]: joins in flight;
//! - `NATTER_LOAD_CAPACITY_SECS` [1800]: time bound of each part's joining
//!   (a join costs a few ms of RSA on each side: on a busy 2-core machine
//!   10,000 joins take 10 minutes or more);
//! - `NATTER_LOAD_IDLE_SECS` [5]: window over which idle CPU is measured;
//! - `NATTER_LOAD_HOLD_SECS` [0]: time the sessions stay idle after the
//!   last step (to profile the supernode, whose pid is printed);
//! - `NATTER_LOAD_USERS_PER_NODE` [1000]: users homed on each of the 3
//!   supernodes in part 2 (the supernodes and all clients share this
//!   process: on 2 busy cores 2000 each already starve keep-alives);
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

mod capacity;
mod clients;
#[path = "../common/mod.rs"]
mod common;
mod procfs;
mod search;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Keys, env_or};

#[derive(Debug, Clone)]
struct Settings {
    steps: Vec<usize>,
    /// Names each client subscribes to (its buddy list).
    buddies: usize,
    conns_per_endpoint: usize,
    join_concurrency: usize,
    capacity_secs: u64,
    idle_secs: u64,
    /// Pause after a step's joins before measuring.
    settle: Duration,
    /// Idle time after the last step (to look at the supernode with perf).
    hold_secs: u64,
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

impl Settings {
    fn from_env(quick: bool) -> Self {
        let steps = std::env::var("NATTER_LOAD_STEPS")
            .unwrap_or_else(|_| if quick { "20,50" } else { "1000,5000,10000" }.into());
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
            buddies: env_or("NATTER_LOAD_BUDDIES", if quick { 5 } else { 20 }),
            conns_per_endpoint: env_or("NATTER_LOAD_CONNS_PER_ENDPOINT", 50usize).clamp(1, 64),
            join_concurrency: env_or("NATTER_LOAD_JOIN_CONCURRENCY", 32usize).max(1),
            capacity_secs: env_or("NATTER_LOAD_CAPACITY_SECS", 1800),
            idle_secs: env_or("NATTER_LOAD_IDLE_SECS", if quick { 1 } else { 5 }).max(1),
            settle: Duration::from_millis(if quick { 500 } else { 3000 }),
            hold_secs: env_or("NATTER_LOAD_HOLD_SECS", 0),
            users_per_node: env_or("NATTER_LOAD_USERS_PER_NODE", if quick { 20 } else { 1000 })
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
        clients.block_on(capacity::capacity(&settings, Arc::clone(&keys)));
        println!();
    }
    if settings.search {
        search::run(&settings, &keys, &clients);
    }
    clients.shutdown_timeout(Duration::from_secs(2));
    println!("total {:.1} s", t.elapsed().as_secs_f64());
}
