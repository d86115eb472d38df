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
//! | [`hashing`] | argon2id hashing and RSA signing on a bounded blocking pool |
//! | [`throttle`] | growing delays after failed password checks |
//! | [`service`] | `handle(envelope, peer) -> envelope`: the whole protocol |
//! | [`quic`] | the QUIC shell that feeds the service, and [`LoginServer`] running both shells |
//! | [`tcp`] | the TLS-over-TCP shell (firewall fallback): the same requests as records on one connection |
//! | [`admin`] | offline administration (`users list`, `users disable`) |
//!
//! See `docs/LOGIN.md` for the trust model.

pub mod admin;
pub mod config;
pub mod datadir;
pub mod hashing;
pub mod names;
pub mod quic;
pub mod service;
pub mod storage;
pub mod tcp;
pub mod throttle;

pub use config::{Argon2Config, Config, ThrottleConfig};
pub use quic::{LoginServer, ServeError};
pub use service::LoginService;

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}

/// The ALPN protocol id of Natter control connections.
pub const ALPN: &[u8] = b"natter/1";

/// Current wall-clock time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
