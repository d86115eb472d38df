//! Where a command's password comes from: `--password-file`, else the
//! `NATTER_PASSWORD` variable, else a prompt on the terminal.

use std::io::IsTerminal;
use std::path::Path;

use crate::ClientError;

/// The variable read when no password file is given.
pub const ENV_VAR: &str = "NATTER_PASSWORD";

/// The password for `name`: the first line of `file` when given, else
/// [`ENV_VAR`], else asked on the terminal (twice when `confirm`). Without a
/// terminal and without either source, a usage error says what to do.
pub fn read(file: Option<&Path>, name: &str, confirm: bool) -> Result<String, ClientError> {
    if let Some(path) = file {
        return from_file(path);
    }
    if let Ok(password) = std::env::var(ENV_VAR) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(
            "no password: use --password-file FILE or the NATTER_PASSWORD variable",
        ));
    }
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt).map_err(|e| usage(&format!("reading the password: {e}")))
    };
    let first = ask(&format!("Password for {name}: "))?;
    if confirm && ask("Repeat the password: ")? != first {
        return Err(usage("the passwords do not match"));
    }
    Ok(first)
}

/// Whether [`read`] has a source to read from: `file`, the variable, or a
/// terminal to ask on (commands log in by themselves only then).
pub fn available(file: Option<&Path>) -> bool {
    file.is_some() || std::env::var_os(ENV_VAR).is_some() || std::io::stdin().is_terminal()
}

/// The first line of `path` (empty for an empty file).
pub fn from_file(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| ClientError::file(path, e))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

fn usage(msg: &str) -> ClientError {
    ClientError::Usage(msg.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_gives_its_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "correct horse\nsecond line\n").unwrap();
        assert_eq!(read(Some(&path), "alice", true).unwrap(), "correct horse");
        std::fs::write(&path, "").unwrap();
        assert_eq!(from_file(&path).unwrap(), "");
        let missing = dir.path().join("missing");
        let err = from_file(&missing).unwrap_err();
        assert!(matches!(err, ClientError::File { .. }), "{err:?}");
        assert!(err.to_string().starts_with(&missing.display().to_string()));
    }
}
