//! Login-server configuration. The binary fills a [`Config`] from its
//! command line; tests build one directly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Argon2id cost for stored password hashes.
///
/// The default is the OWASP minimum recommendation for argon2id
/// (19 MiB, 2 passes, 1 lane). Existing hashes keep the cost they were made
/// with (it is encoded in the PHC string), so the cost can be raised later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Config {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            m_kib: 19_456,
            t: 2,
            p: 1,
        }
    }
}

impl Argon2Config {
    /// A very cheap cost, for tests only.
    pub fn insecure_for_tests() -> Self {
        Self {
            m_kib: 64,
            t: 1,
            p: 1,
        }
    }
}

/// Throttling of password checks (login and buddy-blob requests) and of
/// registrations, per source prefix (see [`crate::throttle`]).
///
/// After `free_failures` failures of one key (a name from one source prefix,
/// or a source prefix across names), each further failure blocks that key
/// for `base_delay * 2^(n-1)`, capped at `max_delay`. Attempts in flight
/// count at once. A key's record is forgotten `forget_after` after its last
/// failure; a successful login clears the (name, prefix) record (not the
/// prefix's). Registrations are a bucket of `registrations_per_prefix`
/// refilled by one every `registration_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures per (name, source prefix) allowed before delays start.
    pub free_failures_per_name: u32,
    /// Failures per source prefix, across names, before delays start.
    pub free_failures_per_addr: u32,
    /// Length of an IPv4 source prefix (24: a /24).
    pub v4_prefix_len: u8,
    /// Length of an IPv6 source prefix (56: a /56).
    pub v6_prefix_len: u8,
    /// Registrations a prefix may make at once (the bucket size).
    pub registrations_per_prefix: u32,
    /// One more registration per prefix is allowed every this long.
    pub registration_interval: Duration,
    /// First delay.
    pub base_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Idle time after which a record is dropped.
    pub forget_after: Duration,
    /// Most records kept per kind (bounded memory).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures_per_name: 3,
            free_failures_per_addr: 10,
            v4_prefix_len: 24,
            v6_prefix_len: 56,
            registrations_per_prefix: 10,
            registration_interval: Duration::from_secs(6 * 60),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
            max_entries: 100_000,
        }
    }
}

/// Everything `natter-login serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// TCP address of the TLS-over-TCP listener (the firewall fallback for
    /// clients whose UDP is blocked), if any. It serves the same protocol
    /// with the same certificate and limits as the QUIC listener.
    pub tcp_listen: Option<SocketAddr>,
    /// TCP address of the Prometheus endpoint (`GET /metrics`,
    /// [`natter_net::metrics`]). `None`: off.
    pub metrics: Option<SocketAddr>,
    /// Directory holding the signing key, TLS identity and (unless
    /// `database` is set) the SQLite database.
    pub data_dir: PathBuf,
    /// Database URL (`postgres://...`); `None`: the SQLite file in
    /// `data_dir`. See [`crate::storage`].
    pub database: Option<String>,
    /// Cost of new password hashes.
    pub argon2: Argon2Config,
    /// Validity of issued user certificates.
    pub cert_validity: Duration,
    /// How far `not_before` is back-dated, to tolerate client clock skew.
    pub cert_backdate: Duration,
    /// Failed-password throttling.
    pub throttle: ThrottleConfig,
    /// A supernode is returned to clients while its last announce is this recent.
    pub supernode_ttl: Duration,
    /// Most supernodes returned in a `LoginReply`.
    pub max_supernodes_returned: usize,
    /// Most distinct supernodes announced from one IP address.
    pub max_supernodes_per_ip: usize,
    /// Validity of issued supernode certificates (renewed on every
    /// announce, so this only bounds how long a certificate outlives a
    /// supernode that stopped announcing).
    pub supernode_cert_validity: Duration,
    /// Most unapproved supernode keys remembered as pending.
    pub max_pending_supernodes: usize,
    /// Supernode promotion (docs/ARCHITECTURE.md): a supernode key
    /// announced with a user's sponsorship (a promoted client) is approved
    /// by itself when that user's account is at least this old and not
    /// disabled. `None` (the default): every such key waits for the
    /// operator (`natter-login supernodes approve`), like any other.
    pub auto_approve_users: Option<Duration>,
    /// When true, a `SupernodeAnnounce` must carry the IP it was sent from
    /// (or an unspecified IP, which is replaced by the source IP).
    pub announce_requires_source_ip: bool,
    /// Concurrent argon2 / RSA jobs (defaults to the number of cores).
    pub cpu_workers: usize,
    /// Of those, most running or waiting for a registration's hash at once
    /// (default: one less than `cpu_workers`, at least 1), so logins always
    /// find a worker while registrations flood.
    pub register_workers: usize,
    /// Registrations waiting for one of `register_workers` beyond which a
    /// new one is answered `THROTTLED` at once.
    pub register_queue: usize,
    /// Concurrent connections, QUIC and TLS over TCP together.
    pub max_connections: usize,
    /// Of those, most from one IP address: one host cannot take every slot.
    pub max_connections_per_ip: usize,
    /// Concurrent requests per connection (QUIC streams, or requests in
    /// flight on a TCP connection).
    pub max_streams_per_connection: u32,
    /// Time a client has to finish a TLS handshake over TCP, and time to
    /// write a reply (on either transport) before the connection counts as
    /// stuck.
    pub request_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
}

impl Config {
    /// Defaults for a server on `listen` with its files in `data_dir`.
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        let cpu_workers = std::thread::available_parallelism().map_or(2, usize::from);
        Self {
            listen,
            tcp_listen: None,
            metrics: None,
            data_dir: data_dir.into(),
            database: None,
            argon2: Argon2Config::default(),
            cert_validity: Duration::from_secs(24 * 60 * 60),
            cert_backdate: Duration::from_secs(5 * 60),
            throttle: ThrottleConfig::default(),
            supernode_ttl: Duration::from_secs(10 * 60),
            max_supernodes_returned: 32,
            max_supernodes_per_ip: 16,
            supernode_cert_validity: Duration::from_secs(24 * 60 * 60),
            max_pending_supernodes: 64,
            auto_approve_users: None,
            announce_requires_source_ip: true,
            cpu_workers,
            register_workers: cpu_workers.saturating_sub(1).max(1),
            register_queue: 16,
            max_connections: 4096,
            max_connections_per_ip: 64,
            max_streams_per_connection: 8,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}
