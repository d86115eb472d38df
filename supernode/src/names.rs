//! User names, as the login server certifies them: 3 to 32 characters of
//! `[A-Za-z0-9._-]` starting with a letter, compared in lowercase.

/// Shortest name.
pub const MIN_NAME_LEN: usize = 3;
/// Longest name.
pub const MAX_NAME_LEN: usize = 32;

/// The normalised (lowercase) form of `name`, or `None` if it is not a
/// valid user name.
pub fn normalise(name: &str) -> Option<String> {
    let len = name.chars().count();
    let valid = (MIN_NAME_LEN..=MAX_NAME_LEN).contains(&len)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn normalises_like_the_login_server() {
        assert_eq!(normalise("Alice").as_deref(), Some("alice"));
        assert_eq!(normalise("bob.smith-2_x").as_deref(), Some("bob.smith-2_x"));
        assert_eq!(normalise("ab"), None);
        assert_eq!(normalise("1abc"), None);
        assert_eq!(normalise("al ice"), None);
        assert_eq!(normalise(&"a".repeat(33)), None);
    }
}
