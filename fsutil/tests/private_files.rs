//! The private-file writer against a real filesystem: modes, atomic
//! replacement, a failing writer and a writer killed mid-write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use natter_fsutil::{
    PRIVATE, PUBLIC, append_private, create_private_dir, tighten, touch_private, write_atomic,
    write_atomic_with, write_private,
};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Names in `dir` other than `keep`: leftovers such as temporary files.
fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn private_file_is_0600_even_over_a_readable_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();

    write_private(&path, b"secret").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    assert_eq!(mode(&path), PRIVATE);
    assert!(others(dir.path(), &["identity.key"]).is_empty());

    let public = dir.path().join("login-key.pub");
    write_atomic(&public, b"pub", PUBLIC).unwrap();
    assert_eq!(mode(&public), PUBLIC);
}

#[test]
fn failed_write_leaves_the_old_content_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts");
    write_private(&path, b"old content\n").unwrap();

    let err = write_atomic_with(&path, PRIVATE, |file| {
        file.write_all(b"new cont")?;
        Err(std::io::Error::other("disk full"))
    })
    .unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"old content\n");
    assert!(others(dir.path(), &["hosts"]).is_empty());
}

/// Set in the child process of [`killed_writer_leaves_the_old_content`].
const CHILD_ENV: &str = "NATTER_FSUTIL_KILLED_WRITER";

#[test]
fn killed_writer_leaves_the_old_content() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        // The child: start replacing the file, then die before the rename.
        let _ = write_atomic_with(Path::new(&path), PRIVATE, |file| {
            file.write_all(b"half of the new")?;
            file.sync_all()?;
            std::process::exit(42)
        });
        unreachable!("the writer exits");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.cert");
    write_private(&path, b"the old certificate").unwrap();

    let status = Command::new(std::env::current_exe().unwrap())
        .args(["killed_writer_leaves_the_old_content", "--exact"])
        .args(["--test-threads", "1", "--nocapture"])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(42), "the child died mid-write");
    assert_eq!(std::fs::read(&path).unwrap(), b"the old certificate");
    assert_eq!(mode(&path), PRIVATE);
    // What the killed writer leaves is its temporary file, never a torn NAME.
    let left = others(dir.path(), &["identity.cert"]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".identity.cert.") && left[0].ends_with(".tmp"));
    assert_eq!(
        std::fs::read(dir.path().join(&left[0])).unwrap(),
        b"half of the new"
    );
    // And the next write still works.
    write_private(&path, b"new").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
}

#[test]
fn append_creates_private_and_tightens_an_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inbox.txt");
    append_private(&path, b"one\n").unwrap();
    append_private(&path, b"two\n").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    assert_eq!(mode(&path), PRIVATE);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    append_private(&path, b"three\n").unwrap();
    assert_eq!(mode(&path), PRIVATE);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");
}

#[test]
fn directories_touch_and_tighten() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a/b/home");
    create_private_dir(&home).unwrap();
    assert_eq!(mode(&home), 0o700);
    create_private_dir(&home).unwrap();

    let db = home.join("natter-login.db");
    assert!(!touch_private(&db).unwrap());
    assert_eq!(mode(&db), PRIVATE);
    std::fs::write(&db, b"rows").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(touch_private(&db).unwrap(), "tightened");
    assert_eq!(std::fs::read(&db).unwrap(), b"rows", "not truncated");
    assert_eq!(mode(&db), PRIVATE);
    assert!(!tighten(&db).unwrap(), "already private");
}
