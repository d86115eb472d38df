//! Clients' liveness from their beacons (`natter_proto::alive`, and
//! docs/PROTOCOL.md "Liveness beacons").
//!
//! A joined QUIC client gets a ticket in `JoinAccepted` and beacons it to the
//! UDP service every second; the UDP service echoes the beacons whose ticket
//! verifies (no state there) and notes their macs, which the shell hands to
//! [`Node::handle_beacons`] once a second. A session whose client said
//! `beacons` in its hello and from which neither a beacon nor a frame came
//! for [`alive::SILENT_AFTER_MS`] is ended as dead: the client crashed or
//! lost its network, and its presence goes offline in seconds rather than
//! at the QUIC idle timeout (45 s, which only holds NAT mappings now). A
//! client whose beacons do not get through sends `Ping` requests instead,
//! which count as frames. A client that did not say `beacons` (an older
//! one) is left to the QUIC idle timeout it negotiated.

use std::net::IpAddr;
use std::time::Duration;

use natter_proto::alive::{self, MAC_LEN, Ticket};

use super::Node;
use super::interface::{Now, SessionId};
use crate::close;

impl Node {
    /// The UDP service echoed beacons with these ticket macs since the last
    /// call: their sessions are alive.
    pub fn handle_beacons(&mut self, macs: &[[u8; MAC_LEN]], now: Now) {
        self.at(now);
        for mac in macs {
            let Some(id) = self.sessions.by_ticket.get(mac) else {
                continue;
            };
            if let Some(session) = self.sessions.all.get_mut(id) {
                session.heard = self.now.mono;
            }
        }
        self.settle();
    }

    /// The ticket for session `id`, joining from `ip`, if this node issues
    /// tickets; remembered for [`Self::handle_beacons`].
    pub(crate) fn issue_ticket(&mut self, id: SessionId, ip: IpAddr) -> Option<Ticket> {
        let secret = self.config.alive_secret?;
        let unix_secs = u64::try_from(self.now.unix_ms / 1000).unwrap_or(0);
        let expires = u32::try_from(unix_secs + alive::TICKET_SECS).unwrap_or(u32::MAX);
        let ticket = loop {
            let nonce = rand::Rng::r#gen(&mut self.rng);
            let ticket = alive::ticket(&secret, ip, expires, nonce);
            if !self.sessions.by_ticket.contains_key(&ticket.mac) {
                break ticket;
            }
        };
        let session = self.sessions.all.get_mut(&id)?;
        if let Some(old) = session.ticket.replace(ticket.mac) {
            self.sessions.by_ticket.remove(&old);
        }
        session.heard = self.now.mono;
        self.sessions.by_ticket.insert(ticket.mac, id);
        Some(ticket)
    }

    /// Ends the sessions of beaconing clients silent for
    /// [`alive::SILENT_AFTER_MS`] (called every tick).
    pub(crate) fn end_silent_sessions(&mut self) {
        let silent = Duration::from_millis(alive::SILENT_AFTER_MS);
        let now = self.now.mono;
        let mut dead: Vec<SessionId> = self
            .sessions
            .all
            .iter()
            .filter(|(_, s)| {
                s.beacons
                    && s.joined().is_some()
                    && now.saturating_duration_since(s.heard) >= silent
            })
            .map(|(id, _)| *id)
            .collect();
        dead.sort_unstable();
        for id in dead {
            tracing::info!(session = ?id, "client silent: session ended");
            self.stats.sessions_silent += 1;
            self.end_session(id, close::DEAD, "silent");
        }
    }
}
