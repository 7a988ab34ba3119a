//! The error type of the core crate.
//!
//! Every variant carries only *safe* data: static descriptions, lengths, limits, GUC names and
//! key fingerprints. Never a plaintext, a key, a token or a ciphertext.

/// What went wrong, grouped the way the SQL layer maps errors onto SQLSTATEs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The value is not a well-formed pg_credcrypt ciphertext (22P02).
    Malformed,
    /// The ciphertext names a format version this build cannot read (0A000).
    UnsupportedVersion,
    /// The ciphertext or key reference names a provider this build cannot serve (0A000).
    UnsupportedProvider,
    /// An encryption that needs the database's key catalogs (Transit, envelope, per-row and kv
    /// keys) was called inside a query with a parallel plan, where those reads could be stale
    /// and writes are refused (0A000).
    InParallelQuery,
    /// Authentication failed: tampered value, wrong key or wrong context (39000).
    AuthenticationFailed,
    /// No key is configured for the requested provider (55000).
    KeyNotConfigured,
    /// The ciphertext's key id matches no configured key (42704).
    UnknownKeyId,
    /// A value exceeds a documented size limit (54000).
    TooLarge,
    /// A configured key (GUC or key file) is unusable (F0000).
    InvalidKeyConfig,
    /// A key reference such as `local` or `transit:<name>` is not valid (22023).
    InvalidKeyRef,
    /// A decrypted value is not valid UTF-8 and cannot be returned as text (22021).
    NotUtf8,
    /// A function argument is out of its documented range (22023).
    InvalidArgument,
    /// The operating system's random number generator failed (58000).
    RandomFailure,
    /// The Transit provider needs `shared_preload_libraries = 'pg_credcrypt'` (55000).
    NotPreloaded,
    /// OpenBao is unreachable or sealed (58030): an outage, the only failure the local
    /// fallback applies to.
    ProviderUnavailable,
    /// The worker did not answer within `credcrypt.request_timeout_ms` (58030). Not an outage
    /// reported by OpenBao: the wait is the session's choice, so it never falls back.
    WorkerTimeout,
    /// OpenBao refused the worker's credentials or its policy denies the operation (28000).
    ProviderDenied,
    /// The Transit key does not exist (42704).
    TransitKeyNotFound,
    /// The Transit key exists but cannot encrypt (42809).
    WrongKeyType,
    /// The worker is not configured (no address or no credentials) (55000).
    ProviderNotConfigured,
    /// `credcrypt.protected_columns` names a column the table no longer has, or a protected
    /// value has the wrong type (55000).
    CatalogMismatch,
    /// A protected jsonb key holds something other than a string (22023).
    NotAString,
    /// OpenBao refused a request as invalid (HTTP 4xx other than 403/429) (22023).
    ProviderRejected,
    /// OpenBao answered something that could not be understood (08P01).
    ProviderProtocol,
    /// A Transit value's key version is below the key's `min_decryption_version` (55000).
    KeyVersionRetired,
    /// An internal invariant did not hold: a bug, never bad input (XX000).
    Internal,
    /// The value's key was destroyed on purpose (`credcrypt.shred_key`, crypto-shredding): it
    /// can never be decrypted again (38000). Never tampering (39000).
    KeyDestroyed,
}

/// A core error: a kind, a safe message and an optional safe detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// The category, used for the SQLSTATE.
    pub kind: ErrorKind,
    /// A short message, safe to show to any client.
    pub message: String,
    /// Extra detail, safe to show to any client.
    pub detail: Option<String>,
    /// A hint for this error when its kind's usual one would not fit (None: the kind's).
    pub hint: Option<&'static str>,
}

impl Error {
    /// Builds an error without detail.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), detail: None, hint: None }
    }

    /// Sets the hint shown instead of the kind's usual one.
    #[must_use]
    pub fn with_hint(mut self, hint: &'static str) -> Self {
        self.hint = Some(hint);
        self
    }

    /// Adds a detail line.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// A malformed-ciphertext error with a description of the part that is wrong.
    pub fn malformed(what: &'static str) -> Self {
        Self::new(ErrorKind::Malformed, "value is not a valid pg_credcrypt ciphertext").with_detail(what)
    }

    /// An internal error: something that cannot happen unless pg_credcrypt has a bug.
    pub fn internal(what: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, format!("pg_credcrypt internal error: {}", what.into()))
    }

    /// The authentication failure every wrong key, wrong context or tampering ends in.
    pub fn auth_failed() -> Self {
        Self::new(
            ErrorKind::AuthenticationFailed,
            "ciphertext authentication failed: the value was tampered with, or the key or context is wrong",
        )
    }
}

/// Result alias of the core crate.
pub type Result<T> = std::result::Result<T, Error>;

/// One decrypted value (in a buffer wiped on drop), or why it could not be decrypted: what every
/// layer passes around for a value of a bulk decryption.
pub type Decrypted = std::result::Result<zeroize::Zeroizing<Vec<u8>>, Error>;
