//! Directory integrity against real supernodes on loopback (issue 13,
//! item 2): a malicious supernode, holding a supernode certificate from the
//! test issuer, links to every node of a cluster and sends forged
//! `DirectoryStore`s for a victim (home = itself, `last_seen` a year ahead,
//! missing, mismatched, foreign-issuer and someone else's statements, and
//! an older statement the victim really signed). Every replica refuses
//! them: her session stays open, her record is unchanged, a search still
//! finds her at her real home and chat still reaches her.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod forge;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use common::{JoinOutcome, TestClient, WAIT, cluster, eventually, issuer, now_ms, now_secs};
use forge::Expect;
use natter_net::{FramedRecv, FramedSend, TransportSettings};
use natter_proto::cert::{self, Identity, Subject, SupernodeAddrs};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, ChatMessage, DirectoryLookup, DirectoryStore, Envelope, GossipMembership, Member,
    MemberState, Ping, PresenceStatus, UserRecord,
};
use natter_proto::statement::SignedStatement;
use natter_supernode::{Handle, NodeId, hrw};
use rsa::RsaPrivateKey;

/// A supernode-like peer the test controls: its key, the supernode
/// certificate the test issuer gave it, and one link to a real supernode.
struct RoguePeer {
    node_id: NodeId,
    addr: SocketAddr,
    _endpoint: quinn::Endpoint,
    _conn: quinn::Connection,
    send: FramedSend,
    recv: FramedRecv,
    next_rid: u64,
    _pushed: VecDeque<Envelope>,
}

impl RoguePeer {
    /// Links to the supernode at `to` as the holder of `key` and
    /// `certificate`: the link handshake a certified supernode makes (its
    /// `LinkHello` bound to the connection, then its gossip).
    async fn link(to: SocketAddr, key: &RsaPrivateKey, certificate: &Certificate) -> Self {
        let node_id = cert::key_id(&key.to_public_key());
        let endpoint = natter_net::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TransportSettings::OVERLAY,
        )
        .unwrap();
        let addr = endpoint.local_addr().unwrap();
        let conn = tokio::time::timeout(WAIT, endpoint.connect(to, "natter-supernode").unwrap())
            .await
            .unwrap()
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let exporter = natter_net::exporter::quic_exporter(&conn).unwrap();
        let hello = natter_proto::messages::LinkHello {
            certificate: Some(certificate.clone()),
            signature: cert::sign(
                key,
                &natter_proto::binding::link_hello_message(
                    natter_proto::binding::LinkRole::Dialler,
                    &exporter,
                ),
            ),
            role: natter_proto::binding::LinkRole::Dialler as u32,
        };
        let mut send = FramedSend::new(send);
        send.send(&Envelope::new(0, Body::LinkHello(hello)))
            .await
            .unwrap();
        let mut peer = Self {
            node_id,
            addr,
            _endpoint: endpoint,
            _conn: conn,
            send,
            recv: FramedRecv::new(recv),
            next_rid: 1,
            _pushed: VecDeque::new(),
        };
        peer.gossip().await;
        peer
    }

    /// Its gossip: itself, alive.
    async fn gossip(&mut self) {
        let gossip = GossipMembership {
            sender_id: self.node_id.to_vec(),
            members: vec![Member {
                node_id: self.node_id.to_vec(),
                addr: Some(self.addr.into()),
                incarnation: 1,
                state: MemberState::Alive as i32,
                ..Default::default()
            }],
        };
        let envelope = Envelope::new(0, Body::GossipMembership(gossip));
        self.send.send(&envelope).await.unwrap();
    }

    /// A request on the link and its reply (gossiping first, so that it
    /// stays alive; what else arrives meanwhile is dropped).
    async fn request(&mut self, body: Body) -> Body {
        self.gossip().await;
        let rid = self.next_rid;
        self.next_rid += 1;
        self.send.send(&Envelope::new(rid, body)).await.unwrap();
        loop {
            let envelope = tokio::time::timeout(WAIT, self.recv.next())
                .await
                .expect("no reply on the link")
                .unwrap()
                .expect("link closed");
            if envelope.request_id == rid {
                return envelope.body.unwrap();
            }
        }
    }

    async fn lookup(&mut self, name: &str) -> Option<UserRecord> {
        let ask = Body::DirectoryLookup(DirectoryLookup {
            name: name.into(),
            ..Default::default()
        });
        match self.request(ask).await {
            Body::DirectoryRecords(found) => found.records.into_iter().next(),
            other => panic!("expected DirectoryRecords, got {other:?}"),
        }
    }

    async fn store(&mut self, record: UserRecord) {
        let store = Body::DirectoryStore(DirectoryStore {
            records: vec![record],
            pending_chat: Vec::new(),
        });
        assert!(matches!(self.request(store).await, Body::Ack(_)));
    }
}

