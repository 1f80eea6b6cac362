//! The log writer: one thread owns the store and turns queued writes into one `fdatasync`
//! per batch (group commit). It runs in parallel with replication: the leader sends
//! AppendEntries while its own copy is being written (the Ready contract allows it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
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

/// The event loop's side of the log writer: it hands over each Ready's writes, and answers
/// the Readies that need no write itself.
///
/// A follower's answer to a commit notice (an AppendEntries without entries) is one of
/// `messages_after_persist`, and most Readies that carry one have nothing to write but a new
/// commit index. When every task handed to the writer is done (durable, its messages sent),
/// such a Ready's messages have nothing left to wait for, and going through the writer
/// would only cost its thread a wake-up per commit: they are sent from here. A hard state
/// that changes only the commit index needs no sync (see [`DiskWriter`]), so it is kept
/// here and written with the next task, and a commit alone never wakes the writer.
pub(crate) struct DiskQueue {
    tasks: Sender<DiskTask>,
    /// `Ready` tasks handed to the writer.
    sent: u64,
    /// `Ready` tasks the writer has finished: synced, and their messages handed to the
    /// transport. Equal to `sent` when the writer is idle.
    done: Arc<AtomicU64>,
    /// Term and vote of the last hard state handed to the writer (or recovered).
    handed_term: u64,
    handed_vote: Option<u64>,
    /// A commit-only hard state not yet handed to the writer.
    deferred: Option<HardState>,
    outbound: Outbound,
}

impl DiskQueue {
    /// The queue and the counter its writer (`DiskWriter::done`) advances.
    pub fn new(
        tasks: Sender<DiskTask>,
        recovered: HardState,
        outbound: Outbound,
    ) -> (DiskQueue, Arc<AtomicU64>) {
        let done = Arc::new(AtomicU64::new(0));
        let queue = DiskQueue {
            tasks,
            sent: 0,
            done: done.clone(),
            handed_term: recovered.term,
            handed_vote: recovered.vote,
            deferred: None,
            outbound,
        };
        (queue, done)
    }

