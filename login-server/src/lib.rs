//! # natter-login
//!
//! Natter's login server: it registers accounts, checks passwords and issues
//! short-lived user certificates signed with its RSA-2048 key, hands out a
//! seed list of supernodes, and stores each user's encrypted buddy-list blob.
//!
//! The crate is layered so that the request handling does not depend on the
//! transport:
//!
//! | module | concept |
//! |---|---|
//! | [`config`] | every tunable, with defaults |
//! | [`names`] | user-name and password rules |
//! | [`datadir`] | the data directory: signing key, TLS identity, database file |
//! | [`storage`] | the SQL storage layer (SQLite today, portable SQL) |
//! | [`hashing`] | argon2id hashing and RSA signing on a bounded blocking pool; registration hashes in a bounded lane of it |
//! | [`throttle`] | password checks reserved before hashing, growing delays per (name, source prefix) and per prefix; registrations per prefix |
//! | [`service`] | `handle(envelope, peer) -> envelope`: the whole protocol |
//! | [`session`] | the one session code path of both transports: requests multiplexed by `request_id` on a stream, fed to the service |
//! | [`quic`] | accepting QUIC connections and their streams, each a session |
//! | [`tcp`] | accepting TLS-over-TCP connections (firewall fallback), each a session |
//! | [`server`] | [`LoginServer`]: the data directory, both listeners, shutdown |
//! | [`admin`] | offline administration (`users list`, `users disable`) |
//!
//! See `docs/LOGIN.md` for the trust model.

pub mod admin;
pub mod config;
pub mod datadir;
pub mod hashing;
mod metrics;
pub mod names;
pub mod quic;
pub mod server;
pub mod service;
pub mod session;
pub mod storage;
pub mod tcp;
pub mod throttle;

pub use config::{Argon2Config, Config, ThrottleConfig};
pub use server::{LoginServer, ServeError};
pub use service::LoginService;

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}

/// The ALPN protocol id of Natter control connections.
pub use natter_net::ALPN;

/// Current wall-clock time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
