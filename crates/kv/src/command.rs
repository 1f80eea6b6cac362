//! The log entry payload: `Command`, and what applying one answers: `Response`.
//!
//! # Exactly-once
//! A command may carry a `RequestId` (client id, sequence number). The store keeps, per client, the
//! last sequence number applied and its response, in a table bounded by `KvConfig::max_sessions`
//! (least recently used evicted). A retried command with the same sequence number gets the saved
//! response and changes nothing; an older one gets `KvError::StaleRequest`. Clients must number
//! their writes increasingly and wait for each answer before the next (one outstanding write), or
//! accept that only the newest is deduplicated.
//!
//! Without a request id, these are safe to retry: `Range`; `LeaseKeepAlive`, `LeasePromote`,
//! `ExpireLeases` (idempotent for the same time). Not safe: `Put` and `DeleteRange` (each application
//! makes a revision), `Txn` (compares may see the first application), `LeaseGrant`, `LeaseRevoke`
//! and `Compact` (the retry answers an error although the first succeeded).

use crate::error::KvError;
use crate::types::*;

/// Identifies a client's request for exactly-once application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestId {
    /// The client (session) ID, chosen uniquely by the server (e.g. member ID and a counter).
    pub client_id: u64,
    /// Increasing per client, from 1.
    pub sequence: u64,
}

/// One replicated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Set for requests that must apply at most once.
    pub request_id: Option<RequestId>,
    /// What to do.
    pub operation: Operation,
}

impl Command {
    /// A command without a request id.
    pub fn new(operation: Operation) -> Self {
        Command {
            request_id: None,
            operation,
        }
    }
}

/// The operations the state machine applies. Times (`now_ms`) are the leader's clock, in
/// milliseconds, put into the command when it is proposed; the store never reads a clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A read through the log (linearizable without ReadIndex); changes nothing.
    Range(RangeRequest),
    /// etcd Put.
    Put(PutRequest),
    /// etcd DeleteRange.
    DeleteRange(DeleteRangeRequest),
    /// etcd Txn.
    Txn(TxnRequest),
    /// etcd Compact.
    Compact(CompactionRequest),
    /// etcd LeaseGrant; the leader chooses `id` when the client sent 0.
    LeaseGrant {
        /// Non-zero lease ID.
        id: i64,
        /// TTL asked for, seconds (raised to the minimum).
        ttl_seconds: i64,
        /// Leader time of the grant.
        now_ms: i64,
    },
    /// etcd LeaseRevoke: deletes the attached keys, all at one revision.
    LeaseRevoke {
        /// The lease.
        id: i64,
    },
    /// etcd LeaseKeepAlive: the lease is renewed as of `now_ms`.
    LeaseKeepAlive {
        /// The lease.
        id: i64,
        /// Leader time of the renewal.
        now_ms: i64,
    },
    /// Revokes every lease expired at `now_ms` (at most `max_leases`, earliest deadline first), each at its
    /// own revision, as if the leader had proposed one revoke per lease.
    ExpireLeases {
        /// Leader time.
        now_ms: i64,
        /// Bound on the work of one command.
        max_leases: u32,
    },
    /// A new leader renews every lease as of its own time, so leases do not expire because of the
    /// old leader's clock or the election gap (etcd's lessor `Promote`).
    LeasePromote {
        /// Leader time.
        now_ms: i64,
    },
}

impl Operation {
    /// Stamps the leader's clock (`now_ms`) into the operations that carry one: lease grant,
    /// keep-alive, expiry and promotion. The proposing leader calls it; other operations are
    /// left as they are.
    pub fn set_leader_time(&mut self, now: i64) {
        match self {
            Operation::LeaseGrant { now_ms, .. }
            | Operation::LeaseKeepAlive { now_ms, .. }
            | Operation::ExpireLeases { now_ms, .. }
            | Operation::LeasePromote { now_ms } => *now_ms = now,
            Operation::Range(_)
            | Operation::Put(_)
            | Operation::DeleteRange(_)
            | Operation::Txn(_)
            | Operation::Compact(_)
            | Operation::LeaseRevoke { .. } => {}
        }
    }
}

/// The answer to a command, before the server adds the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The header revision: the store's revision after the command.
    pub revision: i64,
    /// The result.
    pub result: Result<ResponseBody, KvError>,
}

/// A successful result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// Of `Range`.
    Range(RangeResponse),
    /// Of `Put`.
    Put(PutResponse),
    /// Of `DeleteRange`.
    DeleteRange(DeleteRangeResponse),
    /// Of `Txn`.
    Txn(TxnResponse),
    /// Of `Compact`.
    Compact,
    /// Of `LeaseGrant`.
    LeaseGrant(LeaseGrantResponse),
    /// Of `LeaseRevoke`.
    LeaseRevoke,
    /// Of `LeaseKeepAlive`.
    LeaseKeepAlive(LeaseKeepAliveResponse),
    /// Of `ExpireLeases`: the leases revoked.
    ExpireLeases {
        /// Revoked lease IDs, in the order revoked.
        revoked: Vec<i64>,
    },
    /// Of `LeasePromote`.
    LeasePromote,
}

/// What one `apply` produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The answer for the client.
    pub response: Response,
    /// The watch events of the writes, in revision order (empty for reads, errors and retries).
    pub events: Vec<Event>,
}
