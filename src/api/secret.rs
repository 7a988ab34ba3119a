//! Return types that carry plaintext out of Rust and zeroize the Rust copy afterwards.
//!
//! PostgreSQL copies the value into its own memory (a `text` or `bytea` datum); that copy
//! belongs to PostgreSQL's memory contexts and is freed, not wiped, when the query ends.

use pgrx::callconv::{BoxRet, FcInfo};
use pgrx::datum::Datum;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{pg_sys, IntoDatum};
use zeroize::Zeroizing;

/// Decrypted text, validated as UTF-8 without NUL bytes; returned as SQL `text`.
pub struct SecretText(pub Zeroizing<Vec<u8>>);

/// Decrypted bytes; returned as SQL `bytea`.
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl IntoDatum for SecretText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // text and bytea share the varlena layout; the bytes were checked to be valid text.
        self.0.as_slice().into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::TEXTOID
    }
}

impl IntoDatum for SecretBytes {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        self.0.as_slice().into_datum()
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::BYTEAOID
    }
}

// SAFETY: SecretText is returned exactly like String (SQL text).
unsafe impl SqlTranslatable for SecretText {
    const TYPE_IDENT: &'static str = <String as SqlTranslatable>::TYPE_IDENT;
    const TYPE_ORIGIN: TypeOrigin = <String as SqlTranslatable>::TYPE_ORIGIN;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = <String as SqlTranslatable>::ARGUMENT_SQL;
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = <String as SqlTranslatable>::RETURN_SQL;
}

// SAFETY: SecretBytes is returned exactly like Vec<u8> (SQL bytea).
unsafe impl SqlTranslatable for SecretBytes {
    const TYPE_IDENT: &'static str = <Vec<u8> as SqlTranslatable>::TYPE_IDENT;
    const TYPE_ORIGIN: TypeOrigin = <Vec<u8> as SqlTranslatable>::TYPE_ORIGIN;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = <Vec<u8> as SqlTranslatable>::ARGUMENT_SQL;
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = <Vec<u8> as SqlTranslatable>::RETURN_SQL;
}

macro_rules! box_ret_via_into_datum {
    ($($t:ty),*) => {$(
        // SAFETY: identical to pgrx's own BoxRet for String / Vec<u8>: the datum built by
        // into_datum is returned to the function call.
        unsafe impl BoxRet for $t {
            unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> Datum<'fcx> {
                match self.into_datum() {
                    // SAFETY: a freshly palloc'd varlena of the declared return type.
                    Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
                    None => fcinfo.return_null(),
                }
            }
        }
    )*};
}

box_ret_via_into_datum!(SecretText, SecretBytes);
