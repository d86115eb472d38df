//! Key logging for studying one's own traffic: with `NATTER_KEYLOG=FILE`
//! (the `SSLKEYLOGFILE` convention) the client appends to `FILE`
//!
//! * rustls's TLS secrets of every QUIC and TLS-over-TCP connection it
//!   opens, as `SSLKEYLOGFILE` lines (`CLIENT_HANDSHAKE_TRAFFIC_SECRET
//!   <client random> <secret>` and the others TLS 1.3 has), which Wireshark
//!   reads with `-o tls.keylog_file:FILE`;
//! * per call and direction, the keys of its SoM datagrams:
//!
//! ```text
//! NATTER_CALL <call id, 32 hex> <c2s|s2c> <key, 64 hex> <iv, 24 hex> <first index, decimal, or ->
//! ```
//!
//! `c2s` is the caller's direction and `s2c` the callee's (docs/PROTOCOL.md
//! section 6). A side knows the first index only of what it sends; it writes
//! `-` for the direction it receives. Wireshark skips lines it does not know,
//! so one file serves Wireshark and `natter-decrypt` (docs/TRAFFIC.md).
//!
//! Off by default. When on, the client says so on stderr once: whoever reads
//! the file can read every call and connection it covers. The file is created
//! with mode 0600 (an existing one is tightened) and each line is appended
//! in one write ([`natter_fsutil::append_private`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use natter_proto::handshake::{CallKeys, DirectionKeys, Role};

/// The environment variable naming the key log.
pub const ENV: &str = "NATTER_KEYLOG";

/// The label of a call key line.
pub const CALL_LABEL: &str = "NATTER_CALL";

/// The process's key log, once [`init_from_env`] found one.
static KEY_LOG: OnceLock<Arc<KeyLogFile>> = OnceLock::new();

/// An append-only key log file.
#[derive(Debug)]
pub struct KeyLogFile {
    path: PathBuf,
}

impl KeyLogFile {
    /// A key log appending to `path` (created on the first line).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` and a newline. A key log that cannot be written is
    /// reported on stderr and otherwise ignored: it must never break a call.
    fn append(&self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        if let Err(e) = natter_fsutil::append_private(&self.path, &bytes) {
            eprintln!("natter: key log: {e}");
        }
    }

    /// Logs both directions of a call whose keys are `keys`, this side
    /// playing `role` and sending from index `first_index`.
    pub fn log_call(&self, keys: &CallKeys, role: Role, first_index: u64) {
        let (send_dir, recv_dir) = match role {
            Role::Caller => ("c2s", "s2c"),
            Role::Callee => ("s2c", "c2s"),
        };
        self.append(&call_line(
            &keys.call_id,
            send_dir,
            &keys.send,
            Some(first_index),
        ));
        self.append(&call_line(&keys.call_id, recv_dir, &keys.recv, None));
    }
}

/// One `NATTER_CALL` line (without its newline).
pub fn call_line(
    call_id: &[u8],
    direction: &str,
    keys: &DirectionKeys,
    first_index: Option<u64>,
) -> String {
    let first = first_index.map_or_else(|| "-".to_owned(), |i| i.to_string());
    format!(
        "{CALL_LABEL} {} {direction} {} {} {first}",
        hex::encode(call_id),
        hex::encode(keys.key),
        hex::encode(keys.iv)
    )
}

impl rustls::KeyLog for KeyLogFile {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.append(&format!(
            "{label} {} {}",
            hex::encode(client_random),
            hex::encode(secret)
        ));
    }
}

/// Turns key logging on if `NATTER_KEYLOG` names a file: TLS secrets of
/// every client connection made from now on and the keys of every call go
/// there. Prints a warning on stderr when it does. Returns the log, if on.
pub fn init_from_env() -> Option<Arc<KeyLogFile>> {
    let path = std::env::var_os(ENV).filter(|p| !p.is_empty())?;
    let log = Arc::clone(KEY_LOG.get_or_init(|| Arc::new(KeyLogFile::new(path))));
    natter_net::tls::set_key_log(log.clone());
    eprintln!(
        "natter: warning: {ENV} is set: the keys of every call and connection of this process \
         are written to {} (anyone who reads it can decrypt them)",
        log.path().display()
    );
    Some(log)
}

/// Logs a call's keys if key logging is on (see [`init_from_env`]).
pub fn log_call(keys: &CallKeys, role: Role, first_index: u64) {
    if let Some(log) = KEY_LOG.get() {
        log.log_call(keys, role, first_index);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_call_line_names_the_call_direction_key_iv_and_first_index() {
        let keys = DirectionKeys {
            key: [0x11; 32],
            iv: [0x22; 12],
        };
        let line = call_line(&[0xab; 16], "c2s", &keys, Some(4242));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], "NATTER_CALL");
        assert_eq!(fields[1], "ab".repeat(16));
        assert_eq!(fields[2], "c2s");
        assert_eq!(fields[3], "11".repeat(32));
        assert_eq!(fields[4], "22".repeat(12));
        assert_eq!(fields[5], "4242");
        assert!(call_line(&[0; 16], "s2c", &keys, None).ends_with(" -"));
    }

    #[test]
    fn tls_secrets_are_appended_as_sslkeylogfile_lines_in_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.log");
        let log = KeyLogFile::new(&path);
        rustls::KeyLog::log(&log, "CLIENT_TRAFFIC_SECRET_0", &[1, 2], &[0xff]);
        rustls::KeyLog::log(&log, "SERVER_TRAFFIC_SECRET_0", &[1, 2], &[0xee]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "CLIENT_TRAFFIC_SECRET_0 0102 ff\nSERVER_TRAFFIC_SECRET_0 0102 ee\n"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
