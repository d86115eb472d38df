//! Amplification per unauthenticated service (issue 14): how many bytes a
//! real `natter-login` and `natter-supernode` on loopback send toward a
//! source that never completes anything (it stands for a spoofed victim),
//! per byte that source sent.
//!
//! Counted are UDP payloads (QUIC, STUN, relay) and TCP payloads (TLS), not
//! IP/UDP/TCP headers. Every datagram that comes back within the listening
//! window is counted, retransmissions included, from any source address (a
//! STUN CHANGE-REQUEST is answered from the alternate port).
//!
//! | row | what is sent | target |
//! |---|---|---|
//! | STUN | a Binding request: plain (20 bytes), padded (RFC 5780 PADDING), with CHANGE-REQUEST | 1.6 |
//! | relay bind | a bind-sized `NRLY` datagram that is not a bind; a well-formed bind with an unknown token (zero cookie); the same bind echoing the cookie of the reply (a prober at its own address) | 1.0 |
//! | liveness beacon | a beacon whose ticket was not issued to the prober's IP | 1.0 (no answer) |
//! | QUIC Initial | a real client Initial (quinn-proto, 1200 bytes) to the supernode and to the login server, never answered | 1.0 |
//! | gossip | a completed QUIC connection (its address validated) sending gossip listing victim addresses, without `LinkHello` or with a `LinkHello` without certificate: bytes to the victims per byte sent | 1.0 |
//! | TLS over TCP | after `connect`: what the server sends before the client's first byte, then its answer to a real ClientHello | before the ClientHello: 1.0; after it: none (the TCP handshake proved the address) |
//!
//! What is not measured: the kernel's SYN-ACKs to a spoofed SYN (a TCP
//! listener answers a SYN with a SYN-ACK of about its size and retransmits
//! it `net.ipv4.tcp_synack_retries` times, SYN cookies under a flood); that
//! is the operating system's, before any Natter code runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, GossipMembership, LinkHello, Member, MemberState};
use natter_proto::{relay, stun};
use serde::Serialize;

/// STUN's target: an answer at most 1.6 times its request.
pub const STUN_TARGET: f64 = 1.6;
/// Everything else before authentication: no more out than in.
pub const OTHER_TARGET: f64 = 1.0;

/// Why a measurement could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AmpError {
    /// A binary is not where it was looked for.
    #[error("{0} is missing (build it: cargo build --workspace --bins)")]
    MissingBinary(PathBuf),
    /// A server process could not be started or did not become ready.
    #[error("server not ready: {0}")]
    NotReady(String),
    /// Socket or file trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// QUIC or TLS set-up failed.
    #[error("{0}")]
    Protocol(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AmpError {
    let what = what.into();
    move |source| AmpError::Io { what, source }
}

/// One measured service.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The service and what was sent to it.
    pub service: String,
    /// Bytes the (victim) source sent.
    pub bytes_in: u64,
    /// Bytes sent back toward the source (or, for gossip, to the listed
    /// third parties).
    pub bytes_out: u64,
    /// `bytes_out / bytes_in` (0 when nothing went either way).
    pub ratio: f64,
    /// The most `ratio` may be, when the row has a target.
    pub target: Option<f64>,
    /// Datagrams (or TCP reads) that came back.
    pub packets_out: u64,
    /// What the figures mean, when not obvious.
    pub note: String,
}

impl Row {
    fn new(service: &str, bytes_in: u64, (bytes_out, packets_out): (u64, u64)) -> Self {
        let ratio = match (bytes_in, bytes_out) {
            (_, 0) => 0.0,
            (0, _) => f64::INFINITY,
            (i, o) => o as f64 / i as f64,
        };
        Self {
            service: service.to_owned(),
            bytes_in,
            bytes_out,
            ratio,
            target: None,
            packets_out,
            note: String::new(),
        }
    }

    fn target(mut self, target: f64) -> Self {
        self.target = Some(target);
        self
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Whether the row meets its target (rows without one always do).
    pub fn within_target(&self) -> bool {
        self.target.is_none_or(|t| self.ratio <= t)
    }
}

/// The whole measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One row per service and probe.
    pub rows: Vec<Row>,
    /// How long each UDP probe listened for answers.
    pub window_ms: u64,
}

