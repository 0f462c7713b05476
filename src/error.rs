//! The driver's one error type and its single mapping to gRPC status codes.
//!
//! Every failure carries a message that names the volume and the path involved;
//! the variant alone decides the code, following the table in the CSI spec.

use nix::errno::Errno;

/// A failure of any driver operation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field is missing or malformed: an id, a name, a parameter, a path.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or path) the call names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The same name or target exists with incompatible arguments.
    #[error("{0}")]
    AlreadyExists(String),
    /// The capacity asked for is outside what the driver or pool can give.
    #[error("{0}")]
    OutOfRange(String),
    /// No space, memory budget or volume slots are left.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same volume or name is in flight.
    #[error("{0}")]
    Aborted(String),
    /// The call is valid but the volume is in the wrong state for it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A system call failed; `what` says which one, on which volume and path.
    #[error("{what}: {errno}")]
    Sys { what: String, errno: Errno },
    /// Anything else that should not happen (corrupt record, broken invariant).
    #[error("{0}")]
    Internal(String),
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
        self.map_err(|e| {
            Error::sys(
                what(),
                Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            )
        })
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Sys {
                errno: Errno::ENOSPC | Errno::EDQUOT,
                ..
            } => Code::ResourceExhausted,
            Error::Sys { .. } | Error::Internal(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_variant_maps_to_its_code_and_keeps_the_message() {
        let cases = [
            (Error::InvalidArgument("a".into()), Code::InvalidArgument),
            (Error::NotFound("a".into()), Code::NotFound),
            (Error::AlreadyExists("a".into()), Code::AlreadyExists),
            (Error::OutOfRange("a".into()), Code::OutOfRange),
            (
                Error::ResourceExhausted("a".into()),
                Code::ResourceExhausted,
            ),
            (Error::Aborted("a".into()), Code::Aborted),
            (
                Error::FailedPrecondition("a".into()),
                Code::FailedPrecondition,
            ),
            (Error::Internal("a".into()), Code::Internal),
            (Error::sys("a", Errno::EIO), Code::Internal),
            (Error::sys("a", Errno::ENOSPC), Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code);
            assert!(status.message().starts_with('a'), "{}", status.message());
        }
    }

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
