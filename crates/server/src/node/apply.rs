//! The applier applies committed entries to the store, answers the clients waiting for them,
//! and takes snapshots: it streams the store into a snapshot file that the log writer opened
//! for it and then publishes, so the event loop never waits for it and the serialized store
//! is never in memory.
//!
//! It runs on a thread of its own, and on the event loop when that is quicker: a small batch
//! of committed entries arriving while the thread has nothing to do is applied where it
//! arrives ([`ApplyQueue::entries`]), which takes a thread wake-up off every client's write
//! when the load is light. Restores, snapshots and large batches always go to the thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};

use skiff_kv::{Command, KvConfig, Store};
use skiff_raft::{Entry, EntryKind, SnapshotMeta};

use super::disk::DiskTask;
use super::snapshot::ReceivedSnapshot;
use super::{Internal, Reply, Shared};
use crate::backend::ServerError;
use crate::members::{self, Registry};

/// Work for the applier, handled in order.
pub(crate) enum ApplyTask {
    /// Committed entries, consecutive, following what was applied.
    Entries(Vec<Entry>),
    /// Replace the state with a snapshot received from the leader.
    Restore(SnapshotMeta, Arc<ReceivedSnapshot>),
}

/// The event loop's side of the applier: committed entries are applied right there when the
/// applier is idle and the batch is small (no thread hand-off on a client's path), queued
/// for the applier's thread otherwise. Tasks are applied in the order they are given.
pub(crate) struct ApplyQueue {
    sender: Sender<ApplyTask>,
    applier: Arc<Mutex<Applier>>,
    /// Tasks queued and not yet fully handled by the thread: while any is, new ones queue.
    pending: Arc<AtomicUsize>,
}

/// A batch of at most this many entries and payload bytes may be applied on the event loop.
const INLINE_ENTRIES: usize = 64;
const INLINE_BYTES: usize = 256 * 1024;

impl ApplyQueue {
    /// Starts the applier's thread.
    pub fn start(applier: Applier) -> std::io::Result<(ApplyQueue, std::thread::JoinHandle<()>)> {
        let (sender, tasks) = std::sync::mpsc::channel();
        let applier = Arc::new(Mutex::new(applier));
        let pending = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (applier, pending) = (applier.clone(), pending.clone());
            std::thread::Builder::new()
                .name("skiff-apply".into())
                .spawn(move || run(tasks, applier, pending))?
        };
        Ok((
            ApplyQueue {
                sender,
                applier,
                pending,
            },
            thread,
        ))
    }

    /// Queues a task for the thread.
    pub fn send(&self, task: ApplyTask) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.sender.send(task).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Applies committed entries (consecutive, following the ones given before). Returns
    /// what the event loop is to hear when they were applied right here (the thread sends
    /// it through the channel instead).
    pub fn entries(&self, entries: Vec<Entry>) -> Vec<Internal> {
        let small = entries.len() <= INLINE_ENTRIES
            && entries.iter().map(|entry| entry.data.len()).sum::<usize>() <= INLINE_BYTES;
        // Only the event loop adds tasks: none pending means every earlier one was applied.
        if small && self.pending.load(Ordering::SeqCst) == 0 {
            if let Ok(mut applier) = self.applier.try_lock() {
                if applier.stopped {
                    return Vec::new();
                }
                let reports = applier.handle(ApplyTask::Entries(entries));
                if !applier.stopped && applier.snapshot_due().is_some() {
                    drop(applier);
                    self.send(ApplyTask::Entries(Vec::new()));
                }
                return reports;
            }
        }
        self.send(ApplyTask::Entries(entries));
        Vec::new()
    }
}

