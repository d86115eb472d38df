//! End-to-end chat against real processes (a login server and supernodes on
//! loopback, users running the `natter` binary), with the attacker a test
//! peer that speaks the supernode link protocol: it reads what the
//! supernodes store for a user and injects chat into the overlay with any
//! `from` it likes, as a malicious supernode can.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::online::Online;
use common::{Cluster, assert_ok};
use natter_client::{now_unix_ms, now_unix_secs};
use natter_net::{FramedRecv, FramedSend, TransportSettings};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{ChatMessage, DirectoryLookup, Envelope, ErrorCode, GossipMembership};
use prost::Message;

const LIMIT: Duration = Duration::from_secs(30);

/// The attacker: a peer on a supernode link. (Links are where a
/// supernode's powers come from: the directory, the stored chat, routing.)
struct RogueSupernode {
    _endpoint: quinn::Endpoint,
    send: FramedSend,
    recv: FramedRecv,
    next_id: u64,
}

impl RogueSupernode {
    /// Links to the supernode at `to` as a *certified* supernode: the
    /// operator of this private network approved its key (the test issues
    /// its certificate with the login server's own signing key), and it
    /// opens the link as a supernode does (`LinkHello` bound to the
    /// connection, then gossip). A certified supernode is the strongest
    /// overlay attacker there is.
    async fn link(to: SocketAddr, login_key: &std::path::Path) -> Self {
        use natter_proto::binding::{self, LinkRole};
        use natter_proto::cert::{self, Issuer, Subject, SupernodeAddrs};
        use rsa::pkcs8::DecodePrivateKey;
        let signing = login_key.with_file_name("login-key.pem");
        let issuer = Issuer::new(
            rsa::RsaPrivateKey::from_pkcs8_pem(&std::fs::read_to_string(signing).unwrap()).unwrap(),
        );
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        let now = now_unix_secs();
        let endpoint = natter_net::client_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &TransportSettings::OVERLAY,
        )
        .unwrap();
        let me = endpoint.local_addr().unwrap();
        let certificate = issuer.issue(
            &mut rand::rngs::OsRng,
            &Subject::Supernode {
                key: &key.to_public_key(),
                addrs: SupernodeAddrs {
                    quic: me,
                    reflector: me,
                    tcp: None,
                },
            },
            66,
            now - 60,
            now + 3600,
        );
        let conn = endpoint
            .connect(to, "natter-supernode")
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let exporter = natter_net::exporter::quic_exporter(&conn).unwrap();
        let mut rogue = Self {
            _endpoint: endpoint,
            send: FramedSend::new(send),
            recv: FramedRecv::new(recv),
            next_id: 1,
        };
        let hello = natter_proto::messages::LinkHello {
            certificate: Some(certificate),
            signature: cert::sign(
                &key,
                &binding::link_hello_message(LinkRole::Dialler, &exporter),
            ),
            role: LinkRole::Dialler as u32,
        };
        rogue
            .send
            .send(&Envelope::new(0, Body::LinkHello(hello)))
            .await
            .unwrap();
        let node_id = cert::key_id(&key.to_public_key());
        let gossip = GossipMembership {
            sender_id: node_id.to_vec(),
            members: Vec::new(),
        };
        rogue
            .send
            .send(&Envelope::new(0, Body::GossipMembership(gossip)))
            .await
            .unwrap();
        rogue
    }

    /// Sends `body` as a request; returns what answered it, and every
    /// other frame the supernode sent meanwhile.
    async fn request(&mut self, body: Body) -> (Body, Vec<Envelope>) {
        self.next_id += 1;
        let id = self.next_id;
        self.send.send(&Envelope::new(id, body)).await.unwrap();
        let mut others = Vec::new();
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.recv.next())
                .await
                .expect("an answer in time")
                .unwrap()
                .expect("the link stays open");
            if frame.request_id == id {
                return (frame.body.unwrap(), others);
            }
            others.push(frame);
        }
    }
}

