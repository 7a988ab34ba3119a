//! Relations the administrative functions work on: the checked table, its columns, its leaf
//! tables, and the lock that keeps writers out while a designation changes.

use pgrx::pg_sys;
use pgrx::spi::quote_identifier as qi;
use pgrx::PgSqlErrorCode::*;

use crate::errors::fail;
use crate::postgres::spi;

/// A table an administrative function works on, checked: it exists, is a (partitioned) table
/// and the caller owns it (as for ALTER TABLE).
pub(crate) struct Table {
    /// Its OID.
    pub oid: pg_sys::Oid,
    /// Schema-qualified, quoted name, for SQL text and messages.
    pub sql_name: String,
    /// Quoted schema name.
    pub schema: String,
}

fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    fail(ERRCODE_INTERNAL_ERROR, format!("pg_credcrypt: catalog query failed: {e}"), None, "Report this as a bug.")
}

/// The checked table `oid` (see [`Table`]).
pub(crate) fn table(oid: pg_sys::Oid) -> Table {
    let row = spi::three::<String, String, String>(
        "SELECT c.relkind::pg_catalog.text, n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[oid.into()],
    );
    let (kind, schema, name) = match row {
        Ok((Some(k), Some(s), Some(n))) => (k, qi(s), qi(n)),
        _ => fail(
            ERRCODE_UNDEFINED_TABLE,
            "table does not exist",
            None,
            "Pass an existing table, e.g. 'public.accounts'.",
        ),
    };
    let sql_name = format!("{schema}.{name}");
    if kind != "r" && kind != "p" {
        fail(
            ERRCODE_WRONG_OBJECT_TYPE,
            format!("{sql_name} is not a table"),
            None,
            "Protect the columns of the underlying table; views and foreign tables cannot be protected.",
        );
    }
    let owner = crate::postgres::guard::relation_owner(oid);
    // SAFETY: membership check of the current user in the owning role (what ALTER TABLE checks).
    if !unsafe { pg_sys::has_privs_of_role(pg_sys::GetUserId(), owner) } {
        fail(
            ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("must be owner of table {sql_name}"),
            None,
            "Run this as the table's owner (or a member of the owning role) who is also a member of credcrypt_admin.",
        );
    }
    Table { oid, sql_name, schema }
}

/// A column of a table.
pub(crate) struct Column {
    /// Name of its base type (the domain's base type for a domain).
    pub base_type: String,
    /// Type modifier.
    pub typmod: i32,
    /// Whether it is a generated column.
    pub generated: bool,
}

/// Column `name` of `t`, if it exists.
pub(crate) fn column(t: &Table, name: &str) -> Option<Column> {
    spi::rows(
        "SELECT bt.typname::pg_catalog.text, a.atttypmod, a.attgenerated OPERATOR(pg_catalog.<>) '' \
           FROM pg_catalog.pg_attribute a \
           JOIN pg_catalog.pg_type ty ON ty.oid OPERATOR(pg_catalog.=) a.atttypid \
           JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=) \
                CASE WHEN ty.typtype OPERATOR(pg_catalog.=) 'd' THEN ty.typbasetype ELSE ty.oid END \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name \
            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
        &[t.oid.into(), name.into()],
        |r| {
            Ok(Column {
                base_type: r.get::<String>(1)?.unwrap_or_default(),
                typmod: r.get::<i32>(2)?.unwrap_or(-1),
                generated: r.get::<bool>(3)?.unwrap_or(false),
            })
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
    .into_iter()
    .next()
}

/// Column `name` of `t`; an error (42703) when it does not exist.
pub(crate) fn require_column(t: &Table, name: &str) -> Column {
    column(t, name).unwrap_or_else(|| {
        fail(
            ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{name}\" of table {} does not exist", t.sql_name),
            None,
            "Check the column name (names are case-sensitive when quoted).",
        )
    })
}

/// Takes SHARE ROW EXCLUSIVE on the table and every partition or child (what CREATE TRIGGER
/// takes): it waits for the transactions writing to them and keeps new writers out until this
/// transaction ends, so that no backend writes with designations this transaction is changing.
pub(crate) fn lock_against_writers(t: &Table) {
    // LOCK TABLE (without ONLY) also locks every partition and child; the caller owns the table.
    spi::run(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", t.sql_name), &[]).unwrap_or_else(|e| spi_fail(e));
}

/// The tables that hold a protected table's rows: itself (a plain table) or its leaf
/// partitions, as (OID, quoted qualified name).
pub(crate) fn leaves(root: pg_sys::Oid) -> Vec<(pg_sys::Oid, String)> {
    spi::rows(
        "SELECT c.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE (c.oid OPERATOR(pg_catalog.=) $1 AND c.relkind OPERATOR(pg_catalog.=) 'r') \
             OR c.oid OPERATOR(pg_catalog.=) ANY (SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE isleaf) \
          ORDER BY 1",
        &[root.into()],
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                format!(
                    "{}.{}",
                    qi(r.get::<String>(2)?.unwrap_or_default()),
                    qi(r.get::<String>(3)?.unwrap_or_default())
                ),
            ))
        },
    )
    .unwrap_or_else(|e| spi_fail(e))
}
