//! Functions that need no key: `is_encrypted`, `ciphertext_info`, `mask`.

use credcrypt_core::format::Ciphertext;
use credcrypt_core::{mask as core_mask, Error, ErrorKind};
use pgrx::prelude::*;

use crate::errors::OrRaise as _;

/// True when `value` is a well-formed pg_credcrypt ciphertext. Checks the format only.
#[pg_extern(immutable, parallel_safe, strict)]
fn is_encrypted(value: &str) -> bool {
    Ciphertext::parse(value).is_ok()
}

/// Describes a ciphertext without decrypting it. `key_version` is the Transit key version
/// (NULL for the local and envelope providers); `key_id` is the local key's fingerprint or the
/// envelope data key's id (NULL for Transit).
#[pg_extern(immutable, parallel_safe, strict)]
#[allow(clippy::type_complexity)] // the row type is spelled out for pgrx's SQL generation
fn ciphertext_info(
    ciphertext: &str,
) -> TableIterator<
    'static,
    (
        name!(format_version, i32),
        name!(provider, String),
        name!(key_name, String),
        name!(key_version, Option<i32>),
        name!(has_context, bool),
        name!(key_id, Option<String>),
    ),
> {
    let c = Ciphertext::parse(ciphertext).or_raise();
    TableIterator::once((
        c.format_version as i32,
        c.provider.as_str().to_owned(),
        c.key_name.to_owned(),
        c.transit_version().or(c.kv_version()).map(|v| v as i32),
        c.has_context,
        c.local_key_id().or(c.data_key_id()).map(|id| id.to_hex()),
    ))
}

/// Masks a value for display: the first `visible_prefix` and last `visible_suffix` characters
/// around `…`; values too short to show that much without revealing more than half are `…`.
#[pg_extern(immutable, parallel_safe, strict)]
fn mask(plaintext: &str, visible_prefix: default!(i32, 0), visible_suffix: default!(i32, 4)) -> String {
    if visible_prefix < 0 || visible_suffix < 0 {
        crate::errors::raise(
            Error::new(ErrorKind::InvalidArgument, "visible_prefix and visible_suffix must not be negative")
                .with_detail(format!("visible_prefix = {visible_prefix}, visible_suffix = {visible_suffix}")),
        );
    }
    core_mask::mask(plaintext, visible_prefix as usize, visible_suffix as usize)
}
