//! The contract between the core and the adapter. Every operation that may
//! need the API takes a [`Fetch`]. The adapter first calls it with
//! [`Fetch::Never`], on the kernel's thread, and gets either the answer from
//! memory (or the page cache) or [`Answer::WouldBlock`]; only then does it
//! call again with [`Fetch::Allowed`] on a worker. A call that answers
//! `WouldBlock` must have changed nothing — numbered no inode, noted no
//! read-ahead, counted no miss — so that the second call behaves exactly as
//! if it were the first.

use super::error::FsError;

/// Whether a call may wait: for the API, and for the disk beyond the page
/// cache (a stored face's header or bytes are read on the kernel's thread
/// only when the page cache holds them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    Allowed,
    Never,
}

/// The outcome of an operation that may need to wait.
#[must_use]
#[derive(Debug)]
pub enum Answer<T> {
    Done(Result<T, FsError>),
    /// Only ever with [`Fetch::Never`]: answering needs the API or the
    /// disk. Nothing was changed; call again with [`Fetch::Allowed`] where
    /// waiting is fine.
    WouldBlock,
}

/// Inside the core: why a step did not produce its value.
pub enum Stop {
    WouldBlock,
    Failed(FsError),
}

impl From<FsError> for Stop {
    fn from(e: FsError) -> Stop {
        Stop::Failed(e)
    }
}

pub type Step<T> = Result<T, Stop>;

impl<T> From<Step<T>> for Answer<T> {
    fn from(step: Step<T>) -> Answer<T> {
        match step {
            Ok(value) => Answer::Done(Ok(value)),
            Err(Stop::Failed(e)) => Answer::Done(Err(e)),
            Err(Stop::WouldBlock) => Answer::WouldBlock,
        }
    }
}

impl<T> From<Answer<T>> for Step<T> {
    fn from(answer: Answer<T>) -> Step<T> {
        match answer {
            Answer::Done(result) => Ok(result?),
            Answer::WouldBlock => Err(Stop::WouldBlock),
        }
    }
}
