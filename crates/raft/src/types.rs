//! The data Raft persists and sends: log entries, hard state, snapshot metadata and the
//! cluster configuration. These types are shared with the storage crate, which encodes them
//! on disk, and with the server, which encodes them on the wire.

use std::collections::BTreeSet;

use bytes::Bytes;

/// A member's identity. Never zero: zero is reserved to mean "nobody" in encodings.
pub type NodeId = u64;

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    /// Appended by every new leader so that entries of earlier terms can commit (Raft §5.4.2).
    /// Carries no data; the state machine skips it.
    Noop,
    /// An application command.
    Normal,
    /// A configuration change (membership); its payload is defined by the membership layer.
    ConfigChange,
}

impl EntryKind {
    /// Stable one-byte code used by encoders.
    pub fn code(self) -> u8 {
        match self {
            EntryKind::Noop => 0,
            EntryKind::Normal => 1,
            EntryKind::ConfigChange => 2,
        }
    }

    /// Inverse of [`EntryKind::code`].
    pub fn from_code(code: u8) -> Option<EntryKind> {
        match code {
            0 => Some(EntryKind::Noop),
            1 => Some(EntryKind::Normal),
            2 => Some(EntryKind::ConfigChange),
            _ => None,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: u64,
    /// The entry's position in the log, from 1.
    pub index: u64,
    /// What the entry carries.
    pub kind: EntryKind,
    /// The payload; empty for [`EntryKind::Noop`].
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for in size limits (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.data.len() as u64
    }
}

/// Fixed per-entry overhead used when sizing batches (term, index, kind, length).
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state every member must persist before it answers a message that depends on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// The latest term this member has seen.
    pub term: u64,
    /// The candidate this member voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The highest index known committed. Persisting it is an optimisation (fewer entries
    /// to re-apply after a restart); it may lag the in-memory commit index.
    pub commit: u64,
}

/// Which members vote and which only learn. A joint configuration (during a membership
/// change) has a non-empty `voters_outgoing`; decisions then need a majority of both sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Membership {
    /// Voters of the current (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A simple (non-joint) configuration of `voters` without learners.
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            voters_outgoing: BTreeSet::new(),
            learners: BTreeSet::new(),
        }
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// True while a joint configuration is in force (a change of several voters).
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// True if `id` is a voter, an outgoing voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.learners.contains(&id)
    }

    /// Every member (voters of both halves and learners), in ascending order.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.voters
            .iter()
            .chain(self.voters_outgoing.iter())
            .chain(self.learners.iter())
            .copied()
            .collect()
    }
}

/// Describes the state a snapshot captures: the log up to `index` (whose entry had `term`)
/// applied to the state machine, and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership as of `index`.
    pub membership: Membership,
}
