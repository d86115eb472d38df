//! # natter-client
//!
//! The Natter client: register and log in (generating the RSA-2048 key pair
//! locally and sending only its public key), keep the key and certificate in a
//! home directory until they near expiry, sync an encrypted buddy list, join
//! the overlay through the host cache, search, chat, and call.
//!
//! | module | concept |
//! |---|---|
//! | [`tls`] | the TLS configuration (QUIC and TCP) that pins the login server's signing key |
//! | [`login`] | [`LoginClient`]: one connection to the login server, QUIC or (fallback) TLS over TCP |
//! | [`home`] | the home directory (`--home DIR`): the identity kept on disk, and the way to the other files |
//! | [`password`] | where a command's password comes from |
//! | [`resolve`] | `host:port` to an address; the login server's target |
//! | [`buddies`] | client-side encryption of the buddy-list blob |
//! | [`buddy_list`] | the buddy list file: add, remove, push, pull |
//! | [`inbox`] | the inbox file, and fetching stored chat into it |
//! | [`error`] | [`ClientError`], one clear message per failure |
//! | [`hostcache`] | the persisted list of supernodes |
//! | [`supernode`] | one joined session with a supernode: requests, replies, pushes |
//! | [`overlay`] | choosing a supernode, the alternate node table, failover |
//! | [`search`] | looking a user up in the directory; presence names |
//! | [`chat`] | sending a chat message and waiting for its receipt |
//! | [`online`] | staying online: presence, pushes, rejoining after a lost supernode |
//! | [`promote`] | supernode promotion: when an online client becomes a supernode and when it steps down (sans-IO) |
//! | [`promoted`] | running the promoted client's supernode (the supernode library, in this process) and its status file |
//! | [`gather`] | the candidates of a call (host, server-reflexive, predicted, relay) and its relay allocation |
//! | [`netcheck`] | classifying this host's NAT with STUN reflectors |
//! | [`call`] | placing and answering calls: signaling plus the SoM/UDP media loop |
//! | [`hold`] | hold on the wire: this side's holds (frame spans) and the peer's (signalled) |
//! | [`call_link`] | a call's signaling that survives the loss of its supernode (rejoin mid-call) |
//! | [`keylog`] | `NATTER_KEYLOG`: TLS secrets and call keys for studying one's own traffic (off by default) |
//! | [`text`] | peer-written text made safe for a terminal (control and bidi characters escaped); times as people read them ("2 min ago") |
//! | [`ui`] | the terminal UI: a pure state/reducer, its ratatui view, and the I/O loop |
//!
//! The `natter` binary only parses arguments, calls these and prints; files
//! are written through [`natter_fsutil`] (atomic, mode 0600).

pub mod buddies;
pub mod buddy_list;
pub mod call;
pub mod call_link;
pub mod chat;
pub mod conference;
pub mod error;
pub mod gather;
pub mod hold;
pub mod home;
pub mod hostcache;
pub mod inbox;
pub mod keylog;
pub mod leg;
pub mod liveness;
pub mod login;
pub mod netcheck;
pub mod online;
pub mod overlay;
pub mod password;
pub mod promote;
pub mod promoted;
pub mod resolve;
pub mod search;
pub mod supernode;
pub mod tcp_relay;
pub mod text;
pub mod tls;
pub mod ui;
pub mod wire_test;

pub use error::ClientError;
pub use home::{Home, Session};
pub use login::{LoginClient, LoginOutcome, LoginTarget};

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}

/// Current wall-clock time in unix seconds.
pub fn now_unix_secs() -> i64 {
    now_unix_ms() / 1000
}

/// Current wall-clock time in unix milliseconds.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
