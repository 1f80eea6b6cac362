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
//! `lease_leases`, `hash_kv` and `events_since` for reads; `Store::snapshot` / `Store::restore`.
#![deny(missing_docs)]

mod command;
mod config;
mod crc;
mod error;
mod snapshot;
mod store;
mod types;
mod wire;

pub use command::{Applied, Command, Operation, RequestId, Response, ResponseBody};
pub use config::KvConfig;
pub use crc::Crc32;
pub use error::{ConfigError, DecodeError, GrpcCode, KvError, SnapshotError};
pub use store::Store;
pub use types::*;
pub use wire::{COMMAND_FORMAT_VERSION, MAX_DECODE_DEPTH};
