//! skiff-raft: a sans-IO Raft consensus core.
//!
//! The core never performs I/O, reads a clock, spawns threads or draws OS randomness: the
//! application feeds it ticks, messages and proposals, and carries out what each [`Ready`]
//! asks (persist, send, apply). Given the same calls it produces the same outputs, bit for
//! bit, which is what lets the simulator explore fault schedules deterministically.
//!
//! See `docs/ARCHITECTURE.md` for the Ready contract and the invariants.
#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod log;
pub mod membership;
pub mod message;
pub mod node;
pub mod progress;
pub mod quorum;
pub mod rng;
pub mod testkit;
pub mod types;

pub use config::{Config, PlantedBug, ReadMode};
pub use error::{ConfigError, RaftError};
pub use log::EntrySource;
pub use membership::{
    decode_membership, decode_membership_context, encode_membership,
    encode_membership_with_context, plan_change, MembershipChange, MembershipDecodeError,
    MembershipStep,
};
pub use message::{Message, MessageBody, COMMIT_NOTICE};
pub use node::{InitialState, RawNode, ReadState, Ready, Role, SoftState, Status};
pub use progress::ProgressState;
pub use rng::Rng;
pub use types::{
    Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta, ENTRY_OVERHEAD_BYTES,
};
