//! What a labelled capture is made of (issue 17): the captured interfaces,
//! every packet's label and `labels.json`, the observer host, and the
//! endpoints seen in a capture. Written by [`crate::capture`], read by
//! [`crate::detect`]; neither imports the other's internals for them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use natter_decrypt::{Transport, read_capture, segment};
use serde::{Deserialize, Serialize};

use crate::error::{LabError, Result};
use crate::scenario::io;

/// The observer host the active prober runs on (server subnet).
pub const OBSERVER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);

/// One captured interface.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Iface {
    /// `a-lan`, `a-wan`, `b-lan`, `b-wan`.
    pub name: String,
    /// Its pcap, relative to the scenario directory.
    pub file: String,
    /// `a` or `b`.
    pub side: String,
    /// Where it is.
    pub description: String,
}

/// The meaning of one captured packet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PacketLabel {
    /// The interface ([`Iface::name`]).
    pub iface: String,
    /// Its frame number in that interface's pcap (from 1).
    pub frame: u64,
    /// Capture time, Unix seconds.
    pub time: f64,
    /// What it is (see [`LABELS`]).
    pub label: String,
    /// Natter sent it.
    pub natter: bool,
    /// `udp` or `tcp` (absent for other packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Transport payload length.
    #[serde(default)]
    pub len: usize,
    /// A SoM datagram's function, from opening it (`Data`, `Probe`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// A SoM datagram's call direction (`c2s`, `s2c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// A SoM datagram's packet index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// A voice datagram's frame number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_number: Option<u16>,
    /// The process whose flow it is (`a:call`, ...), for QUIC and TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// For `tcp-fallback`: the phase the same packet would have over QUIC
    /// (`login`, `join`, `call-signal`, ...); `voice` for a TLS relay leg:
    /// a TCP connection a call process opened 20 ms or more after its first
    /// (its control connection is dialled first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// Every label and what it means.
pub const LABELS: [(&str, &str); 23] = [
    (
        "login",
        "QUIC to the login server (register, login, certificate)",
    ),
    (
        "host-cache-refresh",
        "QUIC from a login or register process to a supernode",
    ),
    (
        "join",
        "QUIC of a call or answer process to its supernode before the call: join, presence, keep-alives",
    ),
    (
        "search",
        "QUIC of a `natter search` process (join, then the search)",
    ),
    ("chat", "QUIC of a `natter chat` process"),
    (
        "presence",
        "QUIC of a `natter online` process (buddy presence, live messages)",
    ),
    (
        "call-signal",
        "QUIC of a call process from the call socket's first STUN to its last media",
    ),
    (
        "hang-up",
        "QUIC of a call process after its last media: the hang-up and leaving",
    ),
    (
        "stun-probe",
        "STUN to or from a supernode's reflector (UDP 444, or its alternate port 445: a NATed call socket's second mapping)",
    ),
    (
        "relay-bind",
        "a relay bind or bind reply (NRLY) at a supernode's relay (UDP 444)",
    ),
    (
        "beacon",
        "a client's liveness beacon or its echo (NRLY, Ping) at a supernode's UDP service (UDP 444)",
    ),
    (
        "hole-punch",
        "SoM Probe / ProbeReply between the peers (connectivity checks, hole punching)",
    ),
    (
        "relay-check",
        "SoM Probe / ProbeReply through a supernode's relay",
    ),
    (
        "voice",
        "SoM Data: a voice frame of audio that is not silent",
    ),
    (
        "silence",
        "SoM Data: a voice frame of silent audio (sent all the same: no DTX)",
    ),
    (
        "hold",
        "SoM Data: a voice frame its sender sent with the call on hold (silence, still 50 packets/s; the hold itself is a signal in the supernode session)",
    ),
    ("keepalive", "SoM Ping (sent when no media flows on a path)"),
    (
        "connect",
        "SoM Connect sealed with the call key (binds a path to the call)",
    ),
    (
        "tcp-fallback",
        "TLS over TCP 443 to the login server or a supernode (see `phase`)",
    ),
    (
        "unknown",
        "UDP to a supernode's service port or between the peers that none of the above explains",
    ),
    (
        "background-rtp",
        "not Natter: the RTP-like stream (background.rs)",
    ),
    (
        "background-udp",
        "not Natter: the plain UDP stream, DNS or the TLS download (`background-dns`, `background-tls` likewise)",
    ),
    (
        "other",
        "not Natter: ARP, ICMP, anything not UDP/TCP over IP",
    ),
];

/// `labels.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Labels {
    pub scenario: String,
    pub interfaces: Vec<Iface>,
    pub packets: Vec<PacketLabel>,
}

impl Labels {
    /// Reads `labels.json` of a scenario directory.
    pub fn read(dir: &Path) -> Result<Labels> {
        let p = dir.join("labels.json");
        let text = io(format!("read {}", p.display()), fs::read_to_string(&p))?;
        serde_json::from_str(&text).map_err(|e| LabError::Other(format!("{}: {e}", p.display())))
    }

    /// Label counts per label.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in &self.packets {
            *m.entry(p.label.clone()).or_default() += 1;
        }
        m
    }
}

/// Endpoints seen on the given interfaces (both ends of every UDP and TCP
/// flow), for the active prober.
pub fn endpoints(dir: &Path, ifaces: &[Iface]) -> Result<BTreeSet<(Transport, SocketAddr)>> {
    let mut set = BTreeSet::new();
    for i in ifaces {
        read_capture(&dir.join(&i.file), |p| {
            if let Some(s) = p.link.and_then(|l| segment(l, &p.data)) {
                set.insert((s.transport, s.src));
                set.insert((s.transport, s.dst));
            }
        })
        .map_err(|e| LabError::Other(e.to_string()))?;
    }
    Ok(set)
}
