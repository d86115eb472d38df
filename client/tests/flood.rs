//! A flood from one source against a whole network of real processes (the
//! `natter-login` and `natter-supernode` binaries on loopback), and an honest
//! user who still logs in, registers, joins, chats and calls through it.
//!
//! The flooder is a task of this test sending from ONE address, 127.0.9.1
//! (loopback answers all of 127/8; it is another /24 source prefix than the
//! honest users' 127.0.0.1), for a bounded time and a bounded count of
//! everything at once:
//! - UDP junk, STUN Binding requests and relay binds with bogus tokens (each
//!   cookie the relay hands back echoed once) at every UDP port of every
//!   supernode and at the login server's;
//! - QUIC Initials that never finish (real Initials, made by a QUIC client
//!   aimed at a socket of the test and replayed at the servers from a plain
//!   UDP socket that never answers), and QUIC connections that finish the
//!   handshake but never say hello, held open;
//! - TCP connections to the TLS listeners that send nothing or garbage,
//!   held as long as the servers let them;
//! - wrong-password logins for the honest user's own name, logins for it
//!   with a forged proof of possession, and registrations of fresh names, at
//!   the login server.
//!
//! The test asserts the honest user's path end to end (the call's received
//! audio scored against the sent speech as `voice.rs` does) and that the
//! flood happened and was limited (refusals the flooder saw), so it cannot
//! pass on an empty flood. The counts and the honest user's times are
//! printed (`-- --nocapture`) as figures, not asserted; the ignored test
//! `the_same_user_path_without_a_flood` gives the times without the flood.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::call::{call, field, speech};
use common::{Cluster, assert_ok};
use natter_media::score;
use natter_media::wav::read_mono_48k;
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{Envelope, ErrorCode, LoginRequest, RegisterRequest};
use natter_proto::{binding, cert, relay, stun};
use rand::{Rng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

/// The flooder's one source address.
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 1);
/// The flood stops at the latest this long after it started.
const FLOOD_MAX: Duration = Duration::from_secs(45);
/// At most this many of each kind of thing are sent.
const MAX_DATAGRAMS: u64 = 200_000;
const MAX_INITIALS: u64 = 6_000;
const MAX_CONNECTIONS: u64 = 40_000;
const MAX_LOGIN_ATTEMPTS: u64 = 3_000;
/// UDP datagrams per burst, and bursts per second (about 5,000 a second).
const UDP_BURST: usize = 50;
const UDP_PERIOD: Duration = Duration::from_millis(10);
/// Workers holding connections, per listener.
const TCP_WORKERS: usize = 100;
const QUIC_WORKERS: usize = 80;
/// Workers sending login and registration requests.
const LOGIN_WORKERS: usize = 6;
/// A silent connection closed by the server sooner than this (its handshake
/// timeout is 10 s) was refused for its address, not timed out.
const REFUSED_WITHIN: Duration = Duration::from_millis(1000);

const LIMIT: Duration = Duration::from_secs(30);

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// What the flooder sent and what came back.
#[derive(Debug, Default)]
struct FloodStats {
    udp_sent: AtomicU64,
    udp_bytes_sent: AtomicU64,
    stun_sent: AtomicU64,
    binds_sent: AtomicU64,
    stun_answers: AtomicU64,
    bind_cookie_replies: AtomicU64,
    bind_refusals: AtomicU64,
    udp_other_answers: AtomicU64,
    udp_bytes_received: AtomicU64,
    initials_sent: AtomicU64,
    initial_answers: AtomicU64,
    initial_bytes_received: AtomicU64,
    quic_attempts: AtomicU64,
    quic_established: AtomicU64,
    quic_refused: AtomicU64,
    tcp_attempts: AtomicU64,
    tcp_silent_refused: AtomicU64,
    tcp_silent_held: AtomicU64,
    tcp_garbage_closed: AtomicU64,
    tcp_connect_failed: AtomicU64,
    logins_sent: AtomicU64,
    logins_wrong_password: AtomicU64,
    logins_throttled: AtomicU64,
    forged_logins_sent: AtomicU64,
    forged_logins_refused: AtomicU64,
    registrations_sent: AtomicU64,
    registrations_ok: AtomicU64,
    registrations_throttled: AtomicU64,
    login_requests_other: AtomicU64,
    login_requests_unanswered: AtomicU64,
}