fn run(tasks: Receiver<ApplyTask>, applier: Arc<Mutex<Applier>>, pending: Arc<AtomicUsize>) {
    while let Ok(first) = tasks.recv() {
        let mut batch = vec![first];
        while batch.len() < 64 {
            match tasks.try_recv() {
                Ok(task) => batch.push(task),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let count = batch.len();
        let mut applier = applier.lock().expect("applier lock");
        for task in batch {
            if applier.stopped {
                return;
            }
            for report in applier.handle(task) {
                let _ = applier.internal.send(report);
            }
        }
        if applier.stopped {
            return;
        }
        applier.maybe_snapshot();
        drop(applier);
        pending.fetch_sub(count, Ordering::SeqCst);
    }
}

pub(crate) struct Applier {
    pub shared: Arc<Shared>,
    /// Set when applying failed: the member stops, nothing more is applied.
    pub stopped: bool,
    pub disk: Sender<DiskTask>,
    pub internal: tokio::sync::mpsc::UnboundedSender<Internal>,
    pub kv_config: KvConfig,
    /// Where a restored store keeps its values (see `NodeOptions::value_dir`).
    pub value_dir: Option<std::path::PathBuf>,
    pub snapshot_count: u64,
    /// Payload bytes applied since the last snapshot that trigger one early.
    pub snapshot_log_bytes: u64,
    /// Payload bytes applied since the last snapshot.
    pub bytes_since_snapshot: u64,
    pub last_snapshot_index: u64,
    /// Term of the entry at the store's applied index (the term a snapshot records).
    pub last_applied_term: u64,
    /// The configuration in force at the applied index (the last applied configuration
    /// entry, else the snapshot's or the bootstrap one): what a snapshot records.
    pub membership: skiff_raft::Membership,
    /// The member registry in force at the applied index (what a snapshot starts with).
    pub registry: Registry,
    /// The thread streaming the last snapshot, while it runs.
    pub snapshotting: Option<std::thread::JoinHandle<()>>,
    /// What the event loop is to hear about the task being handled (see `handle`).
    pub reports: Vec<Internal>,
}

/// What applying one entry produced for the client waiting on it.
enum Outcome {
    Write(skiff_kv::Response),
    Members,
    Nothing,
}

impl Applier {
    /// Handles one task. Returns what the event loop is to hear about it; the caller
    /// delivers it (the thread through the channel; the event loop, applying itself,
    /// directly, which saves waking its own task).
    fn handle(&mut self, task: ApplyTask) -> Vec<Internal> {
        let outcome = match task {
            ApplyTask::Entries(entries) => self.apply(entries),
            ApplyTask::Restore(meta, data) => self.restore(meta, data),
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "applying failed; this member stops");
            self.reports.push(Internal::Fatal(error));
            self.stopped = true;
        }
        std::mem::take(&mut self.reports)
    }

    /// The applied index, if `maybe_snapshot` would take a snapshot there now: one is due and
    /// the previous one is no longer being written.
    fn snapshot_due(&self) -> Option<u64> {
        if self
            .snapshotting
            .as_ref()
            .is_some_and(|thread| !thread.is_finished())
        {
            return None;
        }
        let index = self
            .shared
            .store
            .read()
            .expect("store lock")
            .applied_index();
        let due = self.snapshot_count != 0
            && index > self.last_snapshot_index
            && (index >= self.last_snapshot_index + self.snapshot_count
                || self.bytes_since_snapshot >= self.snapshot_log_bytes);
        due.then_some(index)
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(last) = entries.last().map(|entry| entry.index) else {
            return Ok(());
        };
        let mut answers = Vec::with_capacity(entries.len());
        let revision = {
            let shared = self.shared.clone();
            let mut store = shared.store.write().expect("store lock");
            for entry in &entries {
                if entry.index <= store.applied_index() {
                    continue; // covered by a snapshot installed meanwhile
                }
                if entry.index != store.applied_index() + 1 {
                    return Err(format!(
                        "entry {} follows applied index {}",
                        entry.index,
                        store.applied_index()
                    ));
                }
                let response = match entry.kind {
                    EntryKind::Normal => match Command::decode_shared(&entry.data) {
                        Ok(command) => Outcome::Write(store.apply_quietly(entry.index, &command)),
                        Err(error) => {
                            // Only this server writes entries; an undecodable one is skipped
                            // identically on every member.
                            tracing::error!(index = entry.index, %error, "undecodable entry");
                            store.advance_applied_index(entry.index);
                            Outcome::Nothing
                        }
                    },
                    EntryKind::Noop => {
                        store.advance_applied_index(entry.index);
                        Outcome::Nothing
                    }
                    EntryKind::ConfigChange => {
                        // The configuration in force at the applied index is what a snapshot
                        // taken here must record.
                        let membership =
                            skiff_raft::decode_membership(&entry.data).map_err(|error| {
                                format!(
                                    "configuration entry {} does not decode: {error}",
                                    entry.index
                                )
                            })?;
                        let registry = Registry::from_entry(entry);
                        self.change_members(membership, registry);
                        store.advance_applied_index(entry.index);
                        Outcome::Members
                    }
                };
                self.last_applied_term = entry.term;
                self.bytes_since_snapshot += entry.data.len() as u64;
                answers.push((entry.index, entry.term, response));
            }
            let metrics = &self.shared.metrics;
            metrics
                .db_total_size_bytes
                .set(store.approximate_size_bytes());
            let (live, all) = store.value_log_usage();
            metrics.value_log_live_bytes.set(live);
            metrics.value_log_bytes.set(all);
            store.current_revision()
        };
        {
            let mut waiters = self.shared.waiters.lock().expect("waiters lock");
            for (index, term, outcome) in answers {
                let Some(waiter) = waiters.remove(&index) else {
                    continue;
                };
                match (waiter.reply, outcome) {
                    (Reply::Write(reply), Outcome::Write(response)) if waiter.term == term => {
                        let _ = reply.send(Ok((index, response)));
                    }
                    (Reply::Members { member, reply }, Outcome::Members) if waiter.term == term => {
                        let _ = reply.send(Ok((index, member)));
                    }
                    // Another entry took this index: the proposal was never committed.
                    (reply, _) => reply.fail(ServerError::LeaderChanged),
                }
            }
        }
        self.shared.publish_applied(last, revision);
        self.reports.push(Internal::Applied { index: last });
        Ok(())
    }

    fn restore(&mut self, meta: SnapshotMeta, data: Arc<ReceivedSnapshot>) -> Result<(), String> {
        tracing::info!(
            index = meta.index,
            bytes = data.len(),
            "restoring a received snapshot"
        );
        let mut reader = std::io::BufReader::with_capacity(256 << 10, data.reader());
        let registry = members::read_snapshot_prefix(&mut reader)
            .map_err(|error| format!("snapshot at {}: {error}", meta.index))?;
        let log = super::value_log(self.value_dir.as_deref())?;
        let restored = Store::restore_with(reader, self.kv_config.clone(), log)
            .map_err(|error| format!("snapshot at {} does not restore: {error}", meta.index))?;
        let revision = restored.current_revision();
        {
            let mut store = self.shared.store.write().expect("store lock");
            if store.applied_index() >= meta.index {
                return Ok(());
            }
            if restored.applied_index() != meta.index {
                return Err(format!(
                    "snapshot at {} holds a store applied to {}",
                    meta.index,
                    restored.applied_index()
                ));
            }
            *store = restored;
        }
        self.last_applied_term = meta.term;
        self.change_members(meta.membership.clone(), registry);
        {
            // Proposals at or below the snapshot can no longer be matched to their entries.
            let mut waiters = self.shared.waiters.lock().expect("waiters lock");
            let covered: Vec<u64> = waiters.range(..=meta.index).map(|(i, _)| *i).collect();
            for index in covered {
                let waiter = waiters.remove(&index).expect("listed");
                waiter.reply.fail(ServerError::LeaderChanged);
            }
        }
        self.last_snapshot_index = meta.index;
        self.bytes_since_snapshot = 0;
        self.shared.publish_applied(meta.index, revision);
        self.reports.push(Internal::Applied { index: meta.index });
        Ok(())
    }

    /// Every `snapshot_count` applied entries (or `snapshot_log_bytes` of their payloads,
    /// whichever comes first): copy what a snapshot holds (`Store::snapshot_copy`: the keys'
    /// versions, leases and sessions, not the derived indexes; values are shared,
    /// reference-counted) and stream the copy, on a thread of its own, into a snapshot
    /// file the log writer opened, which it then publishes (and compacts the log it covers).
    /// Applying stops only for the copy, never for the streaming.
    fn maybe_snapshot(&mut self) {
        let Some(index) = self.snapshot_due() else {
            return;
        };
        if let Some(thread) = self.snapshotting.take() {
            let _ = thread.join(); // finished
        }
        self.last_snapshot_index = index;
        self.bytes_since_snapshot = 0;
        let meta = SnapshotMeta {
            index,
            term: self.last_applied_term,
            membership: self.membership.clone(),
        };
        let (reply, answer) = std::sync::mpsc::channel();
        if self
            .disk
            .send(DiskTask::BeginSnapshot { meta, reply })
            .is_err()
        {
            return;
        }
        let mut writer = match answer.recv() {
            Ok(Ok(writer)) => writer,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot start a snapshot");
                return;
            }
            Err(_) => return, // the log writer stopped
        };
        let started = std::time::Instant::now();
        // Only this thread changes the store: it is still at `index`.
        let copy = self
            .shared
            .store
            .read()
            .expect("store lock")
            .snapshot_copy();
        let copied = started.elapsed();
        let registry = self.registry.clone();
        let disk = self.disk.clone();
        let streaming = std::thread::Builder::new()
            .name("skiff-snapshot".into())
            .spawn(move || {
                let written = members::write_snapshot_prefix(&registry, &mut writer)
                    .map_err(|error| error.to_string())
                    .and_then(|()| copy.write(&mut writer).map_err(|e| e.to_string()));
                if let Err(error) = written {
                    tracing::error!(%error, "cannot write a snapshot");
                    return;
                }
                tracing::info!(index, ?copied, elapsed = ?started.elapsed(), "took a snapshot");
                let _ = disk.send(DiskTask::Snapshot { writer });
            });
        match streaming {
            Ok(thread) => self.snapshotting = Some(thread),
            Err(error) => tracing::error!(%error, "cannot start the snapshot thread"),
        }
    }

    /// A configuration (and the registry that came with it, if any) took effect at the
    /// applied index: members that left are dropped from the transport, those that came are
    /// added, and `MemberList` shows the new members. If this member is no longer part of
    /// the cluster, the event loop is told.
    fn change_members(&mut self, membership: skiff_raft::Membership, registry: Option<Registry>) {
        let own = self.shared.id;
        let was_member = self.membership.contains(own);
        if let Some(registry) = registry {
            for id in self.registry.members.keys() {
                if *id != own && !registry.members.contains_key(id) {
                    self.shared.peers.remove(*id);
                }
            }
            self.shared.peers.ensure_all(&registry);
            self.registry = registry;
        }
        self.membership = membership;
        {
            let mut view = self.shared.members.lock().expect("members lock");
            view.registry = self.registry.clone();
            view.membership = self.membership.clone();
        }
        if was_member && !self.membership.contains(own) {
            self.reports.push(Internal::Removed);
        }
    }
}
