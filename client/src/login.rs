//! [`LoginClient`]: requests to the login server over one QUIC connection,
//! one bidirectional stream per request (write one frame, finish, read one
//! frame).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use natter_proto::cert::{self, VerifiedCertificate};
use natter_proto::frame::{self, FrameDecoder};
use natter_proto::messages::{
    BuddyBlob, BuddyBlobGet, BuddyBlobPut, Certificate, Envelope, HostCacheEntry, LoginRequest,
    RegisterRequest, envelope::Body,
};
use rsa::{RsaPrivateKey, RsaPublicKey};

use crate::ClientError;
use crate::tls::{TLS_SERVER_NAME, client_config};

/// Default time to wait for a reply.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The certificate as received.
    pub certificate: Certificate,
    /// Its verified contents.
    pub verified: VerifiedCertificate,
    /// The server's clock at issuance (unix milliseconds).
    pub server_time_ms: i64,
    /// Supernodes the login server knows (seed for the host cache).
    pub supernodes: Vec<HostCacheEntry>,
}

/// A connection to a login server whose signing key is pinned.
#[derive(Debug)]
pub struct LoginClient {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    login_key: RsaPublicKey,
    next_id: AtomicU64,
    timeout: Duration,
}

fn closed(e: impl std::fmt::Display) -> ClientError {
    ClientError::ConnectionClosed(e.to_string())
}

fn connection_error(e: quinn::ConnectionError) -> ClientError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ClientError::ConnectionClosed(String::from_utf8_lossy(&close.reason).into_owned())
        }
        quinn::ConnectionError::TimedOut => ClientError::Timeout,
        other => closed(other),
    }
}

