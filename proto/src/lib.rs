//! # natter-proto
//!
//! The sans-IO protocol core shared by Natter's login server, supernodes and
//! clients. Nothing here opens a socket, spawns a task or reads a clock: every
//! function that needs the time takes it as an argument, and every function
//! that needs randomness takes the random bytes (or an RNG) from its caller.
//!
//! | module | concept |
//! |---|---|
//! | [`messages`] | signaling messages (prost, from `proto/natter.proto`) and address conversions |
//! | [`frame`] | the length-delimited stream framing of [`messages::Envelope`]s |
//! | [`som`] | the SoM datagram header (message id + function byte) |
//! | [`stun`] | STUN binding (RFC 8489) and the RFC 5780 attributes, for reflection and netcheck |
//! | [`relay`] | binding a UDP address to a relay allocation; keeping relay legs bound |
//! | [`path`] | choosing where media goes: connectivity checks, relay first, direct when it works |
//! | [`session`] | one call's media transport: paths, relay binds, the TCP fallback, sealing and opening |
//! | [`migration`] | when a call must move to another relay: every path died after one worked |
//! | [`report`] | the typed call report (`--stats-json`), written by the client, read by the NAT lab |
//! | [`replay`] | rebuilding the 64-bit packet index from the 16-bit message id; the replay window |
//! | [`cert`] | user and supernode certificates issued by the login server; the revocation list |
//! | [`binding`] | the bytes each proof-of-possession signature covers, bound to the TLS connection |
//! | [`chat`] | end-to-end chat: sealing to the recipient's chat key, signed by the sender |
//! | [`statement`] | a user's signed join statement (the home supernode and join time its directory record claims) |
//! | [`conference`] | conference calls: capability records, the host election, roster, handover, the two-party fallback |
//! | [`call`] | call setup: invite / ringing / accept / reject / busy / hangup, timeouts |
//! | [`handshake`] | the call key agreement (signed X25519 shares, HKDF) |
//! | [`media`] | sealing and opening SoM datagrams with AES-256-GCM; the DATA plaintext layout |
//! | [`jitter`] | the receiver's adaptive jitter buffer |
//! | [`name`] | the user-name rule (validity and the normalised form) used by every component |
//! | [`record`] | typed, length-prefixed records on a TLS-over-TCP connection (the firewall fallback) |
//!
//! The byte layouts are documented in `docs/PROTOCOL.md`, with test vectors
//! that `tests/vectors.rs` checks against this code.

pub mod alive;
pub mod binding;
pub mod call;
pub mod cert;
pub mod chat;
pub mod conference;
pub mod frame;
pub mod handshake;
pub mod jitter;
pub mod media;
pub mod messages;
pub mod migration;
pub mod name;
pub mod path;
pub mod record;
pub mod relay;
pub mod replay;
pub mod report;
pub mod session;
pub mod som;
pub mod statement;
pub mod stun;

pub use messages::PROTOCOL_VERSION;