impl Report {
    /// The row whose service starts with `prefix`.
    pub fn row(&self, prefix: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.service.starts_with(prefix))
    }

    /// A plain-text table: service, bytes in, bytes out, ratio, target.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<70} {:>8} {:>9} {:>6} {:>7} {:>6}  {}\n",
            "service", "bytes in", "bytes out", "pkts", "ratio", "target", "note"
        );
        for r in &self.rows {
            let target = r
                .target
                .map_or_else(|| "-".to_owned(), |t| format!("{t:.1}"));
            let verdict = if r.within_target() { "" } else { " OVER" };
            out.push_str(&format!(
                "{:<70} {:>8} {:>9} {:>6} {:>7.2} {:>6}{verdict}  {}\n",
                r.service, r.bytes_in, r.bytes_out, r.packets_out, r.ratio, target, r.note
            ));
        }
        out
    }
}

/// What to run the measurement against.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where `natter-login` and `natter-supernode` are.
    pub bin_dir: PathBuf,
    /// How long each UDP probe listens for answers (QUIC retransmits after
    /// about 1 s, then 2 s, ...).
    pub window: Duration,
}

/// Starts a login server and one enrolled supernode (QUIC and TLS over TCP)
/// on loopback, measures every service, stops them.
pub fn run(opts: &Options) -> Result<Report, AmpError> {
    let servers = Servers::start(&opts.bin_dir)?;
    let w = opts.window;
    let sn = servers.supernode;
    let udp = SocketAddr::new(sn.ip(), sn.port() + 1);
    let mut rows = Vec::new();

    // STUN on the supernode's UDP service.
    let mut bare = Vec::with_capacity(stun::HEADER_LEN);
    bare.extend_from_slice(&stun::BINDING_REQUEST.to_be_bytes());
    bare.extend_from_slice(&0u16.to_be_bytes());
    bare.extend_from_slice(&stun::MAGIC_COOKIE.to_be_bytes());
    bare.extend_from_slice(&rand::random::<[u8; 12]>());
    rows.push(
        Row::new(
            "STUN binding request (bare 20-byte header)",
            len(&bare),
            udp_probe(udp, &[bare], w)?,
        )
        .target(STUN_TARGET),
    );
    let plain = stun::Message::request(rand::random()).encode();
    rows.push(
        Row::new(
            "STUN binding request (Natter plain)",
            len(&plain),
            udp_probe(udp, &[plain], w)?,
        )
        .target(STUN_TARGET),
    );
    let mut padded = stun::Message::request(rand::random());
    padded.pad_to(stun::PADDED_REQUEST_LEN);
    let padded = padded.encode();
    rows.push(
        Row::new(
            "STUN binding request (padded)",
            len(&padded),
            udp_probe(udp, &[padded], w)?,
        )
        .target(STUN_TARGET),
    );
    let mut change = stun::Message::request(rand::random());
    change.change_port = true;
    let change = change.encode();
    rows.push(
        Row::new(
            "STUN binding request (CHANGE-REQUEST port)",
            len(&change),
            udp_probe(udp, &[change], w)?,
        )
        .target(STUN_TARGET),
    );

    // Relay binds on the same socket.
    let token: relay::Token = rand::random();
    let mut bogus = relay::encode_bind(&token, &[0; relay::COOKIE_LEN], 1, 0);
    bogus[natter_proto::som::HEADER_LEN + 4] ^= 0x7f; // not the bind kind
    rows.push(
        Row::new(
            "relay bind (bogus: bind-sized, not a bind)",
            len(&bogus),
            udp_probe(udp, &[bogus], w)?,
        )
        .target(OTHER_TARGET),
    );
    let unknown = relay::encode_bind(&rand::random(), &[0; relay::COOKIE_LEN], 2, 0);
    rows.push(
        Row::new(
            "relay bind (well-formed, unknown token)",
            len(&unknown),
            udp_probe(udp, &[unknown], w)?,
        )
        .target(OTHER_TARGET),
    );
    rows.push(relay_echo(udp, w)?.target(OTHER_TARGET));

    // A liveness beacon with a ticket that is not this source's (a prober
    // without a session): no answer at all.
    let forged = natter_proto::alive::Ticket {
        mac: rand::random(),
        expires: u32::MAX,
        nonce: rand::random(),
    };
    let beacon = natter_proto::alive::encode_beacon(&forged, 0, 5, 0);
    rows.push(
        Row::new(
            "liveness beacon (ticket not issued to the source)",
            len(&beacon),
            udp_probe(udp, &[beacon.to_vec()], w)?,
        )
        .target(OTHER_TARGET),
    );

    // QUIC Initials, never answered.
    for (name, addr) in [("supernode", sn), ("login server", servers.login)] {
        let initial = quic_initial(addr)?;
        rows.push(
            Row::new(
                &format!("QUIC Initial to the {name}"),
                len(&initial),
                udp_probe(addr, &[initial], w)?,
            )
            .target(OTHER_TARGET)
            .note("every datagram back, retransmissions included"),
        );
    }

    // Gossip to the supernode without a supernode certificate.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("tokio runtime"))?;
    for with_hello in [false, true] {
        rows.push(
            runtime
                .block_on(gossip_probe(sn, with_hello, w))?
                .target(OTHER_TARGET),
        );
    }

    // TLS over TCP on both servers.
    for (name, addr) in [("supernode", sn), ("login server", servers.login)] {
        let (before, after, hello) = tls_probe(addr)?;
        rows.push(
            Row::new(
                &format!("TLS/TCP {name}: before the ClientHello"),
                0,
                before,
            )
            .target(OTHER_TARGET)
            .note("after connect, nothing sent"),
        );
        rows.push(
            Row::new(
                &format!("TLS/TCP {name}: answer to a ClientHello"),
                hello,
                after,
            )
            .note("not spoofable: the TCP handshake proved the address"),
        );
    }
    drop(servers);
    Ok(Report {
        rows,
        window_ms: u64::try_from(w.as_millis()).unwrap_or(u64::MAX),
    })
}

