//! Looking a user up in the overlay's directory, and how presence is named.

use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::messages::{PresenceStatus, SearchReply, SearchRequest, envelope};

use crate::ClientError;
use crate::supernode::SupernodeSession;

/// What the directory knows about a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The user's (normalised) name.
    pub name: String,
    /// Their presence; unknown values read as offline.
    pub status: PresenceStatus,
    /// The supernode they are joined through, when known.
    pub supernode: Option<SocketAddr>,
    /// When they were last seen (unix seconds).
    pub last_seen_secs: i64,
}

impl Found {
    /// Whether a call could reach them now (they are not offline).
    pub fn reachable(&self) -> bool {
        self.status != PresenceStatus::Offline
    }

    /// Reads a directory reply; `None` when the user was not found.
    pub fn from_reply(r: &SearchReply) -> Option<Self> {
        r.found.then(|| Self {
            name: r.name.clone(),
            status: PresenceStatus::try_from(r.status).unwrap_or(PresenceStatus::Offline),
            supernode: r
                .supernode
                .as_ref()
                .and_then(|a| SocketAddr::try_from(a).ok()),
            last_seen_secs: r.last_seen / 1000,
        })
    }
}

/// Searches the directory for `name`; `None` when nobody has that name.
pub async fn search(
    sn: &SupernodeSession,
    name: &str,
    request_timeout: Duration,
) -> Result<Option<Found>, ClientError> {
    Ok(Found::from_reply(
        &search_reply(sn, name, request_timeout).await?,
    ))
}

/// The directory's whole answer for `name` (with the user's certificate,
/// which chat is sealed to).
pub async fn search_reply(
    sn: &SupernodeSession,
    name: &str,
    request_timeout: Duration,
) -> Result<SearchReply, ClientError> {
    let reply = sn
        .request(
            envelope::Body::SearchRequest(SearchRequest {
                name: name.to_owned(),
            }),
            request_timeout,
        )
        .await?;
    let envelope::Body::SearchReply(r) = reply else {
        return Err(ClientError::Usage("unexpected reply to search".to_owned()));
    };
    Ok(r)
}

/// The word a user sees for a presence status.
pub fn presence_name(status: PresenceStatus) -> &'static str {
    match status {
        PresenceStatus::Online => "online",
        PresenceStatus::Away => "away",
        PresenceStatus::Offline => "offline",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_as_found_or_not() {
        let mut reply = SearchReply {
            found: true,
            name: "bob".to_owned(),
            status: PresenceStatus::Away as i32,
            supernode: None,
            last_seen: 1_800_000_000_999,
            ..Default::default()
        };
        let found = Found::from_reply(&reply).expect("found");
        assert_eq!(found.status, PresenceStatus::Away);
        assert!(found.reachable());
        assert_eq!(found.last_seen_secs, 1_800_000_000);
        assert_eq!(presence_name(found.status), "away");

        reply.status = 99;
        let unknown = Found::from_reply(&reply).expect("found");
        assert_eq!(
            unknown.status,
            PresenceStatus::Offline,
            "unknown is offline"
        );
        assert!(!unknown.reachable());

        reply.found = false;
        assert_eq!(Found::from_reply(&reply), None);
    }
}
