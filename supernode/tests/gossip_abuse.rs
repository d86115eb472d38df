//! Gossip cannot aim a supernode (issue 14 item 1): a real supernode
//! (`Supernode::spawn`) on loopback QUIC, linked to an attacker that holds a
//! genuine SUPERNODE certificate of the test issuer and gossips about 2,000
//! fake ALIVE members at addresses where this test listens.
//!
//! - No fake member (no certificate, or a genuine certificate that names
//!   another address) is dialled: not one packet reaches any of the
//!   listening sockets, while a member whose certificate names its address
//!   is dialled (the test sees that dial, so it does not pass on silence).
//! - The supernode's member table stays small; an honest second supernode
//!   stays linked and a client joined there still finds one joined here.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, config, eventually, issuer, now_secs, user_key};
use natter_proto::binding::{self, LinkRole};
use natter_proto::cert;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, Envelope, GossipMembership, LinkHello, Member, MemberState, PresenceStatus,
};
use natter_supernode::Supernode;
use natter_supernode::membership::MAX_GOSSIP_ENTRIES;
use rsa::RsaPrivateKey;
use tokio::net::UdpSocket;

/// Fake members the attacker lists (in frames of `PER_FRAME`).
const FAKES: usize = 2000;
const PER_FRAME: usize = 500;
/// Listening sockets the fake members point at.
const TRAPS: usize = 64;

/// A SUPERNODE certificate of the test issuer for `key` naming `quic`.
fn supernode_certificate(key: &RsaPrivateKey, quic: SocketAddr) -> Certificate {
    issuer().issue(
        &mut rand::rngs::OsRng,
        &cert::Subject::Supernode {
            key: &key.to_public_key(),
            addrs: cert::SupernodeAddrs {
                quic,
                reflector: SocketAddr::new(quic.ip(), 1),
                tcp: None,
            },
        },
        11,
        now_secs() - 60,
        now_secs() + 3600,
    )
}

fn member(node_id: &[u8], addr: SocketAddr, certificate: Option<Certificate>) -> Member {
    Member {
        node_id: node_id.to_vec(),
        addr: Some(addr.into()),
        incarnation: 1,
        state: MemberState::Alive as i32,
        tcp: None,
        certificate,
    }
}

/// Fake member `i`: an id above every test key's (so the victim is the one
/// to dial it), at trap `i % TRAPS`.
fn fake(i: usize, traps: &[SocketAddr]) -> Member {
    let mut id = [0xff; 16];
    id[8..].copy_from_slice(&(i as u64).to_be_bytes());
    member(&id, traps[i % traps.len()], None)
}

