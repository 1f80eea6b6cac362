//! skiff-kv: the replicated state machine behind Skiff's etcd v3 API.
//!
//! An MVCC key-value store with etcd's semantics (revisions, versions, tombstones, range options,
//! txns, compaction, leases, watch events), applied from the Raft log as encoded `Command`s.
//!
//! **Architecture invariant:** this crate does no I/O (snapshots go through caller-supplied
//! `Read`/`Write`), reads no clock, starts no threads and uses no randomness; every map is a
//! `BTreeMap`. Applying the same commands at the same indexes gives the same responses, events,
//! `hash_kv` and snapshot bytes on every member. Time (lease renewals and expiry) is the leader's,
//! carried inside commands.
//!
//! Entry points: `Store::apply` for committed commands; `Store::range`, `lease_time_to_live`,
//! `lease_leases`, `expired_leases`, `hash_kv` and `events_since` for reads; `Store::snapshot` /
//! `Store::restore` (and `Store::snapshot_copy`, a cheap copy to write elsewhere); `Store::validate_command` and `check_request_size` before proposing.
//!
//! # Design notes
//! * **Revisions** follow etcd: an empty store is at revision 1; a write request that changes
//!   something makes exactly one new revision (sub-revisions order the changes of a txn); reads,
//!   failed requests, lease grants and keep-alives, compaction and deletes of nothing do not.
//! * **Validate, then mutate.** Every check (including which branch each nested txn takes, decided on
//!   the state before the txn as etcd does) runs before the first change, so a refused command
//!   changes nothing but the applied index.
//! * **Watch history** is the MVCC history itself: every version since the last compaction is kept,
//!   indexed by revision, so `events_since` can start a watcher at any revision not compacted and
//!   answers exactly what the live event stream (`Applied::events`) carried. What bounds it is
//!   compaction (the server's auto-compaction policy decides when); each fetch is bounded by
//!   `KvConfig::max_watch_events_per_fetch` and never splits a revision. A start below the compact
//!   revision answers `WatchEvents::Compacted`; as in etcd, deletes at exactly the compact revision
//!   are gone.
//! * **Leases** store a TTL and the leader's time of the last renewal; see `Store::expired_leases`
//!   and the `Operation` docs. Keep-alives go through the log here (simple and exact across leader
//!   changes); a server that wants fewer log entries may renew locally and propose
//!   `LeaseKeepAlive` only when a renewal would move the deadline by more than some slack.
//! * **Exactly-once**: see `Command` (a bounded per-client session table, part of the snapshot).
//! * **Configuration** is part of the state machine's definition: all members must share it.
#![deny(missing_docs)]

mod command;
mod config;
mod crc;
mod error;
mod history;
mod key;
mod revisions;
mod snapshot;
mod store;
mod types;
mod values;
mod wire;

pub use command::{Applied, Command, Operation, RequestId, Response, ResponseBody};
pub use config::KvConfig;
pub use crc::Crc32;
pub use error::{ConfigError, DecodeError, GrpcCode, KvError, SnapshotError};
pub use snapshot::SnapshotCopy;
pub use store::{HashKvCopy, Store};
pub use types::*;
pub use values::{ValueLog, VecValueLog, COLLECT_FLOOR_BYTES};
pub use wire::{COMMAND_FORMAT_VERSION, MAX_DECODE_DEPTH};
