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
    // Byte offsets of the first `prefix` characters and of the last `suffix` ones: one
    // allocation, no intermediate strings (this runs once per protected row with a mask).
    let head_end = value.char_indices().nth(prefix).map_or(value.len(), |(i, _)| i);
    let tail_start = value.char_indices().nth(n - suffix).map_or(value.len(), |(i, _)| i);
    let mut out = String::with_capacity(head_end + ELLIPSIS.len_utf8() + (value.len() - tail_start));
    out.push_str(&value[..head_end]);
    out.push(ELLIPSIS);
    out.push_str(&value[tail_start..]);
    out
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

    /// The slicing implementation agrees with the plain definition (first `prefix` and last
    /// `suffix` characters around an ellipsis) on ASCII and multi-byte text.
    #[test]
    fn agrees_with_the_definition() {
        let reference = |v: &str, p: usize, s: usize| {
            let n = v.chars().count();
            if p + s == 0 || (p + s) * 2 > n {
                return super::ELLIPSIS.to_string();
            }
            let head: String = v.chars().take(p).collect();
            let tail: String = v.chars().skip(n - s).collect();
            format!("{head}{}{tail}", super::ELLIPSIS)
        };
        for v in ["", "a", "sk-live-0123456789abcdef", "ключ-секрет-ё-значение", "a😀b😀c😀d😀e😀f😀"]
        {
            for p in 0..8 {
                for s in 0..8 {
                    assert_eq!(mask(v, p, s), reference(v, p, s), "{v:?} {p} {s}");
                }
            }
        }
    }
}
