//! Staying online (`natter online`): register presence and the buddy
//! subscriptions with the supernode, report presence changes, chat and
//! receipts as they are pushed, and move to an alternate supernode whenever
//! the current one is lost, until told to stop.
//!
//! ```text
//!  register (SetPresence, PresenceSubscribe) ──► pushes ──► events
//!        ▲          │ Closed / Timeout              │ session ended
//!        └── rejoin ◄┴──────────────────────────────┘
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::chat::OpenedChat;
use natter_proto::messages::{PresenceStatus, PresenceSubscribe, SetPresence, envelope};

use crate::ClientError;
use crate::inbox::{self, Inbox, Keys, Received, Refused};
use crate::overlay::Overlay;
use crate::supernode::{SessionError, SupernodeSession};

/// Something a user staying online is told about.
#[derive(Debug, Clone, PartialEq)]
pub enum OnlineEvent {
    /// A buddy's presence changed.
    Presence {
        name: String,
        status: PresenceStatus,
    },
    /// A chat message arrived, opened and verified (it is already in the
    /// inbox).
    Message(OpenedChat),
    /// A chat message arrived that did not open or verify: dropped, not
    /// stored, never shown as from the name it claims.
    Refused(Refused),
    /// A message sent earlier was delivered; `to` is the recipient.
    Delivered { to: String, message_id: Vec<u8> },
    /// The supernode `lost` went away; the overlay was rejoined via `via`.
    Rejoined { lost: SocketAddr, via: SocketAddr },
}

/// Tells the supernode this user is online.
pub async fn set_online(sn: &SupernodeSession, timeout: Duration) -> Result<(), SessionError> {
    sn.request(
        envelope::Body::SetPresence(SetPresence {
            status: PresenceStatus::Online as i32,
        }),
        timeout,
    )
    .await
    .map(drop)
}

/// Stays online through `overlay` until `stop` completes (then leaves the
/// supernode politely), calling `on_event` for every [`OnlineEvent`] and
/// appending the chat that opens with `keys` to `inbox`. Fails only when no supernode can be joined
/// any more, or on an error that rejoining cannot fix.
pub async fn stay_online(
    overlay: &mut Overlay,
    buddies: &[String],
    inbox: &Inbox,
    keys: &Keys<'_>,
    request_timeout: Duration,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(OnlineEvent),
) -> Result<(), ClientError> {
    let mut stop = std::pin::pin!(stop);
    loop {
        let sn = overlay.session();
        // (Re-)register presence and subscriptions with this supernode; if
        // it dies meanwhile, move on to an alternate.
        let registered = register(&sn, buddies, request_timeout).await;
        match registered {
            Ok(_) => {}
            Err(SessionError::Closed(_) | SessionError::Timeout(_)) => {
                rejoin(overlay, sn.addr(), &mut on_event).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        loop {
            tokio::select! {
                push = sn.next_push() => match push {
                    Some(push) => {
                        if let Some(event) = handle_push(overlay, &sn, inbox, keys, push, request_timeout).await? {
                            on_event(event);
                        }
                    }
                    None => break,
                },
                () = &mut stop => {
                    sn.leave().await;
                    return Ok(());
                }
            }
        }
        rejoin(overlay, sn.addr(), &mut on_event).await?;
    }
}

/// Registers this user's presence and its subscriptions to `buddies`
/// with the supernode of `sn`.
pub async fn register(
    sn: &SupernodeSession,
    buddies: &[String],
    request_timeout: Duration,
) -> Result<(), SessionError> {
    set_online(sn, request_timeout).await?;
    sn.request(
        envelope::Body::PresenceSubscribe(PresenceSubscribe {
            names: buddies.to_vec(),
        }),
        request_timeout,
    )
    .await
    .map(drop)
}

/// What one push from the supernode `sn` means to a user staying online
/// (chat is opened, stored in `inbox` and acknowledged; supernode lists go
/// to the host cache); `None` for a push that is not for them (call
/// signals are the caller's to route first).
pub async fn handle_push(
    overlay: &mut Overlay,
    sn: &SupernodeSession,
    inbox: &Inbox,
    keys: &Keys<'_>,
    push: envelope::Body,
    request_timeout: Duration,
) -> Result<Option<OnlineEvent>, ClientError> {
    Ok(match push {
        envelope::Body::PresenceUpdate(u) => Some(OnlineEvent::Presence {
            name: u.name,
            status: PresenceStatus::try_from(u.status).unwrap_or(PresenceStatus::Offline),
        }),
        envelope::Body::ChatMessage(m) => {
            match inbox::receive_and_ack(sn, inbox, keys, &m, request_timeout).await? {
                Received::Stored(opened) => Some(OnlineEvent::Message(opened)),
                // Delivered again (an acknowledgement was lost): shown once.
                Received::Duplicate(_) => None,
                Received::Refused(refused) => Some(OnlineEvent::Refused(refused)),
            }
        }
        envelope::Body::ChatReceipt(r) => Some(OnlineEvent::Delivered {
            to: r.from,
            message_id: r.message_id,
        }),
        envelope::Body::SupernodeList(list) => {
            overlay.learn(&list.entries)?;
            None
        }
        _ => None,
    })
}

/// Moves `overlay` to another supernode after `lost` went away, telling
/// `on_event`.
pub async fn rejoin(
    overlay: &mut Overlay,
    lost: SocketAddr,
    on_event: &mut impl FnMut(OnlineEvent),
) -> Result<(), ClientError> {
    overlay.rejoin().await?;
    on_event(OnlineEvent::Rejoined {
        lost,
        via: overlay.session().addr(),
    });
    Ok(())
}
