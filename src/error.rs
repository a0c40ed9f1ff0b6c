//! What can go wrong with a request, as plain values. Every module returns
//! these; only the HTTP layer turns them into status codes and replies, so
//! nothing below it knows that HTTP exists.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A refused or failed request, with a reason the client can read.
#[derive(Debug)]
pub enum Error {
    /// Malformed or invalid input.
    Invalid(String),
    /// Missing or wrong credentials, or a revoked user.
    Unauthorized(String),
    /// No such path.
    NotFound(String),
    /// A known path asked with the wrong method.
    NotAllowed(String),
    /// A request body over `--max_body`.
    TooLarge(String),
    /// A request body that did not arrive in time.
    TooSlow(String),
    /// A limit was reached; the client may try again after this many seconds.
    TooMany(String, u64),
    /// Storage or the cluster cannot serve now; it heals by itself, so the
    /// client should retry shortly.
    Unavailable(String),
    /// A fault of the server itself.
    Internal(String),
}

/// Locks a mutex, ignoring poisoning: no critical section in Broker leaves
/// data half-written in memory, so a panic elsewhere must not wedge the server.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