/// A certificate for `name` on `key` from the test issuer.
fn identity_as(name: &str, key: &RsaPrivateKey) -> Identity {
    let now = now_secs();
    let certificate = issuer().issue(
        &mut rand::rngs::OsRng,
        &Subject::User {
            name,
            key: &key.to_public_key(),
            chat_key: cert::chat_public(&[0x11; 32]),
        },
        1,
        now - 300,
        now + 3600,
    );
    Identity {
        key: key.clone(),
        certificate,
        chat_secret: [0x11; 32],
    }
}

async fn join_as(addr: SocketAddr, id: &Identity, name: &str) -> TestClient {
    match common::try_join(addr, name, id.certificate.clone(), &id.key)
        .await
        .unwrap()
    {
        JoinOutcome::Joined(client) => *client,
        JoinOutcome::Refused(e, _) => panic!("{name} refused: {e:?}"),
    }
}

/// A name whose only replica (replicas = 1) is a real supernode, with the
/// attacker counted in.
fn name_kept_by_real_nodes(prefix: &str, real: &[NodeId], attacker: NodeId) -> String {
    let mut all = real.to_vec();
    all.push(attacker);
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| hrw::replicas(n, &all, 1)[0] != attacker)
        .unwrap()
}

fn stats(h: &Handle) -> (u64, u64, u64) {
    let s = h.core_stats();
    (s.records_refused, s.records_from_future, s.records_stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certified_malicious_supernode_cannot_move_a_victims_home() {
    let sns = cluster(3, |c| c.replicas = 1).await;
    let ids: Vec<NodeId> = sns.iter().map(Handle::node_id).collect();
    let attacker_key = common::user_key("dave");
    let attacker_id = cert::key_id(&attacker_key.to_public_key());
    let victim = name_kept_by_real_nodes("vic", &ids, attacker_id);
    let observer = name_kept_by_real_nodes("obs", &ids, attacker_id);
    let index = |id: NodeId| ids.iter().position(|i| *i == id).unwrap();
    let replica = index(hrw::replicas(&victim, &ids, 1)[0]);
    let home = (0..3).find(|i| *i != replica).unwrap();
    let third = (0..3).find(|i| *i != replica && *i != home).unwrap();

    let victim_id = identity_as(&victim, common::user_key("alice"));
    let observer_id = identity_as(&observer, common::user_key("bob"));
    let mut alice = join_as(sns[home].local_addr(), &victim_id, &victim).await;
    let mut bob = join_as(sns[third].local_addr(), &observer_id, &observer).await;
    bob.search_until(&victim, |r| r.status == PresenceStatus::Online as i32)
        .await;

    // The attacker: a supernode certificate from the test issuer.
    let now = now_secs();
    let attacker_cert = issuer().issue(
        &mut rand::rngs::OsRng,
        &Subject::Supernode {
            key: &attacker_key.to_public_key(),
            addrs: SupernodeAddrs {
                quic: "127.0.0.1:9".parse().unwrap(),
                reflector: "127.0.0.1:10".parse().unwrap(),
                tcp: None,
            },
        },
        1,
        now - 60,
        now + 3600,
    );
    let mut links = Vec::new();
    for sn in &sns {
        links.push(RoguePeer::link(sn.local_addr(), attacker_key, &attacker_cert).await);
    }
    // What it learns as a peer: the victim's record (statement and
    // certificate) and the observer's.
    let current = links[replica]
        .lookup(&victim)
        .await
        .expect("victim's record");
    assert_eq!(current.home_node_id, ids[home].to_vec());
    let observer_replica = index(hrw::replicas(&observer, &ids, 1)[0]);
    let others = links[observer_replica]
        .lookup(&observer)
        .await
        .expect("observer's record");

    let forged = forge::forgeries(
        &current,
        common::user_key("alice"),
        &others,
        &attacker_id,
        attacker_key,
        now_ms(),
    );
    let before = stats(&sns[replica]);
    let home_before = stats(&sns[home]);
    for f in &forged {
        for link in &mut links {
            link.store(f.record.clone()).await;
        }
    }
    let (refused, future, stale) = stats(&sns[replica]);
    let invalid = forge::count(&forged, Expect::Refused) + forge::count(&forged, Expect::Future);
    assert_eq!(refused - before.0, invalid, "refused at the replica");
    assert_eq!(future - before.1, forge::count(&forged, Expect::Future));
    assert_eq!(stale - before.2, forge::count(&forged, Expect::Stale));
    assert_eq!(
        stats(&sns[home]).0 - home_before.0,
        invalid,
        "refused at the home"
    );

    // Her record is unchanged, her session open, her home where it was.
    let after = links[replica]
        .lookup(&victim)
        .await
        .expect("victim's record");
    assert_eq!(after, current, "the replica's record changed");
    assert_eq!(sns[home].session_count(), 1);
    let pong = alice.request(Body::Ping(Ping { nonce: 5 })).await;
    assert!(matches!(pong, Body::Pong(p) if p.nonce == 5), "{pong:?}");
    let found = bob.search(&victim).await;
    assert!(found.found);
    assert_eq!(found.status, PresenceStatus::Online as i32);
    assert_eq!(
        SocketAddr::try_from(found.supernode.as_ref().unwrap()).unwrap(),
        sns[home].local_addr()
    );
    assert_eq!(found.certificate.as_ref(), Some(&victim_id.certificate));

    // And chat to her still arrives, through her real home.
    bob.ack(Body::ChatMessage(ChatMessage {
        message_id: vec![3; 16],
        to: victim.clone(),
        sealed: common::sealed(b"still here?"),
        sent_at: 1,
        ..Default::default()
    }))
    .await;
    let got = alice
        .expect_push("chat", |b| match b {
            Body::ChatMessage(m) => Some((m.from.clone(), common::unsealed(m))),
            _ => None,
        })
        .await;
    assert_eq!(got, (observer.clone(), "still here?".to_owned()));

    eventually("nothing else closed her session", || {
        let n = sns[home].session_count();
        async move { (n == 1).then_some(()) }
    })
    .await;
    drop(links);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for sn in sns {
        sn.shutdown().await;
    }
}

/// Joins `addr` as `id`, answering the challenge with the statement
/// `make` builds from the challenge's node id and nonce (the join proof
/// itself is genuine and covers that statement). Returns the reply.
async fn join_stating(
    addr: SocketAddr,
    id: &Identity,
    make: impl FnOnce(&[u8], &[u8]) -> SignedStatement,
) -> Body {
    let (_endpoint, conn, mut send, mut recv) = common::connect(addr).await.unwrap();
    let exporter = natter_net::exporter::quic_exporter(&conn).unwrap();
    let hello = Body::JoinHello(natter_proto::messages::JoinHello {
        certificate: Some(id.certificate.clone()),
        ..Default::default()
    });
    send.send(&Envelope::new(1, hello)).await.unwrap();
    let challenge = match tokio::time::timeout(WAIT, recv.next()).await {
        Ok(Ok(Some(Envelope {
            body: Some(Body::JoinChallenge(c)),
            ..
        }))) => c,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let signed = make(&challenge.node_id, &challenge.nonce);
    let signature = cert::sign(
        &id.key,
        &natter_proto::binding::join_proof_message(
            &exporter,
            &challenge.node_id,
            &challenge.nonce,
            &signed.statement,
        ),
    );
    let proof = Body::JoinProof(natter_proto::messages::JoinProof {
        signature,
        statement: signed.statement,
        statement_signature: signed.signature,
    });
    send.send(&Envelope::new(2, proof)).await.unwrap();
    match tokio::time::timeout(WAIT, recv.next()).await {
        Ok(Ok(Some(reply))) => reply.body.unwrap(),
        other => panic!("no answer to the proof: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_is_refused_unless_its_statement_names_the_user_this_node_this_nonce_and_now() {
    let sns = cluster(1, |_| {}).await;
    let addr = sns[0].local_addr();
    let alice = common::identity("alice");
    let key = &alice.key;
    let statement = common::statement;
    let refused = |reply: &Body| {
        common::error_code(reply) == Some(natter_proto::messages::ErrorCode::ChallengeFailed)
    };

    type Make<'a> = Box<dyn FnOnce(&[u8], &[u8]) -> SignedStatement + 'a>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "another supernode as home",
            Box::new(|_: &[u8], nonce: &[u8]| {
                statement(key, "alice", &[0x5a; 16], now_ms(), nonce)
            }),
        ),
        (
            "another challenge's nonce",
            Box::new(|node: &[u8], _: &[u8]| statement(key, "alice", node, now_ms(), &[1; 32])),
        ),
        (
            "another user's name",
            Box::new(|node: &[u8], nonce: &[u8]| statement(key, "bob", node, now_ms(), nonce)),
        ),
        (
            "ten minutes ago",
            Box::new(|node: &[u8], nonce: &[u8]| {
                statement(key, "alice", node, now_ms() - 600_000, nonce)
            }),
        ),
        (
            "signed by another key",
            Box::new(|node: &[u8], nonce: &[u8]| {
                statement(common::user_key("dave"), "alice", node, now_ms(), nonce)
            }),
        ),
        (
            "no statement",
            Box::new(|_: &[u8], _: &[u8]| SignedStatement::default()),
        ),
    ];
    for (what, make) in cases {
        let reply = join_stating(addr, &alice, make).await;
        assert!(refused(&reply), "{what}: {reply:?}");
    }
    assert_eq!(sns[0].session_count(), 0);
    let reply = join_stating(addr, &alice, |node, nonce| {
        statement(key, "alice", node, now_ms(), nonce)
    })
    .await;
    assert!(matches!(reply, Body::JoinAccepted(_)), "{reply:?}");
    for sn in sns {
        sn.shutdown().await;
    }
}
