//! skiff-raft: a sans-IO Raft consensus core (being built).
#![deny(missing_docs)]

pub mod types;

pub use types::{Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta, ENTRY_OVERHEAD_BYTES};
