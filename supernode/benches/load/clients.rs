//! The load generator's clients: identities on one shared key pair, QUIC
//! endpoints on distinct loopback addresses, joining (with presence and
//! buddy subscriptions, as `natter online` registers them) and searching.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use natter_client::supernode::{SessionError, SupernodeSession};
use natter_net::TransportSettings;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{PresenceStatus, PresenceSubscribe, SearchReply, SearchRequest};
use quinn::Endpoint;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Upper bound of one join (connect + two round trips) and of each
/// registration request after it.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of one search.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

pub use crate::common::Keys;

/// One client to join: its name, where, through which endpoint, and the
/// buddies whose presence it subscribes to once joined.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub serial: u64,
    pub addr: SocketAddr,
    pub endpoint: usize,
    pub buddies: Vec<String>,
}

/// `count` buddies of client `me` among the clients `0..population`
/// (distinct, never `me`; the same every run), named by `name`. Some have
/// not joined (yet): a real buddy list has offline buddies too.
pub fn buddies(
    me: usize,
    population: usize,
    count: usize,
    name: impl Fn(usize) -> String,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(me as u64 ^ 0x5eed);
    let want = count.min(population.saturating_sub(1));
    rand::seq::index::sample(&mut rng, population, (want + 1).min(population))
        .into_iter()
        .filter(|&k| k != me)
        .take(want)
        .map(name)
        .collect()
}

#[derive(Debug, Default)]
pub struct Joined {
    /// (job index, session, join + registration time), in job order.
    pub sessions: Vec<(usize, SupernodeSession, Duration)>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// Joins one client and registers it as `natter online` does: presence
/// online, then its buddy subscriptions.
async fn join_one(
    keys: &Keys,
    endpoint: &Endpoint,
    job: &Job,
) -> Result<SupernodeSession, SessionError> {
    let identity = keys.identity(&job.name, job.serial);
    let session = SupernodeSession::join(
        endpoint,
        job.addr,
        &identity,
        &keys.issuer.public_key(),
        JOIN_TIMEOUT,
    )
    .await?;
    natter_client::online::set_online(&session, JOIN_TIMEOUT).await?;
    if !job.buddies.is_empty() {
        let subscribe = Body::PresenceSubscribe(PresenceSubscribe {
            names: job.buddies.clone(),
        });
        session.request(subscribe, JOIN_TIMEOUT).await?;
    }
    Ok(session)
}

/// Joins every job (`concurrency` at a time), stopping at `deadline`.
pub async fn join_all(
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
                let t = Instant::now();
                match join_one(&keys, &endpoints[job.endpoint], job).await {
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

/// `n` client endpoints, each on its own loopback address (127.1.x.y): the
/// supernode admits at most `Config::max_connections_per_ip` (64)
/// connections per address, so one address cannot carry thousands of
/// clients. `block` keeps the address ranges of different parts apart.
pub fn client_endpoints(block: u8, n: usize) -> Vec<Endpoint> {
    assert!(n <= 250 * 250, "too many client endpoints");
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(127, block, (i / 250) as u8, (i % 250) as u8 + 1);
            natter_net::client_endpoint(SocketAddr::from((ip, 0)), &TransportSettings::OVERLAY)
                .expect("client endpoint")
        })
        .collect()
}

pub async fn search(session: &SupernodeSession, name: &str) -> Result<SearchReply, SessionError> {
    let body = Body::SearchRequest(SearchRequest { name: name.into() });
    match session.request(body, SEARCH_TIMEOUT).await? {
        Body::SearchReply(reply) => Ok(reply),
        other => Err(SessionError::Unexpected(other.type_name())),
    }
}

/// Whether `reply` says the user is online at `home` (or, with `None`,
/// that nobody has the name).
pub fn reply_matches(reply: &SearchReply, home: Option<SocketAddr>) -> bool {
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

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn error_kind(e: &SessionError) -> String {
    match e {
        SessionError::Timeout(_) => "timeout".into(),
        SessionError::Remote { code, .. } => format!("{code:?}"),
        SessionError::Closed(_) => "closed".into(),
        SessionError::Busy => "busy".into(),
        other => other.to_string(),
    }
}
