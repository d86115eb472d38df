//! The overlay admits certified supernodes only (issue 13 item 1): real
//! supernodes (`Supernode::spawn`) on loopback QUIC, attackers speaking the
//! wire protocol.
//!
//! - A peer without a supernode certificate, with a user certificate, with
//!   a certificate of another issuer, or replaying a genuine `LinkHello`
//!   captured on another connection is closed with REFUSED before anything
//!   it sends (gossip, directory stores and lookups, call signals, chat)
//!   takes effect; a victim's session, record, chat and calls carry on.
//! - A rogue relaying an honest supernode's join challenge is refused by
//!   the client (signature bound to another connection) and, if a careless
//!   client answers, by the honest supernode (proof bound to another
//!   connection). A supernode certified by another issuer is refused.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, WAIT, cluster, config, identity, issuer, now_secs, user_key};
use natter_net::{FramedRecv, FramedSend, TlsIdentity, TransportSettings};
use natter_proto::binding::{self, LinkRole};
use natter_proto::cert::{self, Issuer};
use natter_proto::messages::call_signal::Kind;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallInvite, CallSignal, ChatMessage, DirectoryLookup, DirectoryStore, Envelope, ErrorCode,
    GossipMembership, JoinProof, LinkHello, Member, MemberState, PresenceStatus, UserRecord,
};
use natter_supernode::{Certification, Supernode, close};

const EVIL_INVITE: [u8; 16] = [0xee; 16];

fn chat(id: u8, to: &str, text: &str) -> ChatMessage {
    ChatMessage {
        message_id: vec![id; 16],
        from: String::new(),
        to: to.into(),
        sealed: common::sealed(text.as_bytes()),
        sent_at: now_secs() * 1000,
        ..Default::default()
    }
}

/// Everything an overlay member may send, forged against `victim`.
fn attack_frames(victim: &str, me: SocketAddr) -> Vec<Body> {
    let fake_id = vec![0x01; 16];
    vec![
        Body::GossipMembership(GossipMembership {
            sender_id: fake_id.clone(),
            members: vec![Member {
                node_id: fake_id.clone(),
                addr: Some(me.into()),
                incarnation: 1,
                state: MemberState::Alive as i32,
                ..Default::default()
            }],
        }),
        Body::DirectoryStore(DirectoryStore {
            records: vec![UserRecord {
                name: victim.into(),
                status: PresenceStatus::Offline as i32,
                last_seen: (now_secs() + 3600) * 1000,
                home_node_id: fake_id,
                home_addr: Some(me.into()),
                ..Default::default()
            }],
            pending_chat: vec![ChatMessage {
                from: "mallory".into(),
                ..chat(0xe1, victim, "evil stored")
            }],
        }),
        Body::DirectoryLookup(DirectoryLookup {
            name: victim.into(),
            take_pending_chat: true,
            ..Default::default()
        }),
        Body::DirectoryLookup(DirectoryLookup {
            name: victim.into(),
            page_chat: true,
            ..Default::default()
        }),
        Body::CallSignal(CallSignal {
            invite_id: EVIL_INVITE.to_vec(),
            from: "mallory".into(),
            to: victim.into(),
            kind: Some(Kind::Invite(CallInvite::default())),
            ..Default::default()
        }),
        Body::ChatMessage(ChatMessage {
            from: "mallory".into(),
            ..chat(0xe2, victim, "evil routed")
        }),
    ]
}

/// A raw QUIC peer of `target`: sends `hello` (if any, made from the
/// connection's exporter) then every attack frame; returns the close code
/// and how many frames the supernode sent back (none expected).
async fn attack(
    target: SocketAddr,
    hello: impl FnOnce(&binding::Exporter) -> Option<Body>,
) -> (Option<u64>, usize) {
    let (_endpoint, conn, mut send, mut recv) = common::connect(target).await.unwrap();
    let exporter = natter_net::exporter::quic_exporter(&conn).unwrap();
    let me = conn.local_ip().map_or(target, |ip| SocketAddr::new(ip, 1));
    let mut frames = Vec::new();
    if let Some(hello) = hello(&exporter) {
        frames.push(hello);
    }
    frames.extend(attack_frames("alice", me));
    for (i, body) in frames.into_iter().enumerate() {
        // The supernode may close the connection at any point: later sends fail.
        let _ = send.send(&Envelope::new(i as u64 + 1, body)).await;
    }
    let mut answered = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout(WAIT, recv.next()).await {
        answered += 1;
    }
    let code = match tokio::time::timeout(WAIT, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        _ => None,
    };
    (code, answered)
}

