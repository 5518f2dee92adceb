//! The error of handing a command to a driver or shard that cannot take it now.

use std::fmt;

/// Why a handle could not queue a command. Either way nothing was queued and the
/// value the command carried comes back, so no payload is ever dropped silently.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<T> {
    /// The bounded command queue is full: back off and retry (or use a waiting
    /// variant where the handle has one).
    Full(T),
    /// The server, shard or driver has stopped.
    Stopped(T),
    /// No session could ever take it: an empty message, a reliable channel above 3,
    /// or more bytes than a session queues (`max_pending_bytes`).
    Invalid(T),
}

impl<T> SendError<T> {
    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(value) | Self::Stopped(value) | Self::Invalid(value) => value,
        }
    }

    /// The value that was not sent, by reference.
    pub fn payload(&self) -> &T {
        match self {
            Self::Full(value) | Self::Stopped(value) | Self::Invalid(value) => value,
        }
    }

    /// Whether the queue was full (the receiver is still running).
    pub fn is_full(&self) -> bool {
        matches!(self, Self::Full(_))
    }

    /// Whether the receiver has stopped.
    pub fn is_stopped(&self) -> bool {
        matches!(self, Self::Stopped(_))
    }

    /// Whether the command was refused as one no session could carry out.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }

    /// The same error carrying `f(value)`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> SendError<U> {
        match self {
            Self::Full(value) => SendError::Full(f(value)),
            Self::Stopped(value) => SendError::Stopped(f(value)),
            Self::Invalid(value) => SendError::Invalid(f(value)),
        }
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("Full(..)"),
            Self::Stopped(_) => f.write_str("Stopped(..)"),
            Self::Invalid(_) => f.write_str("Invalid(..)"),
        }
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("command queue full"),
            Self::Stopped(_) => f.write_str("stopped"),
            Self::Invalid(_) => {
                f.write_str("no session can take this message (empty, bad channel or too large)")
            }
        }
    }
}

impl<T> std::error::Error for SendError<T> {}
