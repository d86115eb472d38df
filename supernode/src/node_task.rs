//! The node task: the one owner of the node core. It takes [`Event`]s from
//! the connection tasks (a bounded queue), calls the core, and carries out
//! its output: frames into the connections' bounded queues (a full session
//! queue closes the slow client, a full link queue the link), closes,
//! dials, and relay commands on the UDP service's table. After each round
//! it publishes a [`Snapshot`] for [`crate::Handle`]'s queries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use natter_net::ControlConn;
use natter_proto::messages::Envelope;
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, watch};

use crate::core::{CoreStats, LinkId, Node, Output, RelayCommand, SessionId};
use crate::shell::{Event, Out, Shell, now};
use crate::{NodeId, close};

/// What [`crate::Handle`] reads without asking the node task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub live_members: Vec<NodeId>,
    pub session_count: usize,
    /// Sessions joined over TCP, now and since start.
    pub tcp_sessions: (usize, u64),
    /// What the core dropped or refused.
    pub core: CoreStats,
    /// Supernodes in the membership table (any state, this one included).
    pub known_members: usize,
}

impl Snapshot {
    pub fn of(node: &Node) -> Self {
        Self {
            live_members: node.live_members(),
            session_count: node.session_count(),
            tcp_sessions: node.tcp_sessions(),
            core: node.stats(),
            known_members: node.known_members(),
        }
    }
}

/// Events handled in one round before the output is carried out.
const BATCH: usize = 64;

struct Conns {
    sessions: HashMap<SessionId, (mpsc::Sender<Out>, ControlConn)>,
    links: HashMap<LinkId, (mpsc::Sender<Envelope>, Connection)>,
}

/// Runs the node until the event queue closes (or the task is aborted).
pub(crate) async fn run(
    shell: Arc<Shell>,
    mut node: Node,
    mut events: mpsc::Receiver<Event>,
    snapshot: watch::Sender<Snapshot>,
) {
    let mut conns = Conns {
        sessions: HashMap::new(),
        links: HashMap::new(),
    };
    // Once a second, the beacons the UDP service echoed (core/beacons.rs).
    let mut beacons = tokio::time::interval(Duration::from_secs(1));
    beacons.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = node
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                handle(&mut node, &mut conns, event);
                for _ in 1..BATCH {
                    match events.try_recv() {
                        Ok(event) => handle(&mut node, &mut conns, event),
                        Err(_) => break,
                    }
                }
            }
            () = tokio::time::sleep_until(wake) => node.handle_timeout(now()),
            _ = beacons.tick() => {
                let heard = shell.udp.take_heard();
                if !heard.is_empty() {
                    node.handle_beacons(&heard, now());
                }
            }
        }
        // Published before the output leaves, so whoever sees a frame the
        // round produced (a JoinAccepted, say) also sees the state behind
        // it through `Handle`; and again after, for what carrying out the
        // output changed (a slow session closed).
        publish(&snapshot, &node);
        carry_out(&shell, &mut node, &mut conns);
        publish(&snapshot, &node);
    }
}

fn publish(snapshot: &watch::Sender<Snapshot>, node: &Node) {
    let fresh = Snapshot::of(node);
    snapshot.send_if_modified(|s| {
        if *s == fresh {
            false
        } else {
            *s = fresh;
            true
        }
    });
}

fn handle(node: &mut Node, conns: &mut Conns, event: Event) {
    let now = now();
    match event {
        Event::SessionOpen {
            id,
            carrier,
            conn,
            tx,
            hello,
        } => {
            let remote = conn.remote_address();
            // The join is bound to the connection's exporter both ways; a
            // connection without one (cannot happen after a handshake) is
            // not served.
            let Ok(exporter) = conn.exporter() else {
                conn.close(close::REFUSED, b"no TLS exporter");
                return;
            };
            conns.sessions.insert(id, (tx, conn));
            node.handle_session_open(id, remote, carrier, exporter, now);
            node.handle_session(id, hello, now);
        }
        Event::SessionFrame { id, envelope } => node.handle_session(id, envelope, now),
        Event::SessionClosed { id } => {
            conns.sessions.remove(&id);
            node.handle_session_closed(id, now);
        }
        Event::LinkUp {
            id,
            peer,
            certificate,
            conn,
            tx,
            first,
            origin,
        } => {
            let remote = conn.remote_address();
            conns.links.insert(id, (tx, conn));
            node.handle_link_up(id, remote, peer, certificate, &first, origin, now);
        }
        Event::LinkFrame { id, envelope } => node.handle_link(id, envelope, now),
        Event::LinkDown { id } => {
            conns.links.remove(&id);
            node.handle_link_down(id, now);
        }
        Event::DialFailed { addr } => node.handle_dial_failed(addr, now),
        Event::Revocations(list) => {
            if node.handle_revocations(&list, now) {
                tracing::debug!("revocation list taken");
            }
        }
        Event::Certified { key, certificate } => {
            if node.handle_certificate(*key, certificate, now) {
                tracing::info!("supernode certificate installed");
            }
        }
    }
}

fn carry_out(shell: &Arc<Shell>, node: &mut Node, conns: &mut Conns) {
    while let Some(output) = node.poll_output() {
        match output {
            Output::ToSession(id, envelope) => {
                let Some((tx, conn)) = conns.sessions.get(&id) else {
                    continue;
                };
                match tx.try_send(Out::Frame(Box::new(envelope))) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::info!("session push queue full, disconnecting slow client");
                        conn.close(close::SLOW, b"push queue full");
                        conns.sessions.remove(&id);
                        node.handle_session_closed(id, now());
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Output::CloseSession(id, code, reason) => {
                if let Some((tx, conn)) = conns.sessions.remove(&id)
                    && tx.try_send(Out::Close(code, reason)).is_err()
                {
                    conn.close(code, reason.as_bytes());
                }
            }
            Output::ToLink(id, envelope) => {
                let Some((tx, conn)) = conns.links.get(&id) else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(envelope) {
                    tracing::warn!("link queue full, closing link");
                    conn.close(VarInt::from_u32(close::DEAD), b"link queue full");
                }
            }
            Output::CloseLink(id, code, reason) => {
                if let Some((_, conn)) = conns.links.remove(&id) {
                    conn.close(VarInt::from_u32(code), reason.as_bytes());
                }
                node.handle_link_down(id, now());
            }
            Output::Dial { addr, hello } => {
                tokio::spawn(crate::quic::dial(Arc::clone(shell), addr, hello));
            }
            Output::Relay(command) => relay(shell, node, command),
        }
    }
}

/// Carries out a relay command on the UDP service's allocation table.
fn relay(shell: &Shell, node: &mut Node, command: RelayCommand) {
    let mono = std::time::Instant::now();
    match command {
        RelayCommand::NoteSignal {
            invite_id,
            from,
            to,
            kind,
        } => shell
            .udp
            .table()
            .note_signal(&invite_id, &from, &to, kind, mono),
        RelayCommand::Allocate {
            session,
            request_id,
            user,
            source,
            invite_id,
        } => {
            let result =
                shell
                    .udp
                    .table()
                    .allocate(&user, source, &invite_id, &mut rand::rngs::OsRng, mono);
            if let Ok(allocated) = &result {
                tracing::debug!(%user, peer = %allocated.peer, "relay allocated");
            }
            node.handle_relay_allocated(session, request_id, invite_id, result, now());
        }
    }
}
