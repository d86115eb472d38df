//! Test support: keys, certificates, in-process supernode clusters and a
//! small client speaking the session protocol over real QUIC or TLS over
//! TCP on 127.0.0.1.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use natter_net::tcp::{self, RecordConn};
use natter_net::{
    ControlConn, EnvelopeRecv, EnvelopeSend, FramedRecv, FramedSend, Transport, TransportSettings,
};
use natter_proto::cert::{self, Identity, Issuer};
use natter_proto::messages::envelope::Body;
use natter_proto::messages::{
    Certificate, Envelope, ErrorCode, ErrorReply, JoinAccepted, JoinHello, JoinProof, SearchReply,
    SearchRequest,
};
use natter_supernode::{Config, Handle, Supernode};
use quinn::{Connection, Endpoint};
use rsa::RsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

/// Upper bound of any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(5);

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn read_key(path: &str) -> RsaPrivateKey {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let pem = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
}

/// The published test issuer (proto/tests/vectors/issuer.pem).
pub fn issuer() -> &'static Issuer {
    static ISSUER: OnceLock<Issuer> = OnceLock::new();
    ISSUER.get_or_init(|| Issuer::new(read_key("../proto/tests/vectors/issuer.pem")))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A join statement of `name` for the supernode `home`, signed with `key`.
pub fn statement(
    key: &RsaPrivateKey,
    name: &str,
    home: &[u8],
    joined_at: i64,
    nonce: &[u8],
) -> natter_proto::statement::SignedStatement {
    let statement = natter_proto::messages::JoinStatement {
        name: name.to_owned(),
        home_node_id: home.to_vec(),
        joined_at,
        nonce: nonce.to_vec(),
    };
    natter_proto::statement::sign(key, &mut rand::rngs::OsRng, &statement)
}

/// A user's RSA key: the published test keys, one per user.
pub fn user_key(name: &str) -> &'static RsaPrivateKey {
    static KEYS: OnceLock<Vec<(&'static str, RsaPrivateKey)>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        vec![
            ("alice", read_key("../proto/tests/vectors/alice.pem")),
            ("bob", read_key("../proto/tests/vectors/bob.pem")),
            ("carol", read_key("tests/keys/carol.pem")),
            ("dave", read_key("tests/keys/dave.pem")),
        ]
    });
    &keys
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no test key for {name}"))
        .1
}

/// A certificate for `name` (valid for an hour) and its key. Its validity
/// starts from one instant per test process, so two calls for one name
/// give the same certificate (a test may compare what a supernode passes
/// on with `identity(name).certificate` even across a second boundary).
pub fn identity(name: &str) -> Identity {
    static ISSUED_AT: OnceLock<i64> = OnceLock::new();
    let key = user_key(name).clone();
    let now = *ISSUED_AT.get_or_init(now_secs);
    let certificate = issuer().issue(
        &mut rand::rngs::OsRng,
        &natter_proto::cert::Subject::User {
            name,
            key: &key.to_public_key(),
            chat_key: natter_proto::cert::chat_public(&[0x11; 32]),
        },
        1,
        now - 300,
        now + 3600,
    );
    Identity {
        key,
        certificate,
        chat_secret: [0x11; 32],
    }
}

/// The test issuer as a supernode's local certifier (the same `issue`
/// the login server calls).
pub fn local_certification() -> natter_supernode::Certification {
    natter_supernode::Certification::Local {
        issuer: std::sync::Arc::new(issuer().clone()),
        validity: Duration::from_secs(3600),
    }
}

/// A supernode configuration on 127.0.0.1 trusting the test issuer and
/// certified by it.
pub fn config(peers: Vec<SocketAddr>, replicas: usize) -> Config {
    let mut config = Config::new("127.0.0.1:0".parse().unwrap(), issuer().public_key());
    config.certification = local_certification();
    config.peers = peers;
    config.replicas = replicas;
    config
}

