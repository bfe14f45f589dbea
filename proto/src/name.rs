//! Validation of serials and engineer names, which share one format.

/// Longest serial or engineer name accepted.
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("must start with a letter or digit")]
    BadStart,
    #[error("may only contain letters, digits, '.', '_' and '-' (found {0:?})")]
    BadChar(char),
}

/// Checks the format `[A-Za-z0-9][A-Za-z0-9._-]{0,63}` shared by serials and engineer names.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let first = name.chars().next().ok_or(NameError::Empty)?;
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart);
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_format() {
        for ok in ["SN-0001", "a", "0.b_c-d", &"x".repeat(64)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"x".repeat(65)), Err(NameError::TooLong));
        assert_eq!(validate_name("-x"), Err(NameError::BadStart));
        assert_eq!(validate_name(".x"), Err(NameError::BadStart));
        assert_eq!(validate_name("../etc"), Err(NameError::BadStart));
        assert_eq!(validate_name("a/b"), Err(NameError::BadChar('/')));
        assert_eq!(validate_name("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_name("a'--"), Err(NameError::BadChar('\'')));
        assert_eq!(validate_name("snö"), Err(NameError::BadChar('ö')));
        assert_eq!(validate_name("a\n"), Err(NameError::BadChar('\n')));
    }
}
