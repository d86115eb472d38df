//! The supernode's Prometheus page (`--metrics`, served by
//! [`natter_net::metrics`]): sessions and members, what the node core
//! dropped or refused, the STUN reflector and relay, the TLS-over-TCP
//! listener. Names are `natter_supernode_*`; counters count since start.

use std::sync::Arc;

use natter_net::metrics::Exposition;
use tokio::sync::watch;

use crate::core::CoreStats;
use crate::node_task::Snapshot;
use crate::shell::Shell;
use crate::tcp_stats::TcpStats;
use crate::udp::UdpStats;

/// Everything the page shows, read at one scrape.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub sessions: u64,
    pub live_members: u64,
    pub known_members: u64,
    pub links_refused: u64,
    /// Events waiting for the node task (from every connection task), and
    /// how many the queue holds.
    pub event_queue: (u64, u64),
    pub core: CoreStats,
    pub udp: UdpStats,
    pub tcp: TcpStats,
}

pub(crate) fn figures(shell: &Arc<Shell>, snapshot: &watch::Receiver<Snapshot>) -> Figures {
    let (sessions, live_members, known_members, core) = {
        let s = snapshot.borrow();
        (
            s.session_count,
            s.live_members.len(),
            s.known_members,
            s.core,
        )
    };
    Figures {
        sessions: sessions as u64,
        live_members: live_members as u64,
        known_members: known_members as u64,
        links_refused: shell
            .links_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        event_queue: (
            (shell.events.max_capacity() - shell.events.capacity()) as u64,
            shell.events.max_capacity() as u64,
        ),
        core,
        udp: shell.udp.stats(),
        tcp: crate::tcp::stats(shell, snapshot),
    }
}

/// One counter per listed field: `(field, name after the prefix, help)`.
macro_rules! counters {
    ($page:expr, $stats:expr, $prefix:literal, $(($field:ident, $name:literal, $help:literal)),* $(,)?) => {
        $( $page.counter(concat!($prefix, $name), $help, $stats.$field); )*
    };
}