/// A tweak for [`cluster`]: a TLS-over-TCP listener on a free loopback port.
pub fn with_tcp(config: &mut Config) {
    config.tcp_listen = Some("127.0.0.1:0".parse().unwrap());
}

/// Starts `n` supernodes (every one after the first has the first as its
/// `--peer`) and waits until each sees all of them live.
pub async fn cluster(n: usize, tweak: impl Fn(&mut Config)) -> Vec<Handle> {
    let mut first = config(Vec::new(), 3);
    tweak(&mut first);
    let seed = Supernode::spawn(first).unwrap();
    let seed_addr = seed.local_addr();
    let mut nodes = vec![seed];
    for _ in 1..n {
        let mut c = config(vec![seed_addr], 3);
        tweak(&mut c);
        nodes.push(Supernode::spawn(c).unwrap());
    }
    eventually("the overlay meshes", || {
        let ok = nodes.iter().all(|h| h.live_members().len() == n);
        async move { ok.then_some(()) }
    })
    .await;
    nodes
}

/// Polls `f` every 50 ms until it yields `Some`, failing after 10 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = f().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a QUIC connection and the session stream to a supernode.
pub async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<(Endpoint, Connection, FramedSend, FramedRecv)> {
    let endpoint =
        natter_net::client_endpoint("127.0.0.1:0".parse()?, &TransportSettings::OVERLAY)?;
    let conn = tokio::time::timeout(WAIT, endpoint.connect(addr, "natter-supernode")?)
        .await
        .context("connect timeout")??;
    let (send, recv) = conn.open_bi().await?;
    Ok((endpoint, conn, FramedSend::new(send), FramedRecv::new(recv)))
}

/// Opens a TLS-over-TCP connection to a supernode's TCP listener.
pub async fn connect_tcp(addr: SocketAddr) -> anyhow::Result<RecordConn> {
    Ok(tcp::connect(
        addr,
        "natter-supernode",
        tcp::insecure_client_tls_config()?,
        TransportSettings::OVERLAY,
        WAIT,
    )
    .await?)
}

/// A session connection over either transport.
async fn open_session(
    transport: Transport,
    addr: SocketAddr,
) -> anyhow::Result<(Option<Endpoint>, ControlConn, EnvelopeSend, EnvelopeRecv)> {
    Ok(match transport {
        Transport::Quic => {
            let (endpoint, conn, send, recv) = connect(addr).await?;
            (
                Some(endpoint),
                ControlConn::Quic(conn),
                EnvelopeSend::Quic(send),
                EnvelopeRecv::Quic(recv),
            )
        }
        Transport::Tls => {
            let (reader, handle) = connect_tcp(addr).await?.split();
            (
                None,
                ControlConn::Tls(handle.clone()),
                EnvelopeSend::Tls(handle),
                EnvelopeRecv::Tls(reader),
            )
        }
    })
}

/// A client session with a supernode, over QUIC or TLS over TCP.
#[derive(Debug)]
pub struct TestClient {
    pub name: String,
    /// The QUIC endpoint (`None` over TCP).
    pub endpoint: Option<Endpoint>,
    pub conn: ControlConn,
    pub send: EnvelopeSend,
    pub recv: EnvelopeRecv,
    pub accepted: JoinAccepted,
    next_rid: u64,
    pushes: VecDeque<Envelope>,
}

/// How a join attempt ended. A refused TLS connection's records are read
/// in the background, so [`TestClient::closed_code`] sees its CLOSE.
#[derive(Debug)]
pub enum JoinOutcome {
    Joined(Box<TestClient>),
    Refused(ErrorReply, ControlConn),
}

async fn read(recv: &mut EnvelopeRecv) -> anyhow::Result<Envelope> {
    match tokio::time::timeout(WAIT, recv.next()).await {
        Ok(Ok(Some(envelope))) => Ok(envelope),
        Ok(Ok(None)) => bail!("stream finished"),
        Ok(Err(e)) => bail!("read failed: {e}"),
        Err(_) => bail!("timed out waiting for a frame"),
    }
}

