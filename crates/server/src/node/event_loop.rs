//! The event loop: the only owner of the consensus core.
//!
//! Each turn takes every queued event (up to a bound), feeds them to the core, then carries
//! out the resulting Readies: messages go to the transport at once, writes go to the log
//! writer (whose completion releases `messages_after_persist`; a Ready with nothing to sync
//! is answered here when the writer is idle, and a follower writes here when it is, see
//! `DiskQueue`), committed entries go to the applier. Besides a follower's own writes, nothing
//! here waits for the disk or the state machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff_kv::{Command, Operation};
use skiff_raft::{MembershipChange, MembershipStep, MessageBody, NodeId, RaftError, RawNode, Role};
use tokio::sync::{mpsc, oneshot};

use super::apply::{ApplyQueue, ApplyTask};
use super::disk::DiskQueue;
use super::snapshot::{local_token, ReceivedSnapshot};
use super::{now_ms, Event, Internal, Outbound, Reply, Shared, Waiter, REMOVED};
use crate::backend::{NodeStatus, ServerError};
use crate::members::{self, MemberRecord, MemberRequest, RegistryLog};

/// Most events handled in one turn before the core's output is processed.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// Leases are checked for expiry every this many ticks on the leader.
const LEASE_CHECK_TICKS: u64 = 5;
/// Most leases one expiry command revokes.
const MAX_EXPIRED_PER_COMMAND: u32 = 1000;
/// etcd promotes a learner once its log holds this share of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;
/// Where a linearizable read's index is sent.
type ReadReply = oneshot::Sender<Result<u64, ServerError>>;

/// etcd allows this many learners at a time.
const MAX_LEARNERS: usize = 1;

