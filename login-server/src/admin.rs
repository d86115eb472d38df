//! Offline administration on a data directory: `natter-login users list`
//! and `natter-login users disable NAME`. Safe to run while the server is
//! up (SQLite WAL lets both write; each change is one statement).

use std::path::Path;

use crate::datadir::{DataDir, DataDirError};
use crate::names::{self, NameError};
use crate::storage::{Store, StoreError, UserRecord};

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
    #[error(transparent)]
    Store(#[from] StoreError),
}

async fn open(data_dir: &Path) -> Result<Store, AdminError> {
    if !data_dir.join(crate::datadir::DB_FILE).exists() {
        return Err(AdminError::NoDatabase(data_dir.display().to_string()));
    }
    let data = DataDir::open(data_dir)?;
    Ok(Store::open(&data.db_path()).await?)
}

/// Every account in the data directory.
pub async fn list_users(data_dir: &Path) -> Result<Vec<UserRecord>, AdminError> {
    let store = open(data_dir).await?;
    let users = store.list_users().await;
    store.close().await;
    Ok(users?)
}

/// Disables (or, with `disabled = false`, re-enables) an account. Certificates
/// already issued stay valid until they expire.
pub async fn set_disabled(
    data_dir: &Path,
    name: &str,
    disabled: bool,
) -> Result<String, AdminError> {
    let name = names::normalise_name(name)?;
    let store = open(data_dir).await?;
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