/// Joins over QUIC with `certificate`, signing the challenge with `signer`.
pub async fn try_join(
    addr: SocketAddr,
    name: &str,
    certificate: Certificate,
    signer: &RsaPrivateKey,
) -> anyhow::Result<JoinOutcome> {
    try_join_via(Transport::Quic, addr, name, certificate, signer).await
}

/// Reads (and drops) what a refused connection still sends, so that a TLS
/// connection's CLOSE record is seen.
fn drain(mut recv: EnvelopeRecv) {
    tokio::spawn(async move { while let Ok(Some(_)) = recv.next().await {} });
}

/// Joins over `transport` with `certificate`, signing the challenge with `signer`.
pub async fn try_join_via(
    transport: Transport,
    addr: SocketAddr,
    name: &str,
    certificate: Certificate,
    signer: &RsaPrivateKey,
) -> anyhow::Result<JoinOutcome> {
    try_join_with(transport, addr, name, certificate, signer, Hello::default()).await
}

/// What a test client's hello says besides its certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hello {
    pub acks_chat: bool,
    pub beacons: bool,
}

/// [`try_join_via`], the hello saying what `hello` says.
pub async fn try_join_with(
    transport: Transport,
    addr: SocketAddr,
    name: &str,
    certificate: Certificate,
    signer: &RsaPrivateKey,
    hello: Hello,
) -> anyhow::Result<JoinOutcome> {
    let (endpoint, conn, mut send, mut recv) = open_session(transport, addr).await?;
    let hello = Body::JoinHello(JoinHello {
        certificate: Some(certificate),
        acks_chat: hello.acks_chat,
        beacons: hello.beacons,
    });
    send.send(&Envelope::new(1, hello)).await?;
    let challenge = read(&mut recv).await?;
    let exporter = conn.exporter()?;
    let (nonce, node_id) = match challenge.body {
        Some(Body::JoinChallenge(c)) => {
            // Every supernode proves itself on this very connection.
            let sn = cert::verify_supernode(
                c.certificate
                    .as_ref()
                    .context("challenge without certificate")?,
                &issuer().public_key(),
                now_secs(),
            )?;
            assert_eq!(
                sn.node_id.to_vec(),
                c.node_id,
                "certificate for another node"
            );
            cert::verify_signature(
                &sn.public_key,
                &natter_proto::binding::supernode_join_message(&exporter, &c.nonce),
                &c.signature,
            )?;
            (c.nonce, c.node_id)
        }
        Some(Body::Error(e)) => {
            drain(recv);
            return Ok(JoinOutcome::Refused(e, conn));
        }
        other => bail!("expected a challenge, got {other:?}"),
    };
    assert_eq!(challenge.request_id, 1);
    assert_eq!(nonce.len(), 32);
    assert_eq!(node_id.len(), 16);
    let signed = statement(signer, name, &node_id, now_ms(), &nonce);
    let signature = cert::sign(
        signer,
        &natter_proto::binding::join_proof_message(&exporter, &node_id, &nonce, &signed.statement),
    );
    send.send(&Envelope::new(
        2,
        Body::JoinProof(JoinProof {
            signature,
            statement: signed.statement,
            statement_signature: signed.signature,
        }),
    ))
    .await?;
    let reply = read(&mut recv).await?;
    assert_eq!(reply.request_id, 2);
    match reply.body {
        Some(Body::JoinAccepted(accepted)) => Ok(JoinOutcome::Joined(Box::new(TestClient {
            name: name.to_owned(),
            endpoint,
            conn,
            send,
            recv,
            accepted,
            next_rid: 3,
            pushes: VecDeque::new(),
        }))),
        Some(Body::Error(e)) => {
            drain(recv);
            Ok(JoinOutcome::Refused(e, conn))
        }
        other => bail!("expected JoinAccepted, got {other:?}"),
    }
}

