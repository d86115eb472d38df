//! Keep-alives on real QUIC endpoints on loopback: the dialer PINGs, the
//! accepting side does not (its acknowledgements are enough), an idle
//! connection stays up past the idle timeout, and a dialer that vanishes is
//! still noticed by the accepting side through the idle timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;

use natter_net::{TlsIdentity, TransportSettings};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A UDP wire between one client and `server` that can be cut: what is
/// sent to its address goes to the server from another socket, the answers
/// come back; once cut, nothing passes either way (a peer that vanished, or
/// a path that died, without a word).
async fn wire(server: SocketAddr) -> (SocketAddr, Arc<AtomicBool>) {
    let front = Arc::new(UdpSocket::bind(loopback()).await.unwrap());
    let back = Arc::new(UdpSocket::bind(loopback()).await.unwrap());
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let client = Arc::new(tokio::sync::Mutex::new(None::<SocketAddr>));
    let (f, b, c, k) = (front.clone(), back.clone(), client.clone(), cut.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().await = Some(from);
            if !k.load(Ordering::Relaxed) {
                let _ = b.send_to(&buf[..n], server).await;
            }
        }
    });
    let k = cut.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let to = *client.lock().await;
            if let (Some(to), false) = (to, k.load(Ordering::Relaxed)) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    (addr, cut)
}

#[tokio::test]
async fn only_the_dialer_pings_and_both_ends_still_see_liveness_and_death() {
    let settings = TransportSettings::OVERLAY;
    let identity = TlsIdentity::generate("natter-test").unwrap();
    let server = natter_net::server_endpoint(loopback(), &identity, &settings).unwrap();
    let addr = server.local_addr().unwrap();
    let accepting = server.clone();
    let accepted = tokio::spawn(async move {
        let incoming = natter_net::accept_validated(&accepting).await.unwrap();
        incoming.await.unwrap()
    });
    let (via, cut) = wire(addr).await;
    let client = natter_net::client_endpoint(loopback(), &settings).unwrap();
    let dialed = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect(via, "natter-test").unwrap(),
    )
    .await
    .expect("connects in time")
    .unwrap();
    let served = accepted.await.unwrap();

    // Idle for longer than the idle timeout: both ends stay up, kept alive
    // by the dialer's PINGs alone.
    let idle = settings.idle_timeout + settings.keep_alive * 2;
    tokio::time::sleep(idle).await;
    assert!(
        dialed.close_reason().is_none(),
        "{:?}",
        dialed.close_reason()
    );
    assert!(
        served.close_reason().is_none(),
        "{:?}",
        served.close_reason()
    );
    // PINGs other than path-MTU probes (which are PING + PADDING, sent a
    // few times after the handshake by both sides).
    let keepalives = |c: &quinn::Connection| {
        let stats = c.stats();
        stats.frame_tx.ping - stats.path.sent_plpmtud_probes
    };
    let pings_dialed = keepalives(&dialed);
    assert!(
        pings_dialed >= 2,
        "the dialer sent {pings_dialed} keep-alive PINGs in {idle:?}"
    );
    assert_eq!(keepalives(&served), 0, "the accepting side sends no PINGs");
    assert!(
        served.stats().frame_rx.ping >= pings_dialed,
        "the accepting side got the PINGs"
    );

    // The path dies without a word: each end notices through its idle
    // timeout, the accepting side with no PINGs of its own.
    cut.store(true, Ordering::Relaxed);
    for (end, conn) in [("accepting", &served), ("dialing", &dialed)] {
        let reason = tokio::time::timeout(settings.idle_timeout * 4, conn.closed())
            .await
            .unwrap_or_else(|_| panic!("the {end} side notices the silence"));
        assert!(
            matches!(reason, quinn::ConnectionError::TimedOut),
            "{end}: {reason:?}"
        );
    }
    assert_eq!(keepalives(&served), 0);
}
