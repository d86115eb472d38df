//! # natter-interop-tests: the NAT lab
//!
//! Builds an isolated "internet" out of Linux network namespaces and
//! nftables NAT routers (recipes from `shared/guide/NAT-LAB.md`), checks that
//! every router behaves as its declared NAT type, and runs the real Natter
//! binaries (`natter-login`, `natter-supernode`, `natter`) through it.
//!
//! * [`lab`]: topology builder, teardown guard, [`lab::cleanup_stale`];
//!   two backends ([`lab::Backend`]): namespaces (the default) or
//!   [`docker`]: the same topology from containers and Docker networks
//!   (`matrix --backend docker`, `--image-a/--image-b` for version interop).
//! * [`nat`]: NAT types, their nft rulesets, impairment profiles.
//! * [`impair`]: the impairment link's decisions (delay, jitter, bursty
//!   loss; pure, seeded) and [`wire`]: the forwarding process that applies
//!   them between two interfaces (the kernel here has no netem).
//! * [`probe`]: RFC 4787/5780-style classifier and the self-check.
//! * [`scenario`]: one call trial and the NAT-type matrix.
//! * [`capture`]: labelled scenario captures (issue 17): pcaps, key log,
//!   `labels.json` from ground truth; [`background`]: non-Natter traffic.
//! * [`detect`]: the published detectors (chi-square after Bonfiglio et
//!   al. 2007, active probing) evaluated on those captures.
//! * [`ice`]: a standard ICE agent (`webrtc-ice`; the hidden `ice-agent`
//!   subcommand) and [`baseline`]: it in the lab, cell by cell next to
//!   Natter (`matrix --baseline ice`, issue 20).
//! * [`amplification`]: bytes out / bytes in per unauthenticated service of
//!   the real servers on loopback (needs no root; `amplification` subcommand).
//!
//! Needs root, `ip`, `nft` and `sysctl` (plus `tcpdump` and `espeak-ng` for
//! the matrix); without them every entry point fails saying what is missing.
//!
//! ## Expected path per cell (caller A x callee B)
//!
//! | A \ B              | open         | full-cone    | addr-restr.  | port-restr.  | symmetric    | udp-blocked |
//! |--------------------|--------------|--------------|--------------|--------------|--------------|-------------|
//! | open               | direct       | hole-punched | hole-punched | hole-punched | hole-punched | tcp-relay   |
//! | full-cone          | hole-punched | hole-punched | hole-punched | hole-punched | hole-punched | tcp-relay   |
//! | address-restricted | hole-punched | hole-punched | hole-punched | hole-punched | hole-punched | tcp-relay   |
//! | port-restricted    | hole-punched | hole-punched | hole-punched | hole-punched | relayed      | tcp-relay   |
//! | symmetric          | hole-punched | hole-punched | hole-punched | relayed      | relayed      | tcp-relay   |
//! | udp-blocked        | tcp-relay    | tcp-relay    | tcp-relay    | tcp-relay    | tcp-relay    | tcp-relay   |
//!
//! Reasoning (see [`scenario::expected_path`]):
//! * **direct** only for open x open: neither side filters, the first packet
//!   to the peer's (only) address arrives, nothing to punch.
//! * **hole-punched** when the two sides can open a UDP path by sending to
//!   each other at the same time. With one side open, the NATed side's own
//!   outbound packet to the open host's fixed address opens its filter for
//!   exactly that address, so every UDP-capable NAT works with open, but the
//!   NATed side has to send first (its filter drops the open side's early
//!   packets), which is a punch, not a plain direct connection. Among the NAT
//!   types, NAT-LAB's observed table applies: everything among full-cone,
//!   address-restricted, port-restricted and symmetric works except
//!   port x sym, sym x port and sym x sym. (sym x full/addr work only when
//!   the cone side answers the address it actually heard the peer from:
//!   peer-reflexive candidates, as ICE does.)
//! * **relayed** (UDP via a supernode) for port-restricted x symmetric and
//!   symmetric x symmetric: a port-restricted filter only opens for the
//!   exact ip:port it sent to, and a symmetric NAT uses a new, unpredictable
//!   port (fully-random) for the new destination. Port prediction beats
//!   that only against a NAT whose ports are predictable: the lab's
//!   `symmetric` NAT is fully random, so we expect the relay.
//! * **port prediction** (outside the 6x6 matrix: `--cells
//!   port-restricted:symmetric-seq`): the `symmetric-seq` NAT gives each new
//!   UDP mapping the next port; its client sees two STUN mappings one step
//!   apart and sends the next ports as predicted candidates, the
//!   port-restricted side probes them, and the call is hole-punched. Against
//!   `symmetric` or another `symmetric-seq` it stays relayed: each side's
//!   mapping for the other depends on a port the other has not picked yet.
//! * **tcp-relay** whenever either side is udp-blocked: no UDP leaves it at
//!   all, so only a TCP (port 443/80) connection to a supernode carries
//!   media. The other side reaches the relay over UDP and reports `relayed`
//!   itself; the cell counts the call as `tcp-relay` (next section).
//!
//! ## The path of a call (what a cell's "final path" is)
//!
//! Each client's call report (`--stats-json`) names its own path (`path_end`,
//! `path_start`, `switches`); the two sides of a relayed call can differ
//! (a udp-blocked side says `tcp-relay`, its peer `relayed`). A trial's path
//! is the **less direct of the two sides' paths**, in the order
//!
//! `direct` < `hole-punched` < `relayed` < `tcp-relay`
//!
//! (anything else, e.g. `none`, ranks after `tcp-relay`, so it shows up as
//! unexpected; a side without a report does not count). See
//! [`scenario::call_path`]. When both sides agree, as they do in every UDP
//! cell, this is the path both report, so those cells read as before (the
//! lab used to take the caller's path). Both sides' own paths are kept in
//! each trial's results (`a`, `b`) and listed per cell ("A / B paths").
//!
//! A run that changes router A mid-call expects less: a broken direct path
//! leaves at best `relayed`, blocked UDP leaves `tcp-relay`
//! ([`scenario::MatrixOptions::expected_path`]).
//!
//! ## Addresses
//! Servers on 198.51.100.0/24 (probe reflector s1 = .10 + .11, s2 = .20,
//! login .5, supernodes .30 + .31 and .40 + .41), router wan sides
//! 203.0.113.N, LANs 10.N.0.0/24 with the host at 10.N.0.2; an open client's
//! host is 192.0.2.N (TEST-NET-1), routed by its router. The login server and
//! the supernodes listen on port 443 twice: QUIC on UDP 443 and TLS over TCP
//! on TCP 443 (`--tcp-listen`, same address), the port a udp-blocked firewall
//! lets through; a supernode's UDP service (reflector, relay) is on UDP 444.

pub mod amplification;
pub mod background;
pub mod baseline;
pub mod capture;
pub mod conference;
pub mod detect;
pub mod docker;
pub mod error;
pub mod exec;
pub mod ice;
pub mod impair;
pub mod lab;
pub mod labels;
pub mod nat;
pub mod probe;
pub mod scenario;
pub mod wire;

pub use error::{LabError, Result};

/// The protocol version this component speaks.
pub fn protocol_version() -> u32 {
    natter_proto::PROTOCOL_VERSION
}