pub(crate) struct EventLoop {
    raw: RawNode,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    internal: mpsc::UnboundedReceiver<Internal>,
    disk: DiskQueue,
    apply: ApplyQueue,
    outbound: Outbound,
    /// The log directory, where the snapshots sent to followers are published.
    wal_dir: PathBuf,
    /// Where snapshots received from the leader arrive.
    snapshot_dir: PathBuf,
    /// Received snapshots handed to the core this turn, by token (dropped, hence deleted,
    /// unless the core installs them).
    received: HashMap<Bytes, Arc<ReceivedSnapshot>>,
    next_read_context: u64,
    /// Linearizable reads asked for this turn: they share one ReadIndex request, sent when
    /// the turn's events are handled.
    new_reads: Vec<ReadReply>,
    /// Reads waiting for their ReadIndex answer, by request context.
    reads: HashMap<u64, Vec<ReadReply>>,
    transfer: Option<(u64, oneshot::Sender<Result<(), ServerError>>)>,
    ticks: u64,
    /// Index of the last lease-expiry proposal: no new one until it is applied.
    expiry_in_flight: u64,
    applied: u64,
    /// The member registry in force, following the log (see [`RegistryLog`]).
    registry: RegistryLog,
    /// Tick at which this member learned it was removed; it stops a little later (time
    /// enough to hand leadership over and to tell the others the removal committed).
    removed_at: Option<u64>,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode,
        shared: Arc<Shared>,
        events: mpsc::Receiver<Event>,
        internal: mpsc::UnboundedReceiver<Internal>,
        disk: DiskQueue,
        apply: ApplyQueue,
        outbound: Outbound,
        wal_dir: PathBuf,
        snapshot_dir: PathBuf,
        registry: RegistryLog,
    ) -> EventLoop {
        let applied = raw.status().applied;
        EventLoop {
            raw,
            shared,
            events,
            internal,
            disk,
            apply,
            outbound,
            wal_dir,
            snapshot_dir,
            received: HashMap::new(),
            next_read_context: 1,
            new_reads: Vec::new(),
            reads: HashMap::new(),
            transfer: None,
            ticks: 0,
            expiry_in_flight: 0,
            applied,
            registry,
            removed_at: None,
        }
    }

    pub async fn run(mut self, tick: Duration) -> Result<(), String> {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.raw.membership().voters.len() == 1 && self.raw.membership().is_voter(self.shared.id)
        {
            // A one-member cluster needs no election timeout to find its leader.
            self.raw.campaign();
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
                internal = self.internal.recv() => match internal {
                    Some(internal) => {
                        if let Err(reason) = self.on_internal(internal) {
                            break Err(reason);
                        }
                        while let Ok(more) = self.internal.try_recv() {
                            if let Err(reason) = self.on_internal(more) {
                                return self.stop(Err(reason));
                            }
                        }
                    }
                    None => break Err("log writer and applier stopped".into()),
                },
                _ = ticker.tick() => {
                    self.on_tick();
                    let linger = 2 * u64::from(self.raw.config().election_ticks);
                    if self.removed_at.is_some_and(|at| self.ticks >= at + linger) {
                        tracing::warn!(member = format_args!("{:x}", self.shared.id), "{REMOVED}; stopping");
                        break Err(REMOVED.into());
                    }
                }
                event = self.events.recv() => match event {
                    Some(event) => {
                        self.on_event(event);
                        let mut handled = 1;
                        while handled < MAX_EVENTS_PER_TURN {
                            match self.events.try_recv() {
                                Ok(event) => self.on_event(event),
                                Err(_) => break,
                            }
                            handled += 1;
                        }
                    }
                    None => break Ok(()),
                },
            }
            if let Err(reason) = self.process_ready() {
                break Err(reason);
            }
        };
        self.stop(result)
    }

    fn stop(self, result: Result<(), String>) -> Result<(), String> {
        let reason = match &result {
            Ok(()) => "stopped".to_string(),
            Err(reason) => reason.clone(),
        };
        self.shared.stopped.send_replace(Some(reason));
        result
    }

    fn on_internal(&mut self, internal: Internal) -> Result<(), String> {
        match internal {
            Internal::Persisted { index, term } => self.raw.on_persisted(index, term),
            Internal::Applied { index } => {
                if index > self.applied {
                    self.applied = index;
                    self.raw.on_applied(index);
                    self.registry.applied(index);
                }
            }
            Internal::Removed => {
                self.removed_at.get_or_insert(self.ticks);
            }
            Internal::Compacted { meta } => {
                self.raw
                    .compact_keeping(meta.index, self.shared.catchup_entries);
            }
            Internal::Fatal(reason) => return Err(reason),
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        if self.raw.soft_state().role == Role::Leader
            && self.ticks.is_multiple_of(LEASE_CHECK_TICKS)
        {
            self.expire_leases();
        }
        if let Some((target, _)) = &self.transfer {
            let status = self.raw.status();
            if status.role != Role::Leader || status.leader == Some(*target) {
                // Transfer over (the handle waits for the new leader to show up).
                if let Some((_, reply)) = self.transfer.take() {
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    fn expire_leases(&mut self) {
        if self.expiry_in_flight > self.applied {
            return;
        }
        let now = now_ms();
        let expired = {
            let store = self.shared.store.read().expect("store lock");
            !store.expired_leases(now, 1).is_empty()
        };
        if expired {
            let command = Command::new(Operation::ExpireLeases {
                now_ms: now,
                max_leases: MAX_EXPIRED_PER_COMMAND,
            });
            if let Ok((index, _)) = self.raw.propose(Bytes::from(command.encode())) {
                self.expiry_in_flight = index;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Messages(messages) => {
                for message in messages {
                    if let MessageBody::InstallSnapshot { meta, data } = &message.body {
                        // Only a snapshot fully received into the snapshot directory reaches
                        // the core; its file is opened now, so it cannot vanish later.
                        match ReceivedSnapshot::take(&self.snapshot_dir, data) {
                            Some(received) => {
                                self.received.insert(data.clone(), received);
                            }
                            None => {
                                tracing::warn!(
                                    index = meta.index,
                                    "dropping an InstallSnapshot without a received snapshot"
                                );
                                continue;
                            }
                        }
                    }
                    self.raw.step(message);
                }
            }
            Event::Unreachable(peer) => self.raw.report_unreachable(peer),
            Event::SnapshotSent { peer, success } => self.raw.report_snapshot(peer, success),
            Event::Propose { data, reply } => match self.raw.propose(data) {
                Ok((index, term)) => {
                    let mut waiters = self.shared.waiters.lock().expect("waiters lock");
                    waiters.insert(index, Waiter { term, reply });
                }
                Err(error) => {
                    self.shared.metrics.proposals_failed.inc();
                    reply.fail(match error {
                        RaftError::NotLeader { .. } | RaftError::TransferInProgress => {
                            ServerError::NotLeader
                        }
                        _ => ServerError::TooManyRequests,
                    });
                }
            },
            Event::ChangeMembers { request, reply } => match self.change_members(request) {
                Ok((index, term, member)) => {
                    let mut waiters = self.shared.waiters.lock().expect("waiters lock");
                    let reply = Reply::Members { member, reply };
                    waiters.insert(index, Waiter { term, reply });
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            Event::ReadIndex { reply } => self.new_reads.push(reply),
            Event::TransferLeader { target, reply } => match self.raw.transfer_leader(target) {
                Ok(()) => {
                    if let Some((_, previous)) = self.transfer.replace((target, reply)) {
                        let _ = previous.send(Err(ServerError::LeaderChanged));
                    }
                }
                Err(RaftError::NotLeader { .. }) => {
                    let _ = reply.send(Err(ServerError::NotLeader));
                }
                Err(RaftError::TransferToSelf) => {
                    let _ = reply.send(Ok(()));
                }
                Err(_) => {
                    let _ = reply.send(Err(ServerError::BadLeaderTransferee));
                }
            },
        }
    }

    /// Asks the core for one read index on behalf of every read that arrived this turn (a
    /// follower sends one message to the leader for all of them; the leader confirms them
    /// with one heartbeat round).
    fn request_read_index(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let replies = std::mem::take(&mut self.new_reads);
        let context = self.next_read_context;
        self.next_read_context += 1;
        let error = match self.raw.read_index(context) {
            Ok(()) => {
                self.reads.insert(context, replies);
                return;
            }
            Err(RaftError::NotLeader { .. }) => ServerError::NoLeader,
            Err(_) => ServerError::TooManyRequests,
        };
        for reply in replies {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn process_ready(&mut self) -> Result<(), String> {
        self.request_read_index();
        while self.raw.has_ready() {
            let ready = self.raw.ready();
            if let Some(soft) = ready.soft_state {
                self.on_soft_state(soft.role, soft.leader, soft.term);
            }
            let snapshot = match ready.snapshot {
                Some((meta, token)) => {
                    let Some(received) = self.received.remove(&token) else {
                        return Err(format!("snapshot {} to install is not held", meta.index));
                    };
                    // The applier replaces its state before it sees the entries that follow;
                    // the log writer makes the file this member's snapshot meanwhile.
                    self.apply
                        .send(ApplyTask::Restore(meta.clone(), received.clone()));
                    self.install_registry(&received);
                    Some((meta, received))
                }
                None => None,
            };
            // Members added by configuration entries must be reachable before the messages
            // and acknowledgements for them go out.
            for registry in self.registry.append(&ready.entries) {
                self.shared.peers.ensure_all(registry);
            }
            let follower = self.raw.soft_state().role == Role::Follower;
            let persisted = self.disk.ready(
                snapshot,
                ready.hard_state,
                ready.entries,
                ready.messages_after_persist,
                follower,
            );
            for report in persisted {
                self.on_internal(report)?;
            }
            // After the log writer has its work: on the leader its write and the followers'
            // overlap, and the slower of them decides when the entries commit.
            let mut messages = ready.messages;
            self.attach_snapshots(&mut messages);
            if !messages.is_empty() {
                (self.outbound)(messages);
            }
            for read in ready.read_states {
                for reply in self.reads.remove(&read.context).unwrap_or_default() {
                    let _ = reply.send(read.index.ok_or(ServerError::NoLeader));
                }
            }
            // Committed entries last: applied here (see `ApplyQueue::entries`), they wake the
            // tasks of the clients waiting for them, which run when this turn ends. Messages
            // to an idle peer were written above, from this thread (a commit notice goes out
            // before the answers); those queued for a busy peer's task woke it before, and
            // the runtime runs the task woken last first, so there the answers go first.
            if !ready.committed_entries.is_empty() {
                for report in self.apply.entries(ready.committed_entries) {
                    self.on_internal(report)?;
                }
            }
        }
        // Received snapshots the core did not take are deleted.
        self.received.clear();
        self.publish_status();
        Ok(())
    }

    /// The core leaves InstallSnapshot's payload to the application: a token naming the
    /// published snapshot file, which the transport streams (it reports a file it cannot open
    /// as a failed transfer, e.g. when a newer snapshot replaced it meanwhile).
    fn attach_snapshots(&mut self, messages: &mut [skiff_raft::Message]) {
        for message in messages.iter_mut() {
            if let MessageBody::InstallSnapshot { meta, data } = &mut message.body {
                *data = local_token(&self.wal_dir, meta);
            }
        }
    }

    fn on_soft_state(&mut self, role: Role, leader: Option<u64>, term: u64) {
        let previous = self.shared.status.borrow().leader;
        let leader = leader.unwrap_or(0);
        self.shared
            .metrics
            .observe_leader(leader, leader == self.shared.id, previous);
        if leader != previous && !self.reads.is_empty() {
            // A read index asked of the previous leader may never be answered: say so now
            // rather than at the client's deadline (and keep no waiters forever).
            for (_, replies) in self.reads.drain() {
                for reply in replies {
                    let _ = reply.send(Err(ServerError::LeaderChanged));
                }
            }
        }
        if leader != previous && leader != 0 {
            tracing::info!(
                member = format_args!("{:x}", self.shared.id),
                leader = format_args!("{leader:x}"),
                term,
                "leader changed"
            );
        }
        if role == Role::Leader && previous != self.shared.id {
            // etcd's lessor promotion: leases restart on the new leader's clock, so the
            // election gap does not expire them.
            let command = Command::new(Operation::LeasePromote { now_ms: now_ms() });
            let _ = self.raw.propose(Bytes::from(command.encode()));
        }
        if role != Role::Leader {
            // Reads waiting on this member's leadership will be answered by the core or
            // time out; a pending transfer is over.
            // The transfer handed leadership away; the handle waits for the target to lead.
            if let Some((_, reply)) = self.transfer.take() {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Publishes what handles and metrics show; runs every turn, so it reads only the
    /// core's cheap accessors (not `status()`, which copies maps).
    fn publish_status(&self) {
        let soft = self.raw.soft_state();
        let commit = self.raw.commit_index();
        let metrics = &self.shared.metrics;
        metrics.raft_term.set(soft.term);
        metrics.proposals_committed.set(commit);
        metrics.proposals_applied.set(self.applied);
        let pending = self.shared.waiters.lock().expect("waiters lock").len();
        metrics.proposals_pending.set(pending as u64);
        let next = NodeStatus {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.id,
            leader: soft.leader.unwrap_or(0),
            raft_term: soft.term,
            raft_index: commit,
            raft_applied_index: self.applied,
            is_learner: self.raw.membership().learners.contains(&self.shared.id),
        };
        self.shared.status.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    /// The registry a snapshot being installed starts with: its members become reachable.
    fn install_registry(&mut self, received: &ReceivedSnapshot) {
        let mut reader = std::io::BufReader::with_capacity(64 << 10, received.reader());
        match members::read_snapshot_prefix(&mut reader) {
            Ok(Some(registry)) => {
                self.shared.peers.ensure_all(&registry);
                self.registry.install(registry);
            }
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "snapshot's member registry does not read"),
        }
    }

    /// Checks a membership change as etcd does (its strict reconfiguration checks) and
    /// proposes it: `(index, term, member)` of its configuration entry. Only on the leader.
    fn change_members(
        &mut self,
        request: MemberRequest,
    ) -> Result<(u64, u64, NodeId), ServerError> {
        let status = self.raw.status();
        if status.role != Role::Leader {
            return Err(ServerError::NotLeader);
        }
        let own = self.shared.id;
        let membership = &status.membership;
        let mut registry = self.registry.current().clone();
        let view = self.shared.members.lock().expect("members lock");
        // Names learned from the members themselves are replicated with the change (those
        // the registry's text form can hold: non-empty, without spaces).
        for (id, record) in registry.members.iter_mut() {
            if let Some((name, _)) = view.heard.get(id) {
                if !name.is_empty() && !name.contains(char::is_whitespace) {
                    record.name.clone_from(name);
                }
            }
        }
        let started = |id: &NodeId| view.started(*id);
        let active = |id: &NodeId| *id == own || status.recently_active.contains(id);
        let quorum = |voters: usize| voters / 2 + 1;
        let voters = &membership.voters;
        let (step, member) = match request {
            MemberRequest::Add { peer_urls, learner } => {
                // etcd derives a new member's ID from its peer URLs and the current second,
                // and checks the ID before the URLs.
                let id = new_member_id(&peer_urls);
                if registry.members.contains_key(&id) || membership.contains(id) {
                    return Err(ServerError::MemberIdExists);
                }
                if registry.url_in_use(&peer_urls, None) {
                    return Err(ServerError::PeerUrlExists);
                }
                if learner {
                    if membership.learners.len() >= MAX_LEARNERS {
                        return Err(ServerError::TooManyLearners);
                    }
                } else {
                    if voters.iter().filter(|id| started(id)).count() < quorum(voters.len() + 1) {
                        return Err(ServerError::NotEnoughStartedMembers);
                    }
                    if !voters.iter().all(active) {
                        return Err(ServerError::UnhealthyCluster);
                    }
                }
                registry.members.insert(
                    id,
                    MemberRecord {
                        name: String::new(),
                        peer_urls,
                    },
                );
                let step = if learner {
                    MembershipStep::AddLearner(id)
                } else {
                    MembershipStep::AddVoter(id)
                };
                (Some(step), id)
            }
            MemberRequest::Remove { id } => {
                if !membership.contains(id) && !registry.members.contains_key(&id) {
                    return Err(ServerError::MemberNotFound);
                }
                if voters.contains(&id) {
                    let remaining = voters.iter().filter(|voter| **voter != id);
                    if remaining.clone().filter(|id| started(id)).count() < quorum(voters.len() - 1)
                    {
                        return Err(ServerError::NotEnoughStartedMembers);
                    }
                    // A member that is down is not part of the active quorum: removing it is
                    // safe. Otherwise the others must still make a quorum without it.
                    if (id == own || active(&id))
                        && voters.iter().filter(|id| active(id)).count() - 1
                            < quorum(voters.len() - 1)
                    {
                        return Err(ServerError::UnhealthyCluster);
                    }
                }
                registry.members.remove(&id);
                let step = membership
                    .contains(id)
                    .then_some(MembershipStep::Remove(id));
                (step, id)
            }
            MemberRequest::Promote { id } => {
                if !membership.contains(id) {
                    return Err(ServerError::MemberNotFound);
                }
                if !membership.learners.contains(&id) {
                    return Err(ServerError::MemberNotLearner);
                }
                let leader_match = status
                    .match_indexes
                    .get(&own)
                    .copied()
                    .unwrap_or(status.last_index);
                let learner_match = status.match_indexes.get(&id).copied().unwrap_or(0);
                if (learner_match as f64) < leader_match as f64 * LEARNER_READY_PERCENT {
                    return Err(ServerError::LearnerNotReady);
                }
                // The learner counts as started, for the quorum it will be part of.
                if voters.iter().filter(|id| started(id)).count() + 1 < quorum(voters.len() + 1) {
                    return Err(ServerError::NotEnoughStartedMembers);
                }
                (Some(MembershipStep::PromoteLearner(id)), id)
            }
            MemberRequest::Update { id, peer_urls } => {
                if registry.url_in_use(&peer_urls, Some(id)) {
                    return Err(ServerError::PeerUrlExists);
                }
                let Some(record) = registry.members.get_mut(&id) else {
                    return Err(ServerError::MemberNotFound);
                };
                record.peer_urls = peer_urls;
                (None, id)
            }
        };
        drop(view);
        let change =
            MembershipChange::new(step).with_context(bytes::Bytes::from(registry.encode()));
        match self.raw.propose_membership(change) {
            Ok((index, term)) => {
                tracing::info!(
                    index,
                    member = format_args!("{member:x}"),
                    "proposed a membership change"
                );
                Ok((index, term, member))
            }
            Err(RaftError::NotLeader { .. }) => Err(ServerError::NotLeader),
            Err(RaftError::MembershipChangePending | RaftError::TransferInProgress) => {
                Err(ServerError::ConfigChangePending)
            }
            Err(error) => Err(ServerError::Internal(format!(
                "membership change refused: {error}"
            ))),
        }
    }
}

/// The ID of a member added now with `peer_urls`: derived from the URLs and the current
/// second, as etcd derives it (so re-adding the same URLs within a second collides, as in
/// etcd).
fn new_member_id(peer_urls: &[String]) -> NodeId {
    let second = now_ms().div_euclid(1000);
    crate::ids::member_id(peer_urls, &second.to_string()).max(1)
}
