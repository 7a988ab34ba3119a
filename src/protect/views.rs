//! The decrypted and masked views: one select-list builder serves both.

use pgrx::prelude::*;
use pgrx::spi::{quote_identifier as qi, quote_literal as ql};
use pgrx::PgSqlErrorCode::*;

use super::designations::{designations, get, run, spi_fail};
use super::sqlgen::{decrypted_expr, path_literal, Desig};
use crate::errors::fail;
use crate::postgres::guard::as_catalog_owner;
use crate::postgres::relation::{table, Table};
use crate::postgres::spi;

fn view_columns(t: &Table) -> Vec<String> {
    spi::rows(
        "SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute \
          WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped ORDER BY attnum",
        &[t.oid.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

/// The blind index columns of `t`'s designations.
fn index_columns(t: &Table) -> Vec<String> {
    if !super::blind::available() {
        return Vec::new();
    }
    spi::rows(
        "SELECT blind_index_column::pg_catalog.text FROM credcrypt.protected_columns \
          WHERE relid OPERATOR(pg_catalog.=) $1 AND blind_index_column IS NOT NULL",
        &[t.oid.into()],
        |r| Ok(r.get::<String>(1)?.unwrap_or_default()),
    )
    .unwrap_or_else(|e| spi_fail(e))
}

/// The select list of a view over `t`: every column in order but those in `skip`, each
/// protected column given to `protected` with its designations (None leaves it out).
fn view_select_list(t: &Table, skip: &[String], protected: impl Fn(&str, &[&Desig]) -> Option<String>) -> Vec<String> {
    let ds = designations(t, None);
    if ds.is_empty() {
        crate::errors::undefined(
            format!("table {} has no protected columns", t.sql_name),
            "Protect a column first with credcrypt.protect_column().",
        )
    }
    view_columns(t)
        .iter()
        .filter(|c| !skip.contains(c))
        .filter_map(|c| {
            let mine: Vec<&Desig> = ds.iter().filter(|d| &d.column == c).collect();
            if mine.is_empty() {
                Some(format!("t.{}", qi(c)))
            } else {
                protected(c, &mine)
            }
        })
        .collect()
}

fn create_view(t: &Table, view_name: &str, options: &str, select_list: &[String]) -> String {
    let qualified = format!("{}.{}", t.schema, qi(view_name));
    let exists = get::<bool>(
        "SELECT true FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.=) $1::pg_catalog.name \
            AND c.relnamespace OPERATOR(pg_catalog.=) (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $2)",
        &[view_name.into(), t.oid.into()],
    );
    if exists.is_some() {
        fail(
            ERRCODE_DUPLICATE_TABLE,
            format!("relation {qualified} already exists"),
            None,
            "Choose another view name, or DROP VIEW the old one first.",
        );
    }
    run(
        &format!("CREATE VIEW {qualified} WITH ({options}) AS SELECT {} FROM {} t", select_list.join(", "), t.sql_name),
        &[],
    );
    run(&format!("REVOKE ALL ON {qualified} FROM PUBLIC"), &[]);
    qualified
}

pub(crate) fn decrypted_view(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    let list = view_select_list(&t, &[], |c, mine| Some(format!("{} AS {}", decrypted_expr("t", c, mine), qi(c))));
    let v = create_view(&t, view_name, "security_invoker = true, security_barrier = true", &list);
    run(&format!("GRANT SELECT ON {v} TO credcrypt_decryptor"), &[]);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} with protected columns decrypted (security_invoker)", t.sql_name))
        ),
        &[],
    );
    view_oid(&v)
}

fn view_oid(qualified: &str) -> pg_sys::Oid {
    get::<pg_sys::Oid>("SELECT $1::pg_catalog.regclass::pg_catalog.oid", &[qualified.into()])
        .unwrap_or(pg_sys::InvalidOid)
}

/// The masked view is owned by `credcrypt_masker`, a NOLOGIN role without members that may
/// read the table (SELECT, and under `enable_owner_rls` a policy of its own that lets it read
/// every row): reporting roles granted the view see masks across owners, and nothing else —
/// not the table, not a ciphertext, no decrypt right. The creator gets SELECT on the view with
/// GRANT OPTION, to pass it on to reporting roles; `credcrypt.drop_masked_view` drops it.
pub(crate) fn masked_view(tbl: pg_sys::Oid, view_name: &str) -> pg_sys::Oid {
    crate::postgres::catalog::require_current_sql();
    let t = table(tbl);
    // Blind indexes are left out too: they would tell a reporting role which rows hold the
    // same secret.
    let list = view_select_list(&t, &index_columns(&t), |c, mine| {
        if mine.iter().any(|d| d.path.is_empty()) {
            return None; // a whole protected column: left out
        }
        let mut expr = format!("t.{}", qi(c));
        for d in mine {
            expr = format!("({expr} OPERATOR(pg_catalog.#-) {})", path_literal(&d.path));
        }
        Some(format!("{expr} AS {}", qi(c)))
    });
    let v = create_view(&t, view_name, "security_barrier = true", &list);
    run(
        &format!(
            "COMMENT ON VIEW {v} IS {}",
            ql(format!("pg_credcrypt: {} without ciphertexts (masks only)", t.sql_name))
        ),
        &[],
    );
    run(&format!("GRANT SELECT ON {} TO credcrypt_masker", t.sql_name), &[]);
    // SAFETY: reads the current user's name (an existing role).
    let caller = unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy()
        .into_owned();
    as_catalog_owner(|| {
        run(&format!("ALTER VIEW {v} OWNER TO credcrypt_masker"), &[]);
        run(&format!("GRANT SELECT ON {v} TO {} WITH GRANT OPTION", qi(&caller)), &[]);
    });
    // A policy of the table whose subquery would run with credcrypt_masker's rights (which
    // reach every table with a masked view) whenever the view is read: refused, as DDL that
    // adds one later is.
    crate::protect::designations::refuse_problems(&t);
    view_oid(&v)
}

/// Drops a view made by [`masked_view`] (owned by `credcrypt_masker`, so its creator cannot);
/// the caller must own the table the view reads.
pub(crate) fn drop_masked_view(view: pg_sys::Oid) {
    crate::postgres::catalog::require_current_sql();
    let (owner_is_masker, base) = spi::two::<bool, pg_sys::Oid>(
        "SELECT c.relowner OPERATOR(pg_catalog.=) (SELECT oid FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'credcrypt_masker'), \
                (SELECT d.refobjid FROM pg_catalog.pg_rewrite w JOIN pg_catalog.pg_depend d \
                     ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid OPERATOR(pg_catalog.=) w.oid \
                    AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid OPERATOR(pg_catalog.<>) c.oid \
                  WHERE w.ev_class OPERATOR(pg_catalog.=) c.oid LIMIT 1) \
           FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'v'",
        &[view.into()],
    )
    .unwrap_or_else(|e| spi_fail(e));
    let (Some(true), Some(base)) = (owner_is_masker, base) else {
        fail(
            ERRCODE_WRONG_OBJECT_TYPE,
            "not a view made by credcrypt.create_masked_view",
            None,
            "Drop other views with DROP VIEW.",
        )
    };
    table(base); // the caller must own the table the view reads
    let name = get::<String>("SELECT $1::pg_catalog.regclass::pg_catalog.text", &[view.into()]).unwrap_or_default();
    as_catalog_owner(|| run(&format!("DROP VIEW {name}"), &[]));
}
