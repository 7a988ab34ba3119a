//! Masking for display: `sk-…a1b2`.

/// The character shown in place of the hidden part.
pub const ELLIPSIS: char = '…';

/// Shows the first `prefix` and last `suffix` characters (Unicode scalar values) with `…`
/// between them. When that would reveal more than half of the value, the whole value is
/// masked and the result is just `…`. The result never reveals the value's length.
pub fn mask(value: &str, prefix: usize, suffix: usize) -> String {
    let n = value.chars().count();
    let visible = prefix.saturating_add(suffix);
    if visible == 0 || visible.saturating_mul(2) > n {
        return ELLIPSIS.to_string();
    }
    let head: String = value.chars().take(prefix).collect();
    let tail: String = value.chars().skip(n - suffix).collect();
    format!("{head}{ELLIPSIS}{tail}")
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn examples() {
        assert_eq!(mask("sk-live-0123456789abcdefa1b2", 3, 4), "sk-…a1b2");
        assert_eq!(mask("ghp_abcdefgh", 0, 4), "…efgh");
        assert_eq!(mask("short", 0, 4), "…");
        assert_eq!(mask("12345678", 0, 4), "…5678");
        assert_eq!(mask("1234567", 0, 4), "…");
        assert_eq!(mask("", 0, 4), "…");
        assert_eq!(mask("", 0, 0), "…");
        assert_eq!(mask("abcdefgh", 0, 0), "…");
        assert_eq!(mask("ключ-секрет-ё", 0, 2), "…-ё");
        assert_eq!(mask("x", usize::MAX, usize::MAX), "…");
    }
}
