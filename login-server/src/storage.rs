//! The storage layer.
//!
//! Today it runs on a SQLite file (WAL mode, `synchronous = FULL`); it is
//! written to move to PostgreSQL later: runtime-checked queries only, `$n`
//! placeholders, `ON CONFLICT` upserts, `BIGINT` unix-millisecond times and
//! no SQLite-only functions. The only dialect-specific text is the DDL in
//! [`SCHEMA`] (`BLOB` would be `BYTEA`, `INTEGER PRIMARY KEY` an identity
//! column).
//!
//! Every write is one statement or one transaction, so a crash never leaves
//! a half-made account; the unique index on the normalised name is what
//! decides a registration race.

use std::path::Path;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Schema version written to the `meta` table: [`SCHEMA`] is version 1,
/// each entry of [`MIGRATIONS`] one more.
pub const SCHEMA_VERSION: i64 = 3;

/// The version-1 DDL, applied (idempotently) in the opening transaction.
/// Later changes are [`MIGRATIONS`], never edits here, so a database made
/// by any earlier server upgrades the same way.
pub const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS users (
        id INTEGER PRIMARY KEY,
        name_norm TEXT NOT NULL,
        display_name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        last_login BIGINT,
        buddy_version BIGINT NOT NULL DEFAULT 0,
        buddy_blob BLOB
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS users_name_norm ON users (name_norm)",
    "CREATE TABLE IF NOT EXISTS issued_certificates (
        serial BIGINT PRIMARY KEY,
        name_norm TEXT NOT NULL,
        key_fingerprint TEXT NOT NULL,
        issued_at BIGINT NOT NULL,
        not_after BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS issued_certificates_name ON issued_certificates (name_norm)",
    "CREATE TABLE IF NOT EXISTS supernodes (
        node_id TEXT PRIMARY KEY,
        ip TEXT NOT NULL,
        addr TEXT NOT NULL,
        last_seen BIGINT NOT NULL
    )",
    "CREATE INDEX IF NOT EXISTS supernodes_last_seen ON supernodes (last_seen)",
    "CREATE INDEX IF NOT EXISTS supernodes_ip ON supernodes (ip)",
];

/// Schema changes after version 1: `MIGRATIONS[i]` takes a database from
/// version `i + 1` to `i + 2`. Each runs once, in the opening transaction
/// together with the version update, so a crash leaves the old version and
/// the next start runs it again.
pub const MIGRATIONS: &[&[&str]] = &[
    // 2: the supernode's TLS-over-TCP listener (NULL when it has none).
    &["ALTER TABLE supernodes ADD COLUMN tcp_addr TEXT"],
    // 3: supernode certificates (issue 13): the keys the operator approved
    // (or that announced and wait: pending; or revoked), one-time enrolment
    // tokens (their SHA-256 only), and each listed supernode's reflector and
    // latest certificate (handed to clients in host cache entries).
    &[
        "CREATE TABLE IF NOT EXISTS supernode_keys (
            fingerprint TEXT PRIMARY KEY,
            node_id TEXT,
            state TEXT NOT NULL,
            addr TEXT,
            first_seen BIGINT NOT NULL,
            last_seen BIGINT
        )",
        "CREATE TABLE IF NOT EXISTS enrol_tokens (
            hash TEXT PRIMARY KEY,
            expires_at BIGINT NOT NULL
        )",
        "ALTER TABLE supernodes ADD COLUMN reflector TEXT",
        "ALTER TABLE supernodes ADD COLUMN certificate BLOB",
    ],
];

/// What the operator decided about a supernode key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Announced, waiting for `supernodes approve`.
    Pending,
    Approved,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Approved => "approved",
            KeyState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "approved" => KeyState::Approved,
            "revoked" => KeyState::Revoked,
            _ => KeyState::Pending,
        }
    }
}

/// A supernode key the login server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupernodeKeyRecord {
    /// SHA-256 of the PKCS#1 public key, hex.
    pub fingerprint: String,
    /// Hex node id (unknown for a key approved before it announced).
    pub node_id: Option<String>,
    pub state: KeyState,
    /// The QUIC address of its latest announce.
    pub addr: Option<String>,
    pub first_seen: i64,
    pub last_seen: Option<i64>,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the name is already taken")]
    NameTaken,
    #[error("no such user")]
    UnknownUser,
    #[error("stale version: the stored version is {current}")]
    StaleVersion { current: u64 },
    #[error("too many supernodes announced from this address")]
    TooManySupernodes,
    #[error("too many supernode keys wait for approval")]
    TooManyPending,
    #[error("no supernode key with fingerprint {0}")]
    UnknownSupernode(String),
    #[error("database schema version {0} is newer than this server ({SCHEMA_VERSION})")]
    SchemaTooNew(i64),
    #[error("database schema version {0:?} is not a number")]
    BadSchemaVersion(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A user account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub display_name: String,
    pub password_hash: String,
    pub created_at: i64,
    pub disabled: bool,
    pub last_login: Option<i64>,
}

