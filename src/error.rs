//! What can go wrong with a request, as plain values. Every module returns
//! these; only the HTTP layer turns them into status codes and replies, so
//! nothing below it knows that HTTP exists. (What only HTTP can get wrong —
//! an unknown path, an oversized or late body — it answers by itself.)

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A refused or failed request, with a reason the client can read.
pub enum Error {
    /// Malformed or invalid input.
    Invalid(String),
    /// Missing or wrong credentials, or a revoked user.
    Unauthorized(String),
    /// A limit was reached; the client may try again after this many seconds.
    TooMany(String, u64),
    /// Storage cannot serve now, or the server is too busy; it heals by
    /// itself, so the client should retry shortly.
    Unavailable(String),
}

/// `Err(error)` unless `holds`: a rule, checked in one line.
pub fn ensure(holds: bool, error: Error) -> Result<(), Error> {
    if holds { Ok(()) } else { Err(error) }
}

/// Locks a mutex, ignoring poisoning: no critical section in Broker leaves
/// data half-written in memory, so a panic elsewhere must not wedge the server.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
