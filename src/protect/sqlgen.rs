//! The SQL texts pg_credcrypt builds for protected columns — values, json paths, contexts,
//! decryption — as pure functions (no PostgreSQL needed; unit-tested below). Every name in them
//! is schema-qualified and every identifier and literal quoted: what they produce goes into
//! views and statements that run with other roles' rights.

use pgrx::spi::{quote_identifier as qi, quote_literal as ql};

/// SQL for a protected value of row alias `alias`: the column, or the text at `path` inside it.
/// A designation as the SQL builders need it (read by [`super::designations`]).
pub(crate) struct Desig {
    pub column: String,
    pub path: Vec<String>,
    pub binding_id: String,
    pub binds: Vec<String>,
}

pub(crate) fn value_expr(alias: &str, col: &str, path: &[String]) -> String {
    if path.is_empty() {
        format!("{alias}.{}", qi(col))
    } else {
        format!("({alias}.{} OPERATOR(pg_catalog.#>>) {})", qi(col), path_literal(path))
    }
}

/// A `text[]` literal of a json path.
pub(crate) fn path_literal(path: &[String]) -> String {
    let elems: Vec<String> =
        path.iter().map(|p| format!("\"{}\"", p.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{}::pg_catalog.text[]", ql(format!("{{{}}}", elems.join(","))))
}

/// SQL that replaces the string at `path` of jsonb column `col` (row alias `alias`) with the
/// text expression `value`.
pub(crate) fn json_set_expr(alias: &str, col: &str, path: &[String], value: &str) -> String {
    format!(
        "pg_catalog.jsonb_set({alias}.{c}, {p}, pg_catalog.to_jsonb(({value})::pg_catalog.text))",
        c = qi(col),
        p = path_literal(path)
    )
}

/// SQL computing a designation's context for the row aliased `alias`.
pub(crate) fn context_expr(alias: &str, d: &Desig) -> String {
    let binds: Vec<String> = d.binds.iter().map(|b| format!("({alias}.{})::pg_catalog.text", qi(b))).collect();
    format!(
        "credcrypt.column_context({}::pg_catalog.text, ARRAY[{}]::pg_catalog.text[])",
        ql(&d.binding_id),
        binds.join(", ")
    )
}

/// SQL that decrypts the protected column `col` (all its designations) of row `alias`.
pub(crate) fn decrypted_expr(alias: &str, col: &str, ds: &[&Desig]) -> String {
    let mut expr = format!("{alias}.{}", qi(col));
    for d in ds {
        let ctx = context_expr(alias, d);
        if d.path.is_empty() {
            expr = format!("credcrypt.decrypt_credential({expr}, {ctx})");
        } else {
            let p = path_literal(&d.path);
            expr = format!(
                "CASE WHEN pg_catalog.jsonb_typeof({expr} OPERATOR(pg_catalog.#>) {p}) OPERATOR(pg_catalog.=) 'string'::pg_catalog.text \
                 THEN pg_catalog.jsonb_set({expr}, {p}, pg_catalog.to_jsonb(credcrypt.decrypt_credential({expr} OPERATOR(pg_catalog.#>>) {p}, {ctx}))) \
                 ELSE {expr} END"
            );
        }
    }
    expr
}

// The builders quote identifiers with PostgreSQL's own quote_identifier: the tests run inside
// the server (cargo pgrx test), not in the plain test binary, which links no PostgreSQL.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use super::*;

    fn d(path: &[&str], binds: &[&str]) -> Desig {
        Desig {
            column: "cfg".into(),
            path: path.iter().map(|p| (*p).to_owned()).collect(),
            binding_id: "0123456789abcdef0123456789abcdef".into(),
            binds: binds.iter().map(|b| (*b).to_owned()).collect(),
        }
    }

    #[pg_test]
    fn paths_are_quoted_text_array_literals() {
        assert_eq!(path_literal(&["apiKey".into()]), r#"'{"apiKey"}'::pg_catalog.text[]"#);
        // Quotes, backslashes and braces stay inside the element; the literal stays one literal.
        let elements = vec!["a\"b".to_owned(), "c\\d}".to_owned(), "it's".to_owned()];
        let p = path_literal(&elements);
        let back = Spi::get_one::<Vec<String>>(&format!("SELECT {p}")).expect("the literal parses").expect("not null");
        assert_eq!(back, elements);
    }

    #[pg_test]
    fn value_and_set_expressions_name_only_qualified_operators_and_functions() {
        assert_eq!(value_expr("t", "api key", &[]), r#"t."api key""#);
        assert_eq!(
            value_expr("t", "cfg", &["k".into()]),
            r#"(t.cfg OPERATOR(pg_catalog.#>>) '{"k"}'::pg_catalog.text[])"#
        );
        let set = json_set_expr("t", "cfg", &["k".into()], "v.n");
        assert!(
            set.starts_with("pg_catalog.jsonb_set(t.cfg, ")
                && set.contains("pg_catalog.to_jsonb((v.n)::pg_catalog.text)"),
            "{set}"
        );
    }

    #[pg_test]
    fn decryption_expressions_are_fully_qualified() {
        let whole = d(&[], &["id", "Owner"]);
        let e = decrypted_expr("t", "api_key", &[&whole]);
        assert_eq!(
            e,
            "credcrypt.decrypt_credential(t.api_key, credcrypt.column_context('0123456789abcdef0123456789abcdef'::pg_catalog.text, \
             ARRAY[(t.id)::pg_catalog.text, (t.\"Owner\")::pg_catalog.text]::pg_catalog.text[]))"
        );
        let json = d(&["k"], &["id"]);
        let e = decrypted_expr("t", "cfg", &[&json]);
        for needle in [
            "pg_catalog.jsonb_typeof(",
            "OPERATOR(pg_catalog.#>)",
            "OPERATOR(pg_catalog.=) 'string'::pg_catalog.text",
            "pg_catalog.jsonb_set(",
            "pg_catalog.to_jsonb(credcrypt.decrypt_credential(",
            "OPERATOR(pg_catalog.#>>)",
        ] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        // Nothing unqualified: every function call is schema.name(.
        // (The word before every opening parenthesis; the text after the last one calls nothing.)
        let before: Vec<&str> = e.split('(').collect();
        for call in before[..before.len() - 1].iter().map(|w| w.rsplit([' ', ',']).next().unwrap_or("")) {
            let call = call.trim();
            assert!(
                call.is_empty()
                    || call.contains('.')
                    || call.eq_ignore_ascii_case("case")
                    || call == "OPERATOR"
                    || call == "ARRAY["
                    || call.starts_with('\'')
                    || call.starts_with("t.")
                    || call.starts_with('"')
                    || call.chars().all(|c| c == '['),
                "unqualified call {call:?} in {e}"
            );
        }
    }
}
