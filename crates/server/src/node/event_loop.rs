//! The event loop: the only owner of the consensus core.
//!
//! Each turn takes every queued event (up to a bound), feeds them to the core, then carries
//! out the resulting Readies: messages go to the transport at once, writes go to the log
//! writer (whose completion releases `messages_after_persist`), committed entries go to the
//! applier. Nothing here waits for the disk or the state machine.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skiff_kv::{Command, Operation};
use skiff_raft::{MessageBody, RaftError, RawNode, Role};
use tokio::sync::{mpsc, oneshot};

use super::apply::ApplyTask;
use super::disk::DiskTask;
use super::snapshot::{local_token, ReceivedSnapshot};
use super::{now_ms, Event, Internal, Outbound, Shared, Waiter};
use crate::backend::{NodeStatus, ServerError};

/// Most events handled in one turn before the core's output is processed.
const MAX_EVENTS_PER_TURN: usize = 4096;
/// Leases are checked for expiry every this many ticks on the leader.
const LEASE_CHECK_TICKS: u64 = 5;
/// Most leases one expiry command revokes.
const MAX_EXPIRED_PER_COMMAND: u32 = 1000;

pub(crate) struct EventLoop {
    raw: RawNode,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    internal: mpsc::UnboundedReceiver<Internal>,
    disk: Sender<DiskTask>,
    apply: Sender<ApplyTask>,
    outbound: Outbound,
    /// The log directory, where the snapshots sent to followers are published.
    wal_dir: PathBuf,
    /// Where snapshots received from the leader arrive.
    snapshot_dir: PathBuf,
    /// Received snapshots handed to the core this turn, by token (dropped, hence deleted,
    /// unless the core installs them).
    received: HashMap<Bytes, Arc<ReceivedSnapshot>>,
    next_read_context: u64,
    reads: HashMap<u64, oneshot::Sender<Result<u64, ServerError>>>,
    transfer: Option<(u64, oneshot::Sender<Result<(), ServerError>>)>,
    ticks: u64,
    /// Index of the last lease-expiry proposal: no new one until it is applied.
    expiry_in_flight: u64,
    applied: u64,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        raw: RawNode,
        shared: Arc<Shared>,
        events: mpsc::Receiver<Event>,
        internal: mpsc::UnboundedReceiver<Internal>,
        disk: Sender<DiskTask>,
        apply: Sender<ApplyTask>,
        outbound: Outbound,
        wal_dir: PathBuf,
        snapshot_dir: PathBuf,
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
            reads: HashMap::new(),
            transfer: None,
            ticks: 0,
            expiry_in_flight: 0,
            applied,
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
                _ = ticker.tick() => self.on_tick(),
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
                }
            }
            Internal::Compacted { meta } => {
                if meta.index > self.raw.status().first_index.saturating_sub(1) {
                    self.raw.compact(meta.index);
                }
            }
            Internal::Fatal(reason) => return Err(reason),
        }
        Ok(())
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        if self.raw.status().role == Role::Leader && self.ticks.is_multiple_of(LEASE_CHECK_TICKS) {
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
                    let _ = reply.send(Err(match error {
                        RaftError::NotLeader { .. } | RaftError::TransferInProgress => {
                            ServerError::NotLeader
                        }
                        _ => ServerError::TooManyRequests,
                    }));
                }
            },
            Event::ReadIndex { reply } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match self.raw.read_index(context) {
                    Ok(()) => {
                        self.reads.insert(context, reply);
                    }
                    Err(RaftError::NotLeader { .. }) => {
                        let _ = reply.send(Err(ServerError::NoLeader));
                    }
                    Err(_) => {
                        let _ = reply.send(Err(ServerError::TooManyRequests));
                    }
                }
            }
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

    fn process_ready(&mut self) -> Result<(), String> {
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
                    let _ = self
                        .apply
                        .send(ApplyTask::Restore(meta.clone(), received.clone()));
                    Some((meta, received))
                }
                None => None,
            };
            let mut messages = ready.messages;
            self.attach_snapshots(&mut messages);
            if !messages.is_empty() {
                (self.outbound)(messages);
            }
            let needs_disk = snapshot.is_some()
                || ready.hard_state.is_some()
                || !ready.entries.is_empty()
                || !ready.messages_after_persist.is_empty();
            if needs_disk {
                let task = DiskTask::Ready {
                    snapshot,
                    hard_state: ready.hard_state,
                    entries: ready.entries,
                    after_persist: ready.messages_after_persist,
                };
                if self.disk.send(task).is_err() {
                    tracing::error!("log writer is gone");
                }
            }
            if !ready.committed_entries.is_empty() {
                let _ = self.apply.send(ApplyTask::Entries(ready.committed_entries));
            }
            for read in ready.read_states {
                if let Some(reply) = self.reads.remove(&read.context) {
                    let _ = reply.send(read.index.ok_or(ServerError::NoLeader));
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

    fn publish_status(&self) {
        let status = self.raw.status();
        let metrics = &self.shared.metrics;
        metrics.raft_term.set(status.term);
        metrics.proposals_committed.set(status.commit);
        metrics.proposals_applied.set(self.applied);
        let pending = self.shared.waiters.lock().expect("waiters lock").len();
        metrics.proposals_pending.set(pending as u64);
        let next = NodeStatus {
            cluster_id: self.shared.cluster_id,
            member_id: self.shared.id,
            leader: status.leader.unwrap_or(0),
            raft_term: status.term,
            raft_index: status.commit,
            raft_applied_index: self.applied,
            is_learner: false,
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
}
