//! Gathering a call's transport candidates and allocating its relay (the
//! call session, [`natter_proto::session`], keeps the relay legs bound).
//!
//! * **host**: the media socket's own address;
//! * **server-reflexive**: that socket's public address, asked of the
//!   supernode's STUN reflector from the same socket;
//! * **predicted**: when the NAT maps that socket per destination but
//!   with ports one small step apart (a second binding, to the reflector's
//!   other port, shows it), the next [`MAX_PREDICTED`] ports of that step
//!   ([`predict`]): the ports the NAT will likely give the first packets to
//!   the peer, so a peer behind a port-restricted NAT can open its NAT to
//!   them (port prediction, as Skype did against sequential symmetric NATs);
//! * **relay**: an allocation on the supernode's relay for this call (the
//!   caller's once its invite is routed, the callee's once its ringing is). This side gets only its own side's token (and, from
//!   the peer's supernode, a pushed `RelayAllocated` for its side of the
//!   peer's allocation); the peer's token never passes through this side, so
//!   no relay candidate goes to the peer: each side binds its own side of
//!   every allocation it is told of, over UDP and, when the supernode also
//!   listens on TCP, over TLS (the way in for a UDP-blocked side,
//!   [`crate::tcp_relay`]).

use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::messages::{
    Candidate, CandidateKind, RelayAllocate, RelayAllocated, TransportKind, envelope,
};
pub use natter_proto::relay::RelayLeg;
use natter_proto::relay::TOKEN_LEN;
use tokio::net::UdpSocket;

use crate::netcheck::Ask;
use crate::supernode::SupernodeSession;

/// Time allowed to the reflector for one STUN answer.
const STUN_WAIT: Duration = Duration::from_millis(250);

/// The local IP this host uses to reach `peer` (no packet is sent).
pub fn local_ip_towards(peer: SocketAddr) -> std::net::IpAddr {
    std::net::UdpSocket::bind(if peer.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .and_then(|s| s.connect(peer).and_then(|()| s.local_addr()))
    .map_or(std::net::IpAddr::from([127, 0, 0, 1]), |a| a.ip())
}

/// A UDP candidate message.
pub fn candidate(kind: CandidateKind, addr: SocketAddr, priority: u32, token: &[u8]) -> Candidate {
    Candidate {
        kind: kind as i32,
        transport: TransportKind::Udp as i32,
        addr: Some(addr.into()),
        priority,
        relay_token: token.to_vec(),
    }
}

/// Predicted candidates taken per call (bounded, as Skype's sweep of a port range was).
pub const MAX_PREDICTED: u16 = 8;

/// Ports a symmetric NAT will likely pick next, from two mappings of one
/// socket made one after the other: when the second port follows the first
/// by a small regular step, the next `MAX_PREDICTED` steps; otherwise none
/// (a randomising NAT cannot be predicted: the relay serves it).
pub fn predict(first: SocketAddr, second: SocketAddr) -> Vec<SocketAddr> {
    let step = i32::from(second.port()) - i32::from(first.port());
    if first.ip() != second.ip() || !(1..=4).contains(&step) {
        return Vec::new();
    }
    (1..=i32::from(MAX_PREDICTED))
        .filter_map(|k| u16::try_from(i32::from(second.port()) + k * step).ok())
        .map(|port| SocketAddr::new(second.ip(), port))
        .collect()
}

/// The addresses of the predicted candidates among `local` (for the call
/// report: where the peer may find this side).
pub fn predicted(local: &[Candidate]) -> Vec<SocketAddr> {
    local
        .iter()
        .filter(|c| c.kind == CandidateKind::Predicted as i32)
        .filter_map(|c| SocketAddr::try_from(c.addr.as_ref()?).ok())
        .collect()
}

/// The public address of `socket` as `reflector` sees it (STUN binding),
/// or `None` when the reflector does not answer.
pub async fn server_reflexive(socket: &UdpSocket, reflector: SocketAddr) -> Option<SocketAddr> {
    binding(socket, reflector, Ask::Mapped)
        .await
        .map(|(mapped, _)| mapped)
}

/// A STUN binding: the mapped address and, when asked for with
/// `Ask::Rfc5780` (a padded request), the server's OTHER-ADDRESS.
async fn binding(
    socket: &UdpSocket,
    reflector: SocketAddr,
    ask: Ask,
) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let (msg, from) = crate::netcheck::binding(socket, reflector, ask, STUN_WAIT).await?;
    // Only the reflector itself answers a plain binding request.
    if from != reflector {
        return None;
    }
    msg.mapped.map(|m| (m, msg.other_address))
}

