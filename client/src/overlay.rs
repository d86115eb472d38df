//! Joining the overlay: pick a supernode from the host cache, keep an
//! alternate node table, and move to an alternate when the supernode dies.
//!
//! Candidates are tried [`OverlayConfig::parallel`] at a time; the first to
//! accept becomes the supernode and the next few candidates form the
//! alternate table (Skype kept 22). Every attempt updates the host cache
//! (RTT on success, a failure count otherwise) and the cache is saved after
//! each join, so the next start prefers supernodes that worked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use natter_proto::cert::{self, Identity};
use natter_proto::messages::HostCacheEntry;
use rsa::RsaPublicKey;
use tokio::task::JoinSet;

use crate::hostcache::{HostCache, HostCacheError};
use crate::now_unix_ms;
use crate::supernode::{self, Dial, SessionError, SupernodeSession};

/// How the client joins.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// The host cache file.
    pub cache_path: PathBuf,
    /// Used when the cache is empty (`--bootstrap`, or the login server's list).
    pub bootstrap: Vec<SocketAddr>,
    /// Join attempts in flight at once.
    pub parallel: usize,
    /// Limit for one join attempt.
    pub join_timeout: Duration,
    /// Size of the alternate node table.
    pub alternates: usize,
}

impl OverlayConfig {
    /// Defaults: 3 attempts in parallel, 3 s each, 8 alternates.
    pub fn new(cache_path: PathBuf, bootstrap: Vec<SocketAddr>) -> Self {
        Self {
            cache_path,
            bootstrap,
            parallel: 3,
            join_timeout: Duration::from_secs(3),
            alternates: 8,
        }
    }
}

/// Why the client could not join.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("no supernode to try: the host cache is empty and no --bootstrap address was given")]
    NoCandidates,
    #[error("no supernode accepted the join (tried {tried}); last error: {last}")]
    AllFailed { tried: usize, last: SessionError },
    #[error(transparent)]
    HostCache(#[from] HostCacheError),
}

/// The client's place in the overlay.
#[derive(Debug)]
pub struct Overlay {
    config: OverlayConfig,
    endpoint: quinn::Endpoint,
    identity: Identity,
    /// Supernode certificates (joins, host cache entries) are checked
    /// against this pinned key.
    login_key: RsaPublicKey,
    cache: HostCache,
    session: Arc<SupernodeSession>,
    alternates: Vec<SocketAddr>,
}

impl Overlay {
    /// Joins through the best candidate of the host cache (or the bootstrap list).
    pub async fn join(
        config: OverlayConfig,
        endpoint: quinn::Endpoint,
        identity: Identity,
        login_key: RsaPublicKey,
    ) -> Result<Self, OverlayError> {
        let mut cache = HostCache::load(&config.cache_path)?;
        if cache.is_empty() {
            cache.learn(config.bootstrap.iter().copied(), now_unix_ms());
        }
        let candidates = cache.candidates(crate::hostcache::MAX_ENTRIES);
        let (session, alternates) = join_first(
            &config,
            &endpoint,
            &identity,
            &login_key,
            &mut cache,
            &candidates,
        )
        .await?;
        let mut overlay = Self {
            config,
            endpoint,
            identity,
            login_key,
            cache,
            session,
            alternates,
        };
        overlay.after_join()?;
        Ok(overlay)
    }

    /// The current supernode session.
    pub fn session(&self) -> Arc<SupernodeSession> {
        self.session.clone()
    }

    /// The alternate node table.
    pub fn alternates(&self) -> &[SocketAddr] {
        &self.alternates
    }

    /// The host cache.
    pub fn cache(&self) -> &HostCache {
        &self.cache
    }

