//! The one user-name rule of the network: 3 to 32 characters of
//! `[A-Za-z0-9._-]` starting with a letter, compared in lowercase.
//!
//! The login server certifies the normalised form, supernodes route and index
//! by it, and clients compare against it; every component calls
//! [`normalise`] so the rule cannot drift.

/// Shortest name.
pub const MIN_NAME_LEN: usize = 3;
/// Longest name.
pub const MAX_NAME_LEN: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name must be {MIN_NAME_LEN} to {MAX_NAME_LEN} characters long (got {0})")]
    Length(usize),
    #[error("name must start with a letter")]
    FirstChar,
    #[error("name may only contain letters, digits, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

/// Checks `name` and returns its normalised (lowercase) form.
pub fn normalise(name: &str) -> Result<String, NameError> {
    let len = name.chars().count();
    if !(MIN_NAME_LEN..=MAX_NAME_LEN).contains(&len) {
        return Err(NameError::Length(len));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(NameError::BadChar(c));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(NameError::FirstChar);
    }
    Ok(name.to_ascii_lowercase())
}

/// Whether two names denote the same user (both valid and equal once
/// normalised).
pub fn same(a: &str, b: &str) -> bool {
    matches!((normalise(a), normalise(b)), (Ok(a), Ok(b)) if a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(normalise("Alice").unwrap(), "alice");
        assert_eq!(normalise("bob.smith-2_x").unwrap(), "bob.smith-2_x");
        assert_eq!(normalise("abc").unwrap(), "abc");
        assert_eq!(normalise(&"a".repeat(32)).unwrap(), "a".repeat(32));
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(normalise("ab"), Err(NameError::Length(2)));
        assert_eq!(normalise(&"a".repeat(33)), Err(NameError::Length(33)));
        assert_eq!(normalise("1abc"), Err(NameError::FirstChar));
        assert_eq!(normalise("_abc"), Err(NameError::FirstChar));
        assert_eq!(normalise("al ice"), Err(NameError::BadChar(' ')));
        assert_eq!(normalise("alicé"), Err(NameError::BadChar('é')));
    }

    #[test]
    fn same_compares_normalised_valid_names() {
        assert!(same("Alice", "alice"));
        assert!(!same("alice", "bob"));
        assert!(!same("ab", "ab"));
    }
}