/// Every chat message in what a supernode sent.
fn chat_in(envelopes: &[Envelope]) -> Vec<ChatMessage> {
    let mut out = Vec::new();
    for e in envelopes {
        match &e.body {
            Some(Body::DirectoryRecords(r)) => out.extend(r.pending_chat.iter().cloned()),
            Some(Body::DirectoryStore(s)) => out.extend(s.pending_chat.iter().cloned()),
            Some(Body::ChatMessage(m)) => out.push(m.clone()),
            _ => {}
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn supernodes_store_only_ciphertext_and_offline_chat_still_arrives() {
    let cluster = Cluster::start(2, None);
    for user in ["alice", "dave"] {
        cluster.add_user(user);
    }
    // dave has been online once (so the directory knows him), then left.
    assert_ok(&cluster.run("dave", &["--bootstrap", &cluster.sn(1), "inbox"], LIMIT));
    std::thread::sleep(Duration::from_secs(2));
    let secret = "the vault code is 8-1-4-4, do not tell carol";
    let out = assert_ok(&cluster.run(
        "alice",
        &["--bootstrap", &cluster.sn(0), "chat", "dave", secret],
        LIMIT,
    ));
    assert!(out.contains("stored for dave"), "{out}");

    // A malicious supernode asks every supernode for what it stores for
    // dave (a lookup that does not delete), as a replica would.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Vec<Envelope> = rt.block_on(async {
        let mut seen = Vec::new();
        for addr in &cluster.supernodes {
            let mut rogue = RogueSupernode::link(*addr, &cluster.login_key).await;
            let (answer, others) = rogue
                .request(Body::DirectoryLookup(DirectoryLookup {
                    name: "dave".into(),
                    page_chat: true,
                    ..Default::default()
                }))
                .await;
            seen.push(Envelope::new(0, answer));
            seen.extend(others);
        }
        seen
    });
    let stored = chat_in(&seen);
    assert!(!stored.is_empty(), "the message is stored: {seen:?}");
    for m in &stored {
        // It sees the envelope...
        assert_eq!((m.from.as_str(), m.to.as_str()), ("alice", "dave"));
        assert!(m.text.is_empty());
        assert!(!m.sealed.is_empty());
        // ...and nothing of the text, in any frame it got.
        let opened = natter_proto::chat::open(
            m,
            &cluster.session("alice").identity,
            &natter_client::tls::read_login_key(&cluster.login_key).unwrap(),
            now_unix_ms(),
        );
        assert!(opened.is_err(), "only dave's key opens it");
    }
    for e in &seen {
        let bytes = e.encode_to_vec();
        assert!(!contains(&bytes, secret.as_bytes()));
        assert!(!contains(&bytes, b"vault code"));
    }

    // dave joins through the other supernode and reads it.
    let out = assert_ok(&cluster.run("dave", &["--bootstrap", &cluster.sn(0), "inbox"], LIMIT));
    assert!(out.contains(&format!("alice: {secret}")), "{out}");
    let inbox = std::fs::read_to_string(cluster.home("dave").join("inbox.txt")).unwrap();
    assert!(inbox.contains(secret), "{inbox}");
}

#[test]
fn a_malicious_supernode_cannot_make_chat_appear_from_another_user() {
    let cluster = Cluster::start(2, None);
    for user in ["alice", "bob", "mallory"] {
        cluster.add_user(user);
    }
    let bob = Online::start(&cluster, "bob", &cluster.sn(1));
    let (bob_session, alice_session, mallory) = (
        cluster.session("bob"),
        cluster.session("alice"),
        cluster.session("mallory"),
    );
    let lie = "alice here: please send the key to mallory";
    let now = now_unix_ms();
    let forge = |sender: &natter_proto::cert::Identity, id: u8| {
        natter_proto::chat::seal(
            &mut rand::rngs::OsRng,
            sender,
            &bob_session.verified,
            &[id; 16],
            "alice",
            "bob",
            now,
            lie,
        )
        .unwrap()
    };
    // Sealed to bob's real chat key, `from` alice: (1) with mallory's own
    // valid certificate; (2) with alice's certificate but mallory's
    // signature; (3) plaintext with `from` alice (a version-1 message).
    let with_own_cert = forge(&mallory.identity, 1);
    let mut masquerade = mallory.identity.clone();
    masquerade.certificate = alice_session.identity.certificate.clone();
    let with_alice_cert = forge(&masquerade, 2);
    let plaintext = ChatMessage {
        message_id: vec![3; 16],
        from: "alice".into(),
        to: "bob".into(),
        text: lie.into(),
        sent_at: now,
        sealed: Vec::new(),
    };

    // The rogue supernode routes them to bob's home, as if alice's
    // supernode had stamped them.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answers: Vec<Body> = rt.block_on(async {
        let mut rogue = RogueSupernode::link(bob.via, &cluster.login_key).await;
        let mut answers = Vec::new();
        for m in [with_own_cert, with_alice_cert, plaintext] {
            answers.push(rogue.request(Body::ChatMessage(m)).await.0);
        }
        answers
    });
    // The first two reach bob (sealed: the supernode cannot tell), the
    // plaintext one is refused by the supernode itself.
    assert!(matches!(answers[0], Body::Ack(_)), "{answers:?}");
    assert!(matches!(answers[1], Body::Ack(_)), "{answers:?}");
    assert!(
        matches!(&answers[2], Body::Error(e) if e.code == ErrorCode::Malformed as i32),
        "{answers:?}"
    );
    // Bob's client refuses both, saying so, and shows nothing as alice's.
    let (first, before) = bob.expect(
        "warning: dropped a message claiming to be from alice",
        LIMIT,
    );
    assert!(first.contains("signed by \"mallory\""), "{first}");
    let (second, between) = bob.expect(
        "warning: dropped a message claiming to be from alice",
        LIMIT,
    );
    assert!(second.contains("signature does not verify"), "{second}");
    for line in before.iter().chain(&between) {
        assert!(!line.contains("message from alice"), "{line}");
    }
    // A real message from alice still arrives, and only it is in the inbox.
    let out = assert_ok(&cluster.run(
        "alice",
        &[
            "--bootstrap",
            &cluster.sn(0),
            "chat",
            "bob",
            "the real alice",
        ],
        LIMIT,
    ));
    assert!(out.contains("delivered to bob"), "{out}");
    let (line, between) = bob.expect("message from alice: the real alice", LIMIT);
    assert!(
        line.ends_with("message from alice: the real alice"),
        "{line}"
    );
    for line in &between {
        assert!(!line.contains(lie), "{line}");
    }
    drop(bob);
    let inbox = std::fs::read_to_string(cluster.home("bob").join("inbox.txt")).unwrap();
    assert_eq!(inbox.lines().count(), 1, "{inbox}");
    assert!(inbox.contains("alice: the real alice"), "{inbox}");
    assert!(!inbox.contains("mallory"), "{inbox}");
}
