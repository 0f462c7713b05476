//! The one place a driver error becomes a gRPC status: the code follows the
//! CSI spec's table (see DESIGN.md), the message is the error's whole chain.

use nix::errno::Errno;
use tonic::{Code, Status};

use crate::capacity::{Shortage, Source};
use crate::error::Error;

/// The code the CSI spec asks for this failure.
pub fn code(err: &Error) -> Code {
    match err.innermost() {
        Error::Invalid(_) => Code::InvalidArgument,
        Error::Unknown(_) => Code::NotFound,
        Error::Conflict(_) => Code::AlreadyExists,
        Error::Capacity(shortage) => shortage_code(shortage),
        Error::NotHere(_) | Error::NoneLeft(_) => Code::ResourceExhausted,
        Error::Busy(_) => Code::Aborted,
        Error::WrongState(_) => Code::FailedPrecondition,
        Error::Sys {
            errno: Errno::ENOSPC | Errno::EDQUOT,
            ..
        } => Code::ResourceExhausted,
        Error::Sys { .. } | Error::Failed { .. } | Error::Broken(_) => Code::Internal,
        Error::Context { .. } => unreachable!("innermost is never a context"),
    }
}

/// A size that can never be had here as asked is OUT_OF_RANGE: below a
/// kind's minimum, a shrink, more than a file holds, or more than a pool's
/// disk has (its disk is the ceiling of what its volumes can get). A budget
/// that is used up for now (memory, volume slots) is RESOURCE_EXHAUSTED.
fn shortage_code(shortage: &Shortage) -> Code {
    match shortage {
        Shortage::BelowMinimum { .. }
        | Shortage::BelowSource { .. }
        | Shortage::Shrink { .. }
        | Shortage::TooLarge { .. } => Code::OutOfRange,
        Shortage::NoRoom { source_of, .. } | Shortage::NoRoomToGrow { source_of, .. } => {
            match source_of {
                Source::Pool(..) => Code::OutOfRange,
                Source::Memory(_) => Code::ResourceExhausted,
            }
        }
        Shortage::TooMany { .. } => Code::ResourceExhausted,
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(code(&err), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::PoolName;

    fn no_room(source_of: Source) -> Error {
        Error::Capacity(Shortage::NoRoom {
            volume: "a".into(),
            needed: 2,
            available: 1,
            source_of,
        })
    }

    #[test]
    fn every_kind_of_failure_maps_to_its_code_and_keeps_the_message() {
        let pool = Source::Pool(PoolName::parse("p").unwrap(), "/p".into());
        let cases = [
            (Error::Invalid("a".into()), Code::InvalidArgument),
            (Error::Unknown("a".into()), Code::NotFound),
            (Error::Conflict("a".into()), Code::AlreadyExists),
            (no_room(pool), Code::OutOfRange),
            (no_room(Source::Memory("n".into())), Code::ResourceExhausted),
            (
                Error::Capacity(Shortage::TooMany {
                    volume: "a".into(),
                    node: "n".into(),
                    max: 1,
                }),
                Code::ResourceExhausted,
            ),
            (
                Error::Capacity(Shortage::Shrink {
                    volume: "a".into(),
                    current: 2,
                    required: 1,
                    limit: 0,
                }),
                Code::OutOfRange,
            ),
            (Error::NotHere("a".into()), Code::ResourceExhausted),
            (Error::NoneLeft("a".into()), Code::ResourceExhausted),
            (Error::Busy("a".into()), Code::Aborted),
            (Error::WrongState("a".into()), Code::FailedPrecondition),
            (Error::Broken("a".into()), Code::Internal),
            (Error::failed("a", "boom"), Code::Internal),
            (Error::sys("a", Errno::EIO), Code::Internal),
            (Error::sys("a", Errno::ENOSPC), Code::ResourceExhausted),
            (Error::sys("a", Errno::EDQUOT), Code::ResourceExhausted),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(status.message().contains('a'), "{}", status.message());
        }
    }

    #[test]
    fn a_context_takes_its_causes_code_and_shows_the_whole_chain() {
        let err = Error::Unknown("volume v1 is gone".into()).within("volume v1: publish");
        let status = Status::from(err);
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "volume v1: publish: volume v1 is gone");
    }
}
