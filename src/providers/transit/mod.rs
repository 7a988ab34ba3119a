//! The OpenBao Transit provider: a shared-memory queue ([`queue`]), the backend side that
//! submits requests and waits ([`backend`]), and the background worker that batches them
//! into Transit calls ([`worker`]).

pub mod backend;
pub mod queue;
pub mod worker;

use credcrypt_core::wire::Op;
use credcrypt_core::Error;

pub(crate) use worker::fail_of as worker_fail_of;

/// The latest version of Transit key `name`, asked of OpenBao through the worker.
pub(crate) fn latest_version(name: &str) -> Result<u32, Error> {
    let answer = backend::call(Op::KeyInfo, name, &[])?;
    let v = answer
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("the worker sent no answer for a key lookup"))?
        .map_err(|f| backend::fail_to_error(&f))?;
    std::str::from_utf8(&v)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::internal("the worker's key lookup answer is not a version number"))
}