    /// Moves to another supernode after the current one went away: the
    /// alternates first, then the rest of the cache, then the bootstrap list.
    pub async fn rejoin(&mut self) -> Result<(), OverlayError> {
        let dead = self.session.addr();
        self.session.close();
        self.cache.record_failure(dead);
        let mut candidates: Vec<SocketAddr> = self.alternates.clone();
        for addr in self
            .cache
            .candidates(crate::hostcache::MAX_ENTRIES)
            .into_iter()
            .chain(self.config.bootstrap.iter().copied())
        {
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        candidates.retain(|a| *a != dead);
        let (session, alternates) = join_first(
            &self.config,
            &self.endpoint,
            &self.identity,
            &self.login_key,
            &mut self.cache,
            &candidates,
        )
        .await?;
        self.session = session;
        self.alternates = alternates;
        self.after_join()
    }

    /// Adds supernodes from a `SupernodeList` push (or any list) to the
    /// cache: only those whose certificate verifies and names the entry's
    /// addresses ([`certified_nodes`]).
    pub fn learn(&mut self, entries: &[HostCacheEntry]) -> Result<(), OverlayError> {
        let nodes = certified_nodes(entries, &self.login_key, crate::now_unix_secs());
        self.cache.learn_with_tcp(nodes, now_unix_ms());
        self.cache.save(&self.config.cache_path)?;
        Ok(())
    }

    fn after_join(&mut self) -> Result<(), OverlayError> {
        let listed = self.session.supernodes().to_vec();
        self.learn(&listed)?;
        let current = self.session.addr();
        // Top up the alternate table from the cache.
        for addr in self.cache.candidates(crate::hostcache::MAX_ENTRIES) {
            if self.alternates.len() >= self.config.alternates {
                break;
            }
            if addr != current && !self.alternates.contains(&addr) {
                self.alternates.push(addr);
            }
        }
        Ok(())
    }
}

/// The QUIC and (when announced) TLS-over-TCP addresses of the `entries`
/// that a certified supernode serves: the entry's certificate is a valid
/// SUPERNODE certificate of `login_key` at `now` (unix seconds) for the
/// entry's node id, and certifies exactly the entry's QUIC address and its
/// reflector and TCP addresses where the entry names them. Anything else
/// (no certificate, another issuer, a user certificate, addresses the
/// certificate does not name) is dropped: it never reaches the host cache.
pub fn certified_nodes(
    entries: &[HostCacheEntry],
    login_key: &RsaPublicKey,
    now: i64,
) -> Vec<(SocketAddr, Option<SocketAddr>)> {
    entries
        .iter()
        .filter_map(|e| {
            let addr = SocketAddr::try_from(e.addr.as_ref()?).ok()?;
            let tcp = match e.tcp.as_ref() {
                Some(a) => Some(SocketAddr::try_from(a).ok()?),
                None => None,
            };
            let reflector = match e.reflector.as_ref() {
                Some(a) => Some(SocketAddr::try_from(a).ok()?),
                None => None,
            };
            let certified = cert::verify_supernode(e.certificate.as_ref()?, login_key, now).ok()?;
            let names_it = certified.addrs.quic == addr
                && e.node_id == certified.node_id
                && tcp.is_none_or(|t| certified.addrs.tcp == Some(t))
                && reflector.is_none_or(|r| certified.addrs.reflector == r);
            names_it.then_some((addr, tcp))
        })
        .collect()
}

/// How to dial `addr`, from what the cache knows.
fn dial_of(cache: &HostCache, addr: SocketAddr) -> Dial {
    cache.get(addr).map_or(Dial::quic_addr(addr), |e| Dial {
        addr,
        tcp: e.tcp_addr(),
        prefer_tcp: e.transport == Some(natter_net::Transport::Tls),
    })
}

/// Races connections (QUIC, or TLS over TCP where UDP fails: see
/// [`supernode::dial`]) to `candidates`, `parallel` at a time, and joins
/// through the first that connects (only one supernode sees the join, so
/// presence does not flap); if that join is refused, the race goes on.
async fn join_first(
    config: &OverlayConfig,
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    login_key: &RsaPublicKey,
    cache: &mut HostCache,
    candidates: &[SocketAddr],
) -> Result<(Arc<SupernodeSession>, Vec<SocketAddr>), OverlayError> {
    if candidates.is_empty() {
        return Err(OverlayError::NoCandidates);
    }
    let mut next = 0;
    let mut attempts = JoinSet::new();
    let mut last = None;
    let parallel = config.parallel.max(1);
    loop {
        while attempts.len() < parallel && next < candidates.len() {
            let addr = candidates[next];
            next += 1;
            let (endpoint, timeout) = (endpoint.clone(), config.join_timeout);
            let dial = dial_of(cache, addr);
            attempts.spawn(async move {
                let connected = tokio::time::timeout(timeout, supernode::dial(&endpoint, dial))
                    .await
                    .unwrap_or(Err(SessionError::Timeout(addr)));
                (addr, connected)
            });
        }
        let Some(done) = attempts.join_next().await else {
            break;
        };
        let Ok((addr, connected)) = done else {
            continue;
        };
        let joined = match connected {
            Ok(connected) => {
                SupernodeSession::join_on(connected, addr, identity, login_key, config.join_timeout)
                    .await
            }
            Err(e) => Err(e),
        };
        match joined {
            Ok(session) => {
                // Connections still racing are dropped, which closes them.
                attempts.abort_all();
                let rtt = u32::try_from(session.join_rtt().as_millis()).unwrap_or(u32::MAX);
                cache.record_success(addr, session.transport(), rtt.max(1), now_unix_ms());
                cache.save(&config.cache_path)?;
                let alternates = candidates
                    .iter()
                    .copied()
                    .filter(|a| *a != addr)
                    .take(config.alternates)
                    .collect();
                return Ok((Arc::new(session), alternates));
            }
            Err(e) => {
                cache.record_failure(addr);
                last = Some(e);
            }
        }
    }
    let _ = cache.save(&config.cache_path);
    Err(OverlayError::AllFailed {
        tried: next,
        last: last.unwrap_or(SessionError::Unexpected("no attempt finished")),
    })
}
