//! The buddy list kept in `--home`: `buddies.txt`, one normalised user name
//! per line, and `buddies.version`, the version of the server's encrypted
//! copy it was last synced with (see [`crate::buddies`] for the encryption).
//!
//! Both files are written by [`natter_fsutil::write_private`] (atomic, 0600).

use std::io;
use std::path::{Path, PathBuf};

use natter_fsutil::FileError;
use natter_proto::name::NameError;

use crate::ClientError;
use crate::login::LoginClient;

/// The list file in `--home`.
pub const LIST_FILE: &str = "buddies.txt";
/// The file holding the version last pushed or pulled.
pub const VERSION_FILE: &str = "buddies.version";

/// Why an edit of the buddy list failed.
#[derive(Debug, thiserror::Error)]
pub enum BuddyListError {
    /// The name to add breaks the user-name rule.
    #[error("{name:?} is not a user name: {source}")]
    BadName {
        name: String,
        #[source]
        source: NameError,
    },
    /// The name to remove is not in the list.
    #[error("{0} is not in the buddy list")]
    NotListed(String),
    /// The list could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The list could not be written.
    #[error(transparent)]
    Write(#[from] FileError),
}

/// The buddy list file and its names, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuddyList {
    path: PathBuf,
    names: Vec<String>,
}

impl BuddyList {
    /// The list at `path`; a missing or unreadable file is an empty list.
    pub fn load(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            names: parse(&std::fs::read_to_string(path).unwrap_or_default()),
        }
    }

    /// The list at `path`, which must exist.
    pub fn read(path: &Path) -> Result<Self, BuddyListError> {
        let text = std::fs::read_to_string(path).map_err(|source| BuddyListError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            names: parse(&text),
        })
    }

    /// The names, in file order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Adds `name` (trimmed and normalised) unless it is listed already;
    /// returns whether it was added.
    pub fn add(&mut self, name: &str) -> Result<bool, BuddyListError> {
        let trimmed = name.trim();
        let name =
            natter_proto::name::normalise(trimmed).map_err(|source| BuddyListError::BadName {
                name: trimmed.to_owned(),
                source,
            })?;
        if self.names.contains(&name) {
            return Ok(false);
        }
        self.names.push(name);
        Ok(true)
    }

    /// Removes `name` (trimmed, normalised when it is a valid name).
    pub fn remove(&mut self, name: &str) -> Result<(), BuddyListError> {
        let trimmed = name.trim();
        let name = natter_proto::name::normalise(trimmed).unwrap_or_else(|_| trimmed.to_owned());
        let before = self.names.len();
        self.names.retain(|b| *b != name);
        if self.names.len() == before {
            return Err(BuddyListError::NotListed(name));
        }
        Ok(())
    }

    /// Replaces the names (as pulled from the server).
    pub fn replace(&mut self, names: Vec<String>) {
        self.names = names;
    }

    /// Writes the list back to its file.
    pub fn save(&self) -> Result<(), FileError> {
        write_line(&self.path, &self.names.join("\n"))
    }
}

/// Non-empty trimmed lines.
fn parse(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn write_line(path: &Path, text: &str) -> Result<(), FileError> {
    natter_fsutil::write_private(path, format!("{text}\n").as_bytes())
}

/// The version last synced, from `buddies.version` (0 when missing or unreadable).
pub fn synced_version(dir_file: &Path) -> u64 {
    std::fs::read_to_string(dir_file)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// What a sync moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Names in the list.
    pub count: usize,
    /// The server's version of the list now.
    pub version: u64,
}

/// Downloads `name`'s list into `list_path` and records its version in
/// `version_path`.
pub async fn pull(
    client: &LoginClient,
    name: &str,
    password: &str,
    list_path: &Path,
    version_path: &Path,
) -> Result<Synced, ClientError> {
    let (version, names) = crate::buddies::pull(client, name, password).await?;
    let mut list = BuddyList::load(list_path);
    list.replace(names);
    list.save()?;
    write_line(version_path, &version.to_string())?;
    Ok(Synced {
        count: list.names().len(),
        version,
    })
}

/// Uploads the list at `list_path` as the successor of the version in
/// `version_path` and records the new version
/// ([`ClientError::StaleVersion`] if another machine pushed since).
pub async fn push(
    client: &LoginClient,
    name: &str,
    password: &str,
    list_path: &Path,
    version_path: &Path,
) -> Result<Synced, ClientError> {
    let list = BuddyList::read(list_path).map_err(|e| match e {
        BuddyListError::Read { path, source } => ClientError::file(&path, source),
        other => ClientError::Usage(other.to_string()),
    })?;
    let base = synced_version(version_path);
    let version = crate::buddies::push(client, name, password, base, list.names()).await?;
    write_line(version_path, &version.to_string())?;
    Ok(Synced {
        count: list.names().len(),
        version,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn add_normalises_dedups_and_refuses_bad_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LIST_FILE);
        let mut list = BuddyList::load(&path);
        assert!(list.names().is_empty(), "a missing file is an empty list");
        assert!(list.add("  Victor ").unwrap());
        assert!(!list.add("VICTOR").unwrap(), "same name in another case");
        assert!(list.add("walter").unwrap());
        assert_eq!(list.names(), ["victor", "walter"]);
        let err = list.add(" 9lives ").unwrap_err();
        assert!(matches!(err, BuddyListError::BadName { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "\"9lives\" is not a user name: name must start with a letter"
        );
        assert_eq!(list.names().len(), 2);
    }

    #[test]
    fn remove_matches_the_normalised_name_or_says_it_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LIST_FILE);
        std::fs::write(&path, "victor\n\n  walter \ntrent\n").unwrap();
        let mut list = BuddyList::read(&path).unwrap();
        assert_eq!(list.names(), ["victor", "walter", "trent"]);
        list.remove(" Walter").unwrap();
        assert_eq!(list.names(), ["victor", "trent"]);
        let err = list.remove("mallory").unwrap_err();
        assert_eq!(err.to_string(), "mallory is not in the buddy list");
        assert_eq!(list.names(), ["victor", "trent"]);
    }

    #[test]
    fn save_writes_one_name_per_line_privately_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LIST_FILE);
        let mut list = BuddyList::load(&path);
        list.add("victor").unwrap();
        list.add("trent").unwrap();
        list.save().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "victor\ntrent\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(BuddyList::read(&path).unwrap(), list);
        assert!(matches!(
            BuddyList::read(&dir.path().join("nope")),
            Err(BuddyListError::Read { .. })
        ));
    }

    #[test]
    fn synced_version_defaults_to_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(VERSION_FILE);
        assert_eq!(synced_version(&path), 0);
        std::fs::write(&path, "7\n").unwrap();
        assert_eq!(synced_version(&path), 7);
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(synced_version(&path), 0);
    }
}