/// Whatever reached `trap` so far (it is never answered).
fn received(trap: &UdpSocket) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while trap.try_recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_peer_cannot_make_a_supernode_dial_gossiped_addresses() {
    // The test keys in node-id order: the victim has the lowest id, so it
    // is the one to dial every member the attacker names.
    let mut keys: Vec<&RsaPrivateKey> = ["alice", "bob", "carol", "dave"]
        .into_iter()
        .map(user_key)
        .collect();
    keys.sort_by_key(|k| cert::key_id(&k.to_public_key()));
    let [victim_key, attacker_key, misnamed_key, genuine_key] = keys[..] else {
        unreachable!()
    };

    let mut c = config(Vec::new(), 3);
    c.node_key = Some(victim_key.clone());
    let victim = Supernode::spawn(c).unwrap();
    let honest = Supernode::spawn(config(vec![victim.local_addr()], 3)).unwrap();
    eventually("the honest overlay meshes", || {
        let ok = victim.live_members().len() == 2 && honest.live_members().len() == 2;
        async move { ok.then_some(()) }
    })
    .await;

    let mut traps = Vec::new();
    for _ in 0..TRAPS + 2 {
        traps.push(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    }
    let trap_addrs: Vec<SocketAddr> = traps.iter().map(|t| t.local_addr().unwrap()).collect();
    // Two more traps: one a member with a genuine certificate is listed at
    // although its certificate names the other; and the address of a
    // genuinely certified member, listed as certified (it is dialled).
    let (fake_traps, rest) = trap_addrs.split_at(TRAPS);
    let (aimed_at, genuine_at) = (rest[0], rest[1]);
    let misnamed_named = fake_traps[0];

    // The attacker: a genuine certificate for its own key and address.
    let (endpoint, conn, mut send, mut recv) = common::connect(victim.addr()).await.unwrap();
    let me = endpoint.local_addr().unwrap();
    let attacker_id = cert::key_id(&attacker_key.to_public_key());
    let exporter = natter_net::exporter::quic_exporter(&conn).unwrap();
    let hello = Body::LinkHello(LinkHello {
        certificate: Some(supernode_certificate(attacker_key, me)),
        signature: cert::sign(
            attacker_key,
            &binding::link_hello_message(LinkRole::Dialler, &exporter),
        ),
        role: LinkRole::Dialler as u32,
    });
    send.send(&Envelope::new(0, hello)).await.unwrap();
    match recv.next().await.unwrap().unwrap().body {
        Some(Body::LinkHello(_)) => {}
        other => panic!("expected the victim's LinkHello, got {other:?}"),
    }

    let myself = member(&attacker_id, me, None);
    let misnamed = member(
        &cert::key_id(&misnamed_key.to_public_key()),
        aimed_at,
        Some(supernode_certificate(misnamed_key, misnamed_named)),
    );
    let genuine = member(
        &cert::key_id(&genuine_key.to_public_key()),
        genuine_at,
        Some(supernode_certificate(genuine_key, genuine_at)),
    );
    let fakes: Vec<Member> = (0..FAKES).map(|i| fake(i, fake_traps)).collect();
    let mut frames: Vec<Envelope> = fakes
        .chunks(PER_FRAME)
        .map(|chunk| {
            let mut members = vec![myself.clone(), misnamed.clone()];
            members.extend_from_slice(chunk);
            Envelope::new(
                0,
                Body::GossipMembership(GossipMembership {
                    sender_id: attacker_id.to_vec(),
                    members,
                }),
            )
        })
        .collect();
    // The last frame also names the genuine member (among the entries
    // read): dials still happen.
    if let Some(Body::GossipMembership(g)) = frames.last_mut().and_then(|f| f.body.as_mut()) {
        g.members.insert(2, genuine.clone());
    }
    for frame in &frames {
        assert!(natter_proto::frame::to_frame(frame).is_ok(), "fits a frame");
    }

    // Gossip every 500 ms (the victim's failure timeout is 3 s) while
    // counting the victim's own gossip ticks on the link.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = ticks.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) = recv.next().await {
            if matches!(frame.body, Some(Body::GossipMembership(_))) {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let gossiping = tokio::spawn(async move {
        loop {
            for frame in &frames {
                if send.send(frame).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // The genuinely certified member is dialled (a QUIC Initial arrives)...
    let genuine_trap = &traps[TRAPS + 1];
    let mut buf = [0u8; 2048];
    tokio::time::timeout(Duration::from_secs(10), genuine_trap.recv_from(&mut buf))
        .await
        .expect("the certified member is dialled")
        .unwrap();
    // ...and three more of the victim's gossip ticks pass with the fakes
    // gossiped all along: every dial they could cause has been sent.
    let seen = ticks.load(std::sync::atomic::Ordering::SeqCst);
    eventually("three more gossip ticks", || {
        let now = ticks.load(std::sync::atomic::Ordering::SeqCst);
        async move { (now >= seen + 3).then_some(()) }
    })
    .await;
    let hit: Vec<usize> = traps[..=TRAPS]
        .iter()
        .enumerate()
        .filter(|(_, t)| received(t) > 0)
        .map(|(i, _)| i)
        .collect();
    assert!(
        hit.is_empty(),
        "the victim sent packets to gossiped addresses: traps {hit:?}"
    );

    // The table stayed small and the drops were counted.
    let known = victim.known_members();
    // The victim, the honest node, the attacker and the certified member.
    assert!(known <= 4, "{known} members");
    let stats = victim.core_stats();
    assert!(
        stats.gossip_refused >= 2 * MAX_GOSSIP_ENTRIES as u64,
        "{stats:?}"
    );
    assert!(stats.gossip_over_cap > 0, "{stats:?}");
    assert!(
        stats.gossip_certificates_verified < 20,
        "a certificate is verified once, not per entry and tick: {stats:?}"
    );

    // The honest overlay carries on: still linked, and a client joined at
    // the honest node finds one joined at the victim.
    assert!(victim.live_members().len() >= 2);
    let honest_id = honest.live_members();
    assert!(
        honest_id.contains(&cert::key_id(&victim_key.to_public_key())),
        "the honest node still has the victim live"
    );
    let _alice = TestClient::join(victim.addr(), "alice").await;
    let mut bob = TestClient::join(honest.addr(), "bob").await;
    bob.search_until("alice", |r| {
        r.found && r.status == PresenceStatus::Online as i32
    })
    .await;
    gossiping.abort();
    reader.abort();
    drop(conn);
}
