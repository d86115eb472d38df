//! Liveness beacons (docs/PROTOCOL.md 7.5, "Liveness beacons") against real
//! supernodes on 127.0.0.1: a joined client's beacons are echoed, as long as
//! they are, and nothing else that looks like one is (another source IP, an
//! altered ticket, junk); a beaconing client that falls silent is ended as
//! dead within seconds, one that keeps beaconing stays, and an older client
//! that never said `beacons` is left alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Hello, TestClient, cluster};
use natter_proto::alive::{self, BEACON_LEN, EchoStatus, Ticket};
use natter_supernode::close;
use tokio::net::UdpSocket;

const BEACONS: Hello = Hello {
    acks_chat: false,
    beacons: true,
};

fn ticket_of(client: &TestClient) -> Ticket {
    Ticket::from_bytes(&client.accepted.alive_ticket).expect("JoinAccepted carries a ticket")
}

/// Sends `datagram` from `socket` and returns the answer, if one comes
/// within half a second.
async fn exchange(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Option<Vec<u8>> {
    socket.send_to(datagram, to).await.unwrap();
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await {
        Ok(Ok((n, from))) => {
            assert_eq!(from, to, "an answer from elsewhere");
            Some(buf[..n].to_vec())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_joined_clients_own_beacons_are_echoed() {
    let sns = cluster(1, |_| {}).await;
    let reflector = sns[0].reflector();
    let alice = TestClient::join_saying(sns[0].addr(), "alice", BEACONS).await;
    let ticket = ticket_of(&alice);
    // An older client's hello gets a ticket too (it just never uses it).
    let old = TestClient::join(sns[0].addr(), "dave").await;
    assert!(Ticket::from_bytes(&old.accepted.alive_ticket).is_some());
    assert_ne!(ticket_of(&old), ticket, "two sessions, two tickets");

    // alice's session comes from 127.0.0.1: her beacons from there are echoed.
    let from_alice = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let beacon = alive::encode_beacon(&ticket, 1, 0x0101, 0);
    let echo = exchange(&from_alice, reflector, &beacon)
        .await
        .expect("alice's beacon is echoed");
    assert_eq!(echo.len(), BEACON_LEN, "no larger than the beacon");
    let decoded = alive::decode(&echo).unwrap();
    assert_eq!(decoded.kind, EchoStatus::Alive as u8);
    assert_eq!((decoded.ticket, decoded.seq), (ticket, 1));

    // The attacker's attempts: the ticket from another IP (to reflect echoes
    // at a victim there), a ticket with a later expiry or another nonce, the
    // echo itself sent back, and beacon-shaped junk. None is answered.
    let elsewhere = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    assert_eq!(exchange(&elsewhere, reflector, &beacon).await, None);
    let mut later = ticket;
    later.expires += 3600;
    let mut other_nonce = ticket;
    other_nonce.nonce ^= 1;
    let mut junk = beacon;
    junk[8..24].fill(0xee);
    let attempts = [
        alive::encode_beacon(&later, 2, 0x0102, 0).to_vec(),
        alive::encode_beacon(&other_nonce, 3, 0x0103, 0).to_vec(),
        junk.to_vec(),
    ];
    for attempt in &attempts {
        assert_eq!(exchange(&from_alice, reflector, attempt).await, None);
    }
    // An echo is not a beacon: two supernodes cannot be set to echo each other.
    assert_eq!(exchange(&from_alice, reflector, &echo).await, None);

    let stats = sns[0].udp_stats();
    assert_eq!(stats.beacons, 1, "{stats:?}");
    assert_eq!(stats.beacons_refused, 4, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_beaconing_client_is_ended_one_that_beacons_stays_an_older_one_is_left_alone() {
    let sns = cluster(1, |_| {}).await;
    let reflector = sns[0].reflector();
    let quiet = TestClient::join_saying(sns[0].addr(), "carol", BEACONS).await;
    let lively = TestClient::join_saying(sns[0].addr(), "bob", BEACONS).await;
    let older = TestClient::join(sns[0].addr(), "dave").await;
    let ticket = ticket_of(&lively);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // bob beacons every 500 ms; carol and dave send nothing at all (their
    // QUIC endpoints still send keep-alives: the connections are up).
    let started = Instant::now();
    let mut seq = 0;
    let mut quiet = Some(quiet);
    let mut quiet_closed_after = None;
    while started.elapsed() < Duration::from_secs(9) {
        let beacon = alive::encode_beacon(&ticket, seq, 0x0200, 0);
        seq += 1;
        assert!(
            exchange(&socket, reflector, &beacon).await.is_some(),
            "bob's beacon {seq} was not echoed"
        );
        if quiet_closed_after.is_none() && quiet.as_ref().is_some_and(|q| q.conn.is_closed()) {
            quiet_closed_after = Some(started.elapsed());
            let code = TestClient::closed_code(&quiet.take().unwrap().conn).await;
            assert_eq!(code, Some(u64::from(close::DEAD)));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = quiet_closed_after.expect("the silent beaconing client was not ended");
    let silent = Duration::from_millis(alive::SILENT_AFTER_MS);
    assert!(
        after >= silent - Duration::from_millis(500),
        "ended too early: {after:?}"
    );
    assert!(!lively.conn.is_closed(), "a beaconing client was ended");
    assert!(!older.conn.is_closed(), "an older client was ended");
    assert_eq!(sns[0].core_stats().sessions_silent, 1);
    assert_eq!(sns[0].session_count(), 2);
}
