//! The driver's domain error: what went wrong, in the driver's own terms.
//!
//! Every failure carries a message that names the volume and the path
//! involved, and its cause: a wrapped error's message ends with its
//! cause's, and [`std::error::Error::source`] walks the same chain. Which
//! gRPC code a failure becomes is decided once, in the service layer
//! (`service::status`), never where the error is made.

use nix::errno::Errno;

use crate::capacity::Shortage;

/// A failure of any driver operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field, parameter or command-line setting that cannot be
    /// right: a missing or malformed id, name, path or value.
    #[error("{0}")]
    Invalid(String),
    /// The volume, target or host path named does not exist.
    #[error("{0}")]
    Unknown(String),
    /// The name, id or target is taken by something incompatible.
    #[error("{0}")]
    Conflict(String),
    /// The capacity ledger refused the size asked for.
    #[error(transparent)]
    Capacity(#[from] Shortage),
    /// What is asked can only be had on another node (another topology).
    #[error("{0}")]
    NotHere(String),
    /// A node-wide resource other than capacity ran out (loop devices).
    #[error("{0}")]
    NoneLeft(String),
    /// Another operation on the same volume, target or name is in flight,
    /// or the driver is stopping.
    #[error("{0}")]
    Busy(String),
    /// The volume, pool, target or host is in a state that does not allow
    /// the operation (still mounted, backing gone, record unreadable, a
    /// tool or kernel feature missing).
    #[error("{0}")]
    WrongState(String),
    /// A system call failed; `what` says which one, on which volume and path.
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        #[source]
        errno: Errno,
    },
    /// A library, thread or task the driver relies on failed.
    #[error("{what}: {source}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A failure of a step, with what the step was for.
    #[error("{what}: {source}")]
    Context {
        what: String,
        #[source]
        source: Box<Error>,
    },
    /// Something that should not happen: a corrupt record, a broken
    /// invariant, a tool that failed without an errno.
    #[error("{0}")]
    Broken(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps a failed system call with a description of what was attempted.
    pub fn sys(what: impl Into<String>, errno: Errno) -> Self {
        Error::Sys {
            what: what.into(),
            errno,
        }
    }

    /// Wraps another library's or a task's error with what was attempted.
    pub fn failed(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Failed {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Says what this error's step was for, keeping it as the cause.
    pub fn within(self, what: impl Into<String>) -> Self {
        Error::Context {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The error beneath every [`Error::Context`]: the one that says what
    /// kind of failure this is.
    pub fn innermost(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.innermost(),
            other => other,
        }
    }
}

/// Most bytes of a caller's string that a message repeats: one request
/// field can hold megabytes, and neither the answer nor the log should.
pub const ECHO_LIMIT: usize = 256;

/// A caller's string for a message: quoted and escaped as `{:?}` would, cut
/// to [`ECHO_LIMIT`] bytes, with its full length told when cut.
pub struct Echo<'a>(pub &'a str);

impl std::fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= ECHO_LIMIT {
            return write!(f, "{:?}", self.0);
        }
        let cut = (0..=ECHO_LIMIT)
            .rev()
            .find(|&i| self.0.is_char_boundary(i))
            .unwrap_or(0);
        write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len())
    }
}

/// Adds context to a nix result: `mkdirat(..).context(|| format!(..))`.
pub trait SysContext<T> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> SysContext<T> for nix::Result<T> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|errno| Error::sys(what(), errno))
    }
}

impl<T> SysContext<T> for std::io::Result<T> {
    fn context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| match e.raw_os_error() {
            Some(raw) => Error::sys(what(), Errno::from_raw(raw)),
            None => Error::failed(what(), e),
        })
    }
}

/// Adds what a step was for to a driver result: `.within(|| format!(..))`.
pub trait Within<T> {
    fn within<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T> Within<T> for Result<T> {
    fn within<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|err| err.within(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_echoed_cut_with_their_length() {
        assert_eq!(Echo("a\nb").to_string(), "\"a\\nb\"");
        let long = "é".repeat(1000);
        let shown = Echo(&long).to_string();
        assert!(shown.len() < ECHO_LIMIT + 40, "{shown}");
        assert!(shown.ends_with("… (2000 bytes)"), "{shown}");
    }

    #[test]
    fn sys_errors_name_the_operation_and_the_errno() {
        let err = Error::sys("volume v1: mkdir /pool/volumes/v1", Errno::EACCES);
        assert_eq!(
            err.to_string(),
            "volume v1: mkdir /pool/volumes/v1: EACCES: Permission denied"
        );
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn a_wrapped_error_keeps_its_cause_in_the_message_and_the_chain() {
        let inner = Error::sys("volume v1: open /pool/volumes/v1", Errno::ENOSPC);
        let err = inner.within("volume v1: create");
        assert_eq!(
            err.to_string(),
            "volume v1: create: volume v1: open /pool/volumes/v1: ENOSPC: No space left on device"
        );
        assert!(matches!(
            err.innermost(),
            Error::Sys {
                errno: Errno::ENOSPC,
                ..
            }
        ));
        let mut chain = 0;
        let mut next: Option<&dyn std::error::Error> = Some(&err);
        while let Some(e) = next {
            chain += 1;
            next = e.source();
        }
        assert_eq!(chain, 3, "context, sys call, errno");
    }
}
