//! The log writer: a thread turns queued writes into one `fdatasync` per batch (group
//! commit). It runs in parallel with replication: the leader sends AppendEntries while its
//! own copy is being written (the Ready contract allows it). A follower whose writer is idle
//! writes on the event loop instead (see [`DiskQueue`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use skiff_raft::{Entry, EntrySource, HardState, Message, SnapshotMeta};
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
/// A follower's answer to an AppendEntries without entries (a probe) is one of
/// `messages_after_persist`, and most Readies that carry one have nothing to write but a new
/// commit index. When every task handed to the writer is done (durable, its messages sent),
/// such a Ready's messages have nothing left to wait for, and going through the writer
/// would only cost its thread a wake-up with nothing to write: they are sent from here. A
/// hard state that changes only the commit index needs no sync (see [`DiskWriter`]), so it
/// is kept here and written with the next task, and a commit alone never wakes the writer.
///
/// On a follower, a Ready's writes are on the path of every commit: the leader waits for the
/// acknowledgement sent after them. When the writer is idle, handing them to its thread
/// costs a wake-up of that thread before the write starts; the event loop writes them itself
/// instead, under the writer's lock (etcd's followers also save in their raft loop). Only a
/// follower does: a leader's own write overlaps replication, and a leader must keep ticking
/// (heartbeats) however slow its disk is.
pub(crate) struct DiskQueue {
    tasks: Sender<DiskTask>,
    writer: Arc<Mutex<DiskWriter>>,
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
    /// The queue in front of `writer`, whose thread reads `tasks` (see [`run`]).
    pub fn new(tasks: Sender<DiskTask>, writer: Arc<Mutex<DiskWriter>>) -> DiskQueue {
        let (done, recovered, outbound) = {
            let writer = writer.lock().expect("log writer lock");
            (
                writer.done.clone(),
                writer.synced_hard_state,
                writer.outbound.clone(),
            )
        };
        DiskQueue {
            tasks,
            writer,
            sent: 0,
            done,
            handed_term: recovered.term,
            handed_vote: recovered.vote,
            deferred: None,
            outbound,
        }
    }

