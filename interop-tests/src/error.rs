//! The lab's error type.

use std::time::Duration;

/// Why building, probing or running the lab failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Something the lab needs is not there (root, `ip`, `nft`, `tcpdump`, ...).
    #[error("the NAT lab cannot run: {0}")]
    Missing(String),
    /// A command ran and exited unsuccessfully.
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("command `{cmd}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line.
        cmd: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// A command could not be started.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// File system or other I/O trouble.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A router did not behave as its declared NAT type.
    #[error("NAT self-check failed: {0}")]
    SelfCheck(String),
    /// Anything else (bad output, a server that did not come up, ...).
    #[error("{0}")]
    Other(String),
}

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias of the lab.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
