//! The one error type of this crate. Expected conditions (a full disk, a damaged file, a request
//! outside the log) are variants; broken invariants are assertions.

use std::io;

/// Everything a storage operation can report.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file holds bytes that a crash cannot explain. The node must not start on it.
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The file's name inside the storage directory.
        file: String,
        /// Byte offset of the damaged record (or field) in that file.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{operation} {file}: {source}")]
    Io {
        /// What was being done ("write", "fdatasync", "rename", ...).
        operation: &'static str,
        /// The file (or directory) it was done to.
        file: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The disk is full (`ENOSPC`). Nothing already durable was damaged; after space is freed,
    /// a restart recovers.
    #[error("no space left on device while writing {file}")]
    NoSpace {
        /// The file being written.
        file: String,
    },
    /// An earlier write or fsync failed, so the store refuses every further write. The node
    /// must stop; a restart recovers from what is durable.
    #[error("storage refuses writes after an earlier write or fsync failure")]
    Poisoned,
    /// One entry does not fit in the largest record the configuration allows.
    #[error("record of {bytes} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// The encoded size asked for.
        bytes: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Unsynced entries exceed the configured limit; the caller must `sync()` first.
    #[error("{bytes} unsynced bytes would exceed the limit of {limit} bytes")]
    TooMuchUnsynced {
        /// The unsynced bytes the append would lead to.
        bytes: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The requested index was removed by compaction (it is covered by a snapshot).
    #[error("index {index} is compacted; the log starts at {first_index}")]
    Compacted {
        /// The requested index.
        index: u64,
        /// The first index still in the log.
        first_index: u64,
    },
    /// The requested index is beyond the end of the log.
    #[error("index {index} is beyond the last index {last_index}")]
    Unavailable {
        /// The requested index.
        index: u64,
        /// The last index in the log.
        last_index: u64,
    },
    /// A caller broke the contract of an operation (for example an append that leaves a gap).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A configuration value is out of range.
    #[error("invalid storage configuration: {0}")]
    InvalidConfig(String),
}

impl StorageError {
    /// Wraps an I/O error, turning `ENOSPC` into [`StorageError::NoSpace`].
    pub fn from_io(operation: &'static str, file: &str, source: io::Error) -> StorageError {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            return StorageError::NoSpace {
                file: file.to_string(),
            };
        }
        StorageError::Io {
            operation,
            file: file.to_string(),
            source,
        }
    }

    /// Builds a [`StorageError::Corrupt`].
    pub fn corrupt(file: &str, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            file: file.to_string(),
            offset,
            reason: reason.into(),
        }
    }
}

/// Result of storage operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
