//! User-name and password rules.
//!
//! A name is 3 to 32 characters of `[A-Za-z0-9._-]` starting with a letter.
//! It is normalised to lowercase; uniqueness is on the normalised form, so
//! `Alice` and `alice` are the same account. Certificates carry the
//! normalised name.

/// Shortest name.
pub const MIN_NAME_LEN: usize = 3;
/// Longest name.
pub const MAX_NAME_LEN: usize = 32;
/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes (bounds the hashing input).
pub const MAX_PASSWORD_BYTES: usize = 1024;

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

/// Why a password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters long")]
    TooShort,
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes long")]
    TooLong,
}

/// Checks `name` and returns its normalised (lowercase) form.
pub fn normalise_name(name: &str) -> Result<String, NameError> {
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

/// Checks a password's length.
pub fn check_password(password: &str) -> Result<(), PasswordError> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(PasswordError::TooLong);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(normalise_name("Alice").unwrap(), "alice");
        assert_eq!(normalise_name("bob.smith-2_x").unwrap(), "bob.smith-2_x");
        assert_eq!(normalise_name("abc").unwrap(), "abc");
        assert_eq!(normalise_name(&"a".repeat(32)).unwrap(), "a".repeat(32));
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(normalise_name("ab"), Err(NameError::Length(2)));
        assert_eq!(normalise_name(&"a".repeat(33)), Err(NameError::Length(33)));
        assert_eq!(normalise_name("1abc"), Err(NameError::FirstChar));
        assert_eq!(normalise_name(".abc"), Err(NameError::FirstChar));
        assert_eq!(normalise_name("ab c"), Err(NameError::BadChar(' ')));
        assert_eq!(normalise_name("émile"), Err(NameError::BadChar('é')));
        assert_eq!(normalise_name("a/bc"), Err(NameError::BadChar('/')));
    }

    #[test]
    fn password_rules() {
        assert_eq!(check_password("1234567"), Err(PasswordError::TooShort));
        assert_eq!(check_password("12345678"), Ok(()));
        // Characters, not bytes: 8 two-byte characters are fine, 7 are not.
        assert_eq!(check_password("éééééééé"), Ok(()));
        assert_eq!(check_password("ééééééé"), Err(PasswordError::TooShort));
        assert_eq!(
            check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)),
            Err(PasswordError::TooLong)
        );
    }
}
