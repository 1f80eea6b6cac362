//! Typed errors of the core. None of them changes state: a failed call is a no-op.

use crate::types::NodeId;

/// A configuration field is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `field` is invalid for `reason`.
    #[error("invalid raft config: {field} {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// The initial state handed to the core is inconsistent.
    #[error("invalid initial state: {0}")]
    InitialState(String),
}

/// Why a proposal, read or transfer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    /// This member is not the leader; `leader` is the leader it knows of, if any.
    #[error("not leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Accepting the proposal would exceed `max_uncommitted_bytes`.
    #[error("too many uncommitted bytes: {uncommitted_bytes} + {proposal_bytes} > {limit_bytes}")]
    UncommittedLimit {
        /// Bytes currently uncommitted.
        uncommitted_bytes: u64,
        /// Bytes of the refused proposal.
        proposal_bytes: u64,
        /// The configured limit.
        limit_bytes: u64,
    },
    /// A leadership transfer is in progress; proposals resume when it ends.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Too many reads are waiting for confirmation.
    #[error("too many pending reads")]
    TooManyPendingReads,
    /// The transfer target is not a voter of this cluster.
    #[error("node {0} is not a voter")]
    NotAVoter(NodeId),
    /// The transfer target is this member itself.
    #[error("cannot transfer leadership to the leader itself")]
    TransferToSelf,
    /// A membership change is still uncommitted (or the joint configuration it entered is
    /// not left yet); one change at a time.
    #[error("a membership change is in progress")]
    MembershipChangePending,
    /// The change would leave the configuration without voters.
    #[error("the membership change would leave no voters")]
    NoVotersLeft,
    /// The change does not apply to the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(String),
}
