//! # natter-fsutil
//!
//! The one place Natter writes files that must survive a crash and must not
//! be readable by other users: keys, certificates, the host cache, the inbox,
//! the buddy list, the login server's data directory.
//!
//! | function | what it guarantees |
//! |---|---|
//! | [`write_private`] | the whole new content or the whole old content, mode 0600 |
//! | [`write_atomic`] | the same, with another mode (public keys and certificates: 0644) |
//! | [`write_atomic_with`] | the same, the content streamed by a closure |
//! | [`append_private`] | one appended record, the file created 0600 (and tightened if it was not) |
//! | [`create_private_dir`] | a directory created 0700 |
//! | [`touch_private`] | a file that exists, is not truncated and is 0600 |
//! | [`tighten`] | an existing file made 0600 if others could read it |
//!
//! An atomic write goes to a temporary sibling (`.NAME.PID.N.tmp`, created
//! exclusively with the final mode), is flushed with `fsync`, renamed over
//! `NAME` and the directory is synced. A writer that fails removes its
//! temporary file; a writer that is killed leaves it behind, never a
//! half-written `NAME`.
//!
//! Nothing here depends on another Natter crate, so every crate that owns a
//! file can depend on this one without a cycle.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Mode of a file only its owner may read: secrets and personal data.
pub const PRIVATE: u32 = 0o600;
/// Mode of a file anyone may read: public keys, certificates.
pub const PUBLIC: u32 = 0o644;
/// Mode of a directory only its owner may enter.
pub const PRIVATE_DIR: u32 = 0o700;

/// A file operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file (or, while writing, its temporary sibling) that failed.
    pub path: PathBuf,
    /// What the operating system said.
    #[source]
    pub source: io::Error,
}

impl FileError {
    fn at(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
        move |source| FileError {
            path: path.to_owned(),
            source,
        }
    }
}

/// Replaces `path` with `data` atomically, readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    write_atomic(path, data, PRIVATE)
}

/// Replaces `path` with `data` atomically; a new file gets `mode` (less the
/// process umask).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), FileError> {
    write_atomic_with(path, mode, |file| file.write_all(data))
}

/// Replaces `path` atomically with what `fill` writes into the temporary
/// file. If `fill` fails, the temporary file is removed, `path` keeps its old
/// content and the error is returned.
pub fn write_atomic_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), FileError> {
    let tmp = temp_sibling(path);
    let mut file = open_with_mode(OpenOptions::new().write(true).create_new(true), mode)
        .open(&tmp)
        .map_err(FileError::at(&tmp))?;
    let written = fill(&mut file).and_then(|()| file.sync_all());
    drop(file);
    if let Err(source) = written {
        let _ = fs::remove_file(&tmp);
        return Err(FileError { path: tmp, source });
    }
    if let Err(source) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(FileError {
            path: path.to_owned(),
            source,
        });
    }
    sync_parent(path);
    Ok(())
}

/// Appends `data` to `path` in one write, creating the file with mode 0600
/// (and tightening an existing one that others could read), then syncs it.
pub fn append_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let mut file = open_with_mode(OpenOptions::new().create(true).append(true), PRIVATE)
        .open(path)
        .map_err(FileError::at(path))?;
    tighten_open(&file).map_err(FileError::at(path))?;
    file.write_all(data)
        .and_then(|()| file.sync_data())
        .map_err(FileError::at(path))
}

/// Creates `dir` (and its parents) with mode 0700 if it is not a directory yet.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR);
    }
    builder.create(dir).map_err(FileError::at(dir))
}

/// Makes sure `path` exists without truncating it: created empty with mode
/// 0600 when missing, else [`tighten`]ed. Returns whether an existing file
/// had to be tightened.
pub fn touch_private(path: &Path) -> Result<bool, FileError> {
    if path.exists() {
        return tighten(path);
    }
    open_with_mode(
        OpenOptions::new().write(true).create(true).truncate(false),
        PRIVATE,
    )
    .open(path)
    .map_err(FileError::at(path))?;
    Ok(false)
}

/// Sets mode 0600 on `path` if group or others had any access; returns
/// whether it did (callers may want to warn about it).
pub fn tighten(path: &Path) -> Result<bool, FileError> {
    let file = File::open(path).map_err(FileError::at(path))?;
    tighten_open(&file).map_err(FileError::at(path))
}

#[cfg(unix)]
fn tighten_open(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    file.set_permissions(fs::Permissions::from_mode(PRIVATE))?;
    Ok(true)
}

#[cfg(not(unix))]
fn tighten_open(_file: &File) -> io::Result<bool> {
    Ok(false)
}

fn open_with_mode(options: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options
}

/// `.NAME.PID.N.tmp` next to `path`: unique per process and per write, so
/// two writers (threads or processes) never share a temporary file.
fn temp_sibling(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Makes the rename durable (best effort: not every filesystem syncs
/// directories).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}
