//! Pure-Rust core of pg_credcrypt: the ciphertext format (v1), key references, the local
//! AES-256-GCM provider with its key ring, key-file parsing, KV paths and bindings, masking,
//! legacy bcrypt hashes and constant-time verification.
//!
//! Nothing in this crate touches PostgreSQL, so everything here is unit-, property- and
//! fuzz-testable on its own. The extension crate is a thin layer that reads GUCs, maps
//! [`Error`] to SQLSTATEs and exposes the SQL functions.
//!
//! Security rules that every module follows:
//! - no error message carries plaintext, key material, tokens or ciphertext;
//! - key and plaintext buffers owned here are zeroized on drop ([`zeroize::Zeroizing`]);
//! - parsing is strict: exactly one textual form is accepted for every ciphertext.

pub mod blind;
pub mod column;
pub mod error;
pub mod format;
pub mod hashes;
pub mod keyfile;
pub mod keyref;
pub mod kv;
pub mod legacy;
pub mod local;
pub mod mask;
pub mod nonce;
pub mod verify;
pub mod wire;

pub use error::{Decrypted, Error, ErrorKind};
pub use format::{Ciphertext, Provider, FORMAT_VERSION};
pub use keyref::{KeyRef, KeyTemplate};
pub use local::{KeyId, Keyring, LocalKey};

/// Largest plaintext (in bytes) the local provider accepts: 16 MiB.
///
/// Credentials are small; the limit exists so that a runaway value cannot make one backend
/// allocate gigabytes. Values of at least 1 MiB are guaranteed to work.
pub const MAX_PLAINTEXT_LEN: usize = 16 * 1024 * 1024;

/// Largest context (associated data) in bytes: 64 KiB.
pub const MAX_CONTEXT_LEN: usize = 64 * 1024;
