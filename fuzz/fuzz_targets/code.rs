//! The one-time code normalizer: never panics, and what it accepts is exactly 10 Crockford
//! symbols that survive a round trip through the displayed form.
#![no_main]

use assist_proto::code::{CODE_LEN, CodeError, OneTimeCode};
use libfuzzer_sys::fuzz_target;

const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fuzz_target!(|data: &[u8]| {
    let input = String::from_utf8_lossy(data);
    match OneTimeCode::parse(&input) {
        Ok(code) => {
            let symbols = code.normalized();
            assert_eq!(symbols.len(), CODE_LEN);
            assert!(symbols.iter().all(|s| CROCKFORD.contains(s)), "{symbols:?}");
            // Idempotent: the normalized symbols are a code, the same one.
            let normalized = std::str::from_utf8(symbols).expect("ASCII symbols");
            assert_eq!(OneTimeCode::parse(normalized).as_ref(), Ok(&code));
            // The displayed form `XXXXX-XXXXX` reads back as the same code.
            let shown = code.to_string();
            assert_eq!(shown.len(), CODE_LEN + 1);
            assert_eq!(&shown[5..6], "-");
            assert_eq!(OneTimeCode::parse(&shown).as_ref(), Ok(&code));
            // Lowercase typing is the same code.
            assert_eq!(
                OneTimeCode::parse(&shown.to_lowercase()).as_ref(),
                Ok(&code)
            );
        }
        Err(CodeError::Length(n)) => {
            assert_ne!(n, CODE_LEN);
            assert!(n <= input.chars().count());
        }
        Err(CodeError::Symbol(c)) => {
            // The error shows the character as it was typed.
            assert!(input.contains(c), "{c:?} not in the input");
            let upper = c.to_ascii_uppercase();
            assert!(
                !(upper.is_ascii() && CROCKFORD.contains(&(upper as u8))),
                "{c:?}"
            );
        }
    }
});