    /// Hands over one Ready's writes and the messages that wait for them (see the type's
    /// docs for the Readies answered without the writer, and for `follower`'s).
    pub fn ready(
        &mut self,
        snapshot: Option<(SnapshotMeta, Arc<ReceivedSnapshot>)>,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
        after_persist: Vec<Message>,
        follower: bool,
    ) -> Vec<Internal> {
        let commit_only = snapshot.is_none()
            && entries.is_empty()
            && hard_state
                .is_none_or(|hard| hard.term == self.handed_term && hard.vote == self.handed_vote);
        if commit_only {
            if hard_state.is_some() {
                self.deferred = hard_state;
            }
            if after_persist.is_empty() {
                return Vec::new();
            }
            if self.done.load(Ordering::Acquire) == self.sent {
                // Every earlier write is durable and this Ready has none that needs a sync.
                (self.outbound)(after_persist);
                return Vec::new();
            }
        }
        // `take` runs either way: nothing deferred outlives a write.
        let hard_state = hard_state.or(self.deferred.take());
        if let Some(hard) = hard_state {
            self.handed_term = hard.term;
            self.handed_vote = hard.vote;
        }
        let inline =
            follower && snapshot.is_none() && self.done.load(Ordering::Acquire) == self.sent;
        let task = DiskTask::Ready {
            snapshot,
            hard_state,
            entries,
            after_persist,
        };
        self.sent += 1;
        if inline {
            // The thread may hold the lock for a snapshot task; then the task waits its turn.
            if let Ok(mut writer) = self.writer.try_lock() {
                return match writer.write_batch(vec![task]) {
                    Ok(reports) => reports,
                    Err(error) => vec![writer.failed(&error)],
                };
            }
        }
        if self.tasks.send(task).is_err() {
            tracing::error!("log writer is gone");
        }
        Vec::new()
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
    pub internal: tokio::sync::mpsc::UnboundedSender<Internal>,
    pub outbound: Outbound,
    /// `Ready` tasks finished (see [`DiskQueue`]).
    pub done: Arc<AtomicU64>,
    /// Called with the duration of every fdatasync.
    pub on_fsync: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
}

/// The writer's thread: runs until the task channel closes or the disk fails (then reports
/// `Internal::Fatal`).
pub(crate) fn run(writer: Arc<Mutex<DiskWriter>>, tasks: Receiver<DiskTask>) {
    while let Ok(first) = tasks.recv() {
        let mut batch = vec![first];
        loop {
            match tasks.try_recv() {
                Ok(task) => batch.push(task),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut writer = writer.lock().expect("log writer lock");
        match writer.write_batch(batch) {
            Ok(reports) => {
                for report in reports {
                    let _ = writer.internal.send(report);
                }
            }
            Err(error) => {
                let _ = writer.internal.send(writer.failed(&error));
                return;
            }
        }
    }
}

impl DiskWriter {
    /// Logs a failure of the log store and says so to the event loop: the member stops.
    fn failed(&self, error: &StorageError) -> Internal {
        tracing::error!(%error, "the log store failed; this member stops");
        Internal::Fatal(error.to_string())
    }

    /// Writes and syncs a batch of tasks, then sends the messages that waited for it.
    /// Returns what the event loop is to hear (the caller delivers it: the thread through
    /// the channel, the event loop, writing itself, directly, which saves waking its own
    /// task).
    fn write_batch(&mut self, batch: Vec<DiskTask>) -> Result<Vec<Internal>, StorageError> {
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
        let mut reports = Vec::new();
        if let Some((index, term)) = last_entry {
            reports.push(Internal::Persisted { index, term });
        }
        reports.extend(
            compacted
                .into_iter()
                .map(|meta| Internal::Compacted { meta }),
        );
        Ok(reports)
    }
}

/// The log store as the core's [`EntrySource`]: the core keeps only its last applied
/// entries in memory (see `NodeOptions::kept_entries`), and reads older ones back from here,
/// from the store's cache of recent entries or its segment files, to send them to a member
/// that lags behind. It takes the log writer's lock, so a read waits for a write in
/// progress; reads are rare (a follower that fell far behind, a new leader's catch-up).
pub(crate) struct WalSource {
    writer: Arc<Mutex<DiskWriter>>,
}

impl WalSource {
    pub(crate) fn new(writer: Arc<Mutex<DiskWriter>>) -> WalSource {
        WalSource { writer }
    }
}

impl EntrySource for WalSource {
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        // A poisoned lock means the writer thread panicked; the member is stopping.
        let mut writer = self.writer.lock().ok()?;
        match writer.storage.entries(low, high, max_bytes) {
            Ok(entries) => Some(entries),
            // Compacted for a snapshot the event loop has not heard of yet.
            Err(StorageError::Compacted { .. }) => None,
            Err(error) => {
                // The member's own disk failed (or its log is damaged): stop, as on a write.
                let _ = writer.internal.send(writer.failed(&error));
                None
            }
        }
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
    use crate::node::scratch::Scratch;
    use std::sync::mpsc::{channel, Receiver};

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

    /// A writer over a new log store in `dir` at term 3, sending to `outbound`, with `on_fsync`,
    /// counting finished Readies in `done`; and the receiving end of its reports channel.
    fn writer_in(
        dir: &Scratch,
        outbound: Outbound,
        on_fsync: Arc<dyn Fn(std::time::Duration) + Send + Sync>,
        done: Arc<AtomicU64>,
    ) -> (DiskWriter, tokio::sync::mpsc::UnboundedReceiver<Internal>) {
        let file_system = OsFileSystem::new(dir.path()).unwrap();
        let (mut storage, _) =
            skiff_storage::FileStorage::open(file_system, Default::default()).unwrap();
        let recovered = HardState {
            term: 3,
            ..HardState::default()
        };
        storage.set_hard_state(recovered).unwrap();
        storage.sync().unwrap();
        let (internal, reports) = tokio::sync::mpsc::unbounded_channel();
        let writer = DiskWriter {
            storage,
            synced_hard_state: recovered,
            unsynced_commit_writes: 0,
            catchup_entries: 0,
            internal,
            outbound,
            done,
            on_fsync,
        };
        (writer, reports)
    }

    struct Harness {
        queue: DiskQueue,
        writer: Arc<Mutex<DiskWriter>>,
        done: Arc<AtomicU64>,
        tasks: Receiver<DiskTask>,
        sent: Arc<Mutex<Vec<Message>>>,
        /// What the writer told the event loop through the channel.
        reports: tokio::sync::mpsc::UnboundedReceiver<Internal>,
        _dir: Scratch,
    }

    impl Harness {
        fn new(name: &str) -> Harness {
            let dir = Scratch::new(&format!("disk-{name}"));
            let (tx, tasks) = channel();
            let sent = Arc::new(Mutex::new(Vec::new()));
            let outbound: Outbound = {
                let sent = sent.clone();
                Arc::new(move |messages| sent.lock().unwrap().extend(messages))
            };
            let done = Arc::new(AtomicU64::new(0));
            let (writer, reports) = writer_in(&dir, outbound, Arc::new(|_| {}), done.clone());
            let writer = Arc::new(Mutex::new(writer));
            Harness {
                queue: DiskQueue::new(tx, writer.clone()),
                writer,
                done,
                tasks,
                sent,
                reports,
                _dir: dir,
            }
        }

        /// Hands over a Ready as the leader does (never written on the event loop).
        fn ready(
            &mut self,
            hard_state: Option<HardState>,
            entries: Vec<Entry>,
            acks: Vec<Message>,
        ) {
            let reports = self.queue.ready(None, hard_state, entries, acks, false);
            assert!(
                reports.is_empty(),
                "a leader's writes are reported by the thread"
            );
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

        fn last_index(&self) -> u64 {
            self.writer.lock().unwrap().storage.last_index()
        }
    }

    #[test]
    fn a_commit_notice_is_answered_at_once_when_the_writer_is_idle() {
        let mut h = Harness::new("notice");
        h.ready(hard(3, None, 7), Vec::new(), vec![ack(7)]);
        assert_eq!(h.sent_now(), vec![ack(7)], "answered without the writer");
        assert!(
            h.task().is_none(),
            "a commit alone does not wake the writer"
        );

        // The commit index rides with the next write.
        h.ready(None, vec![entry(8)], vec![ack(8)]);
        assert_eq!(h.task(), Some((hard(3, None, 7), 1, vec![ack(8)])));
        assert!(
            h.sent_now().is_empty(),
            "an entry's acknowledgement waits for its sync"
        );
    }

    #[test]
    fn a_commit_notice_waits_behind_unfinished_writes() {
        let mut h = Harness::new("waits");
        h.ready(None, vec![entry(8)], vec![ack(8)]);
        assert_eq!(h.task(), Some((None, 1, vec![ack(8)])));
        // Entry 8 is not durable yet: the answer to a notice covering it must not overtake it.
        h.ready(hard(3, None, 8), Vec::new(), vec![ack(8)]);
        assert!(h.sent_now().is_empty());
        assert_eq!(h.task(), Some((hard(3, None, 8), 0, vec![ack(8)])));

        // Once the writer has finished both, notices are answered directly again.
        h.done.fetch_add(1, Ordering::Release);
        h.ready(hard(3, None, 8), Vec::new(), vec![ack(8)]);
        assert!(
            h.sent_now().is_empty(),
            "one of two tasks is still unfinished"
        );
        assert!(h.task().is_some());
        h.writer_catches_up();
        h.ready(hard(3, None, 9), Vec::new(), vec![ack(9)]);
        assert_eq!(h.sent_now(), vec![ack(9)]);
        assert!(h.task().is_none());
    }

    #[test]
    fn a_new_term_or_vote_always_goes_through_the_writer() {
        let mut h = Harness::new("term");
        h.ready(hard(4, None, 0), Vec::new(), vec![ack(0)]);
        assert!(h.sent_now().is_empty(), "a new term must be synced first");
        assert_eq!(h.task(), Some((hard(4, None, 0), 0, vec![ack(0)])));
        h.writer_catches_up();

        h.ready(hard(4, Some(2), 0), Vec::new(), vec![ack(0)]);
        assert!(h.sent_now().is_empty(), "a vote must be synced first");
        assert_eq!(h.task(), Some((hard(4, Some(2), 0), 0, vec![ack(0)])));
        h.writer_catches_up();

        // Same term and vote as handed over: commit-only again.
        h.ready(hard(4, Some(2), 5), Vec::new(), vec![ack(5)]);
        assert_eq!(h.sent_now(), vec![ack(5)]);
        assert!(h.task().is_none());
    }

    #[test]
    fn a_newer_hard_state_replaces_the_deferred_commit() {
        let mut h = Harness::new("newer");
        h.ready(hard(3, None, 7), Vec::new(), Vec::new());
        assert!(h.task().is_none() && h.sent_now().is_empty());
        h.ready(hard(5, None, 7), vec![entry(8)], Vec::new());
        assert_eq!(h.task(), Some((hard(5, None, 7), 1, Vec::new())));
        h.writer_catches_up();
        // Nothing deferred is left to ride along.
        h.ready(None, vec![entry(9)], Vec::new());
        assert_eq!(h.task(), Some((None, 1, Vec::new())));
    }

    #[test]
    fn a_follower_writes_on_the_event_loop_when_the_writer_is_idle() {
        let mut h = Harness::new("follower");
        let reports = h
            .queue
            .ready(None, hard(3, None, 0), vec![entry(1)], vec![ack(1)], true);
        assert!(h.task().is_none(), "not handed to the thread");
        assert_eq!(h.last_index(), 1, "written");
        assert_eq!(h.sent_now(), vec![ack(1)], "acknowledged once written");
        assert_eq!(h.done.load(Ordering::Acquire), 1);
        // Reported to the caller, the event loop itself: nothing goes through the channel,
        // whose message would wake the event loop's own task.
        assert!(
            matches!(reports[..], [Internal::Persisted { index: 1, term: 3 }]),
            "the write is reported to the event loop directly"
        );
        assert!(h.reports.try_recv().is_err());

        // Behind a task the thread has not finished, a follower's write queues too.
        h.ready(None, vec![entry(2)], vec![ack(2)]);
        let reports = h
            .queue
            .ready(None, None, vec![entry(3)], vec![ack(3)], true);
        assert!(reports.is_empty(), "the thread will report it");
        assert_eq!(h.task(), Some((None, 1, vec![ack(2)])));
        assert_eq!(h.task(), Some((None, 1, vec![ack(3)])));
        assert!(h.sent_now().is_empty());
        assert_eq!(h.last_index(), 1);

        // So does a write while the thread holds the writer (e.g. for a snapshot).
        h.writer_catches_up();
        let held = h.writer.lock().unwrap();
        h.queue
            .ready(None, None, vec![entry(2)], vec![ack(2)], true);
        drop(held);
        assert_eq!(h.task(), Some((None, 1, vec![ack(2)])));
    }

    /// The writer counts a Ready finished only after its sync and after handing its
    /// acknowledgements to the transport: the event loop's own answers must not overtake
    /// either.
    #[test]
    fn the_writer_counts_readies_after_syncing_and_sending() {
        let dir = Scratch::new("disk-counts");
        let done = Arc::new(AtomicU64::new(0));
        let seen_at_sync = Arc::new(Mutex::new(Vec::new()));
        let seen_at_send = Arc::new(Mutex::new(Vec::new()));
        let outbound: Outbound = {
            let (done, seen) = (done.clone(), seen_at_send.clone());
            Arc::new(move |messages: Vec<Message>| {
                seen.lock()
                    .unwrap()
                    .push((done.load(Ordering::Acquire), messages.len()))
            })
        };
        let on_fsync: Arc<dyn Fn(std::time::Duration) + Send + Sync> = {
            let (done, seen) = (done.clone(), seen_at_sync.clone());
            Arc::new(move |_| seen.lock().unwrap().push(done.load(Ordering::Acquire)))
        };
        let (writer, mut reports) = writer_in(&dir, outbound, on_fsync, done.clone());
        let (tx, tasks) = channel();
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
        run(Arc::new(Mutex::new(writer)), tasks);
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
        assert!(
            matches!(
                reports.try_recv(),
                Ok(Internal::Persisted { index: 2, term: 3 })
            ),
            "the thread reports the batch through the channel"
        );
        assert!(reports.try_recv().is_err());
    }
}
