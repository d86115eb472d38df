//! A client session's connection, the same on both transports (a QUIC
//! bidirectional stream or TLS over TCP): its reader feeds the node task,
//! its writer drains a bounded queue the node task fills.

use std::sync::Arc;
use std::time::Duration;

use natter_net::{ControlConn, EnvelopeRecv, EnvelopeSend, NetError, Transport};
use natter_proto::messages::Envelope;
use tokio::sync::mpsc;

use crate::close;
use crate::core::Carrier;
use crate::shell::{Event, Out, Shell};

/// Errors that mean the peer sent bytes that are not frames or records.
pub(crate) fn is_malformed(e: &NetError) -> bool {
    matches!(
        e,
        NetError::Frame(_) | NetError::Record(_) | NetError::Truncated
    )
}

/// Runs a session whose first frame, `hello`, is a `JoinHello`, until the
/// client or the node closes it.
pub(crate) async fn run(
    shell: Arc<Shell>,
    conn: ControlConn,
    send: EnvelopeSend,
    mut recv: EnvelopeRecv,
    hello: Envelope,
) {
    let id = shell.next_id();
    let (tx, rx) = mpsc::channel(shell.config.session_queue.max(1));
    let mut writer = tokio::spawn(write_loop(
        send,
        rx,
        conn.clone(),
        shell.config.write_timeout,
    ));
    let carrier = match conn.transport() {
        Transport::Quic => Carrier::Quic,
        Transport::Tls => Carrier::Tcp,
    };
    let open = Event::SessionOpen {
        id,
        carrier,
        conn: conn.clone(),
        tx,
        hello,
    };
    if shell.tell(open).await {
        loop {
            match recv.next().await {
                Ok(Some(envelope)) => {
                    if !shell.tell(Event::SessionFrame { id, envelope }).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if is_malformed(&e) => {
                    tracing::debug!(remote = %conn.remote_address(), "malformed frame, closing");
                    conn.close(close::MALFORMED, b"malformed frame");
                    break;
                }
                Err(_) => break,
            }
        }
        shell.tell(Event::SessionClosed { id }).await;
    }
    // The writer ends once the node task dropped its queue and what was
    // queued (perhaps a close) is written; one stuck on a peer that does
    // not read is aborted, never left behind holding the connection.
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    conn.close(close::NORMAL, b"bye");
}

/// Drains the session's queue onto its connection. A frame not written
/// within `write_timeout` (the peer stopped reading and its windows are
/// full) closes the connection `SLOW`, which ends the reader too.
async fn write_loop(
    mut send: EnvelopeSend,
    mut rx: mpsc::Receiver<Out>,
    conn: ControlConn,
    write_timeout: Duration,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(envelope) => {
                match tokio::time::timeout(write_timeout, send.send(&envelope)).await {
                    Ok(Ok(())) => {}
                    // Refused before a byte was written (the core sends only
                    // what fits; this is the last guard): that message only.
                    Ok(Err(e @ (NetError::Frame(_) | NetError::Record(_)))) => {
                        tracing::warn!(error = %e, "frame not sent");
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::debug!(remote = %conn.remote_address(), "write timed out, closing");
                        conn.close(close::SLOW, b"write timeout");
                        break;
                    }
                }
            }
            Out::Close(code, reason) => {
                let _ = send.finish(Duration::from_secs(1)).await;
                conn.close(code, reason.as_bytes());
                break;
            }
        }
    }
}
