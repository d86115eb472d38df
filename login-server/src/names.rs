//! Password rules, and the user-name rule re-exported from `natter_proto::name`.
//!
//! A name is 3 to 32 characters of `[A-Za-z0-9._-]` starting with a letter.
//! It is normalised to lowercase; uniqueness is on the normalised form, so
//! `Alice` and `alice` are the same account. Certificates carry the
//! normalised name.

pub use natter_proto::name::{MAX_NAME_LEN, MIN_NAME_LEN, NameError};

/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password, in bytes (bounds the hashing input).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Why a password was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at least {MIN_PASSWORD_CHARS} characters long")]
    TooShort,
    #[error("password must be at most {MAX_PASSWORD_BYTES} bytes long")]
    TooLong,
}

/// Checks `name` and returns its normalised (lowercase) form: the one rule
/// in [`natter_proto::name`].
pub fn normalise_name(name: &str) -> Result<String, NameError> {
    natter_proto::name::normalise(name)
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
