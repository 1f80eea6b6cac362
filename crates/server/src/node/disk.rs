//! The log writer: one thread owns the store and turns queued writes into one `fdatasync`
//! per batch (group commit). It runs in parallel with replication: the leader sends
//! AppendEntries while its own copy is being written (the Ready contract allows it).

use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use skiff_raft::{Entry, HardState, Message, SnapshotMeta};
use skiff_storage::snapshot::FileSnapshotWriter;
use skiff_storage::{FileStorage, OsFileSystem, Storage, StorageError};

use super::snapshot::ReceivedSnapshot;
use super::{Internal, Outbound};

/// A snapshot being written by the applier straight into the log store's snapshot file.
pub(crate) type SnapshotWriter = FileSnapshotWriter<OsFileSystem>;

/// One unit of work for the log writer, handled strictly in order.
pub(crate) enum DiskTask {
    /// The writes of one Ready, and the messages that may leave once they (and every earlier
    /// task) are durable.
    Ready {
        snapshot: Option<(SnapshotMeta, Arc<ReceivedSnapshot>)>,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
    },
    /// The applier starts a snapshot: answer with a writer into a new snapshot file (the
    /// applier streams the state machine into it, without this thread).
    BeginSnapshot {
        meta: SnapshotMeta,
        reply: std::sync::mpsc::Sender<Result<SnapshotWriter, String>>,
    },
    /// A snapshot of the state machine written by the applier: publish it, then drop the
    /// log it covers.
    Snapshot { writer: SnapshotWriter },
}

/// Most commit-only hard-state writes left unsynced in a row before one is synced anyway, so
/// buffered bytes stay bounded when no entries arrive for a long time.
const MAX_UNSYNCED_COMMIT_WRITES: u32 = 1024;

pub(crate) struct DiskWriter {
    pub storage: FileStorage,
    /// The hard state as of the last sync: a write that changes only `commit` needs no sync
    /// of its own (the commit index may lag on disk; term and vote may not).
    pub synced_hard_state: HardState,
    pub unsynced_commit_writes: u32,
    /// Entries kept in the log behind each snapshot this member takes.
    pub catchup_entries: u64,
    pub tasks: Receiver<DiskTask>,
    pub internal: tokio::sync::mpsc::UnboundedSender<Internal>,
    pub outbound: Outbound,
    /// Called with the duration of every fdatasync.
    pub on_fsync: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
}

impl DiskWriter {
    /// Runs until the task channel closes or the disk fails (then reports `Internal::Fatal`).
    pub fn run(mut self) {
        while let Ok(first) = self.tasks.recv() {
            let mut batch = vec![first];
            loop {
                match self.tasks.try_recv() {
                    Ok(task) => batch.push(task),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
                if batch.len() >= 1024 {
                    break;
                }
            }
            if let Err(error) = self.write_batch(batch) {
                tracing::error!(%error, "the log store failed; this member stops");
                let _ = self.internal.send(Internal::Fatal(error.to_string()));
                return;
            }
        }
    }

    fn write_batch(&mut self, batch: Vec<DiskTask>) -> Result<(), StorageError> {
        let mut last_entry: Option<(u64, u64)> = None;
        let mut last_hard_state: Option<HardState> = None;
        let mut messages = Vec::new();
        let mut wrote = false;
        let mut compacted = Vec::new();
        for task in batch {
            match task {
                DiskTask::Ready {
                    snapshot,
                    hard_state,
                    entries,
                    after_persist,
                } => {
                    if let Some((meta, received)) = snapshot {
                        // Install: drop the old log durably, publish, compact (the order the
                        // store requires for a snapshot that conflicts with the log).
                        let storage = &mut self.storage;
                        if storage.last_index() >= storage.first_index() {
                            storage.truncate(storage.first_index())?;
                        }
                        storage.sync()?;
                        install(storage, &meta, &received)?;
                        storage.compact(meta.index)?;
                        wrote = true;
                    }
                    if let Some(last) = entries.last() {
                        last_entry = Some((last.index, last.term));
                        self.storage.append(&entries)?;
                        wrote = true;
                    }
                    if let Some(hard_state) = hard_state {
                        self.storage.set_hard_state(hard_state)?;
                        if hard_state.term != self.synced_hard_state.term
                            || hard_state.vote != self.synced_hard_state.vote
                        {
                            wrote = true;
                        } else {
                            // Only the commit index moved: it rides along with the next sync
                            // (a restart may re-learn the commit index; nothing was promised).
                            self.unsynced_commit_writes += 1;
                            if self.unsynced_commit_writes >= MAX_UNSYNCED_COMMIT_WRITES {
                                wrote = true;
                            }
                        }
                        last_hard_state = Some(hard_state);
                    }
                    messages.extend(after_persist);
                }
                DiskTask::BeginSnapshot { meta, reply } => {
                    match self.storage.begin_snapshot(meta) {
                        Ok(writer) => {
                            let _ = reply.send(Ok(writer));
                        }
                        Err(error) => {
                            let _ = reply.send(Err(error.to_string()));
                            return Err(error);
                        }
                    }
                }
                DiskTask::Snapshot { writer } => {
                    let meta = writer.meta().clone();
                    let current = self.storage.snapshot_meta().map_or(0, |held| held.index);
                    if meta.index <= current {
                        // A snapshot received from the leader overtook it: not needed.
                        drop(writer);
                        continue;
                    }
                    // Everything it covers is applied, hence committed and durable here.
                    // A tail of entries stays for followers slightly behind.
                    self.storage.finish_snapshot(writer)?;
                    self.storage
                        .compact(meta.index.saturating_sub(self.catchup_entries))?;
                    compacted.push(meta);
                }
            }
        }
        if wrote {
            let started = Instant::now();
            self.storage.sync()?;
            (self.on_fsync)(started.elapsed());
            self.unsynced_commit_writes = 0;
            if let Some(hard_state) = last_hard_state {
                self.synced_hard_state = hard_state;
            }
        }
        // Acknowledgements first: on a follower they are what the leader waits for.
        if !messages.is_empty() {
            (self.outbound)(messages);
        }
        if let Some((index, term)) = last_entry {
            let _ = self.internal.send(Internal::Persisted { index, term });
        }
        for meta in compacted {
            let _ = self.internal.send(Internal::Compacted { meta });
        }
        Ok(())
    }
}

/// Copies a received snapshot into the store as its published snapshot, streaming.
fn install(
    storage: &mut FileStorage,
    meta: &SnapshotMeta,
    received: &ReceivedSnapshot,
) -> Result<(), StorageError> {
    let mut writer = storage.begin_snapshot(meta.clone())?;
    std::io::copy(&mut received.reader(), &mut writer)
        .map_err(|error| StorageError::from_io("write", "snapshot", error))?;
    storage.finish_snapshot(writer)
}