impl TestClient {
    /// Joins `addr` (QUIC) as `name` with a valid certificate.
    pub async fn join(addr: SocketAddr, name: &str) -> TestClient {
        Self::join_via(Transport::Quic, addr, name).await
    }

    /// Joins the TLS-over-TCP listener at `addr` as `name`.
    pub async fn join_tcp(addr: SocketAddr, name: &str) -> TestClient {
        Self::join_via(Transport::Tls, addr, name).await
    }

    /// Joins `addr` over `transport` as `name` with a valid certificate.
    pub async fn join_via(transport: Transport, addr: SocketAddr, name: &str) -> TestClient {
        let id = identity(name);
        let outcome = try_join_via(transport, addr, name, id.certificate, &id.key);
        match outcome.await.unwrap() {
            JoinOutcome::Joined(client) => *client,
            JoinOutcome::Refused(e, _) => panic!("{name} refused: {e:?}"),
        }
    }

    /// Joins `addr` (QUIC) as `name`, the hello saying it acknowledges
    /// pushed chat (`acks_chat`).
    pub async fn join_acking(addr: SocketAddr, name: &str) -> TestClient {
        let hello = Hello {
            acks_chat: true,
            beacons: false,
        };
        Self::join_saying(addr, name, hello).await
    }

    /// Joins `addr` (QUIC) as `name`, the hello saying `hello`.
    pub async fn join_saying(addr: SocketAddr, name: &str, hello: Hello) -> TestClient {
        let id = identity(name);
        let outcome = try_join_with(Transport::Quic, addr, name, id.certificate, &id.key, hello);
        match outcome.await.unwrap() {
            JoinOutcome::Joined(client) => *client,
            JoinOutcome::Refused(e, _) => panic!("{name} refused: {e:?}"),
        }
    }

    /// This client's local address (its QUIC endpoint's or its TCP socket's).
    pub fn local_addr(&self) -> SocketAddr {
        match (&self.endpoint, &self.conn) {
            (Some(endpoint), _) => endpoint.local_addr().unwrap(),
            (None, ControlConn::Tls(handle)) => handle.local_address(),
            (None, ControlConn::Quic(_)) => unreachable!("QUIC clients keep their endpoint"),
        }
    }

    /// The raw QUIC session stream (to write bytes that are not frames).
    pub fn quic_send(&mut self) -> &mut quinn::SendStream {
        match &mut self.send {
            EnvelopeSend::Quic(send) => send.get_mut(),
            EnvelopeSend::Tls(_) => panic!("{} is not on QUIC", self.name),
        }
    }

    /// Waits until the supernode closes this session (reading and dropping
    /// what still arrives); returns the close code.
    pub async fn wait_closed(mut self) -> Option<u64> {
        let drained = tokio::time::timeout(WAIT, async {
            while let Ok(Some(_)) = self.recv.next().await {}
        });
        drained.await.expect("connection not closed");
        Self::closed_code(&self.conn).await
    }

    /// Sends a request without waiting; returns its request id.
    pub async fn send(&mut self, body: Body) -> u64 {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.send.send(&Envelope::new(rid, body)).await.unwrap();
        rid
    }

    /// Sends a request and returns the reply body, keeping pushes that
    /// arrive meanwhile.
    pub async fn request(&mut self, body: Body) -> Body {
        let rid = self.send(body).await;
        loop {
            let envelope = read(&mut self.recv).await.unwrap();
            if envelope.request_id == rid {
                return envelope.body.unwrap();
            }
            assert_eq!(
                envelope.request_id, 0,
                "reply to an unknown request: {envelope:?}"
            );
            self.pushes.push_back(envelope);
        }
    }

    /// Sends a request that must be answered with `Ack`.
    pub async fn ack(&mut self, body: Body) {
        match self.request(body).await {
            Body::Ack(_) => {}
            other => panic!("{}: expected Ack, got {other:?}", self.name),
        }
    }

