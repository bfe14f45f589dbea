//! Where in a TOML text an error is, said in one line: the config and policy loaders both
//! report `line L, column C: message`.

/// `line L, column C: message` — toml's own rendering spans several lines with a code excerpt,
/// which reads badly in a log line.
pub fn one_line(err: &toml::de::Error, text: &str) -> String {
    // The bare message may span lines too ("invalid table header\nexpected newline, `#`").
    let message = err
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match err.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {message}")
        }
        None => message,
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `policy` fuzz target: toml's message for a broken table header has two
    /// lines, and a policy error must stay one log line.
    #[test]
    fn toml_errors_are_one_line() {
        let text = "[se]asirl\n";
        let err = toml::from_str::<toml::Value>(text).unwrap_err();
        assert!(
            err.message().contains('\n'),
            "toml changed: {:?}",
            err.message()
        );
        let line = one_line(&err, text);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(
            line.starts_with("line 1, column 5: invalid table header; "),
            "{line}"
        );
    }
}
