//! Part 2: search latency with 3 meshed supernodes (in process, their own
//! 2-thread runtime) under load: thousands of joined users, each subscribed
//! to its buddies, spread over the three and sitting idle, while searchers
//! on the first one measure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_client::supernode::SupernodeSession;
use natter_supernode::{Config, Handle, NodeId, Supernode, hrw};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::Settings;
use crate::clients::{
    Job, Keys, buddies, client_endpoints, error_kind, join_all, percentile, reply_matches, search,
};

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
        2,
        total.div_ceil(settings.conns_per_endpoint),
    ));
    let deadline = Instant::now() + Duration::from_secs(settings.capacity_secs);

    // Users homed across the nodes, then the searchers on node 0.
    let mut jobs = Vec::with_capacity(total);
    for i in 0..users {
        let home = i % nodes.len();
        jobs.push(Job {
            name: format!("user{i:05}"),
            serial: i as u64 + 1,
            addr: nodes[home].0,
            endpoint: i / settings.conns_per_endpoint,
            buddies: buddies(i, users, settings.buddies, |k| format!("user{k:05}")),
        });
    }
    for s in 0..settings.searchers {
        let i = users + s;
        jobs.push(Job {
            name: format!("searcher{s:03}"),
            serial: i as u64 + 1,
            addr: nodes[0].0,
            endpoint: i / settings.conns_per_endpoint,
            buddies: Vec::new(),
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
    let warm_deadline = Instant::now() + Duration::from_secs(60);
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

/// Runs part 2: starts and meshes the 3 supernodes, measures from the
/// `clients` runtime, shuts them down.
pub fn run(settings: &Settings, keys: &Arc<Keys>, clients: &tokio::runtime::Runtime) {
    println!(
        "== 2. search latency, 3 meshed supernodes (in process, own 2-thread runtime), K = {}, \
         {} users per node subscribed to {} buddies each",
        settings.replicas, settings.users_per_node, settings.buddies
    );
    let supernodes = crate::runtime("bench-supernodes");
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
    clients.block_on(search_latency(settings, Arc::clone(keys), &handles));
    supernodes.block_on(async {
        for h in handles {
            h.shutdown().await;
        }
    });
    supernodes.shutdown_timeout(Duration::from_secs(2));
}