/// A supernode as announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupernodeRecord {
    /// Hex of the node id.
    pub node_id: String,
    /// `ip:port`.
    pub addr: String,
    /// `ip:port` of its TLS-over-TCP listener, if it announced one.
    pub tcp: Option<String>,
    /// Unix milliseconds.
    pub last_seen: i64,
    /// `ip:port` of its UDP service, if announced.
    pub reflector: Option<String>,
    /// Its latest supernode certificate (encoded `Certificate`).
    pub certificate: Option<Vec<u8>>,
}

/// A buddy-list blob.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuddyBlobRecord {
    pub version: u64,
    pub ciphertext: Vec<u8>,
}

/// The login server's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// the schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// A write transaction. SQLite's default (deferred) transaction starts as
    /// a reader and fails at once with "database is locked" when it later
    /// needs to write after another writer committed (WAL snapshot conflict,
    /// not covered by the busy timeout); `BEGIN IMMEDIATE` takes the write
    /// lock up front and waits its turn. (On PostgreSQL this is plain `BEGIN`.)
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for statement in SCHEMA {
            sqlx::query(*statement).execute(&mut *tx).await?;
        }
        let stored: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
                .fetch_optional(&mut *tx)
                .await?;
        // No row: a new database, which SCHEMA has just made version 1.
        let version = match stored {
            None => 1,
            Some(v) => v
                .parse::<i64>()
                .map_err(|_| StoreError::BadSchemaVersion(v))?,
        };
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew(version));
        }
        let done = usize::try_from(version.max(1) - 1).unwrap_or(0);
        for step in MIGRATIONS.iter().skip(done) {
            for statement in *step {
                sqlx::query(*statement).execute(&mut *tx).await?;
            }
        }
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(SCHEMA_VERSION.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The schema version the database is at.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let v: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
            .fetch_one(&self.pool)
            .await?;
        v.parse().map_err(|_| StoreError::BadSchemaVersion(v))
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Creates an account; [`StoreError::NameTaken`] when the normalised name exists.
    pub async fn create_user(
        &self,
        name: &str,
        display_name: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO users (name_norm, display_name, password_hash, created_at)
             VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::NameTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether an account with this normalised name exists.
    pub async fn user_exists(&self, name: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE name_norm = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The account with this normalised name.
    pub async fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name_norm, display_name, password_hash, created_at, disabled, last_login
             FROM users WHERE name_norm = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| user_from_row(&row)).transpose()
    }

    /// Every account, by name.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name_norm, display_name, password_hash, created_at, disabled, last_login
             FROM users ORDER BY name_norm",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Disables or re-enables an account; [`StoreError::UnknownUser`] if none.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE users SET disabled = $1 WHERE name_norm = $2")
            .bind(i64::from(disabled))
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::UnknownUser);
        }
        Ok(())
    }

    /// Records a certificate issuance and the user's last login, atomically.
    pub async fn record_issuance(
        &self,
        name: &str,
        serial: u64,
        key_fingerprint: &str,
        now_ms: i64,
        not_after: i64,
    ) -> Result<(), StoreError> {
        let serial = i64::try_from(serial).unwrap_or(i64::MAX);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO issued_certificates (serial, name_norm, key_fingerprint, issued_at, not_after)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(serial)
        .bind(name)
        .bind(key_fingerprint)
        .bind(now_ms)
        .bind(not_after)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE users SET last_login = $1 WHERE name_norm = $2")
            .bind(now_ms)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records (or refreshes) a supernode announce; `tcp` is its
    /// TLS-over-TCP listener (an announce without one clears it).
    pub async fn upsert_supernode(
        &self,
        node_id: &str,
        ip: &str,
        addr: &str,
        tcp: Option<&str>,
        now_ms: i64,
        max_per_ip: usize,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let others: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM supernodes WHERE ip = $1 AND node_id <> $2")
                .bind(ip)
                .bind(node_id)
                .fetch_one(&mut *tx)
                .await?;
        if usize::try_from(others).unwrap_or(usize::MAX) >= max_per_ip {
            return Err(StoreError::TooManySupernodes);
        }
        sqlx::query(
            "INSERT INTO supernodes (node_id, ip, addr, tcp_addr, last_seen)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (node_id) DO UPDATE
             SET ip = excluded.ip, addr = excluded.addr, tcp_addr = excluded.tcp_addr,
                 last_seen = excluded.last_seen",
        )
        .bind(node_id)
        .bind(ip)
        .bind(addr)
        .bind(tcp)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores the reflector and certificate of a listed supernode (after
    /// [`Self::upsert_supernode`]).
    pub async fn set_supernode_certificate(
        &self,
        node_id: &str,
        reflector: &str,
        certificate: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE supernodes SET reflector = $1, certificate = $2 WHERE node_id = $3")
            .bind(reflector)
            .bind(certificate)
            .bind(node_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What the operator decided about the key with `fingerprint`.
    pub async fn supernode_key_state(
        &self,
        fingerprint: &str,
    ) -> Result<Option<KeyState>, StoreError> {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM supernode_keys WHERE fingerprint = $1")
                .bind(fingerprint)
                .fetch_optional(&self.pool)
                .await?;
        Ok(state.as_deref().map(KeyState::parse))
    }

    /// Records an announce of a key: inserted as `state` when new (a new
    /// pending key only while fewer than `max_pending` wait), else its node
    /// id, address and time refreshed (the state is kept unless `state` is
    /// `Approved`, which a consumed token decides).
    pub async fn note_supernode_key(
        &self,
        fingerprint: &str,
        node_id: &str,
        addr: &str,
        state: KeyState,
        now_ms: i64,
        max_pending: usize,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let known: Option<String> =
            sqlx::query_scalar("SELECT state FROM supernode_keys WHERE fingerprint = $1")
                .bind(fingerprint)
                .fetch_optional(&mut *tx)
                .await?;
        if known.is_none() && state == KeyState::Pending {
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM supernode_keys WHERE state = 'pending'")
                    .fetch_one(&mut *tx)
                    .await?;
            if usize::try_from(pending).unwrap_or(usize::MAX) >= max_pending {
                return Err(StoreError::TooManyPending);
            }
        }
        sqlx::query(
            "INSERT INTO supernode_keys (fingerprint, node_id, state, addr, first_seen, last_seen)
             VALUES ($1, $2, $3, $4, $5, $5)
             ON CONFLICT (fingerprint) DO UPDATE
             SET node_id = excluded.node_id, addr = excluded.addr, last_seen = excluded.last_seen,
                 state = CASE WHEN excluded.state = 'approved' AND supernode_keys.state <> 'revoked'
                              THEN 'approved' ELSE supernode_keys.state END",
        )
        .bind(fingerprint)
        .bind(node_id)
        .bind(state.as_str())
        .bind(addr)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The operator approves (or revokes) the key with `fingerprint`. A key
    /// never seen can be approved ahead of its first announce; revoking
    /// needs a key that announced (its node id goes in the revocation
    /// list). A revoked key is also taken off the host cache at once.
    pub async fn set_supernode_key_state(
        &self,
        fingerprint: &str,
        state: KeyState,
        now_ms: i64,
    ) -> Result<SupernodeKeyRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query("UPDATE supernode_keys SET state = $1 WHERE fingerprint = $2")
            .bind(state.as_str())
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            if state != KeyState::Approved {
                return Err(StoreError::UnknownSupernode(fingerprint.to_owned()));
            }
            sqlx::query(
                "INSERT INTO supernode_keys (fingerprint, state, first_seen) VALUES ($1, $2, $3)",
            )
            .bind(fingerprint)
            .bind(state.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if state == KeyState::Revoked {
            sqlx::query(
                "DELETE FROM supernodes WHERE node_id IN
                 (SELECT node_id FROM supernode_keys WHERE fingerprint = $1)",
            )
            .bind(fingerprint)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.supernode_keys()
            .await?
            .into_iter()
            .find(|k| k.fingerprint == fingerprint)
            .ok_or_else(|| StoreError::UnknownSupernode(fingerprint.to_owned()))
    }

    /// Every supernode key known, pending first.
    pub async fn supernode_keys(&self) -> Result<Vec<SupernodeKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint, node_id, state, addr, first_seen, last_seen FROM supernode_keys
             ORDER BY state DESC, first_seen",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(SupernodeKeyRecord {
                    fingerprint: row.try_get("fingerprint")?,
                    node_id: row.try_get("node_id")?,
                    state: KeyState::parse(&state),
                    addr: row.try_get("addr")?,
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                })
            })
            .collect()
    }

    /// Node ids (hex) of revoked supernode keys.
    pub async fn revoked_supernodes(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT node_id FROM supernode_keys WHERE state = 'revoked' AND node_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Names of disabled accounts.
    pub async fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT name_norm FROM users WHERE disabled <> 0")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Stores a one-time enrolment token's hash, valid until `expires_at_ms`.
    pub async fn add_enrol_token(&self, hash: &str, expires_at_ms: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO enrol_tokens (hash, expires_at) VALUES ($1, $2)")
            .bind(hash)
            .bind(expires_at_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Consumes the enrolment token with `hash` if it exists and has not
    /// expired: true at most once per token.
    pub async fn consume_enrol_token(&self, hash: &str, now_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM enrol_tokens WHERE hash = $1 AND expires_at > $2")
            .bind(hash)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Forgets supernodes not seen since `before_ms`.
    pub async fn prune_supernodes(&self, before_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM supernodes WHERE last_seen < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Supernodes seen since `since_ms`, most recent first; never a revoked
    /// one (even if an announce in flight when it was revoked re-added it).
    pub async fn recent_supernodes(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<SupernodeRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, addr, tcp_addr, last_seen, reflector, certificate FROM supernodes
             WHERE last_seen >= $1 AND node_id NOT IN
                 (SELECT node_id FROM supernode_keys WHERE state = 'revoked' AND node_id IS NOT NULL)
             ORDER BY last_seen DESC LIMIT $2",
        )
        .bind(since_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SupernodeRecord {
                    node_id: row.try_get("node_id")?,
                    addr: row.try_get("addr")?,
                    tcp: row.try_get("tcp_addr")?,
                    last_seen: row.try_get("last_seen")?,
                    reflector: row.try_get("reflector")?,
                    certificate: row.try_get("certificate")?,
                })
            })
            .collect()
    }

    /// The user's buddy blob (version 0 and no bytes when never written).
    pub async fn buddy_blob(&self, name: &str) -> Result<BuddyBlobRecord, StoreError> {
        let row = sqlx::query("SELECT buddy_version, buddy_blob FROM users WHERE name_norm = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::UnknownUser)?;
        let version: i64 = row.try_get("buddy_version")?;
        let ciphertext: Option<Vec<u8>> = row.try_get("buddy_blob")?;
        Ok(BuddyBlobRecord {
            version: to_u64(version),
            ciphertext: ciphertext.unwrap_or_default(),
        })
    }

    /// Replaces the buddy blob if its stored version is `base_version`;
    /// returns the new version (`base_version + 1`).
    pub async fn put_buddy_blob(
        &self,
        name: &str,
        base_version: u64,
        ciphertext: &[u8],
    ) -> Result<u64, StoreError> {
        let base =
            i64::try_from(base_version).map_err(|_| StoreError::StaleVersion { current: 0 })?;
        // One conditional statement: the compare and the swap are atomic.
        let done = sqlx::query(
            "UPDATE users SET buddy_version = buddy_version + 1, buddy_blob = $1
             WHERE name_norm = $2 AND buddy_version = $3",
        )
        .bind(ciphertext)
        .bind(name)
        .bind(base)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(base_version + 1);
        }
        let current = self.buddy_blob(name).await?.version;
        Err(StoreError::StaleVersion { current })
    }
}

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<UserRecord, StoreError> {
    let disabled: i64 = row.try_get("disabled")?;
    Ok(UserRecord {
        name: row.try_get("name_norm")?,
        display_name: row.try_get("display_name")?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
        disabled: disabled != 0,
        last_login: row.try_get("last_login")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read-then-write transactions (supernode announces) racing plain
    /// writes (registrations) all succeed: none fails with "database is
    /// locked".
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_read_then_write_transactions_never_fail_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("t.db")).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..40 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..5 {
                    let ip = format!("10.0.{i}.1");
                    store
                        .upsert_supernode(
                            &format!("n{i}"),
                            &ip,
                            &format!("{ip}:{round}"),
                            None,
                            round,
                            16,
                        )
                        .await?;
                    store
                        .create_user(&format!("u{i}x{round}"), "U", "h", round)
                        .await?;
                }
                Ok::<_, StoreError>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store.list_users().await.unwrap().len(), 200);
    }

    /// A database made by the version-1 server (no `tcp_addr` column)
    /// upgrades in place, keeps its rows, and reopening it again is a no-op.
    #[tokio::test]
    async fn a_version_1_database_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePool::connect_with(options).await.unwrap();
            for statement in SCHEMA {
                sqlx::query(*statement).execute(&pool).await.unwrap();
            }
            sqlx::query("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
                .execute(&pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO supernodes (node_id, ip, addr, last_seen)
                 VALUES ('aa', '10.0.0.1', '10.0.0.1:5000', 100)",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO users (name_norm, display_name, password_hash, created_at)
                 VALUES ('old', 'Old', 'h', 1)",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let recent = store.recent_supernodes(0, 10).await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(
            (recent[0].addr.as_str(), recent[0].tcp.as_deref()),
            ("10.0.0.1:5000", None)
        );
        assert!(store.user_exists("old").await.unwrap());
        store
            .upsert_supernode(
                "aa",
                "10.0.0.1",
                "10.0.0.1:5000",
                Some("10.0.0.1:443"),
                200,
                16,
            )
            .await
            .unwrap();
        store.close().await;

        // Opening again neither re-runs the migration nor loses data.
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        let recent = store.recent_supernodes(0, 10).await.unwrap();
        assert_eq!(recent[0].tcp.as_deref(), Some("10.0.0.1:443"));
        // An announce without a TCP listener clears it.
        store
            .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:5000", None, 300, 16)
            .await
            .unwrap();
        assert_eq!(store.recent_supernodes(0, 10).await.unwrap()[0].tcp, None);
        store.close().await;
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let store = Store::open(&path).await.unwrap();
        sqlx::query("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            .execute(&store.pool)
            .await
            .unwrap();
        store.close().await;
        assert!(matches!(
            Store::open(&path).await,
            Err(StoreError::SchemaTooNew(99))
        ));
    }

    #[tokio::test]
    async fn accounts_blobs_and_supernodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path).await.unwrap();
        store.create_user("alice", "Alice", "h", 1).await.unwrap();
        assert!(matches!(
            store.create_user("alice", "ALICE", "h2", 2).await,
            Err(StoreError::NameTaken)
        ));
        assert!(store.user_exists("alice").await.unwrap());
        assert!(!store.user_exists("bob").await.unwrap());

        assert_eq!(store.buddy_blob("alice").await.unwrap().version, 0);
        assert_eq!(store.put_buddy_blob("alice", 0, b"one").await.unwrap(), 1);
        assert!(matches!(
            store.put_buddy_blob("alice", 0, b"stale").await,
            Err(StoreError::StaleVersion { current: 1 })
        ));
        assert_eq!(store.put_buddy_blob("alice", 1, b"two").await.unwrap(), 2);
        let blob = store.buddy_blob("alice").await.unwrap();
        assert_eq!((blob.version, blob.ciphertext.as_slice()), (2, &b"two"[..]));

        store.set_disabled("alice", true).await.unwrap();
        assert!(store.user("alice").await.unwrap().unwrap().disabled);
        assert!(matches!(
            store.set_disabled("nobody", true).await,
            Err(StoreError::UnknownUser)
        ));

        store
            .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:1", None, 100, 1)
            .await
            .unwrap();
        store
            .upsert_supernode("aa", "10.0.0.1", "10.0.0.1:2", Some("10.0.0.1:443"), 200, 1)
            .await
            .unwrap();
        assert!(matches!(
            store
                .upsert_supernode("bb", "10.0.0.1", "10.0.0.1:3", None, 200, 1)
                .await,
            Err(StoreError::TooManySupernodes)
        ));
        store
            .upsert_supernode("cc", "10.0.0.2", "10.0.0.2:1", None, 50, 1)
            .await
            .unwrap();
        let recent = store.recent_supernodes(100, 10).await.unwrap();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].addr, "10.0.0.1:2");
        assert_eq!(recent[0].tcp.as_deref(), Some("10.0.0.1:443"));
        assert_eq!(store.prune_supernodes(100).await.unwrap(), 1);
        store.close().await;

        // Reopening keeps everything.
        let store = Store::open(&path).await.unwrap();
        assert_eq!(store.list_users().await.unwrap().len(), 1);
    }
}
