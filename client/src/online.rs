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
    Delivered { to: String },
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
        let registered = async {
            set_online(&sn, request_timeout).await?;
            sn.request(
                envelope::Body::PresenceSubscribe(PresenceSubscribe {
                    names: buddies.to_vec(),
                }),
                request_timeout,
            )
            .await
        }
        .await;
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
                    Some(envelope::Body::PresenceUpdate(u)) => on_event(OnlineEvent::Presence {
                        name: u.name,
                        status: PresenceStatus::try_from(u.status).unwrap_or(PresenceStatus::Offline),
                    }),
                    Some(envelope::Body::ChatMessage(m)) => {
                        match inbox::receive_and_ack(&sn, inbox, keys, &m, request_timeout).await? {
                            Received::Stored(opened) => on_event(OnlineEvent::Message(opened)),
                            // Delivered again (an acknowledgement was lost): shown once.
                            Received::Duplicate(_) => {}
                            Received::Refused(refused) => on_event(OnlineEvent::Refused(refused)),
                        }
                    }
                    Some(envelope::Body::ChatReceipt(r)) => {
                        on_event(OnlineEvent::Delivered { to: r.from });
                    }
                    Some(envelope::Body::SupernodeList(list)) => overlay.learn(&list.entries)?,
                    Some(_) => {}
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

async fn rejoin(
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
