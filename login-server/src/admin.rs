//! Offline administration on a data directory: `natter-login users
//! list|disable|enable` and `natter-login supernodes
//! list|approve|revoke|token`. Safe to run while the server is
//! up (SQLite WAL lets both write, PostgreSQL too; each change is one
//! statement or one transaction).

use std::path::Path;

use crate::datadir::{DataDir, DataDirError};
use crate::names::{self, NameError};
use crate::storage::{KeyState, Store, StoreError, SupernodeKeyRecord, UserRecord};

/// An administration failure.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("no database in {0} (has `natter-login serve` run there?)")]
    NoDatabase(String),
    #[error("invalid name: {0}")]
    BadName(#[from] NameError),
    #[error("no user named {0:?}")]
    UnknownUser(String),
    #[error("{0:?} is not a key fingerprint (64 hex digits)")]
    BadFingerprint(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the database the commands work on is.
#[derive(Debug, Clone, Copy)]
pub enum Database<'a> {
    /// The SQLite file in this data directory (the default).
    DataDir(&'a Path),
    /// A database URL (`--database postgres://...`), the one `serve` uses.
    Url(&'a str),
}

impl<'a> From<&'a Path> for Database<'a> {
    fn from(data_dir: &'a Path) -> Self {
        Database::DataDir(data_dir)
    }
}

impl<'a> From<&'a std::path::PathBuf> for Database<'a> {
    fn from(data_dir: &'a std::path::PathBuf) -> Self {
        Database::DataDir(data_dir)
    }
}

async fn open(database: Database<'_>) -> Result<Store, AdminError> {
    match database {
        Database::Url(url) => Ok(Store::connect(url).await?),
        Database::DataDir(data_dir) => {
            if !data_dir.join(crate::datadir::DB_FILE).exists() {
                return Err(AdminError::NoDatabase(data_dir.display().to_string()));
            }
            let data = DataDir::open(data_dir)?;
            Ok(Store::open(&data.db_path()).await?)
        }
    }
}

/// Every account in the data directory.
pub async fn list_users<'a>(
    database: impl Into<Database<'a>>,
) -> Result<Vec<UserRecord>, AdminError> {
    let store = open(database.into()).await?;
    let users = store.list_users().await;
    store.close().await;
    Ok(users?)
}

/// Disables (or, with `disabled = false`, re-enables) an account. A
/// disabled name is in the revocation list every supernode fetches with its
/// announces, which ends its sessions and refuses its joins.
pub async fn set_disabled<'a>(
    database: impl Into<Database<'a>>,
    name: &str,
    disabled: bool,
) -> Result<String, AdminError> {
    let name = names::normalise_name(name)?;
    let store = open(database.into()).await?;
    let result = store.set_disabled(&name, disabled).await;
    store.close().await;
    match result {
        Ok(()) => Ok(name),
        Err(StoreError::UnknownUser) => Err(AdminError::UnknownUser(name)),
        Err(e) => Err(e.into()),
    }
}

/// One line per user, for `users list`.
pub fn format_user(user: &UserRecord) -> String {
    format!(
        "{}\t{}\t{}\tcreated={}\tlast_login={}",
        user.name,
        user.display_name,
        if user.disabled { "disabled" } else { "active" },
        user.created_at,
        user.last_login
            .map_or_else(|| "never".to_owned(), |t| t.to_string()),
    )
}

/// Approves (`approve`) or revokes a supernode key by its fingerprint (the
/// SHA-256 hex a pending supernode logs and `supernodes list` shows).
pub async fn set_supernode_state<'a>(
    database: impl Into<Database<'a>>,
    fingerprint: &str,
    state: KeyState,
) -> Result<SupernodeKeyRecord, AdminError> {
    let fingerprint = fingerprint.trim().to_ascii_lowercase();
    if fingerprint.len() != 64 || hex::decode(&fingerprint).is_err() {
        return Err(AdminError::BadFingerprint(fingerprint));
    }
    let store = open(database.into()).await?;
    let result = store
        .set_supernode_key_state(&fingerprint, state, crate::now_unix_ms())
        .await;
    store.close().await;
    Ok(result?)
}

/// Every supernode key the login server knows (pending, approved, revoked).
pub async fn list_supernodes<'a>(
    database: impl Into<Database<'a>>,
) -> Result<Vec<SupernodeKeyRecord>, AdminError> {
    let store = open(database.into()).await?;
    let keys = store.supernode_keys().await;
    store.close().await;
    Ok(keys?)
}

/// A new one-time enrolment token valid for `ttl`: printed once, only its
/// hash stored. A supernode started with `--enrol TOKEN` is approved by its
/// first announce.
pub async fn new_enrol_token<'a>(
    database: impl Into<Database<'a>>,
    ttl: std::time::Duration,
) -> Result<String, AdminError> {
    use rand::RngCore;
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let expires =
        crate::now_unix_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let store = open(database.into()).await?;
    let result = store
        .add_enrol_token(&crate::service::token_hash(&token), expires)
        .await;
    store.close().await;
    result?;
    Ok(token)
}

/// One line per supernode key, for `supernodes list`.
pub fn format_supernode(key: &SupernodeKeyRecord) -> String {
    format!(
        "{}\t{}\tnode={}\taddr={}\tlast_seen={}",
        key.fingerprint,
        key.state.as_str(),
        key.node_id.as_deref().unwrap_or("-"),
        key.addr.as_deref().unwrap_or("-"),
        key.last_seen
            .map_or_else(|| "never".to_owned(), |t| t.to_string()),
    )
}
