//! Running a piece of work in an internal subtransaction and catching its error, the way
//! PL/pgSQL's `EXCEPTION` blocks do: the work is rolled back, the error comes back as a value,
//! and the caller's transaction goes on.

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;

/// An error caught by [`in_subtransaction`]: its SQLSTATE and texts.
pub(crate) struct Caught {
    /// Five-character SQLSTATE.
    pub sqlstate: String,
    /// The message.
    pub message: String,
    /// The detail, if any.
    pub detail: Option<String>,
    /// The hint, if any.
    pub hint: Option<String>,
}

/// The five-character SQLSTATE of an error code (PostgreSQL's MAKE_SQLSTATE packing).
pub(crate) fn sqlstate_text(code: pgrx::PgSqlErrorCode) -> String {
    let n = code as i32;
    (0..5).map(|i| char::from(b'0' + ((n >> (6 * i)) & 0x3f) as u8)).collect()
}

/// Runs `f` in a subtransaction. On error, the subtransaction is rolled back and the error
/// returned; the memory context and resource owner are the caller's again either way.
/// Errors at FATAL or above are not caught (the backend ends).
pub(crate) fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    // SAFETY: the documented pattern for internal subtransactions (pl_exec.c): remember the
    // memory context and resource owner, begin, and restore both after commit or rollback.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    let restore = move || {
        // SAFETY: see above.
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    };
    let f = std::panic::AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let r = f();
        // SAFETY: commits the subtransaction begun above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(r)
    })
    .catch_others(|e| {
        // SAFETY: rolls back the subtransaction begun above (the error is already caught).
        unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
        restore();
        let report = match &e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
                r
            }
        };
        Err(Caught {
            sqlstate: sqlstate_text(report.sql_error_code()),
            message: report.message().to_owned(),
            detail: report.detail().map(str::to_owned),
            hint: report.hint().map(str::to_owned),
        })
    })
    .execute()
}