    /// Hands over one Ready's writes and the messages that wait for them (see the type's
    /// docs for the Readies answered without the writer).
    pub fn ready(
        &mut self,
        snapshot: Option<(SnapshotMeta, Arc<ReceivedSnapshot>)>,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
    ) {
        let commit_only = snapshot.is_none()
            && entries.is_empty()
            && hard_state
                .is_none_or(|hard| hard.term == self.handed_term && hard.vote == self.handed_vote);
        if commit_only {
            if hard_state.is_some() {
                self.deferred = hard_state;
            }
            if after_persist.is_empty() {
                return;
            }
            if self.done.load(Ordering::Acquire) == self.sent {
                // Every earlier write is durable and this Ready has none that needs a sync.
                (self.outbound)(after_persist);
                return;
            }
        }
        let hard_state = hard_state.or(self.deferred.take());
        if let Some(hard) = hard_state {
            self.handed_term = hard.term;
            self.handed_vote = hard.vote;
            self.deferred = None;
        }
        let task = DiskTask::Ready {
            snapshot,
            hard_state,
            entries,
            after_persist,
        };
        self.sent += 1;
        if self.tasks.send(task).is_err() {
            tracing::error!("log writer is gone");
        }
    }
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
    /// `Ready` tasks finished (see [`DiskQueue`]).
    pub done: Arc<AtomicU64>,
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
        let mut readies = 0;
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
                    readies += 1;
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
        // Only now: the event loop sends acknowledgements itself once this catches up.
        self.done.fetch_add(readies, Ordering::Release);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Receiver};
    use std::sync::Mutex;

    use bytes::Bytes;
    use skiff_raft::{EntryKind, MessageBody};

    use super::*;

    fn ack(index: u64) -> Message {
        Message {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::AppendEntriesResponse {
                success: true,
                index,
                hint_index: 0,
                hint_term: 0,
            },
        }
    }

    fn entry(index: u64) -> Entry {
        Entry {
            term: 3,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"put"),
        }
    }

    fn hard(term: u64, vote: Option<u64>, commit: u64) -> Option<HardState> {
        Some(HardState { term, vote, commit })
    }

    struct Harness {
        queue: DiskQueue,
        done: Arc<AtomicU64>,
        tasks: Receiver<DiskTask>,
        sent: Arc<Mutex<Vec<Message>>>,
    }

    impl Harness {
        fn new() -> Harness {
            let (tx, tasks) = channel();
            let sent = Arc::new(Mutex::new(Vec::new()));
            let outbound: Outbound = {
                let sent = sent.clone();
                Arc::new(move |messages| sent.lock().unwrap().extend(messages))
            };
            let recovered = HardState {
                term: 3,
                ..HardState::default()
            };
            let (queue, done) = DiskQueue::new(tx, recovered, outbound);
            Harness {
                queue,
                done,
                tasks,
                sent,
            }
        }

        /// The next task handed to the writer: (hard state, entry count, acknowledgements).
        fn task(&self) -> Option<(Option<HardState>, usize, Vec<Message>)> {
            match self.tasks.try_recv().ok()? {
                DiskTask::Ready {
                    hard_state,
                    entries,
                    after_persist,
                    ..
                } => Some((hard_state, entries.len(), after_persist)),
                _ => panic!("the queue hands over only Readies"),
            }
        }

        fn sent_now(&self) -> Vec<Message> {
            std::mem::take(&mut *self.sent.lock().unwrap())
        }

        /// The writer finishes every task handed over so far.
        fn writer_catches_up(&self) {
            while self.task().is_some() {}
            self.done.store(self.queue.sent, Ordering::Release);
        }
    }

    #[test]
    fn a_commit_notice_is_answered_at_once_when_the_writer_is_idle() {
        let mut h = Harness::new();
        h.queue
            .ready(None, hard(3, None, 7), Vec::new(), vec![ack(7)]);
        assert_eq!(h.sent_now(), vec![ack(7)], "answered without the writer");
        assert!(
            h.task().is_none(),
            "a commit alone does not wake the writer"
        );

        // The commit index rides with the next write.
        h.queue.ready(None, None, vec![entry(8)], vec![ack(8)]);
        assert_eq!(h.task(), Some((hard(3, None, 7), 1, vec![ack(8)])));
        assert!(
            h.sent_now().is_empty(),
            "an entry's acknowledgement waits for its sync"
        );
    }

    #[test]
    fn a_commit_notice_waits_behind_unfinished_writes() {
        let mut h = Harness::new();
        h.queue.ready(None, None, vec![entry(8)], vec![ack(8)]);
        assert_eq!(h.task(), Some((None, 1, vec![ack(8)])));
        // Entry 8 is not durable yet: the answer to a notice covering it must not overtake it.
        h.queue
            .ready(None, hard(3, None, 8), Vec::new(), vec![ack(8)]);
        assert!(h.sent_now().is_empty());
        assert_eq!(h.task(), Some((hard(3, None, 8), 0, vec![ack(8)])));

        // Once the writer has finished both, notices are answered directly again.
        h.done.fetch_add(1, Ordering::Release);
        h.queue
            .ready(None, hard(3, None, 8), Vec::new(), vec![ack(8)]);
        assert!(
            h.sent_now().is_empty(),
            "one of two tasks is still unfinished"
        );
        assert!(h.task().is_some());
        h.writer_catches_up();
        h.queue
            .ready(None, hard(3, None, 9), Vec::new(), vec![ack(9)]);
        assert_eq!(h.sent_now(), vec![ack(9)]);
        assert!(h.task().is_none());
    }

    #[test]
    fn a_new_term_or_vote_always_goes_through_the_writer() {
        let mut h = Harness::new();
        h.queue
            .ready(None, hard(4, None, 0), Vec::new(), vec![ack(0)]);
        assert!(h.sent_now().is_empty(), "a new term must be synced first");
        assert_eq!(h.task(), Some((hard(4, None, 0), 0, vec![ack(0)])));
        h.writer_catches_up();

        h.queue
            .ready(None, hard(4, Some(2), 0), Vec::new(), vec![ack(0)]);
        assert!(h.sent_now().is_empty(), "a vote must be synced first");
        assert_eq!(h.task(), Some((hard(4, Some(2), 0), 0, vec![ack(0)])));
        h.writer_catches_up();

        // Same term and vote as handed over: commit-only again.
        h.queue
            .ready(None, hard(4, Some(2), 5), Vec::new(), vec![ack(5)]);
        assert_eq!(h.sent_now(), vec![ack(5)]);
        assert!(h.task().is_none());
    }

    #[test]
    fn a_newer_hard_state_replaces_the_deferred_commit() {
        let mut h = Harness::new();
        h.queue
            .ready(None, hard(3, None, 7), Vec::new(), Vec::new());
        assert!(h.task().is_none() && h.sent_now().is_empty());
        h.queue
            .ready(None, hard(5, None, 7), vec![entry(8)], Vec::new());
        assert_eq!(h.task(), Some((hard(5, None, 7), 1, Vec::new())));
        h.writer_catches_up();
        // Nothing deferred is left to ride along.
        h.queue.ready(None, None, vec![entry(9)], Vec::new());
        assert_eq!(h.task(), Some((None, 1, Vec::new())));
    }

    /// The writer counts a Ready finished only after its sync and after handing its
    /// acknowledgements to the transport: the event loop's own answers must not overtake
    /// either.
    #[test]
    fn the_writer_counts_readies_after_syncing_and_sending() {
        let dir = std::env::temp_dir().join(format!("skiff-disk-queue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file_system = OsFileSystem::new(&dir).unwrap();
        let (storage, _) =
            skiff_storage::FileStorage::open(file_system, Default::default()).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let seen_at_sync = Arc::new(Mutex::new(Vec::new()));
        let seen_at_send = Arc::new(Mutex::new(Vec::new()));
        let (tx, tasks) = channel();
        let (internal, _internal_rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = DiskWriter {
            storage,
            synced_hard_state: HardState::default(),
            unsynced_commit_writes: 0,
            catchup_entries: 0,
            tasks,
            internal,
            outbound: {
                let (done, seen) = (done.clone(), seen_at_send.clone());
                Arc::new(move |messages: Vec<Message>| {
                    seen.lock()
                        .unwrap()
                        .push((done.load(Ordering::Acquire), messages.len()))
                })
            },
            done: done.clone(),
            on_fsync: {
                let (done, seen) = (done.clone(), seen_at_sync.clone());
                Arc::new(move |_| seen.lock().unwrap().push(done.load(Ordering::Acquire)))
            },
        };
        for index in 1..=2 {
            let task = DiskTask::Ready {
                snapshot: None,
                hard_state: hard(3, None, 0),
                entries: vec![entry(index)],
                after_persist: vec![ack(index)],
            };
            tx.send(task).unwrap();
        }
        drop(tx);
        writer.run();
        assert_eq!(done.load(Ordering::Acquire), 2);
        let syncs = seen_at_sync.lock().unwrap().clone();
        let sends = seen_at_send.lock().unwrap().clone();
        assert_eq!(
            syncs,
            vec![0],
            "one sync for the batch, before it is counted"
        );
        assert_eq!(
            sends,
            vec![(0, 2)],
            "acknowledgements sent before the count moves"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