impl LoginClient {
    /// Connects to the login server at `addr`, trusting only `login_key`.
    pub async fn connect(addr: SocketAddr, login_key: RsaPublicKey) -> Result<Self, ClientError> {
        let connect_err = |detail: String| ClientError::Connect {
            addr: addr.to_string(),
            detail,
        };
        let bind: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
        endpoint.set_default_client_config(client_config(&login_key)?);
        let connecting = endpoint
            .connect(addr, TLS_SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(REQUEST_TIMEOUT, connecting).await {
            Err(_) => return Err(connect_err("timed out".into())),
            Ok(Err(e)) => {
                let mut detail = e.to_string();
                if detail.contains("certificate") {
                    detail.push_str(" (is --login-key the key of this login server?)");
                }
                return Err(connect_err(detail));
            }
            Ok(Ok(conn)) => conn,
        };
        Ok(Self {
            endpoint,
            conn,
            login_key,
            next_id: AtomicU64::new(1),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// The pinned signing key.
    pub fn login_key(&self) -> &RsaPublicKey {
        &self.login_key
    }

    /// The underlying QUIC connection (tests use it to send raw bytes).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Sends raw bytes on a new stream and returns everything the server
    /// writes back. For tests and diagnostics.
    pub async fn raw_exchange(&self, bytes: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (mut send, mut recv) = self.conn.open_bi().await.map_err(connection_error)?;
        let exchange = async {
            send.write_all(bytes).await.map_err(|e| match e {
                quinn::WriteError::ConnectionLost(c) => connection_error(c),
                other => closed(other),
            })?;
            let _ = send.finish();
            recv.read_to_end(2 * frame::MAX_FRAME_LEN)
                .await
                .map_err(|e| match e {
                    quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(c)) => {
                        connection_error(c)
                    }
                    other => closed(other),
                })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Sends one request and returns the reply body; an error reply is
    /// mapped to a [`ClientError`] naming `name`.
    pub async fn request(&self, body: Body, name: &str) -> Result<Body, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = frame::to_frame(&Envelope::new(id, body))
            .map_err(|e| ClientError::Protocol(format!("request: {e}")))?;
        let reply = self.raw_exchange(&bytes).await?;
        let mut decoder = FrameDecoder::default();
        decoder
            .handle_data(&reply)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let envelope = match decoder.poll_frame() {
            Some(Ok(envelope)) => envelope,
            Some(Err(e)) => return Err(ClientError::Protocol(format!("reply: {e}"))),
            None => return Err(ClientError::Protocol("empty or truncated reply".into())),
        };
        if envelope.request_id != id {
            return Err(ClientError::Protocol(format!(
                "reply to request {} on the stream of request {id}",
                envelope.request_id
            )));
        }
        match envelope.body {
            Some(Body::Error(e)) => Err(ClientError::from_reply(e, name)),
            Some(body) => Ok(body),
            None => Err(ClientError::Protocol("reply has no body".into())),
        }
    }

    fn unexpected(body: &Body) -> ClientError {
        ClientError::Protocol(format!("unexpected reply {}", body.type_name()))
    }

    /// Registers `name`; returns the normalised name.
    pub async fn register(&self, name: &str, password: &str) -> Result<String, ClientError> {
        let body = Body::RegisterRequest(RegisterRequest {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        match self.request(body, name).await? {
            Body::RegisterReply(r) => Ok(r.name),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Logs in with `key`'s public half and checks the returned certificate:
    /// it must verify against the pinned key, name this user and certify `key`.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        key: &RsaPrivateKey,
    ) -> Result<LoginOutcome, ClientError> {
        let public = key.to_public_key();
        let body = Body::LoginRequest(LoginRequest {
            name: name.to_owned(),
            password: password.to_owned(),
            public_key: cert::public_key_der(&public),
        });
        let reply = match self.request(body, name).await? {
            Body::LoginReply(r) => r,
            other => return Err(Self::unexpected(&other)),
        };
        let certificate = reply
            .certificate
            .ok_or_else(|| ClientError::Protocol("login reply without a certificate".into()))?;
        // Checked at the server's time, so a skewed local clock does not
        // reject a fresh certificate.
        let verified = cert::verify(
            &certificate,
            &self.login_key,
            reply.server_time.div_euclid(1000),
        )
        .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        if verified.name != name.to_ascii_lowercase() {
            return Err(ClientError::BadCertificate(format!(
                "certificate is for {:?}, not {name:?}",
                verified.name
            )));
        }
        if verified.public_key != public {
            return Err(ClientError::BadCertificate(
                "certificate is for another key".into(),
            ));
        }
        Ok(LoginOutcome {
            certificate,
            verified,
            server_time_ms: reply.server_time,
            supernodes: reply.supernodes,
        })
    }

    /// Stores a buddy blob replacing `base_version`; returns the new version.
    pub async fn buddy_blob_put(
        &self,
        name: &str,
        password: &str,
        base_version: u64,
        ciphertext: Vec<u8>,
    ) -> Result<u64, ClientError> {
        let body = Body::BuddyBlobPut(BuddyBlobPut {
            name: name.to_owned(),
            password: password.to_owned(),
            base_version,
            ciphertext,
        });
        match self.request(body, name).await? {
            Body::BuddyBlob(b) => Ok(b.version),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Fetches the buddy blob (version 0 and no bytes if never written).
    pub async fn buddy_blob_get(
        &self,
        name: &str,
        password: &str,
    ) -> Result<BuddyBlob, ClientError> {
        let body = Body::BuddyBlobGet(BuddyBlobGet {
            name: name.to_owned(),
            password: password.to_owned(),
        });
        match self.request(body, name).await? {
            Body::BuddyBlob(b) => Ok(b),
            other => Err(Self::unexpected(&other)),
        }
    }

    /// Closes the connection politely and waits for the close to be sent.
    pub async fn close(self) {
        self.conn.close(quinn::VarInt::from_u32(0), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Generates an RSA-2048 key pair (on a blocking thread: it takes a while).
pub async fn generate_key() -> Result<RsaPrivateKey, ClientError> {
    tokio::task::spawn_blocking(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048))
        .await
        .map_err(|e| ClientError::Crypto(e.to_string()))?
        .map_err(|e| ClientError::Crypto(format!("RSA key generation: {e}")))
}
