//! Client errors: each has a one-line, user-facing message.

use natter_proto::messages::{ErrorCode, ErrorReply};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the name {0:?} is already taken")]
    NameTaken(String),
    #[error("invalid name: {0}")]
    BadName(String),
    #[error("password too short: {0}")]
    ShortPassword(String),
    #[error("no account named {0:?} on this login server")]
    UnknownUser(String),
    #[error("wrong password for {0:?}")]
    WrongPassword(String),
    #[error("too many failed attempts; try again in {} s", retry_after_ms.div_ceil(1000))]
    Throttled { retry_after_ms: u32 },
    #[error("the account {0:?} is disabled")]
    AccountDisabled(String),
    #[error("stale buddy list: {0}")]
    StaleVersion(String),
    #[error(
        "session expired: the certificate for {name:?} expired at unix time {expired_at}; run `natter login {name}`"
    )]
    SessionExpired { name: String, expired_at: i64 },
    #[error("not logged in: run `natter login NAME`")]
    NotLoggedIn,
    #[error("login server refused the request ({code}): {detail}")]
    Server { code: String, detail: String },
    #[error("the login server's certificate does not verify against the pinned login key: {0}")]
    BadCertificate(String),
    #[error("cannot reach the login server at {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("login server closed the connection: {0}")]
    ConnectionClosed(String),
    #[error("login server did not answer in time")]
    Timeout,
    #[error("{0}")]
    Usage(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error(transparent)]
    PrivateFile(#[from] natter_fsutil::FileError),
    #[error("buddy list cannot be decrypted (wrong password or tampered data)")]
    Decrypt,
    #[error("{0}")]
    Crypto(String),
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
    #[error(transparent)]
    Session(#[from] crate::supernode::SessionError),
    #[error(transparent)]
    Call(#[from] crate::call::CallError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
}

impl ClientError {
    /// Maps a server's error reply; `name` is the account the request was about.
    pub fn from_reply(reply: ErrorReply, name: &str) -> Self {
        let code = ErrorCode::try_from(reply.code).unwrap_or(ErrorCode::Unspecified);
        match code {
            ErrorCode::NameTaken => Self::NameTaken(name.to_owned()),
            ErrorCode::BadName => Self::BadName(reply.detail),
            ErrorCode::ShortPassword => Self::ShortPassword(reply.detail),
            ErrorCode::UnknownUser => Self::UnknownUser(name.to_owned()),
            ErrorCode::WrongPassword => Self::WrongPassword(name.to_owned()),
            ErrorCode::Throttled => Self::Throttled {
                retry_after_ms: reply.retry_after_ms,
            },
            ErrorCode::AccountDisabled => Self::AccountDisabled(name.to_owned()),
            ErrorCode::StaleVersion => Self::StaleVersion(reply.detail),
            ErrorCode::SessionExpired => Self::SessionExpired {
                name: name.to_owned(),
                expired_at: 0,
            },
            other => Self::Server {
                code: other.as_str_name().to_owned(),
                detail: reply.detail,
            },
        }
    }

    pub(crate) fn file(path: &std::path::Path, detail: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.display().to_string(),
            detail: detail.to_string(),
        }
    }
}
