//! The TLS-over-TCP listener (the firewall fallback): client sessions over
//! TCP behave as over QUIC, and whatever else reaches the TCP port is
//! refused and counted. Real sockets on 127.0.0.1. Relay legs over TCP are
//! in `relay.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, WAIT, cluster, connect_tcp, error_code, eventually, with_tcp};
use natter_net::RecordReader;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallInvite, CallRinging, CallSignal, ChatMessage, Envelope, ErrorCode, GossipMembership,
    JoinHello, Leave, Ping, PresenceStatus, SearchRequest, SetPresence, call_signal::Kind,
};
use natter_proto::record::Record;
use natter_proto::relay;
use natter_proto::som::{Function, Header};
use natter_supernode::close;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(a: &Option<natter_proto::messages::SocketAddr>) -> SocketAddr {
    SocketAddr::try_from(a.as_ref().expect("an address")).unwrap()
}

fn signal(to: &str, kind: Kind) -> Body {
    Body::CallSignal(CallSignal {
        invite_id: vec![9; 16],
        from: String::new(),
        to: to.into(),
        kind: Some(kind),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_joined_over_tcp_talks_to_a_user_joined_over_quic() {
    let sns = cluster(2, with_tcp).await;
    let tcp = sns[0].tcp_addr().expect("a TCP listener");
    assert_eq!(Some(tcp), sns[0].tcp_local_addr());
    assert_ne!(sns[0].tcp_addr(), sns[1].tcp_addr());

    let mut alice = TestClient::join_tcp(tcp, "alice").await;
    // The same JoinAccepted as over QUIC; the observed address is the TCP one.
    assert_eq!(addr(&alice.accepted.observed_addr), alice.local_addr());
    assert_eq!(addr(&alice.accepted.reflector), sns[0].reflector());
    assert_eq!(alice.accepted.supernodes.len(), 2);
    for entry in &alice.accepted.supernodes {
        let sn = sns
            .iter()
            .find(|s| s.node_id() == entry.node_id[..])
            .unwrap();
        assert_eq!(addr(&entry.addr), sn.addr());
        // Its own listener, and the peer's as learned from gossip.
        assert_eq!(Some(addr(&entry.tcp)), sn.tcp_addr());
    }
    let stats = sns[0].tcp_stats();
    assert_eq!((stats.sessions, stats.sessions_total), (1, 1), "{stats:?}");
    assert_eq!(sns[0].session_count(), 1);

    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;
    assert_eq!(sns[1].tcp_stats().sessions, 0, "bob is on QUIC");

    // Search and presence over TCP, across supernodes.
    let found = alice
        .search_until("bob", |r| {
            r.found && r.status == PresenceStatus::Online as i32
        })
        .await;
    assert_eq!(addr(&found.supernode), sns[1].local_addr());
    let found = bob.search_until("alice", |r| r.found).await;
    assert_eq!(addr(&found.supernode), sns[0].local_addr());
    alice
        .ack(Body::PresenceSubscribe(
            natter_proto::messages::PresenceSubscribe {
                names: vec!["bob".into()],
            },
        ))
        .await;
    bob.ack(Body::SetPresence(SetPresence {
        status: PresenceStatus::Away as i32,
    }))
    .await;
    alice
        .expect_push("bob away", |b| match b {
            Body::PresenceUpdate(u)
                if u.name == "bob" && u.status == PresenceStatus::Away as i32 =>
            {
                Some(())
            }
            _ => None,
        })
        .await;

    // Call signaling both ways: TCP -> QUIC and QUIC -> TCP.
    alice
        .ack(signal("bob", Kind::Invite(CallInvite::default())))
        .await;
    let invite = bob
        .expect_push("invite", |b| match b {
            Body::CallSignal(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(invite.from, "alice");
    bob.ack(signal("alice", Kind::Ringing(CallRinging {})))
        .await;
    let ringing = alice
        .expect_push("ringing", |b| match b {
            Body::CallSignal(s) if matches!(s.kind, Some(Kind::Ringing(_))) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (ringing.from.as_str(), ringing.to.as_str()),
        ("bob", "alice")
    );

    // Chat QUIC -> TCP, receipted back.
    bob.ack(Body::ChatMessage(ChatMessage {
        message_id: vec![1; 16],
        from: "mallory".into(),
        to: "alice".into(),
        sealed: common::sealed(b"over TCP?"),
        sent_at: 1,
        ..Default::default()
    }))
    .await;
    let chat = alice
        .expect_push("chat", |b| match b {
            Body::ChatMessage(m) => Some(m.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (chat.from.as_str(), common::unsealed(&chat).as_str()),
        ("bob", "over TCP?")
    );
    bob.expect_push("receipt", |b| match b {
        Body::ChatReceipt(r) if r.from == "alice" => Some(()),
        _ => None,
    })
    .await;
    match alice.request(Body::Ping(Ping { nonce: 7 })).await {
        Body::Pong(p) => assert_eq!(p.nonce, 7),
        other => panic!("expected Pong, got {other:?}"),
    }

    // A second session of alice over QUIC replaces the TCP one, with the
    // same close code.
    let alice2 = TestClient::join(sns[0].local_addr(), "alice").await;
    assert_eq!(alice.wait_closed().await, Some(close::REPLACED.into()));
    eventually("the TCP session is gone", || {
        let stats = sns[0].tcp_stats();
        async move { (stats.sessions == 0).then_some(()) }
    })
    .await;
    assert_eq!(sns[0].tcp_stats().sessions_total, 1);

    // ... and back over TCP; a leave closes it normally.
    let mut alice3 = TestClient::join_tcp(tcp, "alice").await;
    assert_eq!(
        TestClient::closed_code(&alice2.conn).await,
        Some(close::REPLACED.into())
    );
    alice3.ack(Body::Leave(Leave {})).await;
    assert_eq!(alice3.wait_closed().await, Some(close::NORMAL.into()));
    bob.search_until("alice", |r| r.status == PresenceStatus::Offline as i32)
        .await;
    assert_eq!(sns[0].tcp_stats().sessions_total, 2);
}

/// Opens a TLS connection to the TCP listener and sends `first`.
async fn first_record(tcp: SocketAddr, first: Record) -> (RecordReader, natter_net::TlsHandle) {
    let (reader, handle) = connect_tcp(tcp).await.unwrap().split();
    handle.send(&first).await.unwrap();
    (reader, handle)
}

/// Reads until the supernode closes: the envelopes it sent, and its close code.
async fn until_closed(
    mut reader: RecordReader,
    handle: &natter_net::TlsHandle,
) -> (Vec<Envelope>, Option<u32>) {
    let mut envelopes = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(record)) = reader.next().await {
            if let Record::Envelope(e) = record {
                envelopes.push(e);
            }
        }
    })
    .await
    .expect("the supernode closes the connection");
    (envelopes, handle.close_reason().map(|(code, _)| code))
}

/// Asserts `ErrorReply{NOT_JOINED}` for `request_id`, then close REFUSED.
async fn assert_refused(tcp: SocketAddr, first: Record, request_id: u64) {
    let (reader, handle) = first_record(tcp, first).await;
    let (replies, code) = until_closed(reader, &handle).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].request_id, request_id);
    assert_eq!(
        error_code(replies[0].body.as_ref().unwrap()),
        Some(ErrorCode::NotJoined)
    );
    assert_eq!(code, Some(close::REFUSED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_wrong_first_records_are_refused_and_counted() {
    let sns = cluster(1, |c| {
        with_tcp(c);
        c.handshake_timeout = Duration::from_secs(1);
        c.relay.lifetime = Duration::from_secs(1);
    })
    .await;
    let sn = &sns[0];
    let tcp = sn.tcp_addr().unwrap();

    // Not TLS at all: the handshake fails and the connection is dropped.
    let mut raw = tokio::net::TcpStream::connect(tcp).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: natter\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the connection was not dropped");
    eventually("the failed handshake is counted", || {
        let n = sn.tcp_stats().handshake_failed;
        async move { (n == 1).then_some(()) }
    })
    .await;

    // Gossip over TCP: supernode links are QUIC only.
    let gossip = GossipMembership {
        sender_id: vec![7; 16],
        members: Vec::new(),
    };
    let first = Record::Envelope(Envelope::new(4, Body::GossipMembership(gossip)));
    assert_refused(tcp, first, 4).await;
    assert_eq!(sn.live_members().len(), 1);
    // A request before joining.
    let search = Body::SearchRequest(SearchRequest { name: "bob".into() });
    assert_refused(tcp, Record::Envelope(Envelope::new(5, search)), 5).await;
    // A datagram that is not a relay bind (media without a leg).
    let mut media = Header::new(1, Function::Data, 0).to_bytes().to_vec();
    media.extend_from_slice(&[0xaa; 40]);
    assert_refused(tcp, Record::Datagram(media), 0).await;
    // Nothing but keepalives: refused after the handshake timeout.
    let (reader, handle) = connect_tcp(tcp).await.unwrap().split();
    let (replies, code) = until_closed(reader, &handle).await;
    assert!(replies.is_empty());
    assert_eq!(code, Some(close::REFUSED));

    // A malformed record (an envelope of another protocol version).
    let mut alien = Envelope::new(6, Body::Ping(Ping { nonce: 1 }));
    alien.version = 99;
    let (reader, handle) = first_record(tcp, Record::Envelope(alien.clone())).await;
    let (replies, code) = until_closed(reader, &handle).await;
    assert!(replies.is_empty());
    assert_eq!(code, Some(close::MALFORMED));

    // A relay leg whose first bind does not bind (an unknown token) gets
    // the bind reply, then is closed at once: it holds no slot.
    let bind = relay::encode_bind(&[0x42; 16], &[0; 16], 1, 0);
    let refused_before = sn.tcp_stats().refused;
    let (mut reader, handle) = first_record(tcp, Record::Datagram(bind.clone())).await;
    let reply = tokio::time::timeout(WAIT, reader.next()).await.unwrap();
    let Ok(Some(Record::Datagram(reply))) = reply else {
        panic!("expected a bind reply, got {reply:?}");
    };
    let reply = relay::decode_bind_reply(&reply).unwrap();
    assert_eq!(
        (reply.token, reply.status),
        ([0x42; 16], relay::BindStatus::UnknownToken)
    );
    let (replies, code) = until_closed(reader, &handle).await;
    assert!(replies.is_empty());
    assert_eq!(code, Some(close::REFUSED));
    assert_eq!(sn.tcp_stats().refused, refused_before + 1);

    // A join that fails is refused as over QUIC (not counted as a wrong
    // first record: it is a session's).
    let hello = Body::JoinHello(JoinHello {
        certificate: None,
        ..Default::default()
    });
    let (reader, handle) = first_record(tcp, Record::Envelope(Envelope::new(1, hello))).await;
    let (replies, code) = until_closed(reader, &handle).await;
    assert_eq!(replies.len(), 1);
    assert_eq!(
        error_code(replies[0].body.as_ref().unwrap()),
        Some(ErrorCode::CertificateRejected)
    );
    assert_eq!(code, Some(close::REFUSED));

    // A malformed record inside a joined TCP session closes only it.
    let alice = TestClient::join_tcp(tcp, "alice").await;
    let mut bob = TestClient::join_tcp(tcp, "bob").await;
    match &alice.conn {
        natter_net::ControlConn::Tls(handle) => handle.send_envelope(&alien).await.unwrap(),
        natter_net::ControlConn::Quic(_) => unreachable!(),
    }
    assert_eq!(alice.wait_closed().await, Some(close::MALFORMED.into()));
    match bob.request(Body::Ping(Ping { nonce: 42 })).await {
        Body::Pong(p) => assert_eq!(p.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }

    let stats = sn.tcp_stats();
    assert_eq!(stats.handshake_failed, 1, "{stats:?}");
    assert_eq!(stats.refused, 5, "{stats:?}");
    assert_eq!(stats.malformed, 1, "{stats:?}");
    assert_eq!(stats.relay_legs_total, 1, "{stats:?}");
    assert_eq!(stats.relay_legs_unbound, 0, "{stats:?}");
    assert_eq!(stats.sessions_total, 2, "{stats:?}");
    eventually("the legs and alice's session are gone", || {
        let stats = sn.tcp_stats();
        async move { (stats.relay_legs == 0 && stats.sessions == 1).then_some(()) }
    })
    .await;
    assert_eq!(sn.session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_share_the_connection_limit() {
    let sns = cluster(1, |c| {
        with_tcp(c);
        c.max_connections = 1;
    })
    .await;
    let sn = &sns[0];
    let tcp = sn.tcp_addr().unwrap();
    let mut alice = TestClient::join_tcp(tcp, "alice").await;
    // The only permit is taken: a second TCP connection is dropped before
    // its TLS handshake, and so is a QUIC one.
    assert!(connect_tcp(tcp).await.is_err());
    assert_eq!(sn.tcp_stats().over_limit, 1);
    assert!(
        common::try_join(
            sn.local_addr(),
            "bob",
            common::identity("bob").certificate,
            common::user_key("bob"),
        )
        .await
        .is_err()
    );
    alice.ack(Body::Leave(Leave {})).await;
    assert_eq!(alice.wait_closed().await, Some(close::NORMAL.into()));
    // The permit is back.
    eventually("a new TCP session is admitted", || async {
        let id = common::identity("bob");
        match common::try_join_via(
            natter_net::Transport::Tls,
            tcp,
            "bob",
            id.certificate,
            &id.key,
        )
        .await
        {
            Ok(common::JoinOutcome::Joined(bob)) => Some(bob),
            _ => None,
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tcp_sessions() {
    let sns = cluster(1, with_tcp).await;
    let mut sns = sns;
    let sn = sns.pop().unwrap();
    let alice = TestClient::join_tcp(sn.tcp_addr().unwrap(), "alice").await;
    sn.shutdown().await;
    assert_eq!(alice.wait_closed().await, Some(close::NORMAL.into()));
}
