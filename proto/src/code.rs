//! The one-time code a customer reads to the engineer: 10 Crockford base32 symbols (50 bits).

use std::fmt;
use zeroize::Zeroize;

/// Crockford's base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Number of symbols in a code.
pub const CODE_LEN: usize = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a code has {CODE_LEN} symbols (like 7K3QM-2XPD9), this one has {0}")]
    Length(usize),
    #[error("{0:?} is not a symbol of a code (letters and digits, without U)")]
    Symbol(char),
}

/// A normalized one-time code. `Debug` is redacted; `Display` shows `XXXXX-XXXXX` and is only
/// used where the code must be shown to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct OneTimeCode([u8; CODE_LEN]);

impl OneTimeCode {
    /// A fresh code with 50 bits from the OS random number generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 8];
        rand::fill(&mut bytes[..]);
        let mut value = u64::from_le_bytes(bytes) & ((1u64 << 50) - 1);
        bytes.zeroize();
        let mut symbols = [0u8; CODE_LEN];
        for s in symbols.iter_mut().rev() {
            *s = ALPHABET[(value & 31) as usize];
            value >>= 5;
        }
        Self(symbols)
    }

    /// Normalizes what a person typed: uppercase, `-` and spaces dropped, `O`→`0`, `I`/`L`→`1`.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        let mut symbols = [0u8; CODE_LEN];
        let mut n = 0usize;
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => return Err(CodeError::Symbol(c)),
            };
            if n < CODE_LEN {
                symbols[n] = c as u8;
            }
            n += 1;
        }
        if n != CODE_LEN {
            return Err(CodeError::Length(n));
        }
        Ok(Self(symbols))
    }

    /// The normalized symbols without separator: the Argon2 password.
    pub fn normalized(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = std::str::from_utf8(&self.0).map_err(|_| fmt::Error)?;
        write!(f, "{}-{}", &s[..5], &s[5..])
    }
}

impl fmt::Debug for OneTimeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneTimeCode([redacted])")
    }
}

impl Drop for OneTimeCode {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_what_people_type() {
        let want = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        for typed in ["7k3qm2xpd9", "7K3QM 2XPD9", " 7k3qm - 2xpd9 "] {
            assert_eq!(OneTimeCode::parse(typed).unwrap(), want, "{typed}");
        }
        assert_eq!(
            OneTimeCode::parse("OIL00-11111").unwrap().normalized(),
            b"0110011111"
        );
        assert_eq!(want.to_string(), "7K3QM-2XPD9");
    }

    #[test]
    fn refuses_malformed_codes() {
        assert_eq!(OneTimeCode::parse("7K3QM-2XPD"), Err(CodeError::Length(9)));
        assert_eq!(
            OneTimeCode::parse("7K3QM-2XPD99"),
            Err(CodeError::Length(11))
        );
        assert_eq!(OneTimeCode::parse(""), Err(CodeError::Length(0)));
        assert_eq!(
            OneTimeCode::parse("7K3QM-2XPDU"),
            Err(CodeError::Symbol('U'))
        );
        assert_eq!(
            OneTimeCode::parse("7K3QM_2XPD9"),
            Err(CodeError::Symbol('_'))
        );
        assert_eq!(
            OneTimeCode::parse("7K3QM-2XPDé"),
            Err(CodeError::Symbol('é'))
        );
    }

    #[test]
    fn generated_codes_are_well_formed_and_differ() {
        let a = OneTimeCode::generate();
        let b = OneTimeCode::generate();
        assert_ne!(a, b);
        let shown = a.to_string();
        assert_eq!(shown.len(), 11);
        assert_eq!(OneTimeCode::parse(&shown).unwrap(), a);
    }

    #[test]
    fn debug_hides_the_code() {
        let c = OneTimeCode::parse("7K3QM-2XPD9").unwrap();
        assert!(!format!("{c:?}").contains("7K3QM"));
    }
}