    /// The next push (request id 0) matching `pred`; others are dropped.
    pub async fn expect_push<T>(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&Body) -> Option<T>,
    ) -> T {
        while let Some(envelope) = self.pushes.pop_front() {
            if let Some(found) = envelope.body.as_ref().and_then(&mut pred) {
                return found;
            }
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let envelope = match tokio::time::timeout(left, self.recv.next()).await {
                Ok(Ok(Some(envelope))) => envelope,
                Ok(other) => panic!("{}: stream ended waiting for {what}: {other:?}", self.name),
                Err(_) => panic!("{}: timed out waiting for {what}", self.name),
            };
            assert_eq!(envelope.request_id, 0, "unexpected reply {envelope:?}");
            if let Some(found) = envelope.body.as_ref().and_then(&mut pred) {
                return found;
            }
        }
    }

    /// Asserts that no push matching `pred` arrives within `wait`.
    pub async fn expect_no_push(&mut self, wait: Duration, mut pred: impl FnMut(&Body) -> bool) {
        for envelope in &self.pushes {
            assert!(
                !envelope.body.as_ref().is_some_and(&mut pred),
                "unexpected {envelope:?}"
            );
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Ok(Some(envelope))) = tokio::time::timeout_at(deadline, self.recv.next()).await
        {
            assert!(
                !envelope.body.as_ref().is_some_and(&mut pred),
                "unexpected {envelope:?}"
            );
        }
    }

    pub async fn search(&mut self, name: &str) -> SearchReply {
        match self
            .request(Body::SearchRequest(SearchRequest { name: name.into() }))
            .await
        {
            Body::SearchReply(reply) => reply,
            other => panic!("expected SearchReply, got {other:?}"),
        }
    }

    /// Searches until `pred` holds for the reply.
    pub async fn search_until(
        &mut self,
        name: &str,
        pred: impl Fn(&SearchReply) -> bool,
    ) -> SearchReply {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let reply = self.search(name).await;
            if pred(&reply) {
                return reply;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "search for {name} stuck at {reply:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the supernode closes the connection; returns the close
    /// code. A TLS connection's records must be read meanwhile (by
    /// [`Self::wait_closed`], or in the background as for refused joins).
    pub async fn closed_code(conn: &ControlConn) -> Option<u64> {
        match conn {
            ControlConn::Quic(conn) => match tokio::time::timeout(WAIT, conn.closed())
                .await
                .expect("connection not closed")
            {
                quinn::ConnectionError::ApplicationClosed(close) => {
                    Some(close.error_code.into_inner())
                }
                _ => None,
            },
            ControlConn::Tls(handle) => {
                tokio::time::timeout(WAIT, handle.closed())
                    .await
                    .expect("connection not closed");
                handle.close_reason().map(|(code, _)| u64::from(code))
            }
        }
    }
}

/// The error code of an `ErrorReply` body.
pub fn error_code(body: &Body) -> Option<ErrorCode> {
    match body {
        Body::Error(e) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

/// A version-2 `ChatMessage.sealed` standing in for an end-to-end sealed
/// message: a supernode checks only its shape
/// (`natter_proto::chat::check_envelope`), so the "ciphertext" here is
/// `payload` itself, read back with [`unsealed`].
pub fn sealed(payload: &[u8]) -> Vec<u8> {
    use prost::Message as _;
    natter_proto::messages::SealedChat {
        ephemeral: vec![9; 32],
        ciphertext: payload.to_vec(),
    }
    .encode_to_vec()
}

/// The payload of a message made with [`sealed`].
pub fn unsealed(message: &natter_proto::messages::ChatMessage) -> String {
    use prost::Message as _;
    let sealed = natter_proto::messages::SealedChat::decode(message.sealed.as_slice())
        .expect("a sealed test message");
    String::from_utf8(sealed.ciphertext).expect("a text payload")
}
