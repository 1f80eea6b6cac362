//! skiff-storage: the durable Raft log, hard state and snapshot files.
//!
//! Raft's guarantees hold only if what a node acknowledged is on disk when it says so, and if a
//! crash at any byte leaves files that recover to a state the protocol allows. This crate gives
//! the node and the simulator one synchronous [`Storage`] trait with three backends:
//!
//! - [`FileStorage`]: a segmented write-ahead log and snapshot files on real files, one
//!   `fdatasync` per group commit;
//! - [`MemoryStorage`]: plain in-memory state, for unit tests of code above the store;
//! - [`SimulatedStorage`]: the very same log and snapshot code as [`FileStorage`], running on
//!   [`SimulatedFileSystem`], a deterministic in-memory disk that can crash (dropping unsynced
//!   bytes, tearing the last write, losing unsynced directory changes) and fail writes, fsyncs
//!   or run out of space on demand.
//!
//! The on-disk format, the fsync rules and why recovery is correct are in
//! `docs/storage-format.md`. Any failed write or fsync poisons the store: it refuses all further
//! writes and the node must restart (an fsync is never retried).
#![deny(missing_docs)]

use std::io;

use skiff_raft::{Entry, HardState, SnapshotMeta};

pub mod config;
pub mod durable;
pub mod error;
pub mod file_system;
pub mod format;
pub mod memory;
pub mod simulated;
pub mod snapshot;

pub use config::StorageConfig;
pub use durable::{DurableStorage, StorageMetrics};
pub use error::{Result, StorageError};
pub use file_system::{FileSystem, OsFileSystem, StorageFile};
pub use memory::MemoryStorage;
pub use simulated::{CrashOptions, SimulatedFileSystem};

/// The store on real files.
pub type FileStorage = DurableStorage<OsFileSystem>;
/// The store on the simulated, fault-injecting disk.
pub type SimulatedStorage = DurableStorage<SimulatedFileSystem>;

/// What a store holds after opening: the node hands it to the consensus core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The newest durable hard state.
    pub hard_state: HardState,
    /// The newest published snapshot, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// Every entry after the snapshot (or from index 1), consecutive.
    pub entries: Vec<Entry>,
}

/// The durable state of one Raft node: log entries, hard state and snapshots.
///
/// Writes (`append`, `truncate`, `set_hard_state`) are buffered and become durable together at
/// the next [`Storage::sync`], which returns the durable last index: one fsync serves a whole
/// batch (group commit). The node must not send a message that depends on a write before the
/// `sync` covering it returned. Once any write or fsync fails, every later write fails with
/// [`StorageError::Poisoned`].
///
/// Invariant: `first_index() - 1 <= snapshot index` and entries are consecutive from
/// `first_index()` to `last_index()`.
///
/// To install a snapshot that conflicts with the log, `truncate` the conflicting suffix and
/// `sync` first, then publish the snapshot, then `compact` through its index.
pub trait Storage {
    /// Streams a snapshot in; publish it with [`Storage::finish_snapshot`].
    type SnapshotWriter: io::Write;
    /// Streams a published snapshot's data out.
    type SnapshotReader: io::Read;

    /// The latest hard state set (durable or not).
    fn hard_state(&self) -> HardState;
    /// The newest published snapshot's metadata.
    fn snapshot_meta(&self) -> Option<&SnapshotMeta>;
    /// The first index that `entries` can return (one past the compacted prefix).
    fn first_index(&self) -> u64;
    /// The last index of the log, durable or not (the compaction point if the log is empty).
    fn last_index(&self) -> u64;
    /// The highest index up to which the current log is durable.
    fn durable_index(&self) -> u64;

    /// Appends consecutive entries. If the first index is at or below the last index, the log
    /// from that index on is replaced (conflicting entries are truncated). The first index must
    /// be above the compacted prefix and at most `last_index() + 1`. Durable at the next `sync`.
    fn append(&mut self, entries: &[Entry]) -> Result<()>;
    /// Removes every entry from `from_index` on. Durable at the next `sync`.
    fn truncate(&mut self, from_index: u64) -> Result<()>;
    /// Replaces the hard state. Durable at the next `sync`.
    fn set_hard_state(&mut self, hard_state: HardState) -> Result<()>;
    /// Makes every buffered write durable with one fsync (more only if the batch exceeds the
    /// record limit or a new segment is needed); returns the durable last index.
    fn sync(&mut self) -> Result<u64>;
    /// Drops the log through `through_index`, which must not exceed the published snapshot's
    /// index. If it is beyond the last index, the log becomes empty and continues after it.
    fn compact(&mut self, through_index: u64) -> Result<()>;
    /// Entries in `low..high`, stopping before `max_bytes` (by [`Entry::size_bytes`]) would be
    /// exceeded, but at least one entry if the range is not empty.
    fn entries(&mut self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>>;

    /// Starts writing a snapshot with `meta`.
    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<Self::SnapshotWriter>;
    /// Publishes a finished snapshot atomically and deletes older ones. Its index must not be
    /// below the current snapshot's.
    fn finish_snapshot(&mut self, writer: Self::SnapshotWriter) -> Result<()>;
    /// Opens the newest published snapshot.
    fn open_snapshot(&self) -> Result<Option<(SnapshotMeta, Self::SnapshotReader)>>;
}
