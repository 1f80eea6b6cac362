//! The Raft state machine of one member and its application-facing API.
//!
//! The application drives a [`RawNode`]: it calls [`RawNode::tick`] on a timer,
//! [`RawNode::step`] for every message received, [`RawNode::propose`],
//! [`RawNode::read_index`] and [`RawNode::transfer_leader`] for client requests. Whenever
//! [`RawNode::has_ready`] is true it takes a [`Ready`] and honours its contract (see there),
//! then reports back with [`RawNode::on_persisted`] and [`RawNode::on_applied`].
//!
//! Nothing here does I/O, reads a clock or uses OS randomness, so the same calls always
//! produce the same results.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{Config, PlantedBug, ReadMode};
use crate::error::{ConfigError, RaftError};
use crate::log::{EntrySource, RaftLog, SourceHandle};
use crate::membership::{
    decode_membership, decode_membership_context, encode_membership_with_context, plan_change,
    MembershipChange,
};
use crate::message::{Message, MessageBody, COMMIT_NOTICE};
use crate::progress::{Progress, ProgressState};
use crate::quorum::{self, VoteResult};
use crate::rng::Rng;
use crate::types::{Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta};

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Runs a pre-vote round; has not bumped its term.
    PreCandidate,
    /// Runs an election in its current term.
    Candidate,
    /// Leads its current term.
    Leader,
}

/// The answer to a [`RawNode::read_index`] request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context given to `read_index`.
    pub context: u64,
    /// Once the state machine has applied this index, a read of it is linearizable.
    /// `None` if the request was refused (leadership lost); retry elsewhere.
    pub index: Option<u64>,
}

/// The durable state a member starts from.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    /// Last persisted hard state.
    pub hard_state: HardState,
    /// The latest snapshot, if any; its membership replaces `membership`.
    pub snapshot: Option<SnapshotMeta>,
    /// The persisted entries following the snapshot (or from index 1).
    pub entries: Vec<Entry>,
    /// The cluster membership when there is no snapshot (fixed at bootstrap).
    pub membership: Membership,
    /// Index the application's state machine already reflects (e.g. the snapshot index).
    pub applied: u64,
}

/// What changed and must be acted on, in this order:
///
/// 1. Install `snapshot` (if any), then persist `hard_state` and append `entries` (the first
///    entry may overwrite a suffix of the stored log). One sync for all of it.
/// 2. `messages` may be sent at once, in parallel with step 1.
/// 3. `messages_after_persist` may be sent only after step 1 is durable, **and the writes of
///    every earlier Ready too** (a Ready without writes still waits for earlier ones).
/// 4. Apply `committed_entries` in order, then report with [`RawNode::on_applied`].
/// 5. Serve each read in `read_states` once the applied index reaches its index.
///
/// After step 1 is durable, report it with [`RawNode::on_persisted`] using
/// [`Ready::last_entry`]. Readies must be persisted in the order they were taken.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    /// Set if the role, leader or term changed since the previous Ready.
    pub soft_state: Option<SoftState>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to install before anything else.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// Entries to append durably.
    pub entries: Vec<Entry>,
    /// Messages that may be sent now.
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready's writes are durable.
    pub messages_after_persist: Vec<Message>,
    /// Committed, locally durable entries to apply. Committed membership changes come here
    /// as [`EntryKind::ConfigChange`] entries; [`crate::decode_membership`] gives the
    /// configuration each one put in force (it took effect in the core when appended).
    pub committed_entries: Vec<Entry>,
    /// Confirmed (or refused) linearizable reads.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// `(index, term)` of the last entry to persist, to pass to [`RawNode::on_persisted`].
    pub fn last_entry(&self) -> Option<(u64, u64)> {
        self.entries.last().map(|entry| (entry.index, entry.term))
    }
}

/// Volatile state the application may display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Current role.
    pub role: Role,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
}

/// A snapshot of the member's state for tests, metrics and the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This member.
    pub id: NodeId,
    /// Current term.
    pub term: u64,
    /// Vote in the current term.
    pub vote: Option<NodeId>,
    /// Current role.
    pub role: Role,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Applied index reported by the application.
    pub applied: u64,
    /// Last log index.
    pub last_index: u64,
    /// Last log term.
    pub last_term: u64,
    /// Highest locally durable index.
    pub persisted: u64,
    /// First index still held in the log.
    pub first_index: u64,
    /// Leader only: each member's match index.
    pub match_indexes: BTreeMap<NodeId, u64>,
    /// Leader only: the members heard from in this or the previous check-quorum round (an
    /// election timeout each), this leader included.
    pub recently_active: BTreeSet<NodeId>,
    /// The configuration in force (the last configuration entry in the log, committed or
    /// not, else the snapshot's).
    pub membership: Membership,
    /// Index of the last configuration entry in the log (0 if none after the snapshot).
    pub membership_index: u64,
}

/// Where a confirmed read must be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadOrigin {
    Local { context: u64 },
    Remote { node: NodeId, context: u64 },
}

#[derive(Clone, Copy, Debug)]
struct PendingRead {
    /// The heartbeat round that confirms it.
    sequence: u64,
    /// The commit index when the read arrived.
    index: u64,
    origin: ReadOrigin,
}

/// Upper bound on remembered heartbeat send times (for leases).
const MAX_HEARTBEAT_RECORDS: usize = 4096;

/// The Raft state machine of one member.
#[derive(Debug)]
pub struct RawNode {
    config: Config,
    id: NodeId,
    term: u64,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// Set by [`RawNode::release_applied_entries`]: where released entries are read back,
    /// and how many applied entries stay in memory.
    entry_source: Option<(SourceHandle, u64)>,
    /// The configuration in force: the last entry of `config_entries`, else `base_membership`.
    membership: Membership,
    /// The configuration in force at the snapshot index (or at bootstrap).
    base_membership: Membership,
    /// Every configuration entry the log holds after the snapshot, by index. Truncating an
    /// uncommitted one reverts to the previous one.
    config_entries: BTreeMap<u64, Membership>,
    snapshot: Option<SnapshotMeta>,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    rng: Rng,
    now_ticks: u64,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    /// Just started: behave as if a leader lease might still hold until the first timeout.
    boot_guard: bool,
    transfer_target: Option<NodeId>,
    transfer_elapsed: u32,
    /// A TimeoutNow was sent this term: the lease no longer protects reads.
    lease_revoked: bool,
    lease_until_ticks: u64,
    /// Index of this leader's no-op entry.
    term_start_index: u64,
    uncommitted_bytes: u64,
    heartbeat_sequence: u64,
    heartbeat_sent_ticks: VecDeque<(u64, u64)>,
    pending_reads: VecDeque<PendingRead>,
    reads_awaiting_commit: VecDeque<ReadOrigin>,
    read_heartbeat_needed: bool,
    broadcast_needed: bool,
    commit_changed: bool,
    messages: Vec<Message>,
    messages_after_persist: Vec<Message>,
    read_states: Vec<ReadState>,
    pending_snapshot: Option<(SnapshotMeta, Bytes)>,
    reported_soft_state: SoftState,
    reported_hard_state: HardState,
}

