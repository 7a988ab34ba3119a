//! Binding of protected-column values: the associated data every ciphertext in a protected
//! column is bound to.
//!
//! A designation (one protected column, or one protected key of a jsonb column) gets a random
//! *binding id* when it is created. The binding id, not an OID or a name, identifies it, so the
//! binding survives `ALTER TABLE … RENAME` and dump/restore into another database (the id
//! travels with the catalog row). When the designation has bind columns (typically the primary
//! key), their values are part of the context too, so a ciphertext copied into another row no
//! longer decrypts.
//!
//! The context is text (it is what `decrypt_credential(value, context)` takes):
//!
//! ```text
//! pg_credcrypt/col/v1:<binding id>            no bind columns
//! pg_credcrypt/col/v1:<binding id>:3=123:-    bind values "123" and NULL
//! ```
//!
//! Every bind value is written as `<length in bytes>=<value>`, and NULL as `-`, so the
//! encoding is injective: two different lists of bind values never give the same context.

use crate::error::{Error, ErrorKind};

/// Prefix of every column context.
pub const CONTEXT_PREFIX: &str = "pg_credcrypt/col/v1:";

/// Length of a binding id in characters (128 random bits in lower-case hex).
pub const BINDING_ID_LEN: usize = 32;

/// A new random binding id: 128 bits from the OS CSPRNG, as 32 lower-case hex digits.
pub fn new_binding_id() -> Result<String, Error> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b)
        .map_err(|_| Error::new(ErrorKind::RandomFailure, "the operating system's random source failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether `s` has the shape of a binding id (32 lower-case hex digits).
pub fn is_binding_id(s: &str) -> bool {
    s.len() == BINDING_ID_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The context a protected value is bound to: the designation's binding id and the values of
/// its bind columns (as text), in the designation's order.
pub fn column_context(binding_id: &str, bind_values: &[Option<&str>]) -> Result<String, Error> {
    let extra: usize = bind_values.iter().map(|v| v.map_or(2, |v| v.len() + 24)).sum();
    let mut out = ContextBuilder::new(binding_id, extra)?;
    for v in bind_values {
        out.push(*v);
    }
    out.finish()
}

/// Builds a column context one bind value at a time (the protection trigger, once per row:
/// no list of values is gathered first). `ContextBuilder::new` checks the binding id;
/// [`ContextBuilder::finish`] the length. The result is exactly [`column_context`]'s.
#[derive(Debug, Clone)]
pub struct ContextBuilder(String);

impl ContextBuilder {
    /// A context of designation `binding_id`, with room for `extra` bytes of bind values.
    pub fn new(binding_id: &str, extra: usize) -> Result<ContextBuilder, Error> {
        if !is_binding_id(binding_id) {
            return Err(Error::new(ErrorKind::InvalidArgument, "a binding id is 32 lower-case hexadecimal digits"));
        }
        let mut out = String::with_capacity(CONTEXT_PREFIX.len() + BINDING_ID_LEN + extra);
        out.push_str(CONTEXT_PREFIX);
        out.push_str(binding_id);
        Ok(ContextBuilder(out))
    }

    /// Appends the next bind value (None: NULL).
    pub fn push(&mut self, v: Option<&str>) {
        match v {
            None => self.0.push_str(":-"),
            Some(v) => {
                self.0.push(':');
                push_decimal(&mut self.0, v.len());
                self.0.push('=');
                self.0.push_str(v);
            }
        }
    }

    /// Appends the next bind value, an integer (its decimal text, as PostgreSQL prints it).
    pub fn push_integer(&mut self, v: i64) {
        let mut buf = [0u8; 20];
        let digits = decimal(v.unsigned_abs(), &mut buf);
        self.0.push(':');
        push_decimal(&mut self.0, digits.len() + usize::from(v < 0));
        self.0.push('=');
        if v < 0 {
            self.0.push('-');
        }
        for &d in digits {
            self.0.push(char::from(d));
        }
    }

    /// Appends the next bind value, a uuid (its canonical text, as PostgreSQL prints it:
    /// lower-case hexadecimal in groups of 8-4-4-4-12).
    pub fn push_uuid(&mut self, u: &[u8; 16]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.0.push_str(":36=");
        for (i, b) in u.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                self.0.push('-');
            }
            self.0.push(char::from(HEX[usize::from(b >> 4)]));
            self.0.push(char::from(HEX[usize::from(b & 15)]));
        }
    }

    /// The context, or `TooLarge` when the bind values make it longer than
    /// [`crate::MAX_CONTEXT_LEN`].
    pub fn finish(self) -> Result<String, Error> {
        if self.0.len() > crate::MAX_CONTEXT_LEN {
            return Err(Error::new(ErrorKind::TooLarge, "the bind columns' values are too long for a context"));
        }
        Ok(self.0)
    }
}

/// The decimal digits of `n`, written at the end of `buf` (without the formatting machinery:
/// once per bind value per row).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: usize) {
    let mut buf = [0u8; 20];
    for &d in decimal(n as u64, &mut buf) {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_pushed_as_postgresql_prints_them() {
        for v in [0i64, 7, -7, 42, -1_000_000, i64::MAX, i64::MIN, i64::from(i32::MIN), i64::from(i16::MAX)] {
            let mut b = ContextBuilder::new(ID, 0).unwrap();
            b.push_integer(v);
            b.push(None);
            let text = v.to_string();
            assert_eq!(b.finish().unwrap(), column_context(ID, &[Some(&text), None]).unwrap(), "{v}");
        }
        let u = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
        let mut b = ContextBuilder::new(ID, 0).unwrap();
        b.push_uuid(&u);
        let text = "12345678-9abc-def0-0123-456789abcdef";
        assert_eq!(b.finish().unwrap(), column_context(ID, &[Some(text)]).unwrap());
        assert!(ContextBuilder::new("not-an-id", 0).is_err());
        let mut b = ContextBuilder::new(ID, 0).unwrap();
        b.push(Some(&"x".repeat(crate::MAX_CONTEXT_LEN)));
        assert_eq!(b.finish().unwrap_err().kind, ErrorKind::TooLarge);
    }

    const ID: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn shape() {
        assert_eq!(column_context(ID, &[]).unwrap(), "pg_credcrypt/col/v1:00112233445566778899aabbccddeeff");
        assert_eq!(
            column_context(ID, &[Some("123"), None, Some("")]).unwrap(),
            "pg_credcrypt/col/v1:00112233445566778899aabbccddeeff:3=123:-:0="
        );
        for len in [9, 10, 99, 100, 1234, 40_000] {
            let v = "x".repeat(len);
            let c = column_context(ID, &[Some(&v)]).unwrap();
            assert_eq!(c, format!("pg_credcrypt/col/v1:{ID}:{len}={v}"));
        }
    }

    #[test]
    fn injective_on_tricky_values() {
        let cases: Vec<Vec<Option<&str>>> = vec![
            vec![],
            vec![None],
            vec![Some("")],
            vec![Some("-")],
            vec![Some("1:2")],
            vec![Some("1"), Some("2")],
            vec![Some("1=2")],
            vec![Some("3=abc")],
            vec![Some(""), Some("")],
            vec![None, None],
            vec![Some("a:1=b")],
            vec![Some("a"), Some("b")],
        ];
        let all: Vec<String> = cases.iter().map(|c| column_context(ID, c).unwrap()).collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn binding_ids() {
        let a = new_binding_id().unwrap();
        let b = new_binding_id().unwrap();
        assert!(is_binding_id(&a) && is_binding_id(&b));
        assert_ne!(a, b);
        assert!(!is_binding_id("00112233445566778899AABBCCDDEEFF"));
        assert!(!is_binding_id("0011"));
        assert_eq!(column_context("nope", &[]).unwrap_err().kind, ErrorKind::InvalidArgument);
        let long = "x".repeat(crate::MAX_CONTEXT_LEN);
        assert_eq!(column_context(ID, &[Some(&long)]).unwrap_err().kind, ErrorKind::TooLarge);
    }
}

/// One piece of an application's context format (`'owner:{owner}'`): literal text, or the text
/// form of a column of the row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatPart {
    /// Text taken as it is.
    Literal(String),
    /// The value of this column (its text form; NULL makes the whole context NULL, as SQL's
    /// `||` does).
    Column(String),
}

/// Parses the context format of a column that an application encrypts itself: literal text
/// with `{column}` placeholders (`'owner:{owner}'`, `'{tenant}/{id}'`); `{{` and `}}` stand for
/// literal braces. Not an SQL expression: nothing in it is evaluated but column values.
pub fn parse_context_format(format: &str) -> Result<Vec<FormatPart>, Error> {
    let bad = |why: &str| {
        Error::new(ErrorKind::InvalidArgument, "invalid context format").with_detail(format!(
            "{why}; a context format is text with {{column}} placeholders, e.g. 'owner:{{owner}}'"
        ))
    };
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => return Err(bad("a placeholder is not closed")),
                        Some(c) => name.push(c),
                    }
                }
                if name.is_empty() || name.len() > 63 {
                    return Err(bad("a placeholder names no column"));
                }
                if !literal.is_empty() {
                    parts.push(FormatPart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(FormatPart::Column(name));
            }
            '}' => return Err(bad("a closing brace has no opening one")),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(FormatPart::Literal(literal));
    }
    if parts.is_empty() {
        return Err(bad("the format is empty (pass NULL for values without a context)"));
    }
    Ok(parts)
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            parse_context_format("owner:{owner}").unwrap(),
            vec![FormatPart::Literal("owner:".into()), FormatPart::Column("owner".into())]
        );
        assert_eq!(
            parse_context_format("{tenant}/{id}").unwrap(),
            vec![FormatPart::Column("tenant".into()), FormatPart::Literal("/".into()), FormatPart::Column("id".into())]
        );
        assert_eq!(parse_context_format("a{{b}}").unwrap(), vec![FormatPart::Literal("a{b}".into())]);
        assert_eq!(
            parse_context_format("Weird \"Col\"{Weird Col}").unwrap()[1],
            FormatPart::Column("Weird Col".into())
        );
        for bad in ["", "{", "a{b", "}", "{}", "a}b", "{a{b}}"] {
            assert_eq!(parse_context_format(bad).unwrap_err().kind, ErrorKind::InvalidArgument, "{bad:?}");
        }
    }
}
