//! The login protocol, independent of the transport: [`LoginService::handle`]
//! maps one request [`Envelope`] (and the peer's address) to one reply.
//! [`crate::session`] feeds it, for both transports.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_proto::binding::{self, Exporter};
use natter_proto::cert::{self, Issuer};
use natter_proto::messages::{
    BuddyBlob, BuddyBlobGet, BuddyBlobPut, Certificate, Envelope, ErrorCode, ErrorReply,
    HostCacheEntry, LoginReply, LoginRequest, Pong, RegisterReply, RegisterRequest, RevocationList,
    SupernodeAnnounce, SupernodeAnnounced, envelope::Body,
};
use prost::Message;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::hashing::{CpuPool, HashError, Lane, PasswordHasher};
use crate::names::{self, PasswordError};
use crate::storage::{KeyState, Store, StoreError, UserRecord};
use crate::throttle::Throttle;

/// Largest accepted buddy blob.
pub const MAX_BUDDY_BLOB: usize = 48 * 1024;
/// Longest accepted supernode id.
pub const MAX_NODE_ID: usize = 64;
/// Supernodes not heard from for this long are deleted.
pub const SUPERNODE_FORGET: Duration = Duration::from_secs(7 * 24 * 60 * 60);

type Reply = Result<Body, ErrorReply>;

fn error(code: ErrorCode, detail: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, detail)
}

fn internal(context: &str, e: &dyn std::fmt::Display) -> ErrorReply {
    tracing::error!(%e, "{context}");
    error(ErrorCode::Internal, "internal server error")
}

/// A `THROTTLED` reply asking the client to wait `wait`.
fn throttled(wait: Duration, what: &str) -> ErrorReply {
    let ms = u32::try_from(wait.as_millis().max(1)).unwrap_or(u32::MAX);
    let mut e = error(
        ErrorCode::Throttled,
        format!("{what}; retry in {:.1} s", wait.as_secs_f64()),
    );
    e.retry_after_ms = ms;
    e
}

/// How long a registration refused for a full queue is asked to wait.
const BUSY_RETRY: Duration = Duration::from_secs(1);

impl From<HashError> for ErrorReply {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => throttled(BUSY_RETRY, "too many registrations in progress"),
            other => internal("password hashing failed", &other),
        }
    }
}

impl From<StoreError> for ErrorReply {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken => error(ErrorCode::NameTaken, "the name is already taken"),
            StoreError::UnknownUser => error(ErrorCode::UnknownUser, "no such user"),
            StoreError::StaleVersion { current } => error(
                ErrorCode::StaleVersion,
                format!("stale version: the server holds version {current}"),
            ),
            StoreError::TooManySupernodes => error(
                ErrorCode::RateLimited,
                "too many supernodes announced from this address",
            ),
            StoreError::TooManyPending => error(
                ErrorCode::RateLimited,
                "too many supernode keys wait for approval",
            ),
            other => internal("database error", &other),
        }
    }
}

/// Settings the service needs from [`Config`].
#[derive(Debug, Clone)]
struct Settings {
    cert_validity: Duration,
    cert_backdate: Duration,
    supernode_ttl: Duration,
    max_supernodes_returned: usize,
    max_supernodes_per_ip: usize,
    announce_requires_source_ip: bool,
    supernode_cert_validity: Duration,
    max_pending_supernodes: usize,
    auto_approve_users: Option<Duration>,
}

/// The login server's request handler.
#[derive(Debug)]
pub struct LoginService {
    store: Store,
    hasher: PasswordHasher,
    issuer: Arc<Issuer>,
    throttle: Throttle,
    settings: Settings,
    /// Requests answered, by request type and outcome (`ok` or the error
    /// code's name): both from fixed sets, so the map stays small.
    outcomes: std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
}