impl FloodStats {
    fn report(&self, secs: f64) -> String {
        format!(
            "flood from {FLOODER} for {secs:.1} s:\n\
             UDP: {} datagrams ({} B; {} STUN requests, {} relay binds); back: {} STUN answers, \
             {} bind cookie replies, {} bind refusals, {} other ({} B)\n\
             QUIC Initials never finished: {} sent, {} datagrams back ({} B)\n\
             QUIC connections never saying hello: {} attempts, {} established, {} refused\n\
             TCP to TLS listeners: {} attempts, silent: {} refused at once, {} held until timeout; \
             {} garbage closed; {} connect failures\n\
             login server: {} wrong-password logins ({} WRONG_PASSWORD, {} THROTTLED), \
             {} registrations ({} created, {} THROTTLED), {} logins with a forged proof \
             ({} CERTIFICATE_REJECTED), {} other replies, {} unanswered \
             (connection refused or timed out)",
            get(&self.udp_sent),
            get(&self.udp_bytes_sent),
            get(&self.stun_sent),
            get(&self.binds_sent),
            get(&self.stun_answers),
            get(&self.bind_cookie_replies),
            get(&self.bind_refusals),
            get(&self.udp_other_answers),
            get(&self.udp_bytes_received),
            get(&self.initials_sent),
            get(&self.initial_answers),
            get(&self.initial_bytes_received),
            get(&self.quic_attempts),
            get(&self.quic_established),
            get(&self.quic_refused),
            get(&self.tcp_attempts),
            get(&self.tcp_silent_refused),
            get(&self.tcp_silent_held),
            get(&self.tcp_garbage_closed),
            get(&self.tcp_connect_failed),
            get(&self.logins_sent),
            get(&self.logins_wrong_password),
            get(&self.logins_throttled),
            get(&self.registrations_sent),
            get(&self.registrations_ok),
            get(&self.registrations_throttled),
            get(&self.forged_logins_sent),
            get(&self.forged_logins_refused),
            get(&self.login_requests_other),
            get(&self.login_requests_unanswered),
        )
    }
}

/// The flooder: tasks on a runtime of its own, stopped (and every socket
/// closed) when dropped, also when the test fails.
struct Flood {
    runtime: Option<tokio::runtime::Runtime>,
    stats: Arc<FloodStats>,
    stop: Arc<AtomicBool>,
    started: Instant,
}

/// Where the flood goes.
struct Targets {
    /// Every UDP port of every server: QUIC, STUN and relay, alternate STUN.
    udp: Vec<SocketAddr>,
    /// The QUIC listeners.
    quic_supernodes: Vec<SocketAddr>,
    quic_login: SocketAddr,
    /// The TLS-over-TCP listeners.
    tcp: Vec<SocketAddr>,
    login: SocketAddr,
    login_key: rsa::RsaPublicKey,
    /// The honest user whose password is guessed.
    victim: String,
}

impl Flood {
    fn start(targets: Targets) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let stats = Arc::new(FloodStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let deadline = started + FLOOD_MAX;
        let running = Running {
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            deadline,
        };
        let targets = Arc::new(targets);
        let entered = runtime.enter();
        runtime.spawn(udp_flood(running.clone(), Arc::clone(&targets)));
        runtime.spawn(initials_flood(running.clone(), Arc::clone(&targets)));
        for &addr in &targets.quic_supernodes {
            let endpoint = flooder_quic_endpoint();
            for _ in 0..QUIC_WORKERS {
                runtime.spawn(quic_hold(running.clone(), endpoint.clone(), addr));
            }
        }
        for (i, &addr) in targets.tcp.iter().enumerate() {
            for w in 0..TCP_WORKERS {
                runtime.spawn(tcp_hold(running.clone(), addr, (i + w) % 2 == 0));
            }
        }
        runtime.spawn(login_flood(running, targets));
        drop(entered);
        Self {
            runtime: Some(runtime),
            stats,
            stop,
            started,
        }
    }

    /// Waits until every part of the flood has reached the servers.
    fn wait_engaged(&self) {
        let s = &self.stats;
        common::wait_for(
            || {
                get(&s.udp_sent) >= 1000
                    && get(&s.stun_answers) > 0
                    && get(&s.initials_sent) >= 50
                    && get(&s.quic_established) > 0
                    && get(&s.tcp_attempts) >= 100
                    && get(&s.logins_sent) + get(&s.registrations_sent) >= 4
            },
            "the flood",
        );
    }

