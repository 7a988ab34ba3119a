//! The per-backend cache of `credcrypt.protected_columns`, keyed by table OID.
//!
//! The trigger looks a table's designations up once per backend; the entry is dropped by the
//! relcache invalidation callback whenever the table changes (ALTER TABLE, RENAME) or its
//! catalog rows change (the catalog's own trigger invalidates the table and all its
//! partitions). Column names are resolved against the firing relation's tuple descriptor, so
//! partitions with their own column order work.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use credcrypt_core::{Error, ErrorKind, KeyRef};
use pgrx::prelude::*;
use pgrx::spi::Spi;

/// One protected column, or one protected key of a jsonb column, resolved for one relation.
#[derive(Debug)]
pub(crate) struct Designation {
    /// Attribute number (1-based) of the protected column in the firing relation.
    pub attnum: i16,
    /// Name of the protected column (for messages).
    pub column: String,
    /// Path of the protected key inside a jsonb column; empty for a whole text column.
    pub json_path: Vec<String>,
    /// Key used for new values.
    pub key: KeyRef,
    /// Attribute numbers of the bind columns and their output functions.
    pub binds: Vec<(i16, pg_sys::Oid)>,
    /// Attribute number of the mask column, with the mask's prefix and suffix lengths.
    pub mask: Option<(i16, usize, usize)>,
    /// The designation's binding id.
    pub binding_id: String,
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
}

/// Relcache invalidation callback: forgets one table (or all, for `InvalidOid`).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
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

/// The designations of the relation `relid` with tuple descriptor `tupdesc`.
///
/// # Safety
/// `tupdesc` must be the valid descriptor of relation `relid`.
pub(crate) unsafe fn lookup(relid: pg_sys::Oid, tupdesc: pg_sys::TupleDesc) -> Result<Rc<TableConfig>, Error> {
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&relid.to_u32()).cloned()) {
        return Ok(hit);
    }
    // SAFETY: forwarded from the caller.
    let cfg = Rc::new(unsafe { load(relid, tupdesc) }?);
    CACHE.with(|c| c.borrow_mut().insert(relid.to_u32(), cfg.clone()));
    Ok(cfg)
}

/// A catalog row as read by [`load`].
type Row = (String, Vec<String>, String, Vec<String>, Option<String>, i32, i32, String, u32);

fn missing_column(name: &str) -> Error {
    Error::new(
        ErrorKind::CatalogMismatch,
        format!("column \"{name}\" named in credcrypt.protected_columns does not exist"),
    )
}

fn wrong_type(name: &str) -> Error {
    Error::new(
        ErrorKind::CatalogMismatch,
        format!("column \"{name}\" no longer has the type protect_column accepted (text, varchar or jsonb; text for a mask)"),
    )
}

/// Attribute number and type of column `name` in `tupdesc`.
///
/// # Safety
/// `tupdesc` must be valid.
pub(crate) unsafe fn find_attr(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<(i16, pg_sys::Oid)> {
    // SAFETY: the caller guarantees a valid descriptor; pgrx's accessor reads the attributes
    // in a way that works for every PostgreSQL major (PG 18 changed the descriptor's layout).
    let desc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked(tupdesc) };
    desc.iter().find_map(|a| {
        // SAFETY: attname is a NUL-terminated NameData.
        let aname = unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) };
        (!a.attisdropped && aname.to_bytes() == name.as_bytes()).then_some((a.attnum, a.atttypid))
    })
}

/// Reads the catalog rows of `relid` (or of the partitioned table it belongs to).
unsafe fn load(relid: pg_sys::Oid, tupdesc: pg_sys::TupleDesc) -> Result<TableConfig, Error> {
    let rows: Vec<Row> = Spi::connect(|client| {
        let tab = client.select(
            "SELECT column_name::text, json_path, key_name, bind_columns::text[], mask_column::text, \
                    mask_prefix, mask_suffix, binding_id, relid::pg_catalog.oid \
               FROM credcrypt.protected_columns \
              WHERE relid::pg_catalog.oid OPERATOR(pg_catalog.=) $1 \
                 OR relid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (SELECT a.relid::pg_catalog.oid FROM pg_catalog.pg_partition_ancestors($1) a) \
              ORDER BY column_name, json_path",
            None,
            &[relid.into()],
        )?;
        let mut out = Vec::new();
        for r in tab {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<Vec<String>>(4)?.unwrap_or_default(),
                r.get::<String>(5)?,
                r.get::<i32>(6)?.unwrap_or(0),
                r.get::<i32>(7)?.unwrap_or(4),
                r.get::<String>(8)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(9)?.map_or(0, |o| o.to_u32()),
            ));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .map_err(|_| Error::new(ErrorKind::CatalogMismatch, "credcrypt.protected_columns could not be read"))?;

    let mut cfg = TableConfig::default();
    for (column, json_path, key, bind_columns, mask_column, prefix, suffix, binding_id, root) in rows {
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
        for b in &bind_columns {
            // SAFETY: valid descriptor (caller).
            let (n, typ) = unsafe { find_attr(tupdesc, b) }.ok_or_else(|| missing_column(b))?;
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
        cfg.designations.push(Designation {
            attnum,
            column,
            json_path,
            key: KeyRef::parse(&key)?,
            binds,
            mask,
            binding_id,
        });
    }
    Ok(cfg)
}
