//! The per-backend cache of `credcrypt.protected_columns`, keyed by table OID.
//!
//! The trigger looks a table's designations up once per backend; the entry is dropped by the
//! relcache invalidation callback whenever the table changes (ALTER TABLE, RENAME) or its
//! catalog rows change (the catalog's own trigger invalidates the table and all its
//! partitions). Column names are resolved against the firing relation's tuple descriptor, so
//! partitions with their own column order work.
//!
//! Two rules keep this cache from ever failing open:
//! - the catalog is read with PostgreSQL's **latest** snapshot, not the transaction's: a
//!   REPEATABLE READ transaction that began before `protect_column` committed still sees the
//!   designation (the administrative functions lock the table against writers while they
//!   change designations, so a backend that writes afterwards has processed the invalidation);
//! - only positive answers are cached. A table whose trigger fires without designations makes
//!   the trigger raise an error rather than store anything ([`lookup`] returns the empty
//!   answer uncached).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use credcrypt_core::{Error, ErrorKind};

use crate::providers::ColumnKey;
use pgrx::prelude::*;

/// One protected column, or one protected key of a jsonb column, resolved for one relation.
#[derive(Debug)]
pub(crate) struct Designation {
    /// Attribute number (1-based) of the protected column in the firing relation.
    pub attnum: i16,
    /// Name of the protected column (for messages).
    pub column: String,
    /// Path of the protected key inside a jsonb column; empty for a whole text column.
    pub json_path: Vec<String>,
    /// Key used for new values (one, or one per row).
    pub key: ColumnKey,
    /// For a per-row key: which of `binds` names the row's key.
    pub key_bind: Option<usize>,
    /// Attribute numbers of the bind columns and their output functions.
    pub binds: Vec<(i16, pg_sys::Oid)>,
    /// Attribute number of the mask column, with the mask's prefix and suffix lengths.
    pub mask: Option<(i16, usize, usize)>,
    /// The designation's binding id.
    pub binding_id: String,
    /// Attribute number of the blind index column, and the index keys.
    pub blind: Option<(i16, super::blind::BlindIndex)>,
}

/// The class of a bind column's type whose text form a context is built from: integer types
/// share one (their text forms agree), text and varchar share one; any other type is its own
/// class (`format_type` with its modifier). A bind column may change type only within its
/// class; anything else would change the context of every stored value.
pub(crate) fn type_class(typ: pg_sys::Oid, typmod: i32) -> String {
    // SAFETY: a syscache existence probe by OID.
    let exists = unsafe {
        pg_sys::SearchSysCacheExists(
            pg_sys::SysCacheIdentifier::TYPEOID as i32,
            pg_sys::Datum::from(typ),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
            pg_sys::Datum::from(0),
        )
    };
    if !exists {
        crate::errors::undefined(
            format!("type with OID {} does not exist", typ.to_u32()),
            "Pass a type OID from pg_type.",
        );
    }
    let mut typmod = typmod;
    // SAFETY: catalog lookups of an existing type (checked above).
    let base = unsafe { pg_sys::getBaseTypeAndTypmod(typ, &mut typmod) };
    match base {
        pg_sys::INT2OID | pg_sys::INT4OID | pg_sys::INT8OID => "integer".into(),
        pg_sys::TEXTOID | pg_sys::VARCHAROID => "text".into(),
        _ => {
            // SAFETY: returns a palloc'd NUL-terminated string.
            let p = unsafe { pg_sys::format_type_with_typemod(base, typmod) };
            // SAFETY: valid C string from format_type.
            unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    }
}

/// All designations of one relation.
#[derive(Debug, Default)]
pub(crate) struct TableConfig {
    /// In catalog order: by column, then json path.
    pub designations: Vec<Designation>,
    /// OID of the protected table the designations name (the partitioned table for a partition).
    pub root: u32,
}

thread_local! {
    static CACHE: RefCell<HashMap<u32, Rc<TableConfig>>> = RefCell::new(HashMap::new());
    /// The entry of [`CACHE`] used last (a statement writes one table row after row: one
    /// comparison instead of a hash lookup per row); forgotten with it.
    static LAST: RefCell<Option<(u32, Rc<TableConfig>)>> = const { RefCell::new(None) };
}

/// Relcache invalidation callback: forgets one table (or all, for `InvalidOid`).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    LAST.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            if relid == pg_sys::InvalidOid || l.as_ref().is_some_and(|(r, _)| *r == relid.to_u32()) {
                *l = None;
            }
        }
    });
    CACHE.with(|c| {
        if let Ok(mut m) = c.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                m.clear();
            } else {
                m.remove(&relid.to_u32());
            }
        }
    });
}

/// Registers the invalidation callback (once per backend, from `_PG_init`).
pub fn init() {
    // SAFETY: called once from _PG_init on the main thread; the callback has the C signature
    // PostgreSQL expects and never raises.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0)) };
}

