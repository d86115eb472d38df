//! The UDP service: STUN reflection (RFC 8489 / RFC 5780 change-port) and
//! relays for authenticated calls, over real UDP on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestClient, cluster, connect_tcp, error_code, eventually, with_tcp};
use natter_net::{RecordReader, TlsHandle};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    CallAccept, CallInvite, CallSignal, ErrorCode, RelayAllocate, RelayAllocated, call_signal::Kind,
};
use natter_proto::record::Record;
use natter_proto::relay::{self, BindStatus};
use natter_proto::som::{Function, Header};
use natter_proto::stun;
use natter_supernode::{Handle, reflector_of};
use tokio::net::UdpSocket;

async fn udp() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// The next datagram on `socket`, or `None` after `wait`.
async fn recv_within(socket: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 2048];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => Some((buf[..n].to_vec(), from)),
        _ => None,
    }
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    recv_within(socket, Duration::from_secs(2))
        .await
        .expect("no datagram")
}

/// Sends a binding request and returns the decoded answer and its source.
async fn stun_ask(
    socket: &UdpSocket,
    to: SocketAddr,
    request: &stun::Message,
) -> (stun::Message, SocketAddr) {
    socket.send_to(&request.encode(), to).await.unwrap();
    let (bytes, from) = recv(socket).await;
    let response = stun::Message::decode(&bytes).unwrap();
    assert_eq!(response.kind, stun::BINDING_SUCCESS);
    assert_eq!(response.transaction_id, request.transaction_id);
    (response, from)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stun_binding_requests_with_rfc_5780_attributes() {
    let sns = cluster(1, |_| {}).await;
    let sn = &sns[0];
    let (primary, alternate) = (sn.reflector(), sn.udp_alternate());
    assert_eq!(primary.ip(), sn.local_addr().ip());
    assert_eq!(alternate.ip(), primary.ip());
    assert_ne!(alternate.port(), primary.port());
    let client = udp().await;
    let me = client.local_addr().unwrap();

    // Plain request to the primary address.
    let (r, from) = stun_ask(&client, primary, &stun::Message::request([1; 12])).await;
    assert_eq!(from, primary);
    assert_eq!(r.mapped, Some(me));
    assert_eq!(r.response_origin, Some(primary));
    assert_eq!(r.other_address, Some(alternate));

    // Change-port: answered from the alternate socket.
    let mut change = stun::Message::request([2; 12]);
    change.change_port = true;
    let (r, from) = stun_ask(&client, primary, &change).await;
    assert_eq!(from, alternate);
    assert_eq!(r.mapped, Some(me));
    assert_eq!(r.response_origin, Some(alternate));
    assert_eq!(r.other_address, Some(alternate));

    // The alternate address reflects too, and changes port back.
    let (r, from) = stun_ask(&client, alternate, &stun::Message::request([3; 12])).await;
    assert_eq!((from, r.mapped), (alternate, Some(me)));
    assert_eq!(r.response_origin, Some(alternate));
    assert_eq!(r.other_address, Some(primary));
    change.transaction_id = [4; 12];
    let (r, from) = stun_ask(&client, alternate, &change).await;
    assert_eq!((from, r.response_origin), (primary, Some(primary)));

    // Change-IP is not possible on one IP: ignored (same IP, same socket).
    let mut change_ip = stun::Message::request([5; 12]);
    change_ip.change_ip = true;
    let (r, from) = stun_ask(&client, primary, &change_ip).await;
    assert_eq!((from, r.response_origin), (primary, Some(primary)));

    // The RFC 5769 section 2.1 sample request (an ICE check from another
    // implementation: SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
    // MESSAGE-INTEGRITY, FINGERPRINT).
    let sample = hex(concat!(
        "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e20746573",
        "7420636c69656e74002400046e0001ff80290008932ff9b151263b3600060009",
        "6576746a3a68367659202020000800149aeaa70cbfd8cb56781ef2b5b2d3f249",
        "c1b571a280280004e57a3bcf"
    ));
    assert!(stun::looks_like_stun(&sample));
    client.send_to(&sample, primary).await.unwrap();
    let (bytes, from) = recv(&client).await;
    assert_eq!(from, primary);
    let r = stun::Message::decode(&bytes).unwrap();
    assert_eq!(r.kind, stun::BINDING_SUCCESS);
    assert_eq!(r.transaction_id.as_slice(), &sample[8..20]);
    assert_eq!(r.mapped, Some(me));
    assert_eq!(sn.udp_stats().stun_answered, 6);

    // Junk is counted, never answered, and does not stop the service.
    let mut corrupted = stun::Message::request([6; 12]).encode();
    corrupted[21] ^= 0xff; // breaks the fingerprint
    for junk in [corrupted, vec![0xff], Vec::new(), vec![0x00; 3]] {
        client.send_to(&junk, primary).await.unwrap();
        client.send_to(&junk, alternate).await.unwrap();
    }
    assert!(
        recv_within(&client, Duration::from_millis(300))
            .await
            .is_none()
    );
    let (r, _) = stun_ask(&client, primary, &stun::Message::request([7; 12])).await;
    assert_eq!(r.mapped, Some(me));
    let stats = sn.udp_stats();
    assert_eq!(stats.stun_answered, 7);
    assert_eq!(stats.malformed, 8, "{stats:?}");
    assert_eq!(stats.forwarded, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_accepted_and_host_cache_carry_reflectors() {
    let sns = cluster(2, |_| {}).await;
    let alice = TestClient::join(sns[0].local_addr(), "alice").await;
    let reflector = SocketAddr::try_from(alice.accepted.reflector.as_ref().unwrap()).unwrap();
    assert_eq!(reflector, sns[0].reflector());
    assert_eq!(alice.accepted.supernodes.len(), 2);
    for entry in &alice.accepted.supernodes {
        let addr = SocketAddr::try_from(entry.addr.as_ref().unwrap()).unwrap();
        let r = SocketAddr::try_from(entry.reflector.as_ref().unwrap()).unwrap();
        if entry.node_id == sns[0].node_id() {
            assert_eq!(r, sns[0].reflector());
        } else {
            assert_eq!(entry.node_id, sns[1].node_id());
            // Peers: the convention (QUIC port + 1).
            assert_eq!(Some(r), reflector_of(addr));
        }
    }
}

fn signal(invite: u8, to: &str, kind: Kind) -> Body {
    Body::CallSignal(CallSignal {
        invite_id: vec![invite; 16],
        from: String::new(),
        to: to.into(),
        kind: Some(kind),
        ..Default::default()
    })
}

fn allocate(invite: u8) -> Body {
    Body::RelayAllocate(RelayAllocate {
        invite_id: vec![invite; 16],
    })
}

async fn allocated(client: &mut TestClient, invite: u8) -> RelayAllocated {
    match client.request(allocate(invite)).await {
        Body::RelayAllocated(a) => a,
        other => panic!("{}: expected RelayAllocated, got {other:?}", client.name),
    }
}

fn token(bytes: &[u8]) -> [u8; 16] {
    bytes.try_into().expect("16-byte token")
}

/// Sends one bind from `socket` and returns the reply (which must be
/// exactly as long as the bind: amplification 1.0).
async fn bind_once(
    socket: &UdpSocket,
    relay: SocketAddr,
    token: &[u8; 16],
    cookie: &[u8; 16],
) -> relay::BindReply {
    let bind = relay::encode_bind(token, cookie, 7, 2);
    socket.send_to(&bind, relay).await.unwrap();
    let (reply, from) = recv(socket).await;
    assert_eq!(from, relay);
    assert_eq!(
        reply.len(),
        bind.len(),
        "a bind reply is as long as the bind"
    );
    let reply = relay::decode_bind_reply(&reply).unwrap();
    assert_eq!(&reply.token, token);
    reply
}

/// Binds `socket` with `token` as a client does (a first bind gets the
/// cookie of the socket's address, the second echoes it) and returns the
/// status.
async fn bind(socket: &UdpSocket, relay: SocketAddr, token: &[u8; 16]) -> BindStatus {
    let first = bind_once(socket, relay, token, &[0; 16]).await;
    assert_eq!(first.status, BindStatus::Cookie, "no cookie, no bind");
    bind_once(socket, relay, token, &first.cookie).await.status
}

/// The `RelayAllocated` for `invite` the supernode pushes to `client` (its
/// side of an allocation the other user of the call made).
async fn pushed_side(client: &mut TestClient, invite: u8) -> RelayAllocated {
    let name = client.name.clone();
    let side = client
        .expect_push("a pushed relay side", |b| match b {
            Body::RelayAllocated(r) if r.invite_id == vec![invite; 16] => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(side.to, name);
    side
}

/// A SoM `Data` datagram (the relay does not open it).
fn datagram(i: u16, len: usize) -> Vec<u8> {
    let mut d = Header::new(i, Function::Data, 5).to_bytes().to_vec();
    d.extend((0..len).map(|b| (b as u8) ^ (i as u8)));
    d
}

/// Starts a call from alice to bob (both already joined) with invite `id`.
async fn invite(alice: &mut TestClient, bob: &mut TestClient, id: u8) {
    alice
        .ack(signal(id, "bob", Kind::Invite(CallInvite::default())))
        .await;
    bob.expect_push("invite", |b| match b {
        Body::CallSignal(s) if s.invite_id == vec![id; 16] => Some(()),
        _ => None,
    })
    .await;
}

/// Bob accepts alice's call `id`.
async fn accept(bob: &mut TestClient, alice: &mut TestClient, id: u8) {
    bob.ack(signal(id, "alice", Kind::Accept(CallAccept::default())))
        .await;
    alice
        .expect_push("accept", |b| match b {
            Body::CallSignal(CallSignal {
                kind: Some(Kind::Accept(_)),
                invite_id,
                ..
            }) if *invite_id == vec![id; 16] => Some(()),
            _ => None,
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_only_authenticated_calls() {
    let sns = cluster(2, |_| {}).await;
    let mut alice = TestClient::join(sns[0].local_addr(), "alice").await;
    let mut bob = TestClient::join(sns[1].local_addr(), "bob").await;
    let mut carol = TestClient::join(sns[1].local_addr(), "carol").await;
    alice.search_until("bob", |r| r.found).await;

    // Nothing routed yet: refused.
    assert_eq!(
        error_code(&bob.request(allocate(1)).await),
        Some(ErrorCode::NotJoined)
    );
    // The old way in: a no-op ringing to anyone makes no call.
    bob.ack(signal(1, "alice", Kind::Ringing(Default::default())))
        .await;
    assert_eq!(
        error_code(&bob.request(allocate(1)).await),
        Some(ErrorCode::NotJoined)
    );
    // Invited: the callee gets nothing before it answers.
    invite(&mut alice, &mut bob, 1).await;
    assert_eq!(
        error_code(&bob.request(allocate(1)).await),
        Some(ErrorCode::NotJoined)
    );
    // Its ringing (as its client sends on every invite) opens the call to
    // it: the relay must be there when the call starts (relay first).
    bob.ack(signal(1, "alice", Kind::Ringing(Default::default())))
        .await;
    accept(&mut bob, &mut alice, 1).await;

    // The callee allocates on its own supernode, which routed the invite
    // and its answer: bob gets his side's token only, and the supernode
    // hands alice hers (through the link to her supernode).
    let b = allocated(&mut bob, 1).await;
    assert_eq!(b.invite_id, vec![1; 16]);
    let relay_addr = SocketAddr::try_from(b.relay.as_ref().unwrap()).unwrap();
    assert_eq!(relay_addr, sns[1].reflector());
    assert_eq!(b.lifetime_s, 30);
    assert!(b.peer_token.is_empty(), "never the other side's token");
    assert!(b.to.is_empty());
    let a = pushed_side(&mut alice, 1).await;
    assert_eq!(
        SocketAddr::try_from(a.relay.as_ref().unwrap()).unwrap(),
        relay_addr
    );
    assert!(a.peer_token.is_empty());
    assert_ne!(a.token, b.token);

    // Both bind from their own UDP sockets.
    let (a_sock, b_sock, stranger) = (udp().await, udp().await, udp().await);
    assert_eq!(
        bind(&b_sock, relay_addr, &token(&b.token)).await,
        BindStatus::Bound
    );
    assert_eq!(
        bind(&a_sock, relay_addr, &token(&a.token)).await,
        BindStatus::Bound
    );
    assert_eq!(
        bind(&stranger, relay_addr, &[0x42; 16]).await,
        BindStatus::UnknownToken
    );

    // Datagrams flow both ways, unchanged, from the relay address.
    for i in 0..5u16 {
        let d = datagram(i, 58);
        a_sock.send_to(&d, relay_addr).await.unwrap();
        assert_eq!(recv(&b_sock).await, (d, relay_addr));
        let d = datagram(1000 + i, 200);
        b_sock.send_to(&d, relay_addr).await.unwrap();
        assert_eq!(recv(&a_sock).await, (d, relay_addr));
    }
    let stats = sns[1].udp_stats();
    assert_eq!(
        (
            stats.forwarded,
            stats.binds,
            stats.binds_refused,
            stats.binds_cookie
        ),
        (10, 2, 1, 3)
    );
    assert_eq!(stats.allocations, 1);
    assert_eq!(stats.allocations_refused, 3, "{stats:?}");

    // A datagram from an unbound socket goes nowhere and is counted.
    stranger
        .send_to(&datagram(9, 58), relay_addr)
        .await
        .unwrap();
    assert!(
        recv_within(&a_sock, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(
        recv_within(&b_sock, Duration::from_millis(10))
            .await
            .is_none()
    );
    let stats = sns[1].udp_stats();
    assert_eq!((stats.forwarded, stats.dropped_unbound), (10, 1));

    // A new NAT mapping: alice re-binds from another socket.
    let a_sock2 = udp().await;
    assert_eq!(
        bind(&a_sock2, relay_addr, &token(&a.token)).await,
        BindStatus::Bound
    );
    let d = datagram(77, 40);
    b_sock.send_to(&d, relay_addr).await.unwrap();
    assert_eq!(recv(&a_sock2).await, (d, relay_addr));
    a_sock.send_to(&datagram(78, 40), relay_addr).await.unwrap();
    assert!(
        recv_within(&b_sock, Duration::from_millis(300))
            .await
            .is_none()
    );

    // The caller's supernode routed the invite too: alice may allocate
    // there, and bob is handed his side of it.
    let mine = allocated(&mut alice, 1).await;
    assert_eq!(
        SocketAddr::try_from(mine.relay.as_ref().unwrap()).unwrap(),
        sns[0].reflector()
    );
    let his = pushed_side(&mut bob, 1).await;
    assert_ne!(his.token, mine.token);
    // A third user cannot allocate for someone else's call.
    assert_eq!(
        error_code(&carol.request(allocate(1)).await),
        Some(ErrorCode::NotJoined)
    );
    // ... nor for a call no supernode routed, nor with a bad id.
    assert_eq!(
        error_code(&alice.request(allocate(2)).await),
        Some(ErrorCode::NotJoined)
    );
    let empty = Body::RelayAllocate(RelayAllocate { invite_id: vec![] });
    assert_eq!(
        error_code(&alice.request(empty).await),
        Some(ErrorCode::Malformed)
    );

    // One allocation per call on a relay: asking again for the same call
    // (per-user quotas are covered by the relay table's unit tests) gets
    // the same side of the same allocation, not a new one.
    let before = sns[1].udp_stats().allocations;
    let again = allocated(&mut bob, 1).await;
    assert_eq!(again.token, b.token);
    let hers = allocated(&mut alice, 1).await;
    assert_eq!(hers.token, mine.token, "her own side on her own supernode");
    assert_eq!(sns[1].udp_stats().allocations, before);
}

/// Alice calls bob, both on `sn`; bob accepts; alice allocates. Returns
/// both clients and each one's side: `(alice, bob, alice's, bob's)`.
async fn pair_on(
    sn: &Handle,
    invite_id: u8,
) -> (TestClient, TestClient, RelayAllocated, RelayAllocated) {
    let mut alice = TestClient::join(sn.local_addr(), "alice").await;
    let mut bob = TestClient::join(sn.local_addr(), "bob").await;
    invite(&mut alice, &mut bob, invite_id).await;
    accept(&mut bob, &mut alice, invite_id).await;
    let a = allocated(&mut alice, invite_id).await;
    let b = pushed_side(&mut bob, invite_id).await;
    // Bob asking for himself gets the same side.
    assert_eq!(allocated(&mut bob, invite_id).await.token, b.token);
    (alice, bob, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_expire_when_idle_and_are_rate_limited() {
    let sns = cluster(1, |c| {
        c.relay.lifetime = Duration::from_secs(1);
        c.relay.packets_per_sec = 20;
    })
    .await;
    let sn = &sns[0];
    let (_alice, _bob, a, b) = pair_on(sn, 3).await;
    assert_eq!(a.lifetime_s, 1);
    let relay_addr = sn.reflector();
    let (a_sock, b_sock) = (udp().await, udp().await);
    assert_eq!(
        bind(&a_sock, relay_addr, &token(&a.token)).await,
        BindStatus::Bound
    );
    assert_eq!(
        bind(&b_sock, relay_addr, &token(&b.token)).await,
        BindStatus::Bound
    );

    // 20 datagrams/s with a one-second burst, binds included: a flood of 40
    // gets 18 through.
    for i in 0..40u16 {
        a_sock.send_to(&datagram(i, 20), relay_addr).await.unwrap();
    }
    let mut got = 0;
    while recv_within(&b_sock, Duration::from_millis(300))
        .await
        .is_some()
    {
        got += 1;
    }
    let stats = sn.udp_stats();
    assert!((18..=20).contains(&got), "{got} {stats:?}");
    assert_eq!(stats.forwarded, got);
    assert_eq!(stats.dropped_quota, 40 - got);

    // Traffic keeps it; one second of silence ends it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    b_sock.send_to(&datagram(1, 20), relay_addr).await.unwrap();
    recv(&a_sock).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    a_sock.send_to(&datagram(2, 20), relay_addr).await.unwrap();
    assert!(
        recv_within(&b_sock, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(
        bind(&a_sock, relay_addr, &token(&a.token)).await,
        BindStatus::UnknownToken
    );
    common::eventually("the allocation is gone", || {
        let n = sn.udp_stats().allocations;
        async move { (n == 0).then_some(()) }
    })
    .await;
}

/// A TCP relay leg: a TLS connection to the supernode's TCP listener whose
/// first record is a bind.
struct Leg {
    reader: RecordReader,
    handle: TlsHandle,
}

impl Leg {
    /// Opens a leg with a bind for `token`; returns it and the bind status.
    async fn open(tcp: SocketAddr, token: &[u8; 16]) -> (Leg, BindStatus) {
        let (reader, handle) = connect_tcp(tcp).await.unwrap().split();
        let mut leg = Leg { reader, handle };
        let status = leg.bind(token).await;
        (leg, status)
    }

    async fn bind(&mut self, token: &[u8; 16]) -> BindStatus {
        // The TLS connection proves the address: no cookie.
        self.send(&relay::encode_bind(token, &[0; 16], 9, 1)).await;
        let reply = self.recv().await;
        let reply = relay::decode_bind_reply(&reply).unwrap();
        assert_eq!(&reply.token, token);
        reply.status
    }

    async fn send(&self, datagram: &[u8]) {
        self.handle.send_datagram(datagram).await.unwrap();
    }

    /// The next DATAGRAM record, or `None` after `wait`.
    async fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match tokio::time::timeout(wait, self.reader.next()).await {
            Ok(Ok(Some(Record::Datagram(d)))) => Some(d),
            Ok(other) => panic!("relay leg: expected a datagram, got {other:?}"),
            Err(_) => None,
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        self.recv_within(Duration::from_secs(2))
            .await
            .expect("no datagram on the relay leg")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_between_udp_and_tcp_legs() {
    let sns = cluster(1, with_tcp).await;
    let sn = &sns[0];
    let tcp = sn.tcp_addr().unwrap();
    let relay_addr = sn.reflector();
    // Alice's UDP is blocked: her session runs over TCP too.
    let mut alice = TestClient::join_tcp(tcp, "alice").await;
    let mut bob = TestClient::join(sn.local_addr(), "bob").await;
    invite(&mut alice, &mut bob, 5).await;
    accept(&mut bob, &mut alice, 5).await;
    let a = allocated(&mut alice, 5).await;
    let b = pushed_side(&mut bob, 5).await;
    assert_eq!(
        SocketAddr::try_from(a.relay.as_ref().unwrap()).unwrap(),
        relay_addr
    );
    assert_eq!(SocketAddr::try_from(a.tcp.as_ref().unwrap()).unwrap(), tcp);

    // Alice binds over a TCP leg, bob from a UDP socket.
    let (mut a_leg, status) = Leg::open(tcp, &token(&a.token)).await;
    assert_eq!(status, BindStatus::Bound);
    let b_sock = udp().await;
    assert_eq!(
        bind(&b_sock, relay_addr, &token(&b.token)).await,
        BindStatus::Bound
    );
    for i in 0..5u16 {
        let d = datagram(i, 58);
        a_leg.send(&d).await;
        assert_eq!(recv(&b_sock).await, (d, relay_addr));
        let d = datagram(100 + i, 200);
        b_sock.send_to(&d, relay_addr).await.unwrap();
        assert_eq!(a_leg.recv().await, d);
    }
    let stats = sn.udp_stats();
    assert_eq!((stats.forwarded, stats.binds), (10, 2), "{stats:?}");
    assert_eq!(sn.tcp_stats().relay_legs, 1);

    // Bob's UDP gets blocked mid-call: he re-binds the same token over TCP.
    let (mut b_leg, status) = Leg::open(tcp, &token(&b.token)).await;
    assert_eq!(status, BindStatus::Bound);
    for i in 0..3u16 {
        let d = datagram(200 + i, 58);
        a_leg.send(&d).await;
        assert_eq!(b_leg.recv().await, d);
        let d = datagram(300 + i, 58);
        b_leg.send(&d).await;
        assert_eq!(a_leg.recv().await, d);
    }
    assert!(
        recv_within(&b_sock, Duration::from_millis(200))
            .await
            .is_none(),
        "bob's old UDP address gets nothing"
    );
    b_sock.send_to(&datagram(1, 58), relay_addr).await.unwrap();
    assert!(
        a_leg
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "nor may it send"
    );
    // STUN is not served on a leg; datagrams without a SoM header are malformed.
    let malformed = sn.udp_stats().malformed;
    b_leg.send(&stun::Message::request([1; 12]).encode()).await;
    b_leg.send(&[0xff; 30]).await;
    assert!(
        b_leg
            .recv_within(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(sn.tcp_stats().dropped_stun, 1);
    assert_eq!(sn.udp_stats().malformed, malformed + 1);
    assert_eq!(sn.tcp_stats().relay_legs, 2);

    // Alice's leg ends: its binding goes with it, bob's datagrams are dropped.
    a_leg.handle.close(0, "bye");
    eventually("alice's leg is gone", || {
        let legs = sn.tcp_stats().relay_legs;
        async move { (legs == 1).then_some(()) }
    })
    .await;
    let dropped = sn.udp_stats().dropped_unbound;
    b_leg.send(&datagram(2, 58)).await;
    eventually("bob's datagram is dropped", || {
        let n = sn.udp_stats().dropped_unbound;
        async move { (n == dropped + 1).then_some(()) }
    })
    .await;

    // She re-binds with a new leg, and bob goes back to UDP.
    let (mut a_leg, status) = Leg::open(tcp, &token(&a.token)).await;
    assert_eq!(status, BindStatus::Bound);
    assert_eq!(
        bind(&b_sock, relay_addr, &token(&b.token)).await,
        BindStatus::Bound
    );
    let d = datagram(400, 58);
    a_leg.send(&d).await;
    assert_eq!(recv(&b_sock).await, (d, relay_addr));
    assert!(
        b_leg
            .recv_within(Duration::from_millis(200))
            .await
            .is_none(),
        "bob's leg is out"
    );
    let d = datagram(401, 58);
    b_sock.send_to(&d, relay_addr).await.unwrap();
    assert_eq!(a_leg.recv().await, d);
    let stats = sn.tcp_stats();
    assert_eq!(
        (stats.relay_legs_total, stats.dropped_queue_full),
        (3, 0),
        "{stats:?}"
    );
}

/// The attack of issue 14: a user who holds a relay token (here mallory,
/// in a call with her accomplice) sends binds with the victim's address as
/// their source, to aim the relay's traffic at the victim. Spoofing a source
/// is not possible on loopback, so the victim's own socket sends exactly
/// what the spoofer would put on the wire under its address; the victim
/// then gets only the replies to those binds, each as long as its bind (no
/// amplification), and not one byte of the stream mallory pushes into the
/// relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_bind_sends_nothing_toward_its_victim() {
    let sns = cluster(1, |_| {}).await;
    let sn = &sns[0];
    let relay_addr = sn.reflector();
    let mut mallory = TestClient::join(sn.local_addr(), "alice").await;
    let mut accomplice = TestClient::join(sn.local_addr(), "bob").await;
    invite(&mut mallory, &mut accomplice, 9).await;
    accept(&mut accomplice, &mut mallory, 9).await;
    let mine = allocated(&mut mallory, 9).await;
    let theirs = pushed_side(&mut accomplice, 9).await;
    assert!(mine.peer_token.is_empty());

    // Mallory binds her side from her own socket (she receives there).
    let m_sock = udp().await;
    assert_eq!(
        bind(&m_sock, relay_addr, &token(&mine.token)).await,
        BindStatus::Bound
    );
    // She also collects a valid cookie for the other side's token at her
    // own address, to replay it under the victim's.
    let her_cookie = bind_once(&m_sock, relay_addr, &token(&theirs.token), &[0; 16])
        .await
        .cookie;

    // The spoofed binds, "from" the victim: no cookie, a guessed one, and
    // mallory's own cookie. Each is answered once, to its source, with a
    // cookie reply of its own length; none binds.
    let victim = udp().await;
    let mut sent = 0;
    for cookie in [[0u8; 16], [0x5a; 16], her_cookie] {
        let bind = relay::encode_bind(&token(&theirs.token), &cookie, 1, 0);
        victim.send_to(&bind, relay_addr).await.unwrap();
        sent += bind.len();
    }
    let mut received = 0;
    for _ in 0..3 {
        let (reply, from) = recv(&victim).await;
        assert_eq!(from, relay_addr);
        let reply = relay::decode_bind_reply(&reply).expect("only bind replies");
        assert_eq!(reply.status, BindStatus::Cookie);
        received += relay::REPLY_LEN;
    }
    assert!(received <= sent, "amplification at most 1.0");

    // Mallory now floods the relay: none of it reaches the victim.
    for i in 0..100u16 {
        m_sock.send_to(&datagram(i, 160), relay_addr).await.unwrap();
    }
    assert!(
        recv_within(&victim, Duration::from_millis(500))
            .await
            .is_none(),
        "the victim got relayed traffic"
    );
    let stats = sn.udp_stats();
    assert_eq!(stats.forwarded, 0, "{stats:?}");
    assert!(
        stats.dropped_unbound + stats.dropped_quota >= 100,
        "{stats:?}"
    );
    assert_eq!(stats.binds, 1, "only mallory's own side is bound");
    assert_eq!(stats.binds_cookie, 5, "{stats:?}");

    // Whereas the accomplice, binding from where it receives, gets the
    // stream: the relay works, for addresses that answered it.
    let accomplice_sock = udp().await;
    assert_eq!(
        bind(&accomplice_sock, relay_addr, &token(&theirs.token)).await,
        BindStatus::Bound
    );
    let d = datagram(500, 60);
    m_sock.send_to(&d, relay_addr).await.unwrap();
    assert_eq!(recv(&accomplice_sock).await, (d, relay_addr));
    assert!(
        recv_within(&victim, Duration::from_millis(200))
            .await
            .is_none()
    );
}

/// Many accounts from one network cannot fill the relay table: allocations
/// are capped per source prefix of the requesters' sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_are_capped_per_source_prefix() {
    let sns = cluster(1, |c| c.relay.per_prefix = 1).await;
    let sn = &sns[0];
    let (mut alice, mut bob, _, _) = pair_on(sn, 11).await;
    // A second call between two other accounts of the same network (every
    // test client is on 127.0.0.1): accepted, yet refused a relay.
    let mut carol = TestClient::join(sn.local_addr(), "carol").await;
    let mut dave = TestClient::join(sn.local_addr(), "dave").await;
    carol
        .ack(signal(12, "dave", Kind::Invite(CallInvite::default())))
        .await;
    dave.ack(signal(12, "carol", Kind::Accept(CallAccept::default())))
        .await;
    let refused = carol.request(allocate(12)).await;
    assert_eq!(error_code(&refused), Some(ErrorCode::RateLimited));
    assert_eq!(sn.udp_stats().allocations_refused, 1);
    assert_eq!(sn.udp_stats().allocations, 1);
    // The parties of the first call still get their sides.
    allocated(&mut alice, 11).await;
    allocated(&mut bob, 11).await;
}

/// The relay forwards on its own thread: with every worker of the runtime
/// the supernode runs on held busy (signaling load that does not yield),
/// relayed media still flows, both ways. (Before, the relay was a task on
/// that runtime and nothing was forwarded until a worker came free.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_while_the_runtime_is_busy() {
    let sns = cluster(1, |_| {}).await;
    let sn = &sns[0];
    let (_alice, _bob, a, b) = pair_on(sn, 21).await;
    let relay_addr = sn.reflector();
    let (a_sock, b_sock) = (udp().await, udp().await);
    assert_eq!(
        bind(&a_sock, relay_addr, &token(&a.token)).await,
        BindStatus::Bound
    );
    assert_eq!(
        bind(&b_sock, relay_addr, &token(&b.token)).await,
        BindStatus::Bound
    );
    let (a_sock, b_sock) = (a_sock.into_std().unwrap(), b_sock.into_std().unwrap());
    for s in [&a_sock, &b_sock] {
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    // Occupy both workers until released (the test body runs on its own
    // thread, outside the workers).
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(2);
    let release = std::sync::Arc::new(std::sync::Barrier::new(3));
    for _ in 0..2 {
        let (started, release) = (started_tx.clone(), std::sync::Arc::clone(&release));
        tokio::spawn(async move {
            started.send(()).unwrap();
            release.wait();
        });
    }
    for _ in 0..2 {
        started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("both workers blocked");
    }
    let mut buf = [0u8; 2048];
    let mut exchange = || {
        a_sock.send_to(&datagram(1, 58), relay_addr).unwrap();
        let (n, from) = b_sock
            .recv_from(&mut buf)
            .map_err(|e| format!("a->b: {e}"))?;
        if (&buf[..n], from) != (&datagram(1, 58)[..], relay_addr) {
            return Err(format!("a->b: {:?} from {from}", &buf[..n]));
        }
        b_sock.send_to(&datagram(2, 58), relay_addr).unwrap();
        let (n, from) = a_sock
            .recv_from(&mut buf)
            .map_err(|e| format!("b->a: {e}"))?;
        if (&buf[..n], from) != (&datagram(2, 58)[..], relay_addr) {
            return Err(format!("b->a: {:?} from {from}", &buf[..n]));
        }
        Ok::<(), String>(())
    };
    let result = exchange();
    release.wait();
    result.expect("relayed while every runtime worker was busy");
    assert_eq!(sn.udp_stats().forwarded, 2);
}