/// Bytes and datagrams (or reads) that came back.
type Counted = (u64, u64);

fn len(bytes: &[u8]) -> u64 {
    bytes.len() as u64
}

/// A fresh socket on loopback that sends `datagrams` to `to` and counts
/// every datagram arriving within `window` (bytes, datagrams). It never
/// answers.
fn udp_probe(
    to: SocketAddr,
    datagrams: &[Vec<u8>],
    window: Duration,
) -> Result<(u64, u64), AmpError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(io("bind a probe socket"))?;
    for d in datagrams {
        socket.send_to(d, to).map_err(io(format!("send to {to}")))?;
    }
    count_until(&socket, Instant::now() + window)
}

fn count_until(socket: &UdpSocket, deadline: Instant) -> Result<(u64, u64), AmpError> {
    let (mut bytes, mut packets) = (0, 0);
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok((bytes, packets));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(io("set a timeout"))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                bytes += n as u64;
                packets += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // ICMP port unreachable surfaces as ConnectionRefused on Linux.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(io("receive")(e)),
        }
    }
}

/// A bind with an unknown token, then the same bind echoing the cookie of
/// the reply (what a prober at its own address can do): both replies count.
fn relay_echo(to: SocketAddr, window: Duration) -> Result<Row, AmpError> {
    let socket = UdpSocket::bind("127.0.0.1:0").map_err(io("bind a probe socket"))?;
    let token: relay::Token = rand::random();
    let first = relay::encode_bind(&token, &[0; relay::COOKIE_LEN], 3, 0);
    socket.send_to(&first, to).map_err(io("send a bind"))?;
    socket
        .set_read_timeout(Some(window))
        .map_err(io("set a timeout"))?;
    let mut buf = [0u8; 2048];
    let (n, _) = socket
        .recv_from(&mut buf)
        .map_err(io("the relay's bind reply"))?;
    let reply = relay::decode_bind_reply(&buf[..n])
        .map_err(|e| AmpError::Protocol(format!("bind reply: {e}")))?;
    let second = relay::encode_bind(&token, &reply.cookie, 4, 0);
    socket.send_to(&second, to).map_err(io("send a bind"))?;
    let (more, packets) = count_until(&socket, Instant::now() + window)?;
    Ok(Row::new(
        "relay bind (unknown token, echoing its cookie)",
        len(&first) + len(&second),
        (n as u64 + more, 1 + packets),
    ))
}

/// The first datagram of a real QUIC client (quinn-proto, Natter's client
/// configuration): a padded Initial carrying the ClientHello.
fn quic_initial(to: SocketAddr) -> Result<Vec<u8>, AmpError> {
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let config = natter_net::insecure_client_config(&natter_net::TransportSettings::OVERLAY)
        .map_err(|e| AmpError::Protocol(e.to_string()))?;
    let now = Instant::now();
    let (_, mut conn) = endpoint
        .connect(now, config, to, "natter")
        .map_err(|e| AmpError::Protocol(format!("QUIC connect: {e}")))?;
    let mut buf = Vec::new();
    let transmit = conn
        .poll_transmit(now, 1, &mut buf)
        .ok_or_else(|| AmpError::Protocol("no QUIC Initial to send".to_owned()))?;
    buf.truncate(transmit.size);
    Ok(buf)
}