/// The designations of the relation `relid` with tuple descriptor `tupdesc`. An empty answer
/// is never cached: the next call reads the catalog again.
///
/// # Safety
/// `tupdesc` must be the valid descriptor of relation `relid`.
pub(crate) unsafe fn lookup(relid: pg_sys::Oid, tupdesc: pg_sys::TupleDesc) -> Result<Rc<TableConfig>, Error> {
    if let Some(hit) =
        LAST.with(|l| l.borrow().as_ref().filter(|(r, _)| *r == relid.to_u32()).map(|(_, cfg)| cfg.clone()))
    {
        return Ok(hit);
    }
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&relid.to_u32()).cloned()) {
        LAST.with(|l| *l.borrow_mut() = Some((relid.to_u32(), hit.clone())));
        return Ok(hit);
    }
    // SAFETY: forwarded from the caller.
    let cfg = Rc::new(unsafe { load(relid, tupdesc) }?);
    if !cfg.designations.is_empty() {
        CACHE.with(|c| c.borrow_mut().insert(relid.to_u32(), cfg.clone()));
    }
    Ok(cfg)
}

/// A catalog row as read by [`load`].
struct Row {
    column: String,
    json_path: Vec<String>,
    key: String,
    bind_columns: Vec<String>,
    mask_column: Option<String>,
    prefix: i32,
    suffix: i32,
    binding_id: String,
    root: u32,
    bind_types: Option<Vec<String>>,
    blind_index_column: Option<String>,
}

fn missing_column(name: &str) -> Error {
    Error::new(
        ErrorKind::CatalogMismatch,
        format!("column \"{name}\" named in credcrypt.protected_columns does not exist"),
    )
}

fn bind_type_changed(name: &str) -> Error {
    Error::new(
        ErrorKind::CatalogMismatch,
        format!("bind column \"{name}\" changed type since it was protected: the stored values are bound to its old text form"),
    )
}

fn wrong_type(name: &str) -> Error {
    Error::new(
        ErrorKind::CatalogMismatch,
        format!("column \"{name}\" no longer has the type protect_column accepted (text, varchar or jsonb; text for a mask; bytea for a blind index)"),
    )
}

/// Attribute number and type of column `name` in `tupdesc`.
///
/// # Safety
/// `tupdesc` must be valid.
pub(crate) unsafe fn find_attr(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<(i16, pg_sys::Oid)> {
    // SAFETY: forwarded.
    unsafe { find_attr_mod(tupdesc, name) }.map(|(n, t, _)| (n, t))
}

/// Attribute number, type and type modifier of column `name` in `tupdesc`.
///
/// # Safety
/// `tupdesc` must be valid.
unsafe fn find_attr_mod(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<(i16, pg_sys::Oid, i32)> {
    // SAFETY: the caller guarantees a valid descriptor; pgrx's accessor reads the attributes
    // in a way that works for every PostgreSQL major (PG 18 changed the descriptor's layout).
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(tupdesc) };
    desc.iter().find_map(|a| {
        // SAFETY: attname is a NUL-terminated NameData.
        let aname = unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) };
        (!a.attisdropped && aname.to_bytes() == name.as_bytes()).then_some((a.attnum, a.atttypid, a.atttypmod))
    })
}

