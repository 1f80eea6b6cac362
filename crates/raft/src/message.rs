//! Messages exchanged between members. The core only produces and consumes these values;
//! the server encodes them on the wire.

use bytes::Bytes;

use crate::types::{Entry, NodeId, SnapshotMeta};

/// The [`MessageBody::Heartbeat`] sequence number of a commit notice. A leader numbers its
/// heartbeats from 1 in each term; a heartbeat numbered 0 only tells a follower the commit
/// index, and the follower does not answer it.
pub const COMMIT_NOTICE: u64 = 0;

/// A message from one member to another, stamped with the sender's term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// Sender's term (for a pre-vote request: the term the sender would campaign in).
    pub term: u64,
    /// What the message says.
    pub body: MessageBody,
}

/// The message kinds of Raft plus pre-vote, ReadIndex and leadership transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// A (pre-)candidate asks for a vote.
    RequestVote {
        /// A pre-vote round: nobody changes state when answering it.
        pre_vote: bool,
        /// Candidate's last log index.
        last_log_index: u64,
        /// Candidate's last log term.
        last_log_term: u64,
        /// The campaign follows a leadership transfer: voters ignore their leader lease.
        leadership_transfer: bool,
    },
    /// Answer to a vote request.
    RequestVoteResponse {
        /// Answers a pre-vote request.
        pre_vote: bool,
        /// Vote granted.
        granted: bool,
    },
    /// The leader replicates entries following `(prev_log_index, prev_log_term)`.
    AppendEntries {
        /// Index of the entry before `entries`.
        prev_log_index: u64,
        /// Its term.
        prev_log_term: u64,
        /// Entries to append (may be empty).
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: u64,
    },
    /// Answer to AppendEntries or InstallSnapshot.
    AppendEntriesResponse {
        /// The log matched and the entries are durable.
        success: bool,
        /// On success the follower's match index; on rejection the rejected `prev_log_index`.
        index: u64,
        /// On rejection: the largest index at or below `prev_log_index` whose term is at
        /// most `prev_log_term` in the follower's log.
        hint_index: u64,
        /// On rejection: the term of the entry at `hint_index`.
        hint_term: u64,
    },
    /// Leader liveness and commit propagation; `sequence` confirms pending reads.
    Heartbeat {
        /// Commit index, capped at what the follower is known to hold.
        commit: u64,
        /// Heartbeat sequence number of the leader's term, or [`COMMIT_NOTICE`].
        sequence: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatResponse {
        /// The sequence number heard.
        sequence: u64,
    },
    /// A follower forwards a linearizable read request to the leader.
    ReadIndex {
        /// The follower's request context, echoed back.
        context: u64,
    },
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse {
        /// The request context.
        context: u64,
        /// The index to wait for before reading, or `None` if refused.
        index: Option<u64>,
    },
    /// Leadership transfer: the recipient starts an election at once.
    TimeoutNow,
    /// The leader sends a snapshot because the entries the follower needs are compacted.
    /// The core leaves `data` empty; the application attaches the snapshot's bytes.
    InstallSnapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The snapshot's contents.
        data: Bytes,
    },
}

impl MessageBody {
    /// A short name for traces.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::RequestVote { pre_vote: true, .. } => "PreVote",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { pre_vote: true, .. } => "PreVoteResponse",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat {
                sequence: COMMIT_NOTICE,
                ..
            } => "CommitNotice",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
        }
    }
}
