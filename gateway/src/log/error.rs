//! Errors at the boundary of the durable log.

use std::path::PathBuf;
use thiserror::Error;

/// What can go wrong when using the [`DurableLog`](super::DurableLog).
#[derive(Debug, Error)]
pub enum LogError {
    /// The log directory could not be opened (permissions, disk, a damaged
    /// sled file set). The service cannot start without its log.
    #[error("cannot open the log at {path}: {source}")]
    Open {
        /// The log directory.
        path: PathBuf,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// The log was created by another gateway id; frame ids would change.
    #[error(
        "the log at {path} belongs to gateway id {found:?}, but the config says {configured:?}; \
             use the original id or point log.path at a new directory"
    )]
    GatewayIdMismatch {
        /// The log directory.
        path: PathBuf,
        /// Id stored in the log.
        found: String,
        /// Id from the configuration.
        configured: String,
    },
    /// A payload segment or a directory could not be read, written or synced.
    #[error("log I/O error at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The log was written by a later release (a downgrade): this one
    /// cannot know its format and writes nothing to it.
    #[error(
        "the log at {path} has format {found}, written by a later release; this release reads formats 1 to {known}: \
             run the later release again (logs are upgraded, never downgraded), or move the directory away"
    )]
    NewerFormat {
        /// The log directory.
        path: PathBuf,
        /// The format stored in the log.
        found: String,
        /// The newest format this release knows.
        known: u32,
    },
    /// Upgrading a log of an earlier format produced a copy that does not
    /// match the original; the original is left as it was.
    #[error("upgrading the log at {path} failed its check ({detail}); the old log is unchanged")]
    UpgradeMismatch {
        /// The staging directory of the copy.
        path: PathBuf,
        /// What differed.
        detail: String,
    },
    /// A read or write failed in the storage engine.
    #[error("log storage error: {0}")]
    Storage(#[from] sled::Error),
    /// The byte budget is used up and the policy is `block`.
    #[error("log is full: {used} of {max} bytes used, {needed} more needed")]
    Full {
        /// Bytes in use now.
        used: u64,
        /// Bytes the refused record needs.
        needed: u64,
        /// The budget (`log.max_bytes`).
        max: u64,
    },
    /// The log's file system is (nearly) full: something other than the
    /// budget leaves no room. Intake waits, like [`LogError::Full`]; see
    /// `space.rs`.
    #[error("disk full at {path}: {free} bytes free")]
    NoSpace {
        /// The log directory.
        path: PathBuf,
        /// Bytes free on its file system when the write was refused.
        free: u64,
    },
    /// One record is larger than the whole budget; it can never fit.
    #[error("record of {size} bytes can never fit a log budget of {max} bytes")]
    TooLarge {
        /// Size of the record.
        size: u64,
        /// The budget.
        max: u64,
    },
    /// A stage tried to move its cursor backwards.
    #[error("cursor {name:?} cannot move back from {current} to {requested}")]
    CursorRegression {
        /// Cursor name.
        name: String,
        /// Current position.
        current: u64,
        /// Requested position.
        requested: u64,
    },
}

impl LogError {
    /// True when retrying later can succeed without anyone changing anything
    /// (space being freed, a passing I/O error).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Full { .. } | Self::NoSpace { .. } | Self::Io { .. } | Self::Storage(sled::Error::Io(_)))
    }

    /// True when the file system had no room (ENOSPC, EDQUOT, EIO on a
    /// write): a state to wait out, not a failure (see `space.rs`).
    pub fn is_no_space(&self) -> bool {
        match self {
            Self::NoSpace { .. } => true,
            Self::Io { source, .. } => super::space::is_no_space_io(source),
            Self::Open { source, .. } | Self::Storage(source) => super::space::is_no_space_sled(source),
            _ => false,
        }
    }
}