    /// Whether the flood still runs (it did not hit its time bound).
    fn running(&self) -> bool {
        self.started.elapsed() < FLOOD_MAX && !self.stop.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns how long it ran.
    fn stop(&mut self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        elapsed
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct Running {
    stats: Arc<FloodStats>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl Running {
    fn on(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }
}

fn flooder_addr() -> SocketAddr {
    SocketAddr::from((FLOODER, 0))
}

fn flooder_quic_endpoint() -> quinn::Endpoint {
    natter_net::client_endpoint(flooder_addr(), &natter_net::TransportSettings::OVERLAY).unwrap()
}

/// UDP junk, STUN Binding requests and relay binds with random tokens, in
/// bursts, at every UDP port; a receiver counts what comes back and echoes
/// each bind cookie once (so the bogus token reaches the token lookup).
async fn udp_flood(run: Running, targets: Arc<Targets>) {
    let socket = Arc::new(UdpSocket::bind(flooder_addr()).await.unwrap());
    let receiver = {
        let (socket, run) = (Arc::clone(&socket), run.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let s = &run.stats;
                s.udp_bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                let answer = &buf[..n];
                if n >= stun::HEADER_LEN
                    && u16::from_be_bytes([answer[0], answer[1]]) == stun::BINDING_SUCCESS
                {
                    count(&s.stun_answers);
                } else if let Ok(reply) = relay::decode_bind_reply(answer) {
                    if reply.status == relay::BindStatus::Cookie {
                        count(&s.bind_cookie_replies);
                        if run.on() {
                            let bind = relay::encode_bind(&reply.token, &reply.cookie, 7, 0);
                            let _ = socket.send_to(&bind, from).await;
                            count(&s.binds_sent);
                            count(&s.udp_sent);
                        }
                    } else {
                        count(&s.bind_refusals);
                    }
                } else {
                    count(&s.udp_other_answers);
                }
            }
        })
    };
    let mut rng = rand::rngs::OsRng;
    let mut i = 0u64;
    while run.on() && get(&run.stats.udp_sent) < MAX_DATAGRAMS {
        for _ in 0..UDP_BURST {
            let to = targets.udp[(i as usize) % targets.udp.len()];
            let datagram = match (i / targets.udp.len() as u64) % 4 {
                0 => {
                    let mut junk = vec![0u8; rng.gen_range(1..=300)];
                    rng.fill_bytes(&mut junk);
                    junk
                }
                1 => {
                    count(&run.stats.stun_sent);
                    stun::Message::request(rng.r#gen()).encode()
                }
                kind => {
                    count(&run.stats.binds_sent);
                    let cookie = if kind == 2 { [0; 16] } else { rng.r#gen() };
                    relay::encode_bind(&rng.r#gen(), &cookie, rng.r#gen(), rng.r#gen())
                }
            };
            if socket.send_to(&datagram, to).await.is_ok() {
                count(&run.stats.udp_sent);
                run.stats
                    .udp_bytes_sent
                    .fetch_add(datagram.len() as u64, Ordering::Relaxed);
            }
            i += 1;
        }
        tokio::time::sleep(UDP_PERIOD).await;
    }
    // Answers still in flight are counted for a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    receiver.abort();
}

/// The destination connection id of a QUIC long-header Initial packet.
fn initial_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    // Long header, fixed bit, packet type Initial (0b00).
    if first & 0xc0 != 0xc0 || first & 0x30 != 0 {
        return None;
    }
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len)
}

/// Real QUIC Initials (each a fresh connection id) that never finish: a
/// QUIC client "connects" to a socket of ours; each first Initial it sends
/// is replayed at a server's QUIC port from another socket, which counts
/// the answers and never replies.
async fn initials_flood(run: Running, targets: Arc<Targets>) {
    let capture = UdpSocket::bind(flooder_addr()).await.unwrap();
    let capture_addr = capture.local_addr().unwrap();
    let sender = Arc::new(UdpSocket::bind(flooder_addr()).await.unwrap());
    let receiver = {
        let (sender, run) = (Arc::clone(&sender), run.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = sender.recv_from(&mut buf).await {
                count(&run.stats.initial_answers);
                run.stats
                    .initial_bytes_received
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        })
    };
    let client = flooder_quic_endpoint();
    let mut quic_targets = targets.quic_supernodes.clone();
    quic_targets.push(targets.quic_login);
    let mut seen = HashSet::new();
    // The client's attempts stay alive (a dropped one would send a close in
    // its Initial space); the oldest are let go, bounded.
    let mut pending = VecDeque::new();
    let mut buf = vec![0u8; 2048];
    let mut i = 0usize;
    while run.on() && get(&run.stats.initials_sent) < MAX_INITIALS {
        if let Ok(connecting) = client.connect(capture_addr, "natter-supernode") {
            pending.push_back(connecting);
            if pending.len() > 256 {
                pending.pop_front();
            }
        }
        // Read what the client sent; replay each new Initial once.
        while let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(20), capture.recv_from(&mut buf)).await
        {
            let Some(dcid) = initial_dcid(&buf[..n]) else {
                continue;
            };
            if !seen.insert(dcid.to_vec()) {
                continue;
            }
            let to = quic_targets[i % quic_targets.len()];
            i += 1;
            if sender.send_to(&buf[..n], to).await.is_ok() {
                count(&run.stats.initials_sent);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    receiver.abort();
}

/// QUIC connections that finish the handshake and never send a hello, held
/// until the server closes them; a refused one is retried shortly after.
async fn quic_hold(run: Running, endpoint: quinn::Endpoint, to: SocketAddr) {
    while run.on() && get(&run.stats.quic_attempts) < MAX_CONNECTIONS {
        count(&run.stats.quic_attempts);
        let attempt = async { endpoint.connect(to, "natter-supernode").ok()?.await.ok() };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Some(conn)) => {
                count(&run.stats.quic_established);
                let until = tokio::time::Instant::from_std(run.deadline);
                tokio::select! {
                    _ = conn.closed() => {}
                    () = tokio::time::sleep_until(until) => {}
                    () = stopped(&run) => {}
                }
            }
            _ => {
                count(&run.stats.quic_refused);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

async fn stopped(run: &Running) {
    while run.on() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// TCP connections to a TLS listener that send nothing (`silent`) or
/// garbage, held until the server closes them.
async fn tcp_hold(run: Running, to: SocketAddr, silent: bool) {
    let mut buf = [0u8; 512];
    while run.on() && get(&run.stats.tcp_attempts) < MAX_CONNECTIONS {
        count(&run.stats.tcp_attempts);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(flooder_addr()).unwrap();
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), socket.connect(to)).await
        else {
            count(&run.stats.tcp_connect_failed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        if !silent {
            let mut garbage = [0u8; 100];
            rand::rngs::OsRng.fill_bytes(&mut garbage);
            let _ = stream.write_all(&garbage).await;
        }
        // Held until the server ends it (or the flood ends).
        let closed = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let ended = tokio::select! {
            () = closed => true,
            () = stopped(&run) => false,
        };
        if ended {
            if !silent {
                count(&run.stats.tcp_garbage_closed);
            } else if opened.elapsed() < REFUSED_WITHIN {
                count(&run.stats.tcp_silent_refused);
            } else {
                count(&run.stats.tcp_silent_held);
            }
        }
        // Garbage is closed at once: pace it, to hold more than churn.
        let pause = if silent { 50 } else { 200 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Wrong-password logins for the victim's name (each signed with the
/// flooder's own key over its connection, as a real client's are, so the
/// password is checked) and registrations of fresh names.
async fn login_flood(run: Running, targets: Arc<Targets>) {
    let key = Arc::new(natter_client::login::generate_key().await.unwrap());
    let config = natter_client::tls::client_config(
        &targets.login_key,
        &natter_client::login::LOGIN_SETTINGS,
    )
    .unwrap();
    let mut endpoint = quinn::Endpoint::client(flooder_addr()).unwrap();
    endpoint.set_default_client_config(config);
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..LOGIN_WORKERS {
        let (run, targets, key, endpoint, next) = (
            run.clone(),
            Arc::clone(&targets),
            Arc::clone(&key),
            endpoint.clone(),
            Arc::clone(&next),
        );
        workers.spawn(async move {
            while run.on() {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_LOGIN_ATTEMPTS {
                    break;
                }
                let s = &run.stats;
                // A guess, a registration, or a login whose proof of
                // possession is garbage (refused before the password).
                let (guess, forged) = (n % 3 == 0, n % 3 == 2);
                let name = if guess {
                    count(&s.logins_sent);
                    targets.victim.clone()
                } else if forged {
                    count(&s.forged_logins_sent);
                    targets.victim.clone()
                } else {
                    count(&s.registrations_sent);
                    format!("flood{n}")
                };
                let public_key = cert::public_key_der(&key.to_public_key());
                let chat_key = cert::chat_public(&[0x11; 32]).to_vec();
                let make = |exporter: &binding::Exporter| {
                    let body = if guess || forged {
                        let proof = if forged {
                            let mut junk = vec![0u8; 256];
                            rand::rngs::OsRng.fill_bytes(&mut junk);
                            junk
                        } else {
                            cert::sign(
                                &key,
                                &binding::login_message(exporter, &name, &public_key, &chat_key),
                            )
                        };
                        Body::LoginRequest(LoginRequest {
                            name: name.clone(),
                            password: format!("guess {n}"),
                            public_key: public_key.clone(),
                            chat_key: chat_key.clone(),
                            proof,
                        })
                    } else {
                        Body::RegisterRequest(RegisterRequest {
                            name: name.clone(),
                            password: "flood flood flood".into(),
                        })
                    };
                    Envelope::new(1, body)
                };
                let reply = natter_net::request_once_bound(
                    &endpoint,
                    targets.login,
                    natter_client::tls::TLS_SERVER_NAME,
                    make,
                    Duration::from_secs(5),
                )
                .await;
                match reply.ok().and_then(|e| e.body) {
                    Some(Body::Error(e)) if e.code == ErrorCode::Throttled as i32 => {
                        count(if guess || forged {
                            &s.logins_throttled
                        } else {
                            &s.registrations_throttled
                        });
                    }
                    Some(Body::Error(e)) if guess && e.code == ErrorCode::WrongPassword as i32 => {
                        count(&s.logins_wrong_password);
                    }
                    Some(Body::Error(e))
                        if forged && e.code == ErrorCode::CertificateRejected as i32 =>
                    {
                        count(&s.forged_logins_refused);
                    }
                    Some(Body::RegisterReply(_)) if !guess && !forged => {
                        count(&s.registrations_ok);
                    }
                    Some(_) => count(&s.login_requests_other),
                    None => {
                        count(&s.login_requests_unanswered);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// How long each step of the honest user's path took.
#[derive(Debug, Default)]
struct Times {
    login: Duration,
    register: Duration,
    join_and_chat: Duration,
    inbox: Duration,
    call_setup_ms: f64,
    call_first_audio_ms: f64,
    call: Duration,
    waveform: f64,
}

/// The honest users (all from 127.0.0.1): alice logs in again, carol
/// registers and logs in, alice joins and sends bob a chat that bob reads,
/// and alice calls bob with speech that bob must hear.
fn honest_path(cluster: &Cluster) -> Times {
    let mut times = Times::default();
    let timed = |args: &[&str], user: &str| {
        let start = Instant::now();
        let out = assert_ok(&cluster.run(user, args, LIMIT));
        (out, start.elapsed())
    };
    let (out, t) = timed(&["login", "alice", "--force"], "alice");
    assert!(out.contains("alice"), "{out}");
    times.login = t;

    let start = Instant::now();
    assert_ok(&cluster.run("carol", &["register", "carol"], LIMIT));
    assert_ok(&cluster.run("carol", &["login", "carol"], LIMIT));
    times.register = start.elapsed();

    let text = "meet me at the usual place at nine";
    let (out, t) = timed(
        &["--bootstrap", &cluster.sn(0), "chat", "bob", text],
        "alice",
    );
    assert!(out.contains("stored for bob"), "{out}");
    times.join_and_chat = t;
    let (out, t) = timed(&["--bootstrap", &cluster.sn(1), "inbox"], "bob");
    assert!(out.contains(&format!("alice: {text}")), "{out}");
    times.inbox = t;

    let speech = speech(cluster.dir.path());
    let start = Instant::now();
    let c = call(cluster, Some(&speech), 6, |_| {});
    times.call = start.elapsed();
    let report = String::from_utf8_lossy(&c.caller.stdout);
    assert!(report.contains("call with bob"), "{report}");
    let sent = read_mono_48k(&speech).unwrap();
    let heard = read_mono_48k(&c.heard).unwrap();
    let s = score::compare(&sent, &heard, 1000);
    // The same bar as voice.rs's clean call.
    assert!(s.waveform > 0.6 && s.envelope > 0.85, "{s:?}");
    times.waveform = s.waveform;
    times.call_setup_ms = field(&c.caller_json, "setup_ms");
    times.call_first_audio_ms = field(&c.callee_json, "first_audio_ms");
    times
}

fn cluster() -> Cluster {
    let cluster = Cluster::start(2, None);
    cluster.add_user("alice");
    cluster.add_user("bob");
    // bob has been online once, so the directory knows him and chat to him
    // is stored while he is away.
    assert_ok(&cluster.run("bob", &["--bootstrap", &cluster.sn(1), "inbox"], LIMIT));
    common::wait_for(
        || {
            let out = cluster.run(
                "alice",
                &["--bootstrap", &cluster.sn(0), "search", "bob"],
                LIMIT,
            );
            out.status.success() && !common::stdout(&out).contains("not found")
        },
        "bob in the directory",
    );
    cluster
}

fn targets(cluster: &Cluster) -> Targets {
    let mut udp = Vec::new();
    for addr in &cluster.supernodes {
        for k in 0..3 {
            udp.push(SocketAddr::new(addr.ip(), addr.port() + k));
        }
    }
    udp.push(cluster.login_addr);
    let mut tcp = cluster.supernodes.clone();
    tcp.push(cluster.login_addr);
    Targets {
        udp,
        quic_supernodes: cluster.supernodes.clone(),
        quic_login: cluster.login_addr,
        tcp,
        login: cluster.login_addr,
        login_key: natter_client::tls::read_login_key(&cluster.login_key).unwrap(),
        victim: "alice".into(),
    }
}

#[test]
fn under_a_flood_from_one_source_another_user_logs_in_joins_chats_and_calls() {
    let cluster = cluster();
    assert_ne!(
        IpAddr::V4(FLOODER),
        cluster.login_addr.ip(),
        "the flooder is another source"
    );
    let mut flood = Flood::start(targets(&cluster));
    flood.wait_engaged();

    let times = honest_path(&cluster);
    // The whole path ran under the flood (it did not hit its time bound).
    assert!(
        flood.running(),
        "the flood ended before the honest user did"
    );
    let secs = flood.stop().as_secs_f64();
    let s = &flood.stats;
    eprintln!("{}", s.report(secs));
    eprintln!("honest user under the flood: {times:?}");
    // The servers' logs stay small: no line per refused packet or
    // connection (the login server wrote one per refusal, 600 KB here).
    for log in ["login.log", "sn0.log", "sn1.log"] {
        let text = std::fs::read_to_string(cluster.dir.path().join(log)).unwrap();
        eprintln!("{log}: {} bytes", text.len());
        assert!(text.len() < 64 * 1024, "{log}: {} bytes", text.len());
    }

    // The flood happened, and each part of it was limited for its source.
    // STUN: one prefix gets a burst of 40 and 20 a second per supernode.
    let stun_cap = cluster.supernodes.len() as f64 * (40.0 + 20.0 * (secs + 1.0));
    assert!(get(&s.stun_sent) > 1000, "{}", s.report(secs));
    assert!(
        (get(&s.stun_answers) as f64) <= stun_cap,
        "{}",
        s.report(secs)
    );
    assert!(get(&s.binds_sent) > 1000, "{}", s.report(secs));
    assert!(get(&s.initials_sent) > 100, "{}", s.report(secs));
    // Connections: each supernode and the login server refused the source
    // beyond its per-address cap at once, before any handshake.
    assert!(get(&s.quic_refused) > 0, "{}", s.report(secs));
    assert!(get(&s.tcp_silent_refused) > 0, "{}", s.report(secs));
    // Login server: guesses for alice's name from this prefix and its
    // registrations were throttled (3 free failures, then growing blocks;
    // a bucket of 10 registrations).
    assert!(get(&s.logins_throttled) > 0, "{}", s.report(secs));
    assert!(get(&s.logins_wrong_password) <= 12, "{}", s.report(secs));
    assert!(get(&s.registrations_throttled) > 0, "{}", s.report(secs));
    assert!(get(&s.registrations_ok) <= 10, "{}", s.report(secs));
    assert!(get(&s.forged_logins_refused) > 0, "{}", s.report(secs));
}

/// The honest user's path without the flood, for the comparison figures
/// (`cargo test -p natter-client --test flood -- --ignored --nocapture`).
#[test]
#[ignore = "figures only: the times of the flood test's honest path without the flood"]
fn the_same_user_path_without_a_flood() {
    let cluster = cluster();
    let times = honest_path(&cluster);
    eprintln!("honest user without a flood: {times:?}");
}