/// A QUIC connection to the supernode (it completes: QUIC validated the
/// address) that sends gossip listing victim addresses, first without any
/// `LinkHello` or with a `LinkHello` carrying no certificate. Bytes out are
/// what the victims receive; the reply to the connection itself (handshake,
/// close) is in the note.
async fn gossip_probe(sn: SocketAddr, with_hello: bool, window: Duration) -> Result<Row, AmpError> {
    const VICTIMS: usize = 16;
    let mut victims = Vec::with_capacity(VICTIMS);
    for _ in 0..VICTIMS {
        victims.push(UdpSocket::bind("127.0.0.1:0").map_err(io("bind a victim socket"))?);
    }
    let members = victims
        .iter()
        .map(|v| {
            Ok(Member {
                node_id: rand::random::<[u8; 32]>().to_vec(),
                addr: Some(v.local_addr().map_err(io("victim address"))?.into()),
                incarnation: 1,
                state: MemberState::Alive as i32,
                tcp: None,
                certificate: None,
            })
        })
        .collect::<Result<Vec<_>, AmpError>>()?;
    let gossip = Envelope::new(
        0,
        Body::GossipMembership(GossipMembership {
            sender_id: rand::random::<[u8; 32]>().to_vec(),
            members,
        }),
    );
    let mut frames = Vec::new();
    if with_hello {
        frames.push(Envelope::new(
            0,
            Body::LinkHello(LinkHello {
                certificate: None,
                signature: vec![0; 64],
                role: natter_proto::binding::LinkRole::Dialler as u32,
            }),
        ));
    }
    frames.push(gossip);
    let protocol = |e: &dyn std::fmt::Display| AmpError::Protocol(e.to_string());
    let endpoint = natter_net::client_endpoint(
        "127.0.0.1:0".parse().map_err(|e| protocol(&e))?,
        &natter_net::TransportSettings::OVERLAY,
    )
    .map_err(|e| protocol(&e))?;
    let conn = endpoint
        .connect(sn, "natter-supernode")
        .map_err(|e| protocol(&e))?
        .await
        .map_err(|e| protocol(&e))?;
    let (send, _recv) = conn.open_bi().await.map_err(|e| protocol(&e))?;
    let mut send = natter_net::FramedSend::new(send);
    for frame in &frames {
        // The supernode may close before the second frame: that is the point.
        if send.send(frame).await.is_err() {
            break;
        }
    }
    let closed = tokio::time::timeout(window, conn.closed()).await.is_ok();
    let stats = conn.stats();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    // Whatever the supernode sent the victims by now, or sends within the window.
    let deadline = Instant::now() + window;
    let (mut bytes, mut packets) = (0, 0);
    for v in &victims {
        let (b, p) = count_until(v, deadline)?;
        bytes += b;
        packets += p;
    }
    let what = if with_hello {
        "gossip after a LinkHello without certificate"
    } else {
        "gossip without a LinkHello"
    };
    Ok(Row::new(
        &format!("{what} (to {VICTIMS} listed addresses)"),
        stats.udp_tx.bytes,
        (bytes, packets),
    )
    .note(format!(
        "{}; the validated sender got {} bytes back",
        if closed { "refused" } else { "NOT closed" },
        stats.udp_rx.bytes
    )))
}

/// TLS over TCP at `to`: bytes the server sends in the second after
/// `connect` before the client sends anything, then its answer to a real
/// ClientHello (until a second of silence): ((bytes, reads) before,
/// (bytes, reads) after, ClientHello bytes).
fn tls_probe(to: SocketAddr) -> Result<(Counted, Counted, u64), AmpError> {
    const QUIET: Duration = Duration::from_secs(1);
    let mut stream = TcpStream::connect(to).map_err(io(format!("connect to {to}")))?;
    let before = read_until_quiet(&mut stream, QUIET)?;
    let config = natter_net::tls::insecure_client_tls_config()
        .map_err(|e| AmpError::Protocol(e.to_string()))?;
    let name = rustls::pki_types::ServerName::try_from("natter")
        .map_err(|e| AmpError::Protocol(e.to_string()))?;
    let mut client = rustls::ClientConnection::new(config, name)
        .map_err(|e| AmpError::Protocol(e.to_string()))?;
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).map_err(io("ClientHello"))?;
    }
    stream
        .write_all(&hello)
        .map_err(io("send the ClientHello"))?;
    let after = read_until_quiet(&mut stream, QUIET)?;
    Ok((before, after, len(&hello)))
}

