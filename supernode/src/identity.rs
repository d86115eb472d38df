//! The supernode's own identity: an RSA-2048 key kept in the data
//! directory (`node-key.der`, PKCS#8 DER, mode 0600), generated on first
//! start. The node id is `cert::key_id` of its public half, so a node id
//! can only be claimed by the holder of a key the login server certified.

use std::path::Path;

use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};

/// File in the data directory holding the node key.
pub const NODE_KEY_FILE: &str = "node-key.der";
/// Bits of a generated node key.
pub const NODE_KEY_BITS: usize = 2048;

/// Why the node key could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a PKCS#8 RSA private key")]
    BadKey(String),
    #[error("cannot generate an RSA key: {0}")]
    Generate(#[from] rsa::Error),
}

/// The node key in `dir` (generated and stored on first use), or a fresh
/// one without a data directory.
pub fn load_or_generate(dir: Option<&Path>) -> Result<RsaPrivateKey, IdentityError> {
    let generate = || RsaPrivateKey::new(&mut rand::rngs::OsRng, NODE_KEY_BITS);
    let Some(dir) = dir else {
        return Ok(generate()?);
    };
    let path = dir.join(NODE_KEY_FILE);
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        let der = std::fs::read(&path).map_err(io)?;
        return RsaPrivateKey::from_pkcs8_der(&der)
            .map_err(|_| IdentityError::BadKey(path.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let key = generate()?;
    let der = key
        .to_pkcs8_der()
        .map_err(|_| IdentityError::BadKey(path.display().to_string()))?;
    natter_fsutil::write_private(&path, der.as_bytes()).map_err(|e| IdentityError::Io {
        path: e.path.display().to_string(),
        source: e.source,
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_kept_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(Some(dir.path())).unwrap();
        let second = load_or_generate(Some(dir.path())).unwrap();
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
