//! The liveness check of a QUIC session with a supernode: the I/O around
//! `natter_proto::alive::Liveness`.
//!
//! Every second a 40-byte beacon goes to the supernode's UDP service (the
//! reflector address of `JoinAccepted`), which echoes it; where the
//! supernode gave no ticket (an older one) or the beacons are never echoed,
//! a `Ping` request on the session instead. When nothing has been heard for
//! 3 s the session is closed: its push queue ends, and whoever reads it
//! (the overlay, `online`, a call) moves to an alternate supernode, as on any
//! lost connection. QUIC's own keep-alives then only hold the NAT mapping
//! (`TransportSettings::SESSION`). A TLS-over-TCP session needs no check:
//! both ends send keep-alive records every second.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use natter_net::Mux;
use natter_proto::alive::{Action, BEACON_LEN, DEAD_AFTER_MS, Liveness, Ticket};
use natter_proto::messages::{Ping, envelope};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The close code of a session whose supernode went silent (an application
/// code of our own; the supernode never sees it).
pub const SILENT: u32 = 0x51;

/// The running check; stops when dropped (with its session).
#[derive(Debug)]
pub(crate) struct LivenessTask {
    task: JoinHandle<()>,
    echoes: Arc<LastEcho>,
}

impl LivenessTask {
    /// When the supernode's UDP service last answered a beacon (`None`:
    /// never, or no beacons): UDP to it works both ways at that time.
    pub(crate) fn last_echo(&self) -> Option<std::time::Instant> {
        self.echoes.get()
    }
}

impl Drop for LivenessTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The time of the last authenticated echo, shared with the task.
#[derive(Debug)]
struct LastEcho {
    base: std::time::Instant,
    /// Milliseconds after `base`, plus one (0: none yet).
    ms: AtomicU64,
}

impl LastEcho {
    fn new() -> Self {
        Self {
            base: std::time::Instant::now(),
            ms: AtomicU64::new(0),
        }
    }

    fn record(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.ms.store(ms + 1, Ordering::Relaxed);
    }

    fn get(&self) -> Option<std::time::Instant> {
        match self.ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.base + Duration::from_millis(ms - 1)),
        }
    }
}

/// Starts checking the session of `mux` (held weakly: the check never keeps
/// a session open): beacons with `ticket` to `reflector`, else pings.
/// `local_ip`: the address the session's QUIC endpoint is bound to, when it
/// is bound to one (else the kernel picks the beacons' source as it picked
/// the session's).
pub(crate) fn spawn(
    mux: Weak<Mux>,
    reflector: Option<SocketAddr>,
    ticket: Option<Ticket>,
    local_ip: Option<IpAddr>,
) -> LivenessTask {
    let echoes = Arc::new(LastEcho::new());
    LivenessTask {
        task: tokio::spawn(run(mux, reflector, ticket, local_ip, echoes.clone())),
        echoes,
    }
}

/// A socket for beacons to `reflector`: any port, on the session's local
/// IP where the endpoint is bound to one (the ticket is for the IP the
/// supernode saw the session come from, so the beacons must leave the same
/// way), else the wildcard address of the reflector's family.
fn beacon_socket(reflector: SocketAddr, local_ip: Option<IpAddr>) -> Option<UdpSocket> {
    let ip = local_ip
        .filter(|ip| ip.is_ipv4() == reflector.is_ipv4())
        .unwrap_or(if reflector.is_ipv4() {
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        });
    let socket = StdUdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
    socket.set_nonblocking(true).ok()?;
    UdpSocket::from_std(socket).ok()
}

type PingReply = Pin<Box<dyn Future<Output = bool> + Send>>;

async fn run(
    mux: Weak<Mux>,
    reflector: Option<SocketAddr>,
    ticket: Option<Ticket>,
    local_ip: Option<IpAddr>,
    echoes: Arc<LastEcho>,
) {
    let beacons = match (reflector, ticket) {
        (Some(reflector), Some(_)) => beacon_socket(reflector, local_ip).map(|s| (s, reflector)),
        _ => None,
    };
    let start = Instant::now();
    let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut live = Liveness::new(ticket.filter(|_| beacons.is_some()), now_ms());
    let mut buf = [0u8; BEACON_LEN + 1];
    let mut ping: Option<PingReply> = None;
    let mut nonce = 0u64;
    loop {
        while let Some(action) = live.poll(now_ms(), rand::random()) {
            match action {
                Action::Beacon(beacon) => {
                    if let Some((socket, to)) = &beacons {
                        // A send that fails is a beacon lost: silence decides.
                        let _ = socket.send_to(&beacon, *to).await;
                    }
                }
                Action::Ping if ping.is_none() => {
                    let Some(mux) = mux.upgrade() else { return };
                    nonce += 1;
                    let body = envelope::Body::Ping(Ping { nonce });
                    let wait = Duration::from_millis(DEAD_AFTER_MS);
                    ping = Some(Box::pin(
                        async move { mux.request(body, wait).await.is_ok() },
                    ));
                }
                Action::Ping => {}
                Action::Dead => {
                    if let Some(mux) = mux.upgrade() {
                        mux.close(SILENT, b"supernode silent");
                    }
                    return;
                }
            }
        }
        match mux.upgrade() {
            Some(m) if !m.is_closed() => {}
            _ => return,
        }
        let wake = start + Duration::from_millis(live.poll_timeout());
        let woke = {
            let echo = async {
                match &beacons {
                    Some((socket, from)) => loop {
                        if let Ok((n, src)) = socket.recv_from(&mut buf).await
                            && src == *from
                        {
                            return n;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            let reply = async {
                match ping.as_mut() {
                    Some(p) => p.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => Woke::Timer,
                n = echo => Woke::Echo(n),
                ok = reply => Woke::Reply(ok),
            }
        };
        match woke {
            Woke::Timer => {}
            Woke::Echo(n) => {
                // Alive or expired, an echo of this session's ticket came
                // back over UDP.
                if live.handle_echo(&buf[..n], now_ms()) {
                    echoes.record();
                }
            }
            Woke::Reply(ok) => {
                ping = None;
                if ok {
                    live.handle_ping_reply(now_ms());
                }
            }
        }
    }
}

/// What woke the check.
enum Woke {
    Timer,
    Echo(usize),
    Reply(bool),
}

/// Whether `mux` is checked: a liveness task runs for QUIC sessions only.
pub(crate) fn needed(mux: &Arc<Mux>) -> bool {
    mux.connection().transport() == natter_net::Transport::Quic
}