impl RawNode {
    /// Builds a member from a validated config and its durable state. Entries up to the
    /// snapshot's index (a tail the store kept for slow followers) are dropped.
    pub fn new(config: Config, mut initial: InitialState) -> Result<RawNode, ConfigError> {
        config.validate()?;
        if let Some(meta) = &initial.snapshot {
            let behind = initial
                .entries
                .iter()
                .take_while(|entry| entry.index <= meta.index)
                .count();
            if let Some(last) = initial.entries[..behind].last() {
                if last.index == meta.index && last.term != meta.term {
                    return Err(ConfigError::InitialState(format!(
                        "entry {} has term {} but the snapshot at it term {}",
                        last.index, last.term, meta.term
                    )));
                }
            }
            initial.entries.drain(..behind);
        }
        let (snapshot_index, snapshot_term, membership) = match &initial.snapshot {
            Some(meta) => (meta.index, meta.term, meta.membership.clone()),
            None => (0, 0, initial.membership.clone()),
        };
        if membership.voters.is_empty() {
            return Err(ConfigError::InitialState("no voters".into()));
        }
        let base_membership = membership;
        let config_entries: BTreeMap<u64, Membership> = initial
            .entries
            .iter()
            .filter_map(|entry| Some((entry.index, config_of(entry)?)))
            .collect();
        let membership = config_entries
            .values()
            .next_back()
            .unwrap_or(&base_membership)
            .clone();
        for (offset, entry) in initial.entries.iter().enumerate() {
            if entry.index != snapshot_index + 1 + offset as u64 {
                return Err(ConfigError::InitialState(format!(
                    "entry {} follows snapshot {} at offset {}",
                    entry.index, snapshot_index, offset
                )));
            }
        }
        let last_index = snapshot_index + initial.entries.len() as u64;
        let last_term = initial
            .entries
            .last()
            .map_or(snapshot_term, |entry| entry.term);
        if initial.applied > last_index || initial.applied < snapshot_index {
            return Err(ConfigError::InitialState(format!(
                "applied {} outside [{}, {}]",
                initial.applied, snapshot_index, last_index
            )));
        }
        let mut hard_state = initial.hard_state;
        if last_term > hard_state.term {
            // A torn write may persist entries without the hard state that came with them.
            hard_state.term = last_term;
            hard_state.vote = None;
        }
        let commit = hard_state.commit.min(last_index).max(initial.applied);
        let mut log = RaftLog::restore(snapshot_index, snapshot_term, initial.entries, commit);
        if initial.applied > snapshot_index {
            log.skip_applied(initial.applied);
        }
        let id = config.id;
        let mut rng = Rng::new(config.random_seed);
        let randomized_election_ticks = rng.range(
            config.election_ticks as u64,
            2 * config.election_ticks as u64,
        ) as u32;
        let soft_state = SoftState {
            role: Role::Follower,
            leader: None,
            term: hard_state.term,
        };
        let node = RawNode {
            id,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            entry_source: None,
            membership,
            base_membership,
            config_entries,
            snapshot: initial.snapshot,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            rng,
            now_ticks: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks,
            // Only leases need it: a member that restarts quickly must not help elect a
            // new leader while an old leader may still serve reads from its lease.
            boot_guard: config.read_mode == ReadMode::LeaseBased,
            transfer_target: None,
            transfer_elapsed: 0,
            lease_revoked: false,
            lease_until_ticks: 0,
            term_start_index: 0,
            uncommitted_bytes: 0,
            heartbeat_sequence: 0,
            heartbeat_sent_ticks: VecDeque::new(),
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: VecDeque::new(),
            read_heartbeat_needed: false,
            broadcast_needed: false,
            commit_changed: false,
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            read_states: Vec::new(),
            pending_snapshot: None,
            reported_soft_state: soft_state,
            reported_hard_state: HardState {
                term: hard_state.term,
                vote: hard_state.vote,
                commit,
            },
            config,
        };
        node.check_invariants();
        Ok(node)
    }