/// A `LinkHello` in the dialler's role with `certificate`, signed by `key`.
fn link_hello(
    certificate: natter_proto::messages::Certificate,
    key: &rsa::RsaPrivateKey,
    exporter: &binding::Exporter,
) -> Body {
    Body::LinkHello(LinkHello {
        certificate: Some(certificate),
        signature: cert::sign(
            key,
            &binding::link_hello_message(LinkRole::Dialler, exporter),
        ),
        role: LinkRole::Dialler as u32,
    })
}

/// Captures the `LinkHello` a real supernode sends when it dials us.
async fn capture_link_hello() -> (LinkHello, natter_supernode::Handle) {
    let identity = TlsIdentity::generate("natter-supernode").unwrap();
    let trap = natter_net::server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &TransportSettings::OVERLAY,
    )
    .unwrap();
    let dialler = Supernode::spawn(config(vec![trap.local_addr().unwrap()], 3)).unwrap();
    let hello = tokio::time::timeout(Duration::from_secs(10), async {
        let conn = trap.accept().await.unwrap().await.unwrap();
        let (_send, recv) = conn.accept_bi().await.unwrap();
        let first = FramedRecv::new(recv).next().await.unwrap().unwrap();
        match first.body {
            Some(Body::LinkHello(hello)) => hello,
            other => panic!("expected a LinkHello, got {other:?}"),
        }
    })
    .await
    .expect("the supernode dials");
    (hello, dialler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncertified_peers_cannot_join_the_overlay() {
    let nodes = cluster(2, |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut alice = TestClient::join(a.addr(), "alice").await;
    let mut bob = TestClient::join(b.addr(), "bob").await;
    // The host cache a supernode hands out carries each node's certificate
    // (its own, and what its peer proved on the link): clients keep both.
    let mut listed = natter_client::overlay::certified_nodes(
        &bob.accepted.supernodes,
        &issuer().public_key(),
        now_secs(),
    );
    listed.sort();
    let mut expected = vec![(a.addr(), None), (b.addr(), None)];
    expected.sort();
    assert_eq!(listed, expected);
    bob.search_until("alice", |r| {
        r.found && r.status == PresenceStatus::Online as i32
    })
    .await;

    let carol = identity("carol");
    let foreign = Issuer::new(user_key("dave").clone());
    let foreign_cert = foreign.issue(
        &mut rand::rngs::OsRng,
        &cert::Subject::Supernode {
            key: &carol.key.to_public_key(),
            addrs: cert::SupernodeAddrs {
                quic: "127.0.0.1:1".parse().unwrap(),
                reflector: "127.0.0.1:2".parse().unwrap(),
                tcp: None,
            },
        },
        7,
        now_secs() - 60,
        now_secs() + 3600,
    );
    let (captured, _dialler) = capture_link_hello().await;
    let refused_before = a.links_refused();

    // 1. No LinkHello: gossip first, as a version-1 peer would.
    let (code, answered) = attack(a.addr(), |_| None).await;
    assert_eq!((code, answered), (Some(u64::from(close::REFUSED)), 0));
    // 2. A user certificate, properly signed for this connection.
    let (code, answered) = attack(a.addr(), |e| {
        Some(link_hello(carol.certificate.clone(), &carol.key, e))
    })
    .await;
    assert_eq!((code, answered), (Some(u64::from(close::REFUSED)), 0));
    // 3. A supernode certificate of another issuer, properly signed.
    let (code, answered) = attack(a.addr(), |e| {
        Some(link_hello(foreign_cert.clone(), &carol.key, e))
    })
    .await;
    assert_eq!((code, answered), (Some(u64::from(close::REFUSED)), 0));
    // 4. A genuine LinkHello of a certified supernode, replayed from the
    //    connection it was made for.
    let (code, answered) = attack(a.addr(), |_| Some(Body::LinkHello(captured.clone()))).await;
    assert_eq!((code, answered), (Some(u64::from(close::REFUSED)), 0));
    assert_eq!(a.links_refused() - refused_before, 4);

    // Nothing took effect: no forged chat or call reached alice, the
    // overlay is still the two certified nodes, alice's record is hers,
    // and bob still reaches her.
    alice
        .expect_no_push(Duration::from_millis(500), |b| match b {
            Body::ChatMessage(m) => common::unsealed(m).starts_with("evil"),
            Body::CallSignal(s) => s.invite_id == EVIL_INVITE,
            _ => false,
        })
        .await;
    assert_eq!(a.live_members().len(), 2);
    let reply = bob.search("alice").await;
    assert!(reply.found);
    assert_eq!(reply.status, PresenceStatus::Online as i32);
    assert_eq!(
        reply
            .supernode
            .as_ref()
            .map(|s| SocketAddr::try_from(s).unwrap()),
        Some(a.addr()),
        "alice's record points at her real supernode"
    );
    bob.ack(Body::ChatMessage(chat(9, "alice", "hello alice")))
        .await;
    let got = alice
        .expect_push("bob's chat", |b| match b {
            Body::ChatMessage(m) if common::unsealed(m) == "hello alice" => Some(m.from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(got, "bob");
    bob.send(Body::CallSignal(CallSignal {
        invite_id: vec![0x42; 16],
        from: String::new(),
        to: "alice".into(),
        kind: Some(Kind::Invite(CallInvite::default())),
        ..Default::default()
    }))
    .await;
    let invite = alice
        .expect_push("bob's call", |b| match b {
            Body::CallSignal(s) if s.invite_id == vec![0x42; 16] => Some(s.from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(invite, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_supernode_cannot_relay_a_join() {
    let nodes = cluster(1, |_| {}).await;
    let honest = &nodes[0];
    // The rogue: a QUIC server the victim dials, relaying to the honest node.
    let rogue = natter_net::server_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &TlsIdentity::generate("natter-supernode").unwrap(),
        &TransportSettings::OVERLAY,
    )
    .unwrap();
    let rogue_addr = rogue.local_addr().unwrap();
    let alice = identity("alice");
    let accepting = tokio::spawn(async move {
        let conn = rogue.accept().await.unwrap().await.unwrap();
        (rogue, conn)
    });

    let (_ep, victim_conn, mut victim_send, mut victim_recv) =
        common::connect(rogue_addr).await.unwrap();
    let victim_exporter = natter_net::exporter::quic_exporter(&victim_conn).unwrap();
    victim_send
        .send(&Envelope::new(
            1,
            Body::JoinHello(natter_proto::messages::JoinHello {
                certificate: Some(alice.certificate.clone()),
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    // The rogue takes the victim's stream and opens its own to the honest node.
    let (_rogue, inbound) = accepting.await.unwrap();
    let (in_send, in_recv) = inbound.accept_bi().await.unwrap();
    let (mut in_send, mut in_recv) = (FramedSend::new(in_send), FramedRecv::new(in_recv));
    let (_ep2, _out_conn, mut out_send, mut out_recv) =
        common::connect(honest.addr()).await.unwrap();
    let hello = in_recv.next().await.unwrap().unwrap();
    out_send.send(&hello).await.unwrap();
    let challenge = out_recv.next().await.unwrap().unwrap();
    in_send.send(&challenge).await.unwrap();

    let challenge = match victim_recv.next().await.unwrap().unwrap().body {
        Some(Body::JoinChallenge(c)) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    // The honest client refuses: the signature is for another connection
    // (whichever address it believes it dialled).
    for addr in [rogue_addr, honest.addr()] {
        let e = natter_client::supernode::check_challenge(
            &challenge,
            &victim_exporter,
            addr,
            &issuer().public_key(),
            now_secs(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                natter_client::supernode::SessionError::NotCertified { .. }
            ),
            "{e}"
        );
    }
    // A careless client answers anyway; the honest node refuses the
    // relayed proof (bound to the victim's connection, not the rogue's).
    let proof = cert::sign(
        &alice.key,
        &binding::join_proof_message(&victim_exporter, &challenge.node_id, &challenge.nonce, &[]),
    );
    out_send
        .send(&Envelope::new(
            2,
            Body::JoinProof(JoinProof {
                signature: proof,
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    let reply = out_recv.next().await.unwrap().unwrap();
    assert_eq!(
        common::error_code(reply.body.as_ref().unwrap()),
        Some(ErrorCode::ChallengeFailed),
        "{reply:?}"
    );
    assert_eq!(honest.session_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_supernode_certified_by_another_issuer() {
    let mut c = config(Vec::new(), 3);
    c.certification = Certification::Local {
        issuer: std::sync::Arc::new(Issuer::new(user_key("dave").clone())),
        validity: Duration::from_secs(3600),
    };
    let sn = Supernode::spawn(c).unwrap();
    let endpoint =
        natter_net::client_endpoint("127.0.0.1:0".parse().unwrap(), &TransportSettings::OVERLAY)
            .unwrap();
    let e = natter_client::supernode::SupernodeSession::join(
        &endpoint,
        sn.addr(),
        &identity("alice"),
        &issuer().public_key(),
        WAIT,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, natter_client::supernode::SessionError::NotCertified { detail, .. } if detail.contains("another login server")),
        "{e}"
    );
}

/// A certificate for `name` on its test key valid until `not_after`.
fn certificate_until(name: &str, not_after: i64) -> natter_proto::messages::Certificate {
    issuer().issue(
        &mut rand::rngs::OsRng,
        &cert::Subject::User {
            name,
            key: &user_key(name).to_public_key(),
            chat_key: cert::chat_public(&[0x11; 32]),
        },
        3,
        now_secs() - 60,
        not_after,
    )
}

/// Sessions end when their certificate expires (issue 13 item 6) unless
/// renewed in place with `CertificateRenewal`; a renewal for another key
/// is refused and moves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_at_certificate_expiry_unless_renewed() {
    use natter_proto::messages::{CertificateRenewal, Ping};
    let nodes = cluster(1, |_| {}).await;
    let sn = &nodes[0];
    let soon = now_secs() + 3;
    let join = |name: &'static str| async move {
        match common::try_join(
            sn.addr(),
            name,
            certificate_until(name, soon),
            user_key(name),
        )
        .await
        .unwrap()
        {
            common::JoinOutcome::Joined(c) => *c,
            common::JoinOutcome::Refused(e, _) => panic!("{name} refused: {e:?}"),
        }
    };
    let alice = join("alice").await;
    let mut bob = join("bob").await;
    let mut carol = join("carol").await;

    // Bob renews with a fresh certificate for his name and keys.
    let renewal = |c| {
        Body::CertificateRenewal(CertificateRenewal {
            certificate: Some(c),
        })
    };
    bob.ack(renewal(certificate_until("bob", now_secs() + 3600)))
        .await;
    // Carol tries to renew with a certificate for another name (and key).
    let reply = carol
        .request(renewal(certificate_until("dave", now_secs() + 3600)))
        .await;
    assert_eq!(
        common::error_code(&reply),
        Some(ErrorCode::CertificateRejected)
    );

    // Alice and carol are closed at expiry; bob goes on.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), alice.wait_closed())
            .await
            .unwrap(),
        Some(u64::from(close::REFUSED))
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), carol.wait_closed())
            .await
            .unwrap(),
        Some(u64::from(close::REFUSED))
    );
    assert!(
        matches!(bob.request(Body::Ping(Ping { nonce: 5 })).await, Body::Pong(p) if p.nonce == 5)
    );
    assert_eq!(sn.session_count(), 1);
}