/// Whether gathering found this side behind a NAT (a server-reflexive
/// candidate differs from the host one).
pub fn behind_nat(local: &[Candidate]) -> bool {
    local
        .iter()
        .any(|c| c.kind == CandidateKind::ServerReflexive as i32)
}

/// Host and server-reflexive candidates of the media socket.
pub async fn local_candidates(session: &SupernodeSession, socket: &UdpSocket) -> Vec<Candidate> {
    let mut out = Vec::new();
    let Ok(local) = socket.local_addr() else {
        return out;
    };
    out.push(candidate(CandidateKind::Host, local, 100, &[]));
    let Some(reflector) = session.reflector() else {
        return out;
    };
    let Some((mapped, other)) = binding(socket, reflector, Ask::Rfc5780).await else {
        return out;
    };
    if mapped == local {
        return out;
    }
    out.push(candidate(CandidateKind::ServerReflexive, mapped, 90, &[]));
    // A second mapping, towards the reflector's other port, shows whether
    // the NAT maps per destination and, if so, whether predictably.
    if let Some(other) = other
        && let Some((second, _)) = binding(socket, other, Ask::Mapped).await
        && second != mapped
    {
        for addr in predict(mapped, second) {
            out.push(candidate(CandidateKind::Predicted, addr, 50, &[]));
        }
    }
    out
}

/// This side's side of a relay allocation: its UDP leg and, when the
/// supernode listens on TCP, where to bind the same side over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnRelay {
    pub udp: RelayLeg,
    pub tcp: Option<RelayLeg>,
}

impl OwnRelay {
    /// The legs of a `RelayAllocated` (the answer to this side's request,
    /// or one the peer's supernode pushed); `None` if it is unusable.
    pub fn of(r: &RelayAllocated) -> Option<Self> {
        let addr = SocketAddr::try_from(r.relay.as_ref()?).ok()?;
        let token: [u8; TOKEN_LEN] = r.token.as_slice().try_into().ok()?;
        let tcp = r
            .tcp
            .as_ref()
            .and_then(|a| SocketAddr::try_from(a).ok())
            .map(|tcp| RelayLeg { addr: tcp, token });
        Some(Self {
            udp: RelayLeg { addr, token },
            tcp,
        })
    }
}

/// Allocates a relay for the call on the current supernode:
/// this side's legs. The supernode hands the other side to the peer itself.
/// `None` when the supernode has no relay or refuses.
pub async fn allocate_relay(session: &SupernodeSession, invite_id: &[u8]) -> Option<OwnRelay> {
    let reply = session
        .request(
            envelope::Body::RelayAllocate(RelayAllocate {
                invite_id: invite_id.to_vec(),
            }),
            Duration::from_secs(3),
        )
        .await
        .ok()?;
    let envelope::Body::RelayAllocated(r) = reply else {
        return None;
    };
    OwnRelay::of(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([203, 0, 113, 7], port))
    }

    #[test]
    fn sequential_allocation_is_predicted_and_random_is_not() {
        assert_eq!(
            predict(a(40_000), a(40_001)),
            (40_002..=40_009).map(a).collect::<Vec<_>>()
        );
        assert_eq!(predict(a(40_000), a(40_002))[0], a(40_004));
        assert!(
            predict(a(40_000), a(51_234)).is_empty(),
            "random: nothing to predict"
        );
        assert!(predict(a(40_001), a(40_000)).is_empty());
        assert!(
            predict(a(65_530), a(65_534)).len() < usize::from(MAX_PREDICTED),
            "no wrap past 65535"
        );
        // another public address (a NAT with an address pool): no guess
        let other_ip = SocketAddr::from(([203, 0, 113, 8], 40_001));
        assert!(predict(a(40_000), other_ip).is_empty());
        // a step of 4 is still sequential, 5 no longer
        assert_eq!(predict(a(40_000), a(40_004)).len(), 8);
        assert!(predict(a(40_000), a(40_005)).is_empty());
    }

    #[test]
    fn predicted_candidates_are_the_ones_sent_with_the_predicted_kind() {
        let mut local = vec![
            candidate(CandidateKind::Host, a(1), 100, &[]),
            candidate(CandidateKind::ServerReflexive, a(20_000), 90, &[]),
        ];
        for addr in predict(a(20_000), a(20_001)) {
            local.push(candidate(CandidateKind::Predicted, addr, 50, &[]));
        }
        assert_eq!(
            predicted(&local),
            (20_002..=20_009).map(a).collect::<Vec<_>>()
        );
        assert!(predicted(&local[..2]).is_empty());
    }
}