fn now_ms() -> i64 {
    crate::now_unix_ms()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The same address whether written as IPv4 or IPv4-mapped IPv6.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl LoginService {
    /// A service over `store`, signing with `issuer`.
    pub fn new(store: Store, issuer: Issuer, config: &Config) -> Result<Self, HashError> {
        let pool = CpuPool::new(config.cpu_workers);
        // Registrations never take every worker: logins always find one.
        let register_workers = config
            .register_workers
            .min(config.cpu_workers.saturating_sub(1))
            .max(1);
        let lane = Lane::new(register_workers, config.register_queue);
        Ok(Self {
            store,
            hasher: PasswordHasher::new(config.argon2, pool, lane)?,
            issuer: Arc::new(issuer),
            throttle: Throttle::new(config.throttle),
            outcomes: std::sync::Mutex::default(),
            settings: Settings {
                cert_validity: config.cert_validity,
                cert_backdate: config.cert_backdate,
                supernode_ttl: config.supernode_ttl,
                max_supernodes_returned: config.max_supernodes_returned,
                max_supernodes_per_ip: config.max_supernodes_per_ip,
                announce_requires_source_ip: config.announce_requires_source_ip,
                supernode_cert_validity: config.supernode_cert_validity,
                max_pending_supernodes: config.max_pending_supernodes,
                auto_approve_users: config.auto_approve_users,
            },
        })
    }

    /// Requests answered since start, by request type and outcome (`ok`,
    /// or the error code's name such as `WRONG_PASSWORD`).
    pub fn outcomes(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// The storage layer.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The certificate issuer.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Answers one request from `peer` on the connection whose TLS exporter
    /// is `exporter` (what proofs of possession are bound to). Never fails:
    /// every problem becomes an [`ErrorReply`] carrying the request's id.
    pub async fn handle(
        &self,
        request: Envelope,
        peer: SocketAddr,
        exporter: &Exporter,
    ) -> Envelope {
        let id = request.request_id;
        let kind = request.type_name();
        let reply = match request.body {
            Some(Body::RegisterRequest(r)) => self.register(r, peer).await,
            Some(Body::LoginRequest(r)) => self.login(r, peer, exporter).await,
            Some(Body::BuddyBlobPut(r)) => self.buddy_put(r, peer).await,
            Some(Body::BuddyBlobGet(r)) => self.buddy_get(r, peer).await,
            Some(Body::SupernodeAnnounce(r)) => self.announce(r, peer, exporter).await,
            Some(Body::Ping(p)) => Ok(Body::Pong(Pong { nonce: p.nonce })),
            Some(other) => Err(error(
                ErrorCode::Malformed,
                format!("{} is not a login-server request", other.type_name()),
            )),
            None => Err(error(ErrorCode::Malformed, "envelope has no body")),
        };
        let outcome = match &reply {
            Ok(_) => "ok",
            Err(e) => ErrorCode::try_from(e.code).map_or("unknown", |c| {
                c.as_str_name().trim_start_matches("ERROR_CODE_")
            }),
        };
        *self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((kind, outcome))
            .or_default() += 1;
        let body = reply.unwrap_or_else(|e| {
            tracing::debug!(%peer, request = kind, code = e.code, detail = %e.detail, "request refused");
            Body::Error(e)
        });
        Envelope::new(id, body)
    }

    async fn register(&self, r: RegisterRequest, peer: SocketAddr) -> Reply {
        let name =
            names::normalise_name(&r.name).map_err(|e| error(ErrorCode::BadName, e.to_string()))?;
        names::check_password(&r.password).map_err(|e| match e {
            PasswordError::TooShort => error(ErrorCode::ShortPassword, e.to_string()),
            PasswordError::TooLong => error(ErrorCode::Malformed, e.to_string()),
        })?;
        // Cheap early answer; the unique index decides races below.
        if self.store.user_exists(&name).await? {
            return Err(StoreError::NameTaken.into());
        }
        // Rate per source prefix, taken before the argon2 run.
        self.throttle
            .register(canonical_ip(peer.ip()), Instant::now())
            .map_err(|wait| throttled(wait, "too many registrations from this network"))?;
        let hash = self.hasher.hash(r.password).await?;
        self.store
            .create_user(&name, &r.name, &hash, now_ms())
            .await?;
        tracing::info!(%name, "registered");
        Ok(Body::RegisterReply(RegisterReply { name }))
    }

    /// Checks a name and password, with throttling; returns the account.
    async fn authenticate(
        &self,
        name: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<UserRecord, ErrorReply> {
        let name =
            names::normalise_name(name).map_err(|e| error(ErrorCode::BadName, e.to_string()))?;
        if password.len() > names::MAX_PASSWORD_BYTES {
            return Err(error(
                ErrorCode::Malformed,
                PasswordError::TooLong.to_string(),
            ));
        }
        let ip = canonical_ip(peer.ip());
        // Reserved before any hashing: attempts in flight count at once.
        // Dropped on an early return (an internal error), it counts nothing.
        let attempt = self
            .throttle
            .begin(&name, ip, Instant::now())
            .map_err(|wait| throttled(wait, "too many failed attempts"))?;
        let Some(user) = self.store.user(&name).await? else {
            attempt.unknown_user(Instant::now());
            return Err(error(
                ErrorCode::UnknownUser,
                format!("no user named {name:?}"),
            ));
        };
        if !self
            .hasher
            .verify(password.to_owned(), user.password_hash.clone())
            .await?
        {
            attempt.failure(Instant::now());
            if self.may_log(peer) {
                tracing::info!(%name, %peer, "wrong password");
            }
            return Err(error(ErrorCode::WrongPassword, "wrong password"));
        }
        attempt.success();
        if user.disabled {
            return Err(error(
                ErrorCode::AccountDisabled,
                format!("account {name:?} is disabled"),
            ));
        }
        Ok(user)
    }

    /// Whether a line about a refused request from `peer` may be logged
    /// (a budget per source prefix, [`Throttle::log_line`]).
    pub(crate) fn may_log(&self, peer: SocketAddr) -> bool {
        self.throttle.log_line(peer.ip(), Instant::now())
    }

    /// A fresh serial and the validity window (unix seconds, back-dated
    /// for clock skew) of a certificate issued at `now_ms` for `validity`:
    /// the same for users and supernodes.
    fn validity(&self, now_ms: i64, validity: Duration) -> (u64, i64, i64) {
        let now_s = now_ms.div_euclid(1000);
        let not_before = now_s.saturating_sub(secs(self.settings.cert_backdate));
        let not_after = now_s.saturating_add(secs(validity));
        (rand::rngs::OsRng.next_u64() >> 1, not_before, not_after)
    }

    async fn login(&self, r: LoginRequest, peer: SocketAddr, exporter: &Exporter) -> Reply {
        let subject = cert::parse_public_key(&r.public_key)
            .map_err(|e| error(ErrorCode::Malformed, format!("public key: {e}")))?;
        let chat_key = <[u8; cert::CHAT_KEY_LEN]>::try_from(r.chat_key.as_slice())
            .map_err(|_| error(ErrorCode::Malformed, "chat key is not 32 bytes"))?;
        // Proof of possession first: it costs one RSA public operation, so a
        // request for someone else's key is refused before argon2 runs and
        // before the throttle counts a password attempt (docs/LOGIN.md).
        let message = binding::login_message(exporter, &r.name, &r.public_key, &r.chat_key);
        if cert::verify_signature(&subject, &message, &r.proof).is_err() {
            if self.may_log(peer) {
                tracing::info!(%peer, name = %r.name, "login refused: proof of possession failed");
            }
            return Err(error(
                ErrorCode::CertificateRejected,
                "proof of possession failed: the request is not signed by the key to certify on this connection",
            ));
        }
        let user = self.authenticate(&r.name, &r.password, peer).await?;

        let now = now_ms();
        let (serial, not_before, not_after) = self.validity(now, self.settings.cert_validity);
        let issuer = Arc::clone(&self.issuer);
        let name = user.name.clone();
        let fingerprint = cert::fingerprint(&subject);
        let certificate = self
            .hasher
            .pool()
            .run(move || {
                issuer.issue(
                    &mut rand::rngs::OsRng,
                    &cert::Subject::User {
                        name: &name,
                        key: &subject,
                        chat_key,
                    },
                    serial,
                    not_before,
                    not_after,
                )
            })
            .await?;
        self.store
            .record_issuance(&user.name, serial, &fingerprint, now, not_after)
            .await?;
        let supernodes = self.recent_supernodes(now).await?;
        tracing::info!(name = %user.name, %peer, serial, key = %fingerprint, "certificate issued");
        Ok(Body::LoginReply(LoginReply {
            certificate: Some(certificate),
            server_time: now,
            supernodes,
        }))
    }

    async fn recent_supernodes(&self, now: i64) -> Result<Vec<HostCacheEntry>, ErrorReply> {
        let since = now.saturating_sub(
            i64::try_from(self.settings.supernode_ttl.as_millis()).unwrap_or(i64::MAX),
        );
        let records = self
            .store
            .recent_supernodes(since, self.settings.max_supernodes_returned)
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|r| {
                let addr: SocketAddr = r.addr.parse().ok()?;
                let tcp = r.tcp.as_deref().and_then(|t| t.parse::<SocketAddr>().ok());
                let reflector = r.reflector.as_deref()?.parse::<SocketAddr>().ok()?;
                // Only certified supernodes are listed: an entry without a
                // certificate (announced before version 2) is left out.
                let certificate = Certificate::decode(r.certificate.as_deref()?).ok()?;
                Some(HostCacheEntry {
                    addr: Some(addr.into()),
                    last_seen: r.last_seen,
                    rtt_ms: 0,
                    node_id: hex::decode(&r.node_id).ok()?,
                    reflector: Some(reflector.into()),
                    tcp: tcp.map(Into::into),
                    certificate: Some(certificate),
                })
            })
            .collect())
    }

    async fn buddy_put(&self, r: BuddyBlobPut, peer: SocketAddr) -> Reply {
        if r.ciphertext.len() > MAX_BUDDY_BLOB {
            return Err(error(
                ErrorCode::Malformed,
                format!(
                    "buddy blob of {} bytes exceeds {MAX_BUDDY_BLOB}",
                    r.ciphertext.len()
                ),
            ));
        }
        let user = self.authenticate(&r.name, &r.password, peer).await?;
        let version = self
            .store
            .put_buddy_blob(&user.name, r.base_version, &r.ciphertext)
            .await?;
        Ok(Body::BuddyBlob(BuddyBlob {
            version,
            ciphertext: Vec::new(),
        }))
    }

    async fn buddy_get(&self, r: BuddyBlobGet, peer: SocketAddr) -> Reply {
        let user = self.authenticate(&r.name, &r.password, peer).await?;
        let blob = self.store.buddy_blob(&user.name).await?;
        Ok(Body::BuddyBlob(BuddyBlob {
            version: blob.version,
            ciphertext: blob.ciphertext,
        }))
    }

    /// Checks an announced address: a nonzero port; an unspecified IP
    /// becomes the source address; unless foreign announces are allowed,
    /// the IP must be the source's.
    fn announced_addr(
        &self,
        wire: &natter_proto::messages::SocketAddr,
        source: IpAddr,
        what: &str,
    ) -> Result<SocketAddr, ErrorReply> {
        let mut addr = SocketAddr::try_from(wire)
            .map_err(|e| error(ErrorCode::Malformed, format!("{what}: {e}")))?;
        if addr.port() == 0 {
            return Err(error(ErrorCode::Malformed, format!("{what}: port is 0")));
        }
        if addr.ip().is_unspecified() {
            addr.set_ip(source);
        }
        let ip = canonical_ip(addr.ip());
        addr.set_ip(ip);
        if self.settings.announce_requires_source_ip && ip != source {
            return Err(error(
                ErrorCode::Malformed,
                format!("announced {what} {ip} is not the source address {source}"),
            ));
        }
        Ok(addr)
    }

    /// The user sponsoring a promoted client's announce, if it carries a
    /// sponsorship: a USER certificate of this login server, valid now,
    /// whose key signed `binding::promote_message` over this connection's
    /// exporter and the announced node id. A sponsorship that does not
    /// verify refuses the announce (`CERTIFICATE_REJECTED`).
    fn sponsor(
        &self,
        r: &SupernodeAnnounce,
        exporter: &Exporter,
        node_id: &[u8],
        peer: SocketAddr,
    ) -> Result<Option<String>, ErrorReply> {
        let Some(certificate) = &r.sponsor else {
            return Ok(None);
        };
        let refused = |why: String| {
            if self.may_log(peer) {
                tracing::info!(%peer, "sponsored announce refused: {why}");
            }
            error(ErrorCode::CertificateRejected, why)
        };
        let user = cert::verify(certificate, &self.issuer.public_key(), now_ms() / 1000)
            .map_err(|e| refused(format!("sponsor certificate: {e}")))?;
        let message = binding::promote_message(exporter, node_id);
        cert::verify_signature(&user.public_key, &message, &r.sponsor_signature).map_err(|_| {
            refused("sponsor signature does not verify with the sponsor's certified key on this connection".into())
        })?;
        Ok(Some(user.name))
    }

    /// Whether `name` may have its promoted client's supernode approved
    /// without the operator: the policy is on (`auto_approve_users`), the
    /// account exists, is not disabled, and is at least that old.
    async fn in_good_standing(&self, name: &str, now_ms: i64) -> Result<bool, ErrorReply> {
        let Some(min_age) = self.settings.auto_approve_users else {
            return Ok(false);
        };
        let Some(user) = self.store.user(name).await? else {
            return Ok(false);
        };
        let age_ms = now_ms.saturating_sub(user.created_at);
        let min_ms = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        Ok(!user.disabled && age_ms >= min_ms)
    }

    /// A supernode's announce: signed by the key it wants certified,
    /// bound to this connection; the key must be approved (or bring a valid
    /// one-time enrolment token), not revoked; the addresses must be the
    /// sender's. Answered with a fresh certificate and the revocation list.
    async fn announce(&self, r: SupernodeAnnounce, peer: SocketAddr, exporter: &Exporter) -> Reply {
        let key = cert::parse_public_key(&r.public_key)
            .map_err(|e| error(ErrorCode::Malformed, format!("public key: {e}")))?;
        let node_id = cert::key_id(&key);
        if r.node_id != node_id {
            return Err(error(
                ErrorCode::Malformed,
                "node id is not the key id of the announced key",
            ));
        }
        let message = binding::announce_message(exporter, &node_id);
        if cert::verify_signature(&key, &message, &r.signature).is_err() {
            if self.may_log(peer) {
                tracing::info!(%peer, "announce refused: signature does not verify");
            }
            return Err(error(
                ErrorCode::CertificateRejected,
                "announce signature does not verify with the announced key on this connection",
            ));
        }
        // A promoted client's announce: the sponsoring user must have
        // signed this key on this connection, else nothing is recorded.
        let sponsor = self.sponsor(&r, exporter, &node_id, peer)?;
        let wire = r
            .addr
            .as_ref()
            .ok_or_else(|| error(ErrorCode::Malformed, "announce has no address"))?;
        let source = canonical_ip(peer.ip());
        let addr = self.announced_addr(wire, source, "address")?;
        let tcp = r
            .tcp
            .as_ref()
            .map(|wire| self.announced_addr(wire, source, "tcp address"))
            .transpose()?;
        let reflector = r
            .reflector
            .as_ref()
            .ok_or_else(|| error(ErrorCode::Malformed, "announce has no reflector address"))
            .and_then(|wire| self.announced_addr(wire, source, "reflector address"))?;
        let now = now_ms();
        let fingerprint = cert::fingerprint(&key);
        let node_hex = hex::encode(node_id);
        let sponsor_approves = match &sponsor {
            Some(user) => self.in_good_standing(user, now).await?,
            None => false,
        };
        let state = match self.store.supernode_key_state(&fingerprint).await? {
            Some(KeyState::Revoked) => {
                return Err(error(
                    ErrorCode::Revoked,
                    format!("supernode key {fingerprint} is revoked"),
                ));
            }
            Some(KeyState::Approved) => KeyState::Approved,
            _ if !r.enrol_token.is_empty()
                && self
                    .store
                    .consume_enrol_token(&token_hash(&r.enrol_token), now)
                    .await? =>
            {
                tracing::info!(%addr, key = %fingerprint, "supernode enrolled with a token");
                KeyState::Approved
            }
            _ if sponsor_approves => {
                tracing::info!(%addr, key = %fingerprint, user = ?sponsor, "promoted client's supernode approved (user in good standing)");
                KeyState::Approved
            }
            _ => KeyState::Pending,
        };
        self.store
            .note_supernode_key(
                &fingerprint,
                &node_hex,
                &addr.to_string(),
                state,
                now,
                self.settings.max_pending_supernodes,
            )
            .await?;
        if state != KeyState::Approved {
            tracing::info!(%addr, key = %fingerprint, "supernode not approved; pending");
            return Err(error(
                ErrorCode::NotApproved,
                format!(
                    "supernode key {fingerprint} is not approved: run `natter-login supernodes approve {fingerprint}`"
                ),
            ));
        }
        let addrs = cert::SupernodeAddrs {
            quic: addr,
            reflector,
            tcp,
        };
        let (serial, not_before, not_after) =
            self.validity(now, self.settings.supernode_cert_validity);
        let issuer = Arc::clone(&self.issuer);
        let certificate = self
            .hasher
            .pool()
            .run(move || {
                issuer.issue(
                    &mut rand::rngs::OsRng,
                    &cert::Subject::Supernode { key: &key, addrs },
                    serial,
                    not_before,
                    not_after,
                )
            })
            .await?;
        self.store
            .upsert_supernode(
                &node_hex,
                &addr.ip().to_string(),
                &addr.to_string(),
                tcp.map(|t| t.to_string()).as_deref(),
                now,
                self.settings.max_supernodes_per_ip,
            )
            .await?;
        self.store
            .set_supernode_certificate(
                &node_hex,
                &reflector.to_string(),
                &certificate.encode_to_vec(),
            )
            .await?;
        let forget = i64::try_from(SUPERNODE_FORGET.as_millis()).unwrap_or(i64::MAX);
        self.store
            .prune_supernodes(now.saturating_sub(forget))
            .await?;
        tracing::debug!(%addr, ?tcp, node = %node_hex, "supernode announced");
        Ok(Body::SupernodeAnnounced(SupernodeAnnounced {
            certificate: Some(certificate),
            revocations: Some(self.revocations(now).await?),
        }))
    }

    /// The signed list of what is revoked now.
    pub async fn revocations(&self, now: i64) -> Result<RevocationList, ErrorReply> {
        let users = self.store.disabled_users().await?;
        let nodes = self
            .store
            .revoked_supernodes()
            .await?
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        let issuer = Arc::clone(&self.issuer);
        Ok(self
            .hasher
            .pool()
            .run(move || issuer.revocations(&mut rand::rngs::OsRng, now, users, nodes))
            .await?)
    }
}

/// What is stored of an enrolment token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}