/// Reads the catalog rows of `relid` (or of the partitioned table it belongs to), with the
/// latest snapshot.
unsafe fn load(relid: pg_sys::Oid, tupdesc: pg_sys::TupleDesc) -> Result<TableConfig, Error> {
    // The SQL of 0.1.0 (before ALTER EXTENSION … UPDATE) records no bind types, and that of
    // 0.1.0 and 0.2.0 no blind index column.
    let recorded_types = crate::postgres::catalog::has_column(c"protected_columns", c"bind_types");
    let blind = super::blind::available();
    let query = std::ffi::CString::new(format!(
        "SELECT p.column_name::pg_catalog.text, p.json_path, p.key_name, p.bind_columns::pg_catalog.text[], \
                p.mask_column::pg_catalog.text, p.mask_prefix, p.mask_suffix, p.binding_id, p.relid::pg_catalog.oid, \
                {types}, {index} \
           FROM credcrypt.protected_columns p \
          WHERE p.relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
             OR p.relid::pg_catalog.oid OPERATOR(pg_catalog.=) \
                ANY (SELECT a.relid::pg_catalog.oid FROM pg_catalog.pg_partition_ancestors($1) a) \
          ORDER BY p.column_name, p.json_path",
        types = if recorded_types { "p.bind_types" } else { "NULL::pg_catalog.text[]" },
        index = if blind { "p.blind_index_column::pg_catalog.text" } else { "NULL::pg_catalog.text" },
    ))
    .map_err(|_| Error::internal("catalog query"))?;
    let query = query.as_c_str();
    let rows: Vec<Row> =
        crate::postgres::spi::rows_latest(query, &[(pg_sys::OIDOID, Some(pg_sys::Datum::from(relid)))], |r| Row {
            column: r.get::<String>(1).unwrap_or_default(),
            json_path: r.get::<Vec<String>>(2).unwrap_or_default(),
            key: r.get::<String>(3).unwrap_or_default(),
            bind_columns: r.get::<Vec<String>>(4).unwrap_or_default(),
            mask_column: r.get::<String>(5),
            prefix: r.get::<i32>(6).unwrap_or(0),
            suffix: r.get::<i32>(7).unwrap_or(4),
            binding_id: r.get::<String>(8).unwrap_or_default(),
            root: r.get::<pg_sys::Oid>(9).map_or(0, |o| o.to_u32()),
            bind_types: r.get::<Vec<String>>(10),
            blind_index_column: r.get::<String>(11),
        })
        .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "credcrypt.protected_columns could not be read"))?;

    let mut cfg = TableConfig::default();
    for Row {
        column,
        json_path,
        key,
        bind_columns,
        mask_column,
        prefix,
        suffix,
        binding_id,
        root,
        bind_types,
        blind_index_column,
    } in rows
    {
        cfg.root = root;
        // SAFETY: valid descriptor (caller).
        let (attnum, typ) = unsafe { find_attr(tupdesc, &column) }.ok_or_else(|| missing_column(&column))?;
        // The column's type must still be what protect_column accepted (ALTER COLUMN … TYPE
        // could have changed it): text/varchar for a whole column, jsonb for a json path.
        let want: &[pg_sys::Oid] =
            if json_path.is_empty() { &[pg_sys::TEXTOID, pg_sys::VARCHAROID] } else { &[pg_sys::JSONBOID] };
        // SAFETY: catalog lookup of an existing type.
        if !want.contains(&unsafe { pg_sys::getBaseType(typ) }) {
            return Err(wrong_type(&column));
        }
        let mut binds = Vec::with_capacity(bind_columns.len());
        for (i, b) in bind_columns.iter().enumerate() {
            // SAFETY: valid descriptor (caller).
            let (n, typ, typmod) = unsafe { find_attr_mod(tupdesc, b) }.ok_or_else(|| missing_column(b))?;
            // The bind column's type class must be the one recorded when it was protected.
            if recorded_types {
                let recorded = bind_types.as_ref().and_then(|t| t.get(i));
                if recorded.map(String::as_str) != Some(type_class(typ, typmod).as_str()) {
                    return Err(bind_type_changed(b));
                }
            }
            let mut out_fn = pg_sys::InvalidOid;
            let mut varlena = false;
            // SAFETY: plain catalog lookup of an existing type; raises on failure.
            unsafe { pg_sys::getTypeOutputInfo(typ, &mut out_fn, &mut varlena) };
            binds.push((n, out_fn));
        }
        let mask = match mask_column {
            Some(m) => {
                // SAFETY: valid descriptor (caller).
                let (n, mtyp) = unsafe { find_attr(tupdesc, &m) }.ok_or_else(|| missing_column(&m))?;
                // SAFETY: catalog lookup of an existing type.
                if ![pg_sys::TEXTOID, pg_sys::VARCHAROID].contains(&unsafe { pg_sys::getBaseType(mtyp) }) {
                    return Err(wrong_type(&m));
                }
                Some((n, usize::try_from(prefix).unwrap_or(0), usize::try_from(suffix).unwrap_or(0)))
            }
            None => None,
        };
        let blind = match blind_index_column {
            Some(b) => {
                // SAFETY: valid descriptor (caller).
                let (n, btyp) = unsafe { find_attr(tupdesc, &b) }.ok_or_else(|| missing_column(&b))?;
                // SAFETY: catalog lookup of an existing type.
                if unsafe { pg_sys::getBaseType(btyp) } != pg_sys::BYTEAOID {
                    return Err(wrong_type(&b));
                }
                let versions = super::blind::versions(&binding_id)?;
                Some((n, super::blind::BlindIndex { column: b, versions }))
            }
            None => None,
        };
        let key = ColumnKey::parse(&key)?;
        let key_bind = match &key {
            ColumnKey::PerRow(t) => Some(bind_columns.iter().position(|b| *b == t.column).ok_or_else(|| {
                Error::new(
                    ErrorKind::CatalogMismatch,
                    format!(
                        "the per-row key of column \"{column}\" names \"{}\", which is not one of its bind columns",
                        t.column
                    ),
                )
            })?),
            ColumnKey::Fixed(_) => None,
        };
        cfg.designations.push(Designation { attnum, column, json_path, key, key_bind, binds, mask, binding_id, blind });
    }
    Ok(cfg)
}
