//! The frontend's error type: each variant says which operation on which
//! pid, path or file failed, so `main` can print one clear line.

use crate::helper::HelperError;
use crate::images::ImageError;
use std::path::PathBuf;

/// Anything that makes a command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image file is missing, truncated, corrupt or unwritable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The helper refused or failed a request, or could not be started.
    #[error(transparent)]
    Helper(#[from] HelperError),
    /// Reading a /proc file of a task failed.
    #[error("reading {path}: {source}")]
    Proc {
        /// The /proc path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A /proc file had content we do not understand.
    #[error("parsing {path}: {detail}")]
    Parse {
        /// The /proc path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A system call injected into a task returned an error.
    #[error("pid {pid}: {call} failed in the task: {errno}")]
    Injected {
        /// The task.
        pid: i32,
        /// The call and its main argument, e.g. `mmap(0x7f00..)`.
        call: String,
        /// What it returned.
        errno: nix::errno::Errno,
    },
    /// A file or directory the user named could not be used.
    #[error("{path}: {source}")]
    File {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The task or image is in a state we cannot handle; the message says
    /// which and why.
    #[error("{0}")]
    Unsupported(String),
    /// Something the user asked for cannot be done; the message says why.
    #[error("{0}")]
    Refused(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A file error for `path`.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File {
            path: path.into(),
            source,
        }
    }
    /// A /proc read error for `path`.
    pub fn proc(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Proc {
            path: path.into(),
            source,
        }
    }
    /// A /proc parse error for `path`.
    pub fn parse(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Parse {
            path: path.into(),
            detail: detail.into(),
        }
    }
}