    // ----- application API -------------------------------------------------------------

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
        self.check_invariants();
    }

    /// Handles a message from another member. Messages not addressed to this member are
    /// ignored. Messages from members outside this member's configuration are handled (a
    /// member may lag behind a configuration that added the sender, Raft thesis §4.1), but
    /// such a sender's vote request does not raise the term unless it is granted.
    pub fn step(&mut self, message: Message) {
        if message.to != self.id || message.from == self.id {
            return;
        }
        self.step_message(message);
        self.check_invariants();
    }

    /// Starts an election now, as if the election timeout had elapsed (with a pre-vote
    /// round if configured). Ignored on the leader and on members that may not campaign
    /// (learners, removed members; see [`RawNode::can_campaign`]).
    pub fn campaign(&mut self) {
        if self.role != Role::Leader && self.can_campaign() {
            self.boot_guard = false;
            self.start_campaign(self.config.pre_vote, false);
        }
        self.check_invariants();
    }

    /// Proposes a command. On the leader it is appended to the log and its `(index, term)`
    /// returned; the command is committed once that entry is applied with that term.
    pub fn propose(&mut self, data: Bytes) -> Result<(u64, u64), RaftError> {
        self.propose_entry(EntryKind::Normal, data)
    }

    /// Requests a linearizable read. The answer arrives as a [`ReadState`] with this
    /// `context`; the application picks contexts (unique among pending requests).
    pub fn read_index(&mut self, context: u64) -> Result<(), RaftError> {
        let result = match self.role {
            Role::Leader => self.register_read(ReadOrigin::Local { context }),
            _ => match self.known_leader() {
                Some(leader) => {
                    self.send(leader, MessageBody::ReadIndex { context });
                    Ok(())
                }
                None => Err(RaftError::NotLeader { leader: None }),
            },
        };
        self.check_invariants();
        result
    }

    /// Proposes a membership change (on the leader). The configuration it leads to is
    /// appended as a [`EntryKind::ConfigChange`] entry and takes effect on each member as
    /// soon as that member appends it; its `(index, term)` is returned. A single step that
    /// changes at most one voter is a simple transition; anything else enters a joint
    /// configuration (decisions need majorities of the old and the new voters) which the
    /// leader leaves on its own once the joint entry commits.
    ///
    /// Refused without any change while another change is uncommitted or its joint
    /// configuration is not left yet ([`RaftError::MembershipChangePending`]), when no voter
    /// would remain ([`RaftError::NoVotersLeft`]) and when a step does not apply
    /// ([`RaftError::InvalidMembershipChange`]).
    pub fn propose_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(u64, u64), RaftError> {
        let result = self.try_propose_membership(&change);
        self.check_invariants();
        result
    }

    fn try_propose_membership(
        &mut self,
        change: &MembershipChange,
    ) -> Result<(u64, u64), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.known_leader(),
            });
        }
        if self.transfer_target.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        if self.membership_pending() || self.log.term(self.log.committed()) != Some(self.term) {
            // Until an entry of this term commits, the log may hold a configuration entry
            // of an earlier leader that is not known committed: changing the configuration
            // on top of it could let two disjoint majorities decide (the single-server
            // change bug, raft-dev 2015). The new leader's no-op clears this quickly.
            return Err(RaftError::MembershipChangePending);
        }
        let mut next = plan_change(&self.membership, change)?;
        if self.config.planted_bug == PlantedBug::MembershipWithoutJoint {
            next.voters_outgoing.clear();
        }
        self.propose_entry(
            EntryKind::ConfigChange,
            encode_membership_with_context(&next, &change.context),
        )
    }

    /// True if this member may start elections: it votes in the configuration in force,
    /// or in the last one known committed while a newer one is not (Raft thesis §4.2.2: a
    /// member removed by an uncommitted entry may still be needed to commit it, e.g. a
    /// leader that removed itself and lost leadership before the commit). Its own vote
    /// counts only where the configuration in force makes it a voter. Learners never
    /// campaign, and a member that knows its removal is committed never again.
    pub fn can_campaign(&self) -> bool {
        self.membership.is_voter(self.id)
            || (self.membership_pending()
                && self
                    .membership_at(self.log.committed())
                    .is_some_and(|committed| committed.is_voter(self.id)))
    }

    /// The leader to direct requests to. None on a member outside its own committed
    /// configuration (removed, or a spare not added yet): nobody replicates to it, so
    /// whatever leader it remembers may be long gone, and reads through it would wait for
    /// entries it will never receive.
    fn known_leader(&self) -> Option<NodeId> {
        if !self.membership.contains(self.id) && !self.membership_pending() {
            return None;
        }
        self.leader
    }

    /// True if the log holds a configuration entry that is not committed yet.
    fn membership_pending(&self) -> bool {
        self.membership_index() > self.log.committed()
    }

    /// Index of the last configuration entry in the log (0 if none after the snapshot).
    fn membership_index(&self) -> u64 {
        self.config_entries.keys().next_back().copied().unwrap_or(0)
    }

    /// Asks the leader to hand leadership to `target` (Raft thesis §3.10): the target is
    /// brought up to date, then told to campaign at once. Proposals are refused meanwhile;
    /// the transfer is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.known_leader(),
            });
        }
        if target == self.id {
            return Err(RaftError::TransferToSelf);
        }
        if !self.membership.voters.contains(&target) {
            // Learners and outgoing voters of a joint configuration cannot take over.
            return Err(RaftError::NotAVoter(target));
        }
        if self.transfer_target == Some(target) {
            return Ok(());
        }
        self.transfer_target = Some(target);
        self.transfer_elapsed = 0;
        if self.progress[&target].match_index == self.log.last_index() {
            self.send_timeout_now(target);
        } else {
            self.broadcast_needed = true;
        }
        self.check_invariants();
        Ok(())
    }

    /// Reports that the entries of a Ready up to `(index, term)` are durable.
    pub fn on_persisted(&mut self, index: u64, term: u64) {
        if self.log.persisted_to(index, term) && self.role == Role::Leader {
            let persisted = self.log.persisted();
            let own = self
                .progress
                .get_mut(&self.id)
                .expect("leader tracks itself");
            own.maybe_update(persisted);
            self.maybe_commit();
        }
        self.check_invariants();
    }

    /// Reports that committed entries up to `index` are applied.
    pub fn on_applied(&mut self, index: u64) {
        self.log.applied_to(index);
        self.release_entries();
    }

    /// From now on, keeps in memory only the last `keep` applied entries (and every entry
    /// not yet applied): older ones are released, and read back from `source` (this
    /// member's durable log) when a lagging member needs them. Without this call the core
    /// holds every entry after its last snapshot, which is most of a member's memory when
    /// snapshots are far apart.
    pub fn release_applied_entries(&mut self, source: Arc<dyn EntrySource>, keep: u64) {
        self.entry_source = Some((SourceHandle(source), keep));
        self.release_entries();
        self.check_invariants();
    }

    fn release_entries(&mut self) {
        if let Some((_, keep)) = &self.entry_source {
            self.log.release(self.log.applied().saturating_sub(*keep));
        }
    }

    /// The entry at `index` whether held in memory or released (then read back from the
    /// entry source); `None` if compacted, beyond the log, or unreadable now. For checks
    /// and tools: it copies the entry.
    pub fn read_entry(&self, index: u64) -> Option<Entry> {
        if let Some(entry) = self.log.entry(index) {
            return Some(entry.clone());
        }
        if index <= self.log.snapshot_index() || index > self.log.last_index() {
            return None;
        }
        let fetched = self.log.fetch(self.source(), index, index + 1, 0)?;
        fetched.into_iter().next()
    }

    fn source(&self) -> Option<&dyn EntrySource> {
        self.entry_source
            .as_ref()
            .map(|(source, _)| &*source.0 as &dyn EntrySource)
    }

    /// Reports that `to` could not be reached, so pipelined messages are probably lost.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if self.role == Role::Leader {
            if let Some(progress) = self.progress.get_mut(&to) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
            }
        }
    }

    /// Reports the outcome of sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(progress) = self.progress.get_mut(&to) {
            if let ProgressState::Snapshot { .. } = progress.state {
                if !success {
                    progress.become_probe();
                    self.broadcast_needed = true;
                }
            }
        }
    }

    /// Records that the application took a snapshot covering the log up to `index`
    /// (which must be applied) and drops those entries from memory.
    pub fn compact(&mut self, index: u64) {
        self.compact_keeping(index, 0);
    }

    /// Records that the application took a snapshot covering the log up to `index` (which
    /// must be applied), and drops from memory the entries up to `index - keep`: a follower
    /// at most `keep` entries behind the snapshot still gets entries instead of the
    /// snapshot (etcd's `--snapshot-catchup-entries`). Followers that need compacted
    /// entries are sent this snapshot.
    pub fn compact_keeping(&mut self, index: u64, keep: u64) {
        let current = self
            .snapshot
            .as_ref()
            .map_or(self.log.snapshot_index(), |meta| meta.index);
        if index <= current {
            return;
        }
        let term = self.log.term(index).expect("compacting a held entry");
        let membership = self
            .membership_at(index)
            .expect("a held entry's configuration is known");
        self.snapshot = Some(SnapshotMeta {
            index,
            term,
            membership,
        });
        let through = index.saturating_sub(keep);
        if through > self.log.snapshot_index() {
            let base = self
                .membership_at(through)
                .expect("a held entry's configuration is known");
            self.log.compact(through);
            self.config_entries = self.config_entries.split_off(&(through + 1));
            self.base_membership = base;
        }
        self.check_invariants();
    }

    /// True if [`RawNode::ready`] has something to hand out.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || !self.read_states.is_empty()
            || self.pending_snapshot.is_some()
            || self.log.has_unpersisted()
            || self.log.has_to_apply()
            || self.hard_state() != self.reported_hard_state
            || self.soft_state_now() != self.reported_soft_state
            || (self.role == Role::Leader
                && (self.broadcast_needed || self.commit_changed || self.read_heartbeat_needed))
    }

    /// Takes everything that is ready; see [`Ready`] for what to do with it.
    pub fn ready(&mut self) -> Ready {
        self.flush();
        let soft_state = self.soft_state_now();
        let hard_state = self.hard_state();
        let ready = Ready {
            soft_state: (soft_state != self.reported_soft_state).then_some(soft_state),
            hard_state: (hard_state != self.reported_hard_state).then_some(hard_state),
            snapshot: self.pending_snapshot.take(),
            entries: self.log.take_unpersisted(),
            messages: std::mem::take(&mut self.messages),
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            committed_entries: self.log.take_to_apply(self.config.max_apply_bytes),
            read_states: std::mem::take(&mut self.read_states),
        };
        self.reported_soft_state = soft_state;
        self.reported_hard_state = hard_state;
        self.check_invariants();
        ready
    }

    /// The member's current state.
    pub fn status(&self) -> Status {
        let leader = self.role == Role::Leader;
        let match_indexes = if leader {
            self.progress
                .iter()
                .map(|(id, progress)| (*id, progress.match_index))
                .collect()
        } else {
            BTreeMap::new()
        };
        let recently_active = if leader {
            self.progress
                .iter()
                .filter(|(id, progress)| {
                    **id == self.id || progress.recent_active || progress.active_last_round
                })
                .map(|(id, _)| *id)
                .collect()
        } else {
            BTreeSet::new()
        };
        Status {
            id: self.id,
            term: self.term,
            vote: self.vote,
            role: self.role,
            leader: self.leader,
            commit: self.log.committed(),
            applied: self.log.applied(),
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            persisted: self.log.persisted(),
            first_index: self.log.first_index(),
            match_indexes,
            recently_active,
            membership: self.membership.clone(),
            membership_index: self.membership_index(),
        }
    }

    /// The configuration in force at `index` (what a snapshot up to `index` must carry), for
    /// any index from the snapshot on; `None` below the snapshot.
    pub fn membership_at(&self, index: u64) -> Option<Membership> {
        if index < self.log.snapshot_index() {
            return None;
        }
        Some(
            self.config_entries
                .range(..=index)
                .next_back()
                .map_or(&self.base_membership, |(_, membership)| membership)
                .clone(),
        )
    }

    /// The latest snapshot this member knows of (taken locally or installed).
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The entry at `index`, if held in memory.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The term of the entry at `index`, if known.
    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// The cluster membership in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// This member's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// True if a leader lease currently allows answering reads without a heartbeat round.
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && self.config.read_mode == ReadMode::LeaseBased
            && !self.lease_revoked
            && self.now_ticks < self.lease_until_ticks
    }

    /// The role, leader and term: the cheap part of [`RawNode::status`].
    pub fn soft_state(&self) -> SoftState {
        self.soft_state_now()
    }

    /// The commit index.
    pub fn commit_index(&self) -> u64 {
        self.log.committed()
    }

    // ----- state transitions -----------------------------------------------------------

    fn soft_state_now(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    fn reset(&mut self, term: u64) {
        if term != self.term {
            assert!(
                term > self.term,
                "term goes back from {} to {term}",
                self.term
            );
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_ticks = self.rng.range(
            self.config.election_ticks as u64,
            2 * self.config.election_ticks as u64,
        ) as u32;
        self.votes.clear();
        self.transfer_target = None;
        self.transfer_elapsed = 0;
        self.lease_revoked = false;
        self.lease_until_ticks = 0;
        self.fail_pending_reads();
    }

    fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        // Legal from every role, as long as the term does not go back.
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.boot_guard = false;
        }
    }

    fn become_pre_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a pre-candidate"
        );
        // A pre-candidate keeps its term and vote; only the round's state resets.
        let term = self.term;
        self.reset(term);
        self.role = Role::PreCandidate;
        self.votes.insert(self.id, true);
    }

    fn become_candidate(&mut self) {
        assert_ne!(
            self.role,
            Role::Leader,
            "a leader cannot become a candidate"
        );
        let term = self.term + 1;
        self.reset(term);
        self.role = Role::Candidate;
        self.vote = Some(self.id);
        self.votes.insert(self.id, true);
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate can become leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.boot_guard = false;
        let last_index = self.log.last_index();
        let mut members = self.membership.members();
        members.insert(self.id);
        self.progress = members
            .into_iter()
            .map(|id| {
                let mut progress = Progress::new(
                    last_index,
                    self.config.max_inflight_messages,
                    self.config.max_inflight_bytes,
                );
                // A new leader assumes everyone is alive for its first check-quorum round.
                progress.recent_active = true;
                (id, progress)
            })
            .collect();
        let persisted = self.log.persisted();
        let own = self.progress.get_mut(&self.id).expect("leader is a member");
        own.maybe_update(persisted);
        own.become_replicate();
        self.heartbeat_sequence = 0;
        self.heartbeat_sent_ticks.clear();
        self.uncommitted_bytes = 0;
        // The no-op lets entries of earlier terms commit (Raft §5.4.2, Figure 8).
        self.term_start_index = last_index + 1;
        self.log.append(vec![Entry {
            term,
            index: last_index + 1,
            kind: EntryKind::Noop,
            data: Bytes::new(),
        }]);
        self.broadcast_needed = true;
        // A joint configuration known committed is left at once.
        self.after_leader_commit();
        // A single-member cluster commits as soon as its own write is durable.
        self.maybe_commit();
    }

    fn start_campaign(&mut self, pre_vote: bool, leadership_transfer: bool) {
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        match quorum::vote_result(&self.membership, &self.votes) {
            VoteResult::Won => {
                if pre_vote {
                    self.start_campaign(false, false);
                } else {
                    self.become_leader();
                }
                return;
            }
            VoteResult::Lost => unreachable!("a member's own vote cannot lose"),
            VoteResult::Pending => {}
        }
        let term = if pre_vote { self.term + 1 } else { self.term };
        let body = MessageBody::RequestVote {
            pre_vote,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        };
        let voters: Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .chain(self.membership.voters_outgoing.iter())
            .copied()
            .filter(|id| *id != self.id)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for to in voters {
            let message = Message {
                from: self.id,
                to,
                term,
                body: body.clone(),
            };
            // A real candidacy rests on the persisted vote for itself.
            if pre_vote {
                self.messages.push(message);
            } else {
                self.messages_after_persist.push(message);
            }
        }
    }

    // ----- ticks -----------------------------------------------------------------------

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.boot_guard = false;
        }
        if self.election_elapsed >= self.randomized_election_ticks && self.can_campaign() {
            self.election_elapsed = 0;
            self.start_campaign(self.config.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum {
                let active = |id: NodeId| id == self.id || self.progress[&id].recent_active;
                if !quorum::is_quorum(&self.membership, active) {
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                let own = self.id;
                for (id, progress) in self.progress.iter_mut() {
                    progress.active_last_round = progress.recent_active;
                    progress.recent_active = *id == own;
                }
            }
        }
        let snapshot_timeout_ticks = self.config.snapshot_timeout_ticks;
        for progress in self.progress.values_mut() {
            if let ProgressState::Snapshot { .. } = progress.state {
                progress.snapshot_elapsed_ticks += 1;
                if progress.snapshot_elapsed_ticks >= snapshot_timeout_ticks {
                    progress.become_probe();
                    self.broadcast_needed = true;
                }
            }
        }
        if self.transfer_target.is_some() {
            self.transfer_elapsed += 1;
            if self.transfer_elapsed >= self.config.election_ticks {
                self.transfer_target = None;
                self.transfer_elapsed = 0;
            }
        }
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    // ----- messages --------------------------------------------------------------------

    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && (self.leader.is_some() || self.boot_guard)
            && self.election_elapsed < self.config.election_ticks
    }

    fn step_message(&mut self, message: Message) {
        if message.term > self.term
            && !self.membership.contains(message.from)
            && !matches!(
                message.body,
                MessageBody::RequestVote { .. }
                    | MessageBody::AppendEntries { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::InstallSnapshot { .. }
            )
        {
            // An answer (or a request to a leader) from outside the configuration with a
            // higher term: a removed member that does not know it. Its term must not depose
            // anyone; dropping the message is as safe as losing it.
            return;
        }
        if message.term > self.term {
            if let MessageBody::RequestVote {
                leadership_transfer,
                ..
            } = message.body
            {
                if !leadership_transfer && self.in_lease() {
                    // Leader stickiness: a live leader exists, ignore the disruptor.
                    return;
                }
            }
            if let MessageBody::RequestVote {
                pre_vote: false,
                last_log_index,
                last_log_term,
                ..
            } = message.body
            {
                if !self.membership.is_voter(message.from)
                    && !self.log.is_up_to_date(last_log_index, last_log_term)
                    && self.leader.is_some()
                {
                    // A member removed without learning it campaigns with an old log:
                    // refuse without adopting its term, so it cannot depose the leader
                    // this member follows or is (a refusal needs no term change; a grant
                    // would). Without a leader there is nobody to depose, and the term is
                    // adopted as usual: otherwise a member that still counts the removed
                    // one as a voter keeps moving to its terms, and this member's
                    // campaigns, always a term behind, never get that member's vote.
                    self.send(
                        message.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote: false,
                            granted: false,
                        },
                    );
                    return;
                }
            }
            match message.body {
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(message.term, Some(message.from));
                }
                _ => self.become_follower(message.term, None),
            }
        } else if message.term < self.term {
            match message.body {
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    // A stale leader: tell it our term so it steps down. Without this, a
                    // member that rejoins with a higher term could wait forever — with
                    // pre-vote or check-quorum, or (any options) when it cannot campaign:
                    // a learner, or a member whose vote requests others refuse without
                    // adopting its term because they no longer count it as a voter.
                    self.send(
                        message.from,
                        MessageBody::AppendEntriesResponse {
                            success: false,
                            index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageBody::RequestVote { pre_vote, .. } => {
                    // Refused, with our term (as Raft's RequestVote reply carries it). A
                    // candidate of a real vote steps up to that term: otherwise it can stay
                    // behind for good while a removed member that does not know it keeps
                    // raising the terms of the others, and the one whose vote it needs
                    // cannot campaign (a learner being promoted whose log lacks the
                    // promotion), so nobody tells it.
                    self.send(
                        message.from,
                        MessageBody::RequestVoteResponse {
                            pre_vote,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return;
        }

        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::RequestVote {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote_request(from, term, pre_vote, last_log_index, last_log_term),
            MessageBody::RequestVoteResponse { pre_vote, granted } => {
                self.handle_vote_response(from, term, pre_vote, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            } => {
                self.follow(from);
                self.handle_append_entries(from, prev_log_index, prev_log_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, sequence } => {
                self.follow(from);
                self.log.commit_to(commit.min(self.log.last_index()));
                if sequence != COMMIT_NOTICE {
                    self.send(from, MessageBody::HeartbeatResponse { sequence });
                }
            }
            MessageBody::InstallSnapshot { meta, data } => {
                self.follow(from);
                self.handle_install_snapshot(from, meta, data);
            }
            MessageBody::AppendEntriesResponse {
                success,
                index,
                hint_index,
                hint_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(from, success, index, hint_index, hint_term);
                }
            }
            MessageBody::HeartbeatResponse { sequence } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, sequence);
                }
            }
            MessageBody::ReadIndex { context } => {
                if self.role == Role::Leader {
                    let origin = ReadOrigin::Remote {
                        node: from,
                        context,
                    };
                    if self.register_read(origin).is_err() {
                        self.answer_read(origin, None);
                    }
                } else {
                    self.send(
                        from,
                        MessageBody::ReadIndexResponse {
                            context,
                            index: None,
                        },
                    );
                }
            }
            MessageBody::ReadIndexResponse { context, index } => {
                if self.role == Role::Follower && self.leader == Some(from) {
                    self.read_states.push(ReadState { context, index });
                }
            }
            MessageBody::TimeoutNow => {
                if self.role != Role::Leader && self.leader == Some(from) && self.can_campaign() {
                    self.start_campaign(false, true);
                }
            }
        }
    }

    /// Accepts `leader` as the leader of the current term.
    fn follow(&mut self, leader: NodeId) {
        assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
        if self.role != Role::Follower || self.leader != Some(leader) {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.election_elapsed = 0;
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: u64,
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: u64,
    ) {
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (pre_vote && term > self.term);
        let up_to_date = match self.config.planted_bug {
            PlantedBug::VoteByLogLength => last_log_index >= self.log.last_index(),
            _ => self.log.is_up_to_date(last_log_index, last_log_term),
        };
        // Two members that time out together and pre-campaign for the same term with equal
        // logs would both pass the pre-vote and then split the real vote, costing another
        // election timeout. A pre-candidate therefore yields only to a higher id: of
        // simultaneous pre-candidates with equal logs exactly one (the highest) can proceed.
        // Pre-votes change no state, so this affects liveness only.
        let yields = !(pre_vote
            && self.role == Role::PreCandidate
            && term == self.term + 1
            && from < self.id
            && last_log_term == self.log.last_term()
            && last_log_index == self.log.last_index());
        let granted = can_vote && up_to_date && yields;
        let response = Message {
            from: self.id,
            to: from,
            // A granted pre-vote answers in the term the candidate would use.
            term: if granted && pre_vote { term } else { self.term },
            body: MessageBody::RequestVoteResponse { pre_vote, granted },
        };
        if granted && !pre_vote {
            self.election_elapsed = 0;
            self.vote = Some(from);
            self.messages_after_persist.push(response);
        } else {
            self.messages.push(response);
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, term: u64, pre_vote: bool, granted: bool) {
        let counts = match self.role {
            Role::PreCandidate => pre_vote && (term == self.term + 1 || !granted),
            Role::Candidate => !pre_vote && term == self.term,
            _ => false,
        };
        if !counts {
            return;
        }
        self.votes.insert(from, granted);
        match quorum::vote_result(&self.membership, &self.votes) {
            VoteResult::Won => {
                if pre_vote {
                    self.start_campaign(false, false);
                } else {
                    self.become_leader();
                }
            }
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: u64,
        prev_log_term: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        let committed = self.log.committed();
        if prev_log_index < committed {
            // Everything up to our commit index matches the leader's log already.
            self.send_after_persist(
                from,
                MessageBody::AppendEntriesResponse {
                    success: true,
                    index: committed,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
            return;
        }
        if self.log.matches(prev_log_index, prev_log_term) {
            let configs: Vec<(u64, Membership)> = entries
                .iter()
                .filter_map(|entry| Some((entry.index, config_of(entry)?)))
                .collect();
            let last_new = self.log.merge(prev_log_index, entries);
            // Entries after `prev_log_index` may have been replaced (and, on a conflict,
            // everything after them dropped): forget the configurations they carried,
            // then take those of the message. A truncated uncommitted configuration
            // entry thereby reverts to the previous configuration.
            let last_index = self.log.last_index();
            self.config_entries.retain(|index, _| {
                *index <= prev_log_index || (*index > last_new && *index <= last_index)
            });
            self.config_entries.extend(
                configs
                    .into_iter()
                    .filter(|(index, _)| *index > self.log.snapshot_index()),
            );
            self.refresh_membership();
            self.log.commit_to(commit.min(last_new));
            self.send_after_persist(
                from,
                MessageBody::AppendEntriesResponse {
                    success: true,
                    index: last_new,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
        } else {
            let hint_index = self
                .log
                .find_conflict_by_term(prev_log_index.min(self.log.last_index()), prev_log_term);
            let hint_term = self.log.term(hint_index).unwrap_or(0);
            self.send(
                from,
                MessageBody::AppendEntriesResponse {
                    success: false,
                    index: prev_log_index,
                    hint_index,
                    hint_term,
                },
            );
        }
    }

    fn handle_install_snapshot(&mut self, from: NodeId, meta: SnapshotMeta, data: Bytes) {
        let committed = self.log.committed();
        let index = if meta.index <= committed {
            committed
        } else if self.log.matches(meta.index, meta.term) {
            self.log.commit_to(meta.index);
            meta.index
        } else {
            self.log.reset_to_snapshot(meta.index, meta.term);
            self.base_membership = meta.membership.clone();
            self.config_entries.clear();
            self.refresh_membership();
            self.snapshot = Some(meta.clone());
            let index = meta.index;
            self.pending_snapshot = Some((meta, data));
            index
        };
        self.send_after_persist(
            from,
            MessageBody::AppendEntriesResponse {
                success: true,
                index,
                hint_index: 0,
                hint_term: 0,
            },
        );
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    ) {
        let hint_next = if success {
            0
        } else {
            self.log.find_conflict_by_term(hint_index, hint_term) + 1
        };
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if !success {
            if progress.maybe_decrease(index, hint_next) {
                self.broadcast_needed = true;
            }
            return;
        }
        if !progress.maybe_update(index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot { pending_index } if progress.match_index >= pending_index => {
                progress.become_replicate()
            }
            ProgressState::Snapshot { .. } => {}
            ProgressState::Replicate => progress.inflights.free_to(index),
        }
        let caught_up = progress.match_index == last_index;
        self.broadcast_needed = true;
        self.maybe_commit();
        if self.transfer_target == Some(from) && caught_up {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, sequence: u64) {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.acked_heartbeat = progress.acked_heartbeat.max(sequence);
        match progress.state {
            ProgressState::Probe => {
                progress.probe_sent = false;
                self.broadcast_needed = true;
            }
            ProgressState::Replicate => {
                let stalled = !progress.inflights.is_empty()
                    && progress.match_index < last_index
                    && progress.match_index == progress.match_at_last_heartbeat;
                progress.match_at_last_heartbeat = progress.match_index;
                if stalled {
                    // Nothing was acknowledged for a whole heartbeat round: the tail of
                    // the pipeline may be lost. An empty append at its end makes the
                    // follower either confirm or reject, which restarts probing.
                    self.send_append(from, true, true);
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
        self.confirm_reads();
    }

    // ----- leader: replication and commit ----------------------------------------------

    fn propose_entry(&mut self, kind: EntryKind, data: Bytes) -> Result<(u64, u64), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.known_leader(),
            });
        }
        if self.transfer_target.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            kind,
            data,
        };
        let size = entry.size_bytes();
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.config.max_uncommitted_bytes
        {
            return Err(RaftError::UncommittedLimit {
                uncommitted_bytes: self.uncommitted_bytes,
                proposal_bytes: size,
                limit_bytes: self.config.max_uncommitted_bytes,
            });
        }
        self.uncommitted_bytes += size;
        self.append_own(entry);
        Ok((index, self.term))
    }

    /// Appends an entry of this leader's term and puts a configuration entry in force.
    fn append_own(&mut self, entry: Entry) {
        let config = config_of(&entry);
        let index = entry.index;
        self.log.append(vec![entry]);
        if let Some(membership) = config {
            self.config_entries.insert(index, membership);
            self.refresh_membership();
        }
        self.broadcast_needed = true;
    }

    /// Recomputes the configuration in force from the configuration entries held, and
    /// adapts to a change: a leader starts tracking new members (removed ones keep being
    /// replicated to until the change commits, so they learn of their removal), drops a
    /// transfer to a member that can no longer lead, and gives up its lease (the quorum
    /// that granted it may not be one any more).
    fn refresh_membership(&mut self) {
        let current = self
            .config_entries
            .values()
            .next_back()
            .unwrap_or(&self.base_membership);
        if *current == self.membership {
            return;
        }
        self.membership = current.clone();
        if self.role != Role::Leader {
            return;
        }
        let last_index = self.log.last_index();
        for id in self.membership.members() {
            self.progress.entry(id).or_insert_with(|| {
                let mut progress = Progress::new(
                    last_index,
                    self.config.max_inflight_messages,
                    self.config.max_inflight_bytes,
                );
                // Like at election: a new member gets a full check-quorum round.
                progress.recent_active = true;
                progress
            });
        }
        if let Some(target) = self.transfer_target {
            if !self.membership.voters.contains(&target) {
                self.transfer_target = None;
                self.transfer_elapsed = 0;
            }
        }
        self.lease_until_ticks = 0;
        self.broadcast_needed = true;
        // A change of quorum can commit (or confirm) at once, e.g. removing a slow voter.
        self.maybe_commit();
        self.confirm_reads();
    }

    /// Once the configuration in force is committed, the leader stops replicating to the
    /// members it removed — as soon as each was sent a commit index covering its removal,
    /// so that it knows it is out and stops campaigning. (A removed member that never
    /// answers stays tracked, harmlessly, until the next leader.)
    fn prune_removed(&mut self) {
        if self.role != Role::Leader || self.membership_pending() {
            return;
        }
        let own = self.id;
        let removal = self.membership_index();
        let membership = &self.membership;
        self.progress.retain(|id, progress| {
            *id == own || membership.contains(*id) || progress.commit_sent < removal
        });
    }

    /// After the commit index moved on the leader: leave a committed joint configuration,
    /// or step down once the configuration that removed this leader is committed.
    fn after_leader_commit(&mut self) {
        if self.role != Role::Leader || self.membership_pending() {
            return;
        }
        self.prune_removed();
        if self.membership.is_joint() {
            let leave = Membership {
                voters: self.membership.voters.clone(),
                voters_outgoing: Default::default(),
                learners: self.membership.learners.clone(),
            };
            // The leave entry repeats the application's context of the joint entry.
            let joint_data = self
                .log
                .entry(self.membership_index())
                .map(|entry| entry.data.clone())
                .unwrap_or_default();
            let context = decode_membership_context(&joint_data)
                .map(|(_, context)| context)
                .unwrap_or_default();
            let entry = Entry {
                term: self.term,
                index: self.log.last_index() + 1,
                kind: EntryKind::ConfigChange,
                data: encode_membership_with_context(&leave, context),
            };
            // Not subject to the proposal limits: leaving joint must always happen.
            self.uncommitted_bytes += entry.size_bytes();
            self.append_own(entry);
        } else if !self.membership.is_voter(self.id) {
            // Removed (or no longer voting): hand over to an up-to-date voter if there is
            // one, so the cluster does not wait for an election timeout.
            let last_index = self.log.last_index();
            let successor = self.membership.voters.iter().copied().find(|id| {
                self.progress
                    .get(id)
                    .is_some_and(|progress| progress.match_index == last_index)
            });
            // Tell the members the commit before leaving.
            self.commit_changed = true;
            self.flush();
            let term = self.term;
            self.become_follower(term, None);
            if let Some(successor) = successor {
                self.send(successor, MessageBody::TimeoutNow);
            }
        }
    }

    fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let quorum_index = quorum::quorum_index(&self.membership, |id| {
            progress.get(&id).map_or(0, |progress| progress.match_index)
        });
        if quorum_index <= self.log.committed() {
            return false;
        }
        let own_term = self.log.term(quorum_index) == Some(self.term);
        if !own_term && self.config.planted_bug != PlantedBug::CommitByReplicaCount {
            // Figure 8: an entry of an earlier term is committed only indirectly.
            return false;
        }
        let old_commit = self.log.committed();
        self.log.commit_to(quorum_index);
        for index in old_commit + 1..=quorum_index {
            // The no-op at `term_start_index` was never counted.
            if index > self.term_start_index {
                if let Some(entry) = self.log.entry(index) {
                    self.uncommitted_bytes =
                        self.uncommitted_bytes.saturating_sub(entry.size_bytes());
                }
            }
        }
        self.commit_changed = true;
        if own_term && old_commit < self.term_start_index && quorum_index >= self.term_start_index {
            // The first commit of this term: reads held back until now can proceed.
            while let Some(origin) = self.reads_awaiting_commit.pop_front() {
                self.confirm_or_queue_read(origin);
            }
        }
        self.after_leader_commit();
        true
    }

    /// Sends everything the followers are ready for. Called when a Ready is taken, so that
    /// all proposals of one turn travel in one message per follower.
    fn flush(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if self.read_heartbeat_needed {
            self.read_heartbeat_needed = false;
            self.broadcast_heartbeat();
        }
        if !(self.broadcast_needed || self.commit_changed) {
            return;
        }
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|id| *id != self.id)
            .collect();
        for peer in peers {
            let mut sent = false;
            for _ in 0..=self.config.max_inflight_messages {
                if !self.send_append(peer, false, false) {
                    break;
                }
                sent = true;
            }
            if sent {
                continue;
            }
            let progress = self.progress.get_mut(&peer).expect("member");
            match progress.state {
                ProgressState::Probe => {
                    self.send_append(peer, true, false);
                }
                ProgressState::Replicate => {
                    // A follower that holds entries up to its match but has not been told
                    // they are committed hears it now rather than at the next heartbeat,
                    // in a notice it does not answer: everything it acknowledged is
                    // known, so an answer would tell the leader nothing.
                    let commit = self.log.committed().min(progress.match_index);
                    if progress.commit_sent < commit {
                        progress.commit_sent = commit;
                        self.send(
                            peer,
                            MessageBody::Heartbeat {
                                commit,
                                sequence: COMMIT_NOTICE,
                            },
                        );
                    }
                }
                ProgressState::Snapshot { .. } => {}
            }
        }
        self.broadcast_needed = false;
        self.commit_changed = false;
    }

    /// Sends one AppendEntries (or a snapshot) to `to`. Returns true if a message went out.
    fn send_append(&mut self, to: NodeId, allow_empty: bool, ignore_pause: bool) -> bool {
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused() && !ignore_pause {
            return false;
        }
        let prev_log_index = progress.next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            return self.send_snapshot(to);
        };
        let entries = if ignore_pause {
            Vec::new()
        } else {
            // A lagging member may need released entries; if they cannot be read now, the
            // message goes without entries (a probe, a commit notice) or not at all.
            self.log
                .fetch(
                    self.source(),
                    progress.next_index,
                    self.log.last_index() + 1,
                    self.config.max_message_bytes,
                )
                .unwrap_or_default()
        };
        if entries.is_empty() && !allow_empty {
            return false;
        }
        let progress = self.progress.get_mut(&to).expect("checked above");
        if !ignore_pause {
            match progress.state {
                ProgressState::Replicate => {
                    if let Some(last) = entries.last() {
                        let bytes = entries.iter().map(Entry::size_bytes).sum();
                        progress.next_index = last.index + 1;
                        progress.inflights.add(last.index, bytes);
                    }
                }
                ProgressState::Probe => progress.probe_sent = true,
                ProgressState::Snapshot { .. } => unreachable!("paused"),
            }
        }
        let commit = self.log.committed();
        let progress = self.progress.get_mut(&to).expect("checked above");
        progress.commit_sent = progress
            .commit_sent
            .max(commit.min(progress.next_index - 1));
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            },
        );
        true
    }

    fn send_snapshot(&mut self, to: NodeId) -> bool {
        let meta = self
            .snapshot
            .clone()
            .expect("entries are only compacted behind a snapshot");
        let progress = self.progress.get_mut(&to).expect("member");
        progress.become_snapshot(meta.index);
        self.send(
            to,
            MessageBody::InstallSnapshot {
                meta,
                data: Bytes::new(),
            },
        );
        true
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        // The target's election ignores leases, so this leader's lease is void from now on.
        self.lease_revoked = true;
        self.send(to, MessageBody::TimeoutNow);
    }

    fn broadcast_heartbeat(&mut self) {
        self.heartbeat_sequence += 1;
        let sequence = self.heartbeat_sequence;
        self.heartbeat_sent_ticks
            .push_back((sequence, self.now_ticks));
        let oldest_useful = self
            .now_ticks
            .saturating_sub(self.config.election_ticks as u64);
        while let Some((_, sent)) = self.heartbeat_sent_ticks.front() {
            if *sent >= oldest_useful && self.heartbeat_sent_ticks.len() <= MAX_HEARTBEAT_RECORDS {
                break;
            }
            self.heartbeat_sent_ticks.pop_front();
        }
        let own = self.id;
        self.progress
            .get_mut(&own)
            .expect("leader tracks itself")
            .acked_heartbeat = sequence;
        let committed = self.log.committed();
        let targets: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .filter(|(id, _)| **id != own)
            .map(|(id, progress)| (*id, committed.min(progress.match_index)))
            .collect();
        for (to, commit) in targets {
            let progress = self.progress.get_mut(&to).expect("member");
            progress.commit_sent = progress.commit_sent.max(commit);
            self.send(to, MessageBody::Heartbeat { commit, sequence });
        }
        self.prune_removed();
    }

    // ----- leader: reads ---------------------------------------------------------------

    fn register_read(&mut self, origin: ReadOrigin) -> Result<(), RaftError> {
        if self.pending_reads.len() + self.reads_awaiting_commit.len()
            >= self.config.max_pending_reads
        {
            return Err(RaftError::TooManyPendingReads);
        }
        if self.log.term(self.log.committed()) != Some(self.term) {
            // Until an entry of this term commits, the commit index may be stale (§6.4).
            self.reads_awaiting_commit.push_back(origin);
            return Ok(());
        }
        self.confirm_or_queue_read(origin);
        Ok(())
    }

    fn confirm_or_queue_read(&mut self, origin: ReadOrigin) {
        let index = self.log.committed();
        let alone = quorum::is_quorum(&self.membership, |id| id == self.id);
        if alone || self.lease_valid() {
            self.answer_read(origin, Some(index));
            return;
        }
        self.pending_reads.push_back(PendingRead {
            sequence: self.heartbeat_sequence + 1,
            index,
            origin,
        });
        self.read_heartbeat_needed = true;
    }

    fn confirm_reads(&mut self) {
        let progress = &self.progress;
        let confirmed = quorum::quorum_index(&self.membership, |id| {
            progress
                .get(&id)
                .map_or(0, |progress| progress.acked_heartbeat)
        });
        if let Some((_, sent)) = self
            .heartbeat_sent_ticks
            .iter()
            .find(|(sequence, _)| *sequence == confirmed)
        {
            // Every member of the acknowledging quorum heard from us after `sent` and will
            // not vote for anyone else for an election timeout of its own clock.
            let lease = (*sent + self.config.election_ticks as u64)
                .saturating_sub(self.config.lease_clock_drift_ticks as u64);
            self.lease_until_ticks = self.lease_until_ticks.max(lease);
        }
        while let Some(read) = self.pending_reads.front().copied() {
            if read.sequence > confirmed {
                break;
            }
            self.pending_reads.pop_front();
            self.answer_read(read.origin, Some(read.index));
        }
    }

    fn answer_read(&mut self, origin: ReadOrigin, index: Option<u64>) {
        match origin {
            ReadOrigin::Local { context } => self.read_states.push(ReadState { context, index }),
            ReadOrigin::Remote { node, context } => {
                self.send(node, MessageBody::ReadIndexResponse { context, index })
            }
        }
    }

    fn fail_pending_reads(&mut self) {
        let pending: Vec<ReadOrigin> = self
            .pending_reads
            .drain(..)
            .map(|read| read.origin)
            .chain(self.reads_awaiting_commit.drain(..))
            .collect();
        for origin in pending {
            self.answer_read(origin, None);
        }
        self.read_heartbeat_needed = false;
    }

    // ----- plumbing --------------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        assert_ne!(to, self.id, "message to self");
        self.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        assert_ne!(to, self.id, "message to self");
        self.messages_after_persist.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Invariants that hold after every call; cheap enough for release builds.
    fn check_invariants(&self) {
        self.log.check_invariants();
        if let Some(meta) = &self.snapshot {
            assert!(
                meta.index >= self.log.snapshot_index(),
                "the log is compacted past the snapshot"
            );
        }
        if let Some((first, _)) = self.config_entries.first_key_value() {
            assert!(
                *first > self.log.snapshot_index(),
                "configuration entry behind the snapshot"
            );
        }
        assert!(
            self.membership_index() <= self.log.last_index(),
            "configuration entry beyond the log"
        );
        assert!(
            self.config_entries
                .values()
                .next_back()
                .unwrap_or(&self.base_membership)
                == &self.membership,
            "configuration in force is not the last one appended"
        );
        if self.role == Role::Leader {
            assert!(
                self.membership.is_voter(self.id) || self.membership_pending(),
                "a leader outside a committed configuration did not step down"
            );
            assert!(
                !self.membership.is_joint() || self.membership_pending(),
                "a committed joint configuration was not left"
            );
        }
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.id), "leader does not know itself");
                assert_eq!(self.vote, Some(self.id), "leader did not vote for itself");
                assert!(self.progress.contains_key(&self.id));
                assert!(
                    self.log.last_term() == self.term,
                    "leader's last entry is not of its term"
                );
            }
            Role::Candidate => {
                assert_eq!(
                    self.vote,
                    Some(self.id),
                    "candidate did not vote for itself"
                );
                assert_eq!(self.leader, None);
            }
            Role::PreCandidate => assert_eq!(self.leader, None),
            Role::Follower => {}
        }
        assert!(
            self.log.last_term() <= self.term,
            "log term ahead of the current term"
        );
    }
}

/// The configuration a `ConfigChange` entry puts in force. An entry that does not decode
/// (never written by this core) changes nothing, identically on every member.
fn config_of(entry: &Entry) -> Option<Membership> {
    if entry.kind != EntryKind::ConfigChange {
        return None;
    }
    decode_membership(&entry.data).ok()
}
