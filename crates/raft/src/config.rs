//! Every limit and timing of the core, in one validated place.

use crate::error::ConfigError;
use crate::types::NodeId;

/// How the leader answers `read_index` requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Confirm leadership with a heartbeat round to a quorum for every batch of reads
    /// (Raft thesis §6.4). Safe under any clock behaviour.
    Safe,
    /// Answer from the leader's lease when it holds one (thesis §6.4.1), else fall back to
    /// [`ReadMode::Safe`]. Requires `check_quorum`. Assumes no member's clock runs faster than
    /// the leader's by more than `lease_clock_drift_ticks` over one election timeout.
    LeaseBased,
}

/// Test-only switches that plant known Raft bugs, so the simulator can prove it catches them.
/// Production code must leave this at [`PlantedBug::None`]; `validate` accepts any value so
/// that the simulator's tests can turn one on.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlantedBug {
    /// No bug.
    #[default]
    None,
    /// Grant votes by comparing log length only (the "up to date" rule without the term).
    VoteByLogLength,
    /// Commit any entry replicated on a majority, whatever its term (ignores Figure 8).
    CommitByReplicaCount,
    /// Apply membership changes of several voters directly, without a joint configuration
    /// (two disjoint majorities can then decide).
    MembershipWithoutJoint,
}

/// Configuration of one Raft member.
#[derive(Clone, Debug)]
pub struct Config {
    /// This member's id; never zero.
    pub id: NodeId,
    /// Base election timeout in ticks. The actual timeout is drawn from
    /// `[election_ticks, 2 * election_ticks)` after every reset.
    pub election_ticks: u32,
    /// Ticks between leader heartbeats; must be smaller than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election (thesis §9.6), so a partitioned member
    /// that rejoins does not disrupt the cluster by bumping the term.
    pub pre_vote: bool,
    /// The leader steps down when it has not heard from a quorum within an election timeout,
    /// and followers that heard from a live leader recently ignore vote requests.
    pub check_quorum: bool,
    /// How reads are confirmed.
    pub read_mode: ReadMode,
    /// Safety margin subtracted from the lease, for clock drift between members.
    pub lease_clock_drift_ticks: u32,
    /// Seed of the member's random number generator (election timeouts).
    pub random_seed: u64,
    /// Maximum AppendEntries messages in flight to one follower in the replicate state.
    pub max_inflight_messages: usize,
    /// Maximum entry bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// Maximum entry bytes in one AppendEntries message (at least one entry is always sent).
    pub max_message_bytes: u64,
    /// Maximum bytes of proposals the leader holds uncommitted; beyond it proposals fail.
    pub max_uncommitted_bytes: u64,
    /// Maximum entry bytes handed to the application for applying in one `Ready`.
    pub max_apply_bytes: u64,
    /// Maximum read requests waiting for confirmation on the leader.
    pub max_pending_reads: usize,
    /// Ticks the leader waits for a follower to acknowledge a snapshot before it assumes
    /// the snapshot (or the answer) was lost and probes the follower again. The
    /// application can end the wait earlier with `RawNode::report_snapshot`.
    pub snapshot_timeout_ticks: u32,
    /// Test-only: plant a known bug. Leave at the default.
    #[doc(hidden)]
    pub planted_bug: PlantedBug,
}

impl Config {
    /// A configuration with the defaults Skiff uses (10-tick election timeout, 1-tick
    /// heartbeat, pre-vote and check-quorum on) for member `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::Safe,
            lease_clock_drift_ticks: 2,
            random_seed: id,
            max_inflight_messages: 256,
            max_inflight_bytes: 32 << 20,
            max_message_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_apply_bytes: 16 << 20,
            max_pending_reads: 65_536,
            snapshot_timeout_ticks: 100,
            planted_bug: PlantedBug::None,
        }
    }

    /// Checks every field; a core is only ever built from a validated config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.id == 0 {
            return invalid("id", "must not be zero");
        }
        if self.heartbeat_ticks == 0 {
            return invalid("heartbeat_ticks", "must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return invalid("election_ticks", "must be greater than heartbeat_ticks");
        }
        if self.election_ticks > 1 << 20 {
            return invalid("election_ticks", "must be at most 2^20");
        }
        if self.read_mode == ReadMode::LeaseBased && !self.check_quorum {
            return invalid("read_mode", "lease-based reads require check_quorum");
        }
        if self.read_mode == ReadMode::LeaseBased
            && self.lease_clock_drift_ticks >= self.election_ticks
        {
            return invalid(
                "lease_clock_drift_ticks",
                "must be smaller than election_ticks",
            );
        }
        if self.max_inflight_messages == 0 {
            return invalid("max_inflight_messages", "must be at least 1");
        }
        if self.max_inflight_bytes == 0 {
            return invalid("max_inflight_bytes", "must be at least 1");
        }
        if self.max_message_bytes == 0 {
            return invalid("max_message_bytes", "must be at least 1");
        }
        if self.max_uncommitted_bytes == 0 {
            return invalid("max_uncommitted_bytes", "must be at least 1");
        }
        if self.max_apply_bytes == 0 {
            return invalid("max_apply_bytes", "must be at least 1");
        }
        if self.max_pending_reads == 0 {
            return invalid("max_pending_reads", "must be at least 1");
        }
        if self.snapshot_timeout_ticks <= self.heartbeat_ticks {
            return invalid(
                "snapshot_timeout_ticks",
                "must be greater than heartbeat_ticks",
            );
        }
        Ok(())
    }
}
