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
/// partitions, as (OID, quoted qualified name) — the tables every maintenance routine reads and
/// writes as the table's owner. Refused (`55000`), so that maintenance never runs another
/// role's code with the owner's rights nor answers from part of the rows:
/// - a leaf owned by another role than the table (its triggers and policies would run as the
///   table's owner);
/// - a leaf whose row-level security hides rows from its owner: forced, with a restrictive
///   policy that applies to the owner, or without the maintenance path of `enable_owner_rls`.
pub(crate) fn leaves(root: pg_sys::Oid) -> Vec<(pg_sys::Oid, String)> {
    let rows = spi::rows(
        "SELECT c.oid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
                CASE WHEN c.relkind OPERATOR(pg_catalog.=) 'f' THEN \
                          pg_catalog.format('partition %s is a foreign table: its rows are stored by another server, without the protection trigger', c.oid::pg_catalog.regclass) \
                     WHEN c.relowner OPERATOR(pg_catalog.<>) o.relowner THEN \
                          pg_catalog.format('partition %s is owned by %s, not by %s (the owner of %s): maintenance would run that role''s triggers and policies with the owner''s rights', \
                                            c.oid::pg_catalog.regclass, c.relowner::pg_catalog.regrole, o.relowner::pg_catalog.regrole, o.oid::pg_catalog.regclass) \
                     WHEN c.relrowsecurity AND c.relforcerowsecurity AND EXISTS ( \
                          SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid AND NOT p.polpermissive \
                             AND EXISTS (SELECT FROM pg_catalog.unnest(p.polroles) r(role) \
                                          WHERE r.role OPERATOR(pg_catalog.=) 0::pg_catalog.oid OR pg_catalog.pg_has_role(c.relowner, r.role, 'MEMBER'))) THEN \
                          pg_catalog.format('table %s has a restrictive row-level security policy that applies to its owner: it hides rows from maintenance', c.oid::pg_catalog.regclass) \
                     WHEN c.relrowsecurity AND c.relforcerowsecurity AND NOT EXISTS ( \
                          SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid OPERATOR(pg_catalog.=) c.oid AND p.polpermissive \
                             AND p.polcmd OPERATOR(pg_catalog.=) ANY ('{r,*}'::pg_catalog.\"char\"[]) \
                             AND pg_catalog.strpos(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'credcrypt._maintenance_active(') OPERATOR(pg_catalog.>) 0) THEN \
                          pg_catalog.format('table %s forces row-level security on its owner without the maintenance path of credcrypt.enable_owner_rls: maintenance cannot see every row', c.oid::pg_catalog.regclass) \
                END \
           FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
           JOIN pg_catalog.pg_class o ON o.oid OPERATOR(pg_catalog.=) $1 \
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
                r.get::<String>(4)?,
            ))
        },
    )
    .unwrap_or_else(|e| spi_fail(e));
    if let Some(problem) = rows.iter().find_map(|r| r.2.clone()) {
        fail(
            ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("pg_credcrypt cannot maintain this table: {problem}"),
            None,
            "Detach foreign partitions, give every partition the table's owner (ALTER TABLE … OWNER TO), or let the owner see every row while the maintenance runs (drop the restrictive policy, or ALTER TABLE … NO FORCE ROW LEVEL SECURITY, or credcrypt.enable_owner_rls), then run it again.",
        );
    }
    rows.into_iter().map(|(o, n, _)| (o, n)).collect()
}
