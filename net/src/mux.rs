//! Requests and replies over one control stream, matched by `request_id`
//! (docs/PROTOCOL.md: a reply carries its request's id; id 0 is a push).
//!
//! [`Mux::start`] takes the stream's two halves and spawns one reader task
//! that hands every reply to the request waiting for its id, and every push
//! to a bounded queue ([`Pushes`]). A reply nobody waits for (its request
//! timed out) and a push the application did not make room for are dropped
//! and counted. When the stream ends, every pending request fails with
//! [`MuxError::Closed`] naming why, and so does every later one; the push
//! queue ends.
//!
//! The login client and the client's supernode session are both built on
//! it, over QUIC and TLS over TCP alike.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use natter_proto::messages::{Envelope, envelope};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::{ControlConn, EnvelopeRecv, EnvelopeSend, NetError};

/// Bounds of a [`Mux`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxConfig {
    /// The id of the first request [`Mux::request`] sends (ids below were
    /// used before the multiplexer took over, e.g. by a join handshake).
    pub first_id: u64,
    /// Requests in flight at once; beyond, [`MuxError::Busy`].
    pub max_pending: usize,
    /// Pushes buffered before the application reads them; beyond, new
    /// pushes are dropped (and counted).
    pub push_queue: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        Self {
            first_id: 1,
            max_pending: 64,
            push_queue: 256,
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("too many requests in flight")]
    Busy,
    #[error("request id {0} is already in flight")]
    DuplicateId(u64),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed: {reason}")]
    Closed { reason: String },
    #[error("cannot send the request: {source}")]
    Send {
        #[source]
        source: NetError,
    },
}

#[derive(Debug, Default)]
struct Table {
    waiting: HashMap<u64, oneshot::Sender<Envelope>>,
    /// Why the stream ended, once it has.
    closed: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Table>,
    dropped_pushes: AtomicU64,
    unmatched_replies: AtomicU64,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Pushes (envelopes with request id 0) in arrival order; ends when the
/// stream does.
#[derive(Debug)]
pub struct Pushes(mpsc::Receiver<Envelope>);

impl Pushes {
    /// The next push; `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Envelope> {
        self.0.recv().await
    }
}

/// A request/reply multiplexer over one control stream.
#[derive(Debug)]
pub struct Mux {
    conn: ControlConn,
    send: tokio::sync::Mutex<EnvelopeSend>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    max_pending: usize,
    reader: JoinHandle<()>,
}

impl Mux {
    /// Takes over a control stream: `send` and `recv` are its halves, `conn`
    /// the connection it runs on. Must be called inside a tokio runtime.
    pub fn start(
        conn: ControlConn,
        send: EnvelopeSend,
        recv: EnvelopeRecv,
        config: MuxConfig,
    ) -> (Self, Pushes) {
        let shared = Arc::new(Shared::default());
        let (push_tx, push_rx) = mpsc::channel(config.push_queue.max(1));
        let reader = tokio::spawn(read_loop(recv, conn.clone(), Arc::clone(&shared), push_tx));
        let mux = Self {
            conn,
            send: tokio::sync::Mutex::new(send),
            shared,
            next_id: AtomicU64::new(config.first_id),
            max_pending: config.max_pending.max(1),
            reader,
        };
        (mux, Pushes(push_rx))
    }

    /// The connection.
    pub fn connection(&self) -> &ControlConn {
        &self.conn
    }

    /// Whether the stream ended (requests fail at once).
    pub fn is_closed(&self) -> bool {
        self.shared.table().closed.is_some()
    }

    /// Pushes dropped because the queue was full (or nobody reads it).
    pub fn dropped_pushes(&self) -> u64 {
        self.shared.dropped_pushes.load(Ordering::Relaxed)
    }

    /// Replies dropped because no request waited for their id.
    pub fn unmatched_replies(&self) -> u64 {
        self.shared.unmatched_replies.load(Ordering::Relaxed)
    }

    /// Requests waiting for a reply.
    pub fn pending(&self) -> usize {
        self.shared.table().waiting.len()
    }

    /// Sends `body` under a fresh request id and waits (the whole exchange
    /// at most `timeout`) for the reply with that id.
    pub async fn request(
        &self,
        body: envelope::Body,
        timeout: Duration,
    ) -> Result<Envelope, MuxError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.exchange(Envelope::new(id, body), timeout).await
    }

    /// Sends `request` as is (its id must not be 0 nor in flight) and waits
    /// (at most `timeout` in all) for the reply with its id.
    pub async fn exchange(
        &self,
        request: Envelope,
        timeout: Duration,
    ) -> Result<Envelope, MuxError> {
        let id = request.request_id;
        let (tx, rx) = oneshot::channel();
        {
            let mut table = self.shared.table();
            if let Some(reason) = &table.closed {
                return Err(MuxError::Closed {
                    reason: reason.clone(),
                });
            }
            if id == 0 || table.waiting.contains_key(&id) {
                return Err(MuxError::DuplicateId(id));
            }
            if table.waiting.len() >= self.max_pending {
                return Err(MuxError::Busy);
            }
            table.waiting.insert(id, tx);
        }
        // Forget the id however this ends (reply, error, timeout, or the
        // caller dropping the future).
        let _forget = Forget {
            shared: &self.shared,
            id,
        };
        let exchange = async {
            let sent = self.send.lock().await.send(&request).await;
            if let Err(source) = sent {
                return Err(match self.conn.close_reason() {
                    Some(reason) => MuxError::Closed { reason },
                    None => MuxError::Send { source },
                });
            }
            rx.await.map_err(|_| MuxError::Closed {
                reason: self.closed_reason(),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| MuxError::Timeout(timeout))?
    }

    fn closed_reason(&self) -> String {
        self.shared
            .table()
            .closed
            .clone()
            .or_else(|| self.conn.close_reason())
            .unwrap_or_else(|| "connection closed".to_owned())
    }

    /// Closes the connection with an application `code`.
    pub fn close(&self, code: u32, reason: &[u8]) {
        self.conn.close(code, reason);
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.reader.abort();
        // Closing a TLS connection writes its CLOSE record from a task:
        // only inside a runtime.
        if tokio::runtime::Handle::try_current().is_ok() {
            self.conn.close(0, b"bye");
        }
    }
}

struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.table().waiting.remove(&self.id);
    }
}

/// Routes replies to their requests and pushes to the queue; when the
/// stream ends, records why and fails every request still waiting.
async fn read_loop(
    mut recv: EnvelopeRecv,
    conn: ControlConn,
    shared: Arc<Shared>,
    pushes: mpsc::Sender<Envelope>,
) {
    let reason = loop {
        match recv.next().await {
            Ok(Some(envelope)) if envelope.request_id == 0 => {
                if pushes.try_send(envelope).is_err() {
                    shared.dropped_pushes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Some(reply)) => {
                let waiter = shared.table().waiting.remove(&reply.request_id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(reply);
                    }
                    None => {
                        shared.unmatched_replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(None) => {
                break conn
                    .close_reason()
                    .unwrap_or_else(|| "stream ended".to_owned());
            }
            Err(e) => {
                break match conn.close_reason() {
                    Some(reason) if !reason.is_empty() => reason,
                    _ => e.to_string(),
                };
            }
        }
    };
    let mut table = shared.table();
    table.closed = Some(reason);
    // Dropping the senders wakes their requests.
    table.waiting.clear();
}