pub(crate) fn render(f: &Figures) -> String {
    let mut page = Exposition::new();
    page.gauge(
        "natter_supernode_sessions",
        "Users joined here now.",
        f.sessions,
    );
    page.gauge(
        "natter_supernode_event_queue_depth",
        "Events from connection tasks waiting for the node task.",
        f.event_queue.0,
    );
    page.gauge(
        "natter_supernode_event_queue_capacity",
        "Events the node task's queue holds; a connection task waits when it is full.",
        f.event_queue.1,
    );
    page.gauge(
        "natter_supernode_live_members",
        "Live supernodes in this node's view, itself included.",
        f.live_members,
    );
    page.gauge(
        "natter_supernode_known_members",
        "Supernodes in the membership table, any state.",
        f.known_members,
    );
    page.counter(
        "natter_supernode_links_refused",
        "Link attempts without a valid LinkHello.",
        f.links_refused,
    );
    let c = &f.core;
    counters!(
        page,
        c,
        "natter_supernode_",
        (
            link_ignored,
            "link_frames_ignored",
            "Link frames not for a link, or replies nobody waited for."
        ),
        (
            requests_timed_out,
            "link_requests_timed_out",
            "Requests over links with no reply in time."
        ),
        (
            backlog_full,
            "sessions_closed_backlog_full",
            "Sessions closed for a full request backlog."
        ),
        (
            oversize_refused,
            "envelopes_oversize_refused",
            "Envelopes refused for not fitting a frame."
        ),
        (
            mailbox_full,
            "chat_mailbox_full",
            "Chat refused over a byte cap."
        ),
        (
            handoffs_failed,
            "handoffs_failed",
            "Hand-over pages no replica acknowledged."
        ),
        (
            handoffs_partial,
            "handoffs_partial",
            "Hand-over pages some new replicas acknowledged."
        ),
        (
            chat_malformed,
            "chat_malformed",
            "Chat refused as not sealed or not well formed."
        ),
        (
            records_refused,
            "records_refused",
            "Directory records from peers that did not verify."
        ),
        (
            records_from_future,
            "records_from_future",
            "Refused records dated in the future."
        ),
        (
            records_stale,
            "records_stale",
            "Verified records not newer than the one held."
        ),
        (
            links_refused,
            "links_refused_by_core",
            "Links refused by the core (revoked, or gossip in another's name)."
        ),
        (
            sessions_revoked,
            "sessions_revoked",
            "Sessions ended or joins refused for a revoked user."
        ),
        (
            sessions_expired,
            "sessions_expired",
            "Sessions ended for an expired certificate."
        ),
        (
            gossip_refused,
            "gossip_refused",
            "Gossip entries dropped for their certificate."
        ),
        (
            gossip_over_cap,
            "gossip_over_cap",
            "Gossip entries dropped for a cap."
        ),
        (
            gossip_certificates_verified,
            "gossip_certificates_verified",
            "Member certificates verified for gossip."
        ),
        (
            gossip_verify_deferred,
            "gossip_verify_deferred",
            "Gossip entries deferred by the verification budget."
        ),
        (
            dials_deferred,
            "dials_deferred",
            "Dials of learned members put off by the dial budget."
        ),
        (
            chat_unacked,
            "chat_unacked",
            "Chat pushes a session did not acknowledge in time."
        ),
        (
            sessions_silent,
            "sessions_silent",
            "Sessions ended: their client sent neither a beacon nor a frame for 5 s."
        ),
    );
    let u = &f.udp;
    page.gauge(
        "natter_supernode_relay_allocations",
        "Live relay allocations.",
        u.allocations,
    );
    counters!(
        page,
        u,
        "natter_supernode_",
        (
            stun_answered,
            "stun_answered",
            "STUN Binding requests answered."
        ),
        (
            stun_limited,
            "stun_limited",
            "STUN requests not answered: the source prefix's budget was spent."
        ),
        (
            stun_too_small,
            "stun_too_small",
            "STUN requests too short for an answer within 1.6 times their size."
        ),
        (
            malformed,
            "udp_malformed",
            "UDP datagrams dropped as not what the socket serves."
        ),
        (binds, "relay_binds", "Relay binds answered Bound."),
        (
            binds_refused,
            "relay_binds_refused",
            "Relay binds refused (unknown token, over quota)."
        ),
        (
            binds_cookie,
            "relay_binds_cookie",
            "UDP relay binds answered with a cookie, nothing bound."
        ),
        (
            allocations_refused,
            "relay_allocations_refused",
            "Relay allocations refused."
        ),
        (forwarded, "relay_forwarded_packets", "Datagrams relayed."),
        (forwarded_bytes, "relay_forwarded_bytes", "Bytes relayed."),
        (
            dropped_unbound,
            "relay_dropped_unbound",
            "Relay datagrams dropped: source or peer not bound."
        ),
        (
            dropped_quota,
            "relay_dropped_quota",
            "Relay datagrams dropped by an allocation's rate limit."
        ),
        (beacons, "beacons_echoed", "Liveness beacons echoed."),
        (
            beacons_refused,
            "beacons_refused",
            "Beacon-shaped datagrams whose ticket did not verify: dropped."
        ),
    );
    let t = &f.tcp;
    page.gauge(
        "natter_supernode_tcp_sessions",
        "Client sessions joined over TCP now.",
        t.sessions,
    );
    page.gauge(
        "natter_supernode_tcp_relay_legs",
        "TCP relay legs open now.",
        t.relay_legs,
    );
    counters!(
        page,
        t,
        "natter_supernode_tcp_",
        (
            accepted,
            "accepted",
            "TLS-over-TCP connections whose handshake completed."
        ),
        (
            handshake_failed,
            "handshake_failed",
            "TLS-over-TCP handshakes that failed or timed out."
        ),
        (
            over_limit,
            "over_limit",
            "Connections dropped at the connection limit."
        ),
        (
            over_ip_limit,
            "over_ip_limit",
            "Connections dropped at the per-address limit."
        ),
        (
            refused,
            "refused",
            "Connections refused after the handshake."
        ),
        (
            malformed,
            "malformed",
            "Connections closed for a malformed record."
        ),
        (
            sessions_total,
            "sessions_joined",
            "Client sessions joined over TCP."
        ),
        (
            relay_legs_total,
            "relay_legs_opened",
            "TCP relay legs opened."
        ),
        (
            relay_legs_unbound,
            "relay_legs_unbound",
            "Relay legs closed unbound."
        ),
        (
            dropped_queue_full,
            "dropped_queue_full",
            "Datagrams dropped for a full relay leg queue."
        ),
        (
            dropped_too_long,
            "dropped_too_long",
            "Datagrams too long for a relay leg."
        ),
        (
            dropped_stun,
            "dropped_stun",
            "STUN datagrams on a relay leg."
        ),
    );
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_figure_is_on_the_page_once_under_its_name() {
        let mut f = Figures {
            sessions: 3,
            ..Figures::default()
        };
        f.udp.forwarded = 41;
        f.udp.allocations = 2;
        f.core.chat_unacked = 5;
        f.tcp.sessions_total = 9;
        let page = render(&f);
        for line in [
            "natter_supernode_sessions 3",
            "natter_supernode_relay_forwarded_packets_total 41",
            "natter_supernode_relay_allocations 2",
            "natter_supernode_chat_unacked_total 5",
            "natter_supernode_tcp_sessions_joined_total 9",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }
        let names: Vec<&str> = page
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        let unique: std::collections::BTreeSet<&&str> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "a metric name twice");
        assert!(names.iter().all(|n| !n.ends_with("_total_total")));
    }
}