fn read_until_quiet(stream: &mut TcpStream, quiet: Duration) -> Result<(u64, u64), AmpError> {
    stream
        .set_read_timeout(Some(quiet))
        .map_err(io("set a timeout"))?;
    let (mut bytes, mut reads) = (0, 0);
    let mut buf = [0u8; 16_384];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok((bytes, reads)),
            Ok(n) => {
                bytes += n as u64;
                reads += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok((bytes, reads));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok((bytes, reads)),
            Err(e) => return Err(io("read")(e)),
        }
    }
}

/// A login server and one enrolled supernode on loopback, stopped (and
/// their directory removed) on drop.
struct Servers {
    dir: PathBuf,
    children: Vec<Child>,
    login: SocketAddr,
    supernode: SocketAddr,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Servers {
    fn start(bin_dir: &Path) -> Result<Self, AmpError> {
        let bin = |name: &str| {
            let path = bin_dir.join(name);
            if path.exists() {
                Ok(path)
            } else {
                Err(AmpError::MissingBinary(path))
            }
        };
        let (login_bin, sn_bin) = (bin("natter-login")?, bin("natter-supernode")?);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!("natter-amp-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut servers = Self {
            dir,
            children: Vec::new(),
            login: free_addr()?,
            supernode: "127.0.0.1:0"
                .parse()
                .map_err(|_| AmpError::NotReady("address".into()))?,
        };
        let login_dir = servers.dir.join("login");
        let log = |name: &str| -> Result<Stdio, AmpError> {
            let f = std::fs::File::create(servers.dir.join(name)).map_err(io("log file"))?;
            Ok(Stdio::from(f))
        };
        let login_log = log("login.log")?;
        let child = Command::new(&login_bin)
            .args(["serve", "--listen", &servers.login.to_string()])
            .args(["--tcp-listen", &servers.login.to_string(), "--data-dir"])
            .arg(&login_dir)
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .stdout(Stdio::null())
            .stderr(login_log)
            .spawn()
            .map_err(io("start natter-login"))?;
        servers.children.push(child);
        let login_key = login_dir.join("login-key.pub");
        let db = login_dir.join("natter-login.db");
        wait_for(
            || login_key.exists() && db.exists(),
            "natter-login's key and database",
        )?;
        let token = Command::new(&login_bin)
            .args(["supernodes", "token", "--data-dir"])
            .arg(&login_dir)
            .output()
            .map_err(io("natter-login supernodes token"))?;
        if !token.status.success() {
            return Err(AmpError::NotReady(format!(
                "natter-login supernodes token: {}",
                String::from_utf8_lossy(&token.stderr)
            )));
        }
        let token = String::from_utf8_lossy(&token.stdout).trim().to_owned();
        servers.supernode = free_addr()?;
        let sn = servers.supernode.to_string();
        let sn_log_path = servers.dir.join("sn.log");
        let sn_log = log("sn.log")?;
        let child = Command::new(&sn_bin)
            .args(["--enrol", &token, "--listen", &sn, "--tcp-listen", &sn])
            .args(["--login", &servers.login.to_string(), "--login-key"])
            .arg(&login_key)
            .arg("--data-dir")
            .arg(servers.dir.join("sn"))
            .stdout(Stdio::null())
            .stderr(sn_log)
            .spawn()
            .map_err(io("start natter-supernode"))?;
        servers.children.push(child);
        wait_for(
            || {
                std::fs::read_to_string(&sn_log_path)
                    .is_ok_and(|t| t.contains("supernode certificate installed"))
            },
            "the supernode's certificate",
        )?;
        Ok(servers)
    }
}

/// A loopback address whose port is free for UDP and TCP, with the next two
/// UDP ports free too (a supernode's STUN/relay and alternate STUN sockets).
fn free_addr() -> Result<SocketAddr, AmpError> {
    for _ in 0..100 {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(io("find a free port"))?;
        let port = socket.local_addr().map_err(io("find a free port"))?.port();
        let next_free = (1..=2).all(|k| {
            port.checked_add(k)
                .is_some_and(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        });
        if next_free && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
        }
    }
    Err(AmpError::NotReady("no free port triple on loopback".into()))
}

fn wait_for(mut ready: impl FnMut() -> bool, what: &str) -> Result<(), AmpError> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(AmpError::NotReady(format!("{what} not ready after 60 s")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
