//! The OpenBao Transit provider: a shared-memory queue ([`queue`]), the backend side that
//! submits requests and waits ([`backend`]), and the background worker that batches them
//! into Transit calls ([`worker`]).

pub mod backend;
pub mod queue;
pub mod worker;
