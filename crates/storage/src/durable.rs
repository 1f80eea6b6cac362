//! The durable store: a segmented write-ahead log of entries and hard state, plus snapshot
//! files, over any [`FileSystem`]. The layout, the fsync rules and the argument for recovery
//! are in docs/storage-format.md; this file implements them.
//!
//! Writes are buffered by `append`, `truncate` and `set_hard_state` and made durable by `sync`
//! with one record, one `pwrite` and one `fdatasync` (group commit). Reads are served from a
//! bounded cache of recent entries, else from the segment files through an index of where each
//! record of live entries lies.
//!
//! With `prepare_segments_in_background`, the next segment is zero-filled and synced under its
//! temporary name on a helper thread while the current one fills, so that a rotation only
//! writes the header, syncs and renames.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use skiff_raft::{Entry, HardState, SnapshotMeta};

use crate::config::StorageConfig;
use crate::error::{Result, StorageError};
use crate::file_system::{FileSystem, StorageFile, WRITE_BACK_PIECE_BYTES};
use crate::format::{
    self, begin_record, check_payload, decode_record_header, decode_segment_header, decode_write,
    encode_record, encode_segment_header, encode_write_into, encoded_entry_bytes, finish_record,
    parse_segment_file_name, parse_snapshot_file_name, segment_file_name, snapshot_file_name,
    write_payload_bytes, RecordType, SegmentHeader, RECORD_HEADER_BYTES,
};
use crate::snapshot::{open_snapshot_file, FileSnapshotReader, FileSnapshotWriter};
use crate::{Recovered, Storage};

/// Counters of what the store did, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorageMetrics {
    /// `fdatasync` calls on segment files made by `sync` for write records.
    pub record_syncs: u64,
    /// `fdatasync` calls for everything else (new segments, torn-tail cleaning, snapshots).
    pub other_syncs: u64,
    /// Directory fsyncs.
    pub directory_syncs: u64,
    /// Write records written.
    pub records_written: u64,
    /// Bytes of records written.
    pub record_bytes_written: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments created from a file zero-filled and synced ahead of time on a helper thread.
    pub segments_prepared_in_background: u64,
    /// Rotations that had to wait for the helper thread to finish preparing the next segment.
    pub segment_preparation_waits: u64,
    /// Segments deleted by compaction.
    pub segments_deleted: u64,
    /// Entries read back from segment files (cache misses).
    pub entries_read_from_disk: u64,
}

/// Where the live entries from `first_index` on (up to the next run) were written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first_index: u64,
    segment: u64,
    offset: u64,
    length: u64,
}

struct Segment<F: FileSystem> {
    file: F::File,
}

/// The next segment being zero-filled and synced on a helper thread, under the temporary name
/// of the synchronous path (`<seq>.wal.tmp`, which recovery deletes). The rotation to
/// `sequence` joins the thread, so no record is ever written to a segment that is not fully
/// prepared; only then does it write the header, sync and rename, exactly as the synchronous
/// path does after its zeros.
struct Preparation<F: FileSystem> {
    sequence: u64,
    /// Set when the store is dropped: the thread stops between chunks.
    cancel: Arc<AtomicBool>,
    /// The prepared file and the number of `fdatasync` calls it took.
    thread: std::thread::JoinHandle<Result<(F::File, u64)>>,
}

/// A torn tail found at open, overwritten with zeros before any new write.
struct TornTail {
    segment: u64,
    start: u64,
    end: u64,
}

/// The durable store over a file system: [`crate::FileStorage`] on real files,
/// [`crate::SimulatedStorage`] on the simulated disk.
pub struct DurableStorage<F: FileSystem> {
    file_system: F,
    config: StorageConfig,
    poisoned: Arc<AtomicBool>,
    segments: BTreeMap<u64, Segment<F>>,
    active_segment: u64,
    write_offset: u64,
    next_record_sequence: u64,
    /// Entries at or below are covered by the snapshot and cannot be read.
    compacted_through: u64,
    last_index: u64,
    /// Last index of the log as written (and synced) to disk.
    durable_last_index: u64,
    /// Entries from this index on are to be written by the next `sync`; below it, the log on
    /// disk is the log. With no pending entries, a value ≤ `durable_last_index` is a truncation.
    pending_from: Option<u64>,
    pending_bytes: u64,
    hard_state: HardState,
    durable_hard_state: HardState,
    hard_state_pending: bool,
    /// Recent entries, consecutive, ending at `last_index`; holds every pending entry.
    cache: VecDeque<Entry>,
    cache_bytes: u64,
    runs: VecDeque<Run>,
    snapshot: Option<SnapshotMeta>,
    snapshot_file: Option<String>,
    next_temporary: u64,
    metrics: StorageMetrics,
    preparation: Option<Preparation<F>>,
}

impl<F: FileSystem> DurableStorage<F> {
    /// Opens (or creates) the store on `file_system` and recovers its durable state.
    /// Fails with [`StorageError::Corrupt`] if the files hold damage a crash cannot explain.
    pub fn open(file_system: F, config: StorageConfig) -> Result<(DurableStorage<F>, Recovered)> {
        config.validate()?;
        let mut storage = DurableStorage {
            file_system,
            config,
            poisoned: Arc::new(AtomicBool::new(false)),
            segments: BTreeMap::new(),
            active_segment: 0,
            write_offset: 0,
            next_record_sequence: 1,
            compacted_through: 0,
            last_index: 0,
            durable_last_index: 0,
            pending_from: None,
            pending_bytes: 0,
            hard_state: HardState::default(),
            durable_hard_state: HardState::default(),
            hard_state_pending: false,
            cache: VecDeque::new(),
            cache_bytes: 0,
            runs: VecDeque::new(),
            snapshot: None,
            snapshot_file: None,
            next_temporary: 0,
            metrics: StorageMetrics::default(),
            preparation: None,
        };
        let recovered = storage.recover()?;
        Ok((storage, recovered))
    }

    /// The configuration in force.
    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// What the store did so far.
    pub fn metrics(&self) -> StorageMetrics {
        self.metrics
    }

    /// The file system the store runs on.
    pub fn file_system(&self) -> &F {
        &self.file_system
    }

    /// True once a write or fsync failed; every later write is refused.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_poisoned() {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    /// Runs a step that writes to disk; any failure poisons the store.
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.check_writable()?;
        let result = step(self);
        if result.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        result
    }

    // ----- recovery -------------------------------------------------------------------------

    fn recover(&mut self) -> Result<Recovered> {
        let names = self.file_system.list()?;
        let mut changed_directory = false;
        let mut segment_sequences = Vec::new();
        let mut snapshots = Vec::new();
        for name in &names {
            if name.ends_with(".tmp") {
                self.file_system.remove(name)?;
                changed_directory = true;
            } else if let Some(sequence) = parse_segment_file_name(name) {
                segment_sequences.push(sequence);
            } else if let Some((index, term)) = parse_snapshot_file_name(name) {
                snapshots.push((index, term, name.clone()));
            }
        }
        snapshots.sort();
        if let Some((_, _, name)) = snapshots.last() {
            let (meta, _) = open_snapshot_file(&self.file_system, name)?;
            let (index, term) = parse_snapshot_file_name(name).expect("parsed above");
            if meta.index != index || meta.term != term {
                return Err(StorageError::corrupt(
                    name,
                    0,
                    format!("header says index {} term {}", meta.index, meta.term),
                ));
            }
            self.snapshot = Some(meta);
            self.snapshot_file = Some(name.clone());
        }
        for (_, _, name) in snapshots.iter().rev().skip(1) {
            self.file_system.remove(name)?;
            changed_directory = true;
        }
        if changed_directory {
            self.sync_directory()?;
        }
        segment_sequences.sort_unstable();
        for pair in segment_sequences.windows(2) {
            if pair[1] != pair[0] + 1 {
                return Err(StorageError::corrupt(
                    &segment_file_name(pair[0] + 1),
                    0,
                    "segment missing between existing segments",
                ));
            }
        }
        let snapshot_index = self.snapshot.as_ref().map_or(0, |meta| meta.index);
        let scans = scan_segments(&self.file_system, &self.config, &segment_sequences);
        let mut replay = Replay::default();
        let mut torn_tail = None;
        for (sequence, scan) in segment_sequences.iter().copied().zip(scans) {
            let scan = scan?;
            if replay.started && scan.header_sequence != replay.next_sequence {
                return Err(StorageError::corrupt(
                    &segment_file_name(sequence),
                    0,
                    format!(
                        "segment starts at record {} but the previous segment ended before record {}",
                        scan.header_sequence, replay.next_sequence
                    ),
                ));
            }
            replay.started = true;
            replay.next_sequence = scan.next_sequence;
            replay.hard_state = scan.hard_state;
            replay.entries.reserve(scan.entry_count);
            for (write, location) in scan.writes {
                replay.apply(write, location);
            }
            self.active_segment = sequence;
            self.write_offset = scan.end_offset;
            torn_tail = scan.torn_tail;
        }
        if let Some(tail) = torn_tail {
            self.clean_torn_tail(&tail)?;
        }
        self.next_record_sequence = replay.next_sequence.max(1);
        // Entries the snapshot covers are not part of the log any more.
        while replay
            .entries
            .front()
            .is_some_and(|entry| entry.index <= snapshot_index)
        {
            replay.entries.pop_front();
        }
        let last_index = replay.last_index.max(snapshot_index);
        let first_present = replay
            .entries
            .front()
            .map_or(last_index + 1, |entry| entry.index);
        if first_present != snapshot_index + 1 {
            let file = segment_sequences.first().map_or_else(
                || "log".to_string(),
                |sequence| segment_file_name(*sequence),
            );
            return Err(StorageError::corrupt(
                &file,
                0,
                format!(
                    "entries {}..{} are missing (snapshot index {snapshot_index})",
                    snapshot_index + 1,
                    first_present
                ),
            ));
        }
        self.compacted_through = snapshot_index;
        self.last_index = last_index;
        self.durable_last_index = last_index;
        self.hard_state = replay.hard_state;
        self.durable_hard_state = replay.hard_state;
        self.runs = replay.runs;
        self.drop_runs_through(snapshot_index);
        if segment_sequences.is_empty() {
            self.guarded(|storage| storage.create_segment(1))?;
        } else {
            self.start_preparing(self.active_segment + 1);
        }
        self.delete_obsolete_segments()?;
        // Fill the cache with the newest entries that fit.
        let mut cached_bytes = 0;
        for entry in replay.entries.iter().rev() {
            if cached_bytes + entry.size_bytes() > self.config.entry_cache_bytes {
                break;
            }
            cached_bytes += entry.size_bytes();
            self.cache.push_front(entry.clone());
        }
        self.cache_bytes = cached_bytes;
        self.check_invariants();
        Ok(Recovered {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: Vec::from(replay.entries),
        })
    }

    fn clean_torn_tail(&mut self, tail: &TornTail) -> Result<()> {
        self.guarded(|storage| {
            let zeros = vec![0u8; (tail.end - tail.start) as usize];
            let segment = storage.segment_file(tail.segment)?;
            segment.file.write_at(tail.start, &zeros)?;
            segment.file.sync_data()?;
            storage.metrics.other_syncs += 1;
            Ok(())
        })
    }

    fn segment_file(&mut self, sequence: u64) -> Result<&mut Segment<F>> {
        if !self.segments.contains_key(&sequence) {
            let file = self.file_system.open(&segment_file_name(sequence))?;
            self.segments.insert(sequence, Segment { file });
        }
        Ok(self.segments.get_mut(&sequence).expect("inserted above"))
    }

    // ----- writing ----------------------------------------------------------------------------

    fn sync_directory(&mut self) -> Result<()> {
        self.file_system.sync_directory()?;
        self.metrics.directory_syncs += 1;
        Ok(())
    }

    /// Creates segment `sequence`: temporary file, zeros, header record, fdatasync, rename,
    /// directory fsync. Only then may records be written into it. With background preparation
    /// the temporary file and its zeros were made (and synced) ahead of time; this waits for
    /// them if they are not finished, then writes the header, syncs and renames. Either way it
    /// starts preparing the segment after this one.
    fn create_segment(&mut self, sequence: u64) -> Result<()> {
        let name = segment_file_name(sequence);
        let temporary = temporary_segment_name(sequence);
        let mut file = match self.take_prepared(sequence)? {
            Some(file) => file,
            None => {
                let mut file = self.file_system.create(&temporary)?;
                if self.config.preallocate_segments {
                    zero_fill(&mut file, 0, self.config.segment_size_bytes)?;
                }
                file
            }
        };
        let payload = encode_segment_header(&SegmentHeader {
            segment_sequence: sequence,
            hard_state: self.durable_hard_state,
        });
        let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        encode_record(
            &mut record,
            RecordType::SegmentHeader,
            self.next_record_sequence,
            &payload,
        );
        file.write_at(0, &record)?;
        file.sync_data()?;
        self.metrics.other_syncs += 1;
        self.file_system.rename(&temporary, &name)?;
        self.sync_directory()?;
        self.metrics.segments_created += 1;
        self.segments.insert(sequence, Segment { file });
        self.active_segment = sequence;
        self.write_offset = record.len() as u64;
        self.next_record_sequence += 1;
        self.start_preparing(sequence + 1);
        Ok(())
    }

    fn prepares_in_background(&self) -> bool {
        self.config.prepare_segments_in_background
            && self.config.preallocate_segments
            && self.file_system.allows_background_work()
    }

    /// Starts zero-filling and syncing `<sequence>.wal.tmp` on a helper thread, if the
    /// configuration and the file system allow it. If the thread cannot be started, the
    /// rotation creates the segment itself.
    fn start_preparing(&mut self, sequence: u64) {
        if !self.prepares_in_background() || self.preparation.is_some() {
            return;
        }
        let file_system = self.file_system.clone();
        let name = temporary_segment_name(sequence);
        let size = self.config.segment_size_bytes;
        let cancel = Arc::new(AtomicBool::new(false));
        let thread_cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("skiff-wal-prepare".to_string())
            .spawn(move || prepare_segment(&file_system, &name, size, &thread_cancel));
        if let Ok(thread) = spawned {
            self.preparation = Some(Preparation {
                sequence,
                cancel,
                thread,
            });
        }
    }

    /// The file prepared for segment `sequence` (zero-filled and synced), waiting for the
    /// helper thread if it is still at work; `None` if none was being prepared. A failure of
    /// the helper is this rotation's failure (and poisons the store).
    fn take_prepared(&mut self, sequence: u64) -> Result<Option<F::File>> {
        let Some(preparation) = self.preparation.take() else {
            return Ok(None);
        };
        if preparation.sequence != sequence {
            // Not the segment wanted (rotations only go to the next sequence, so this does not
            // happen): stop it and leave its temporary file to the next open.
            preparation.cancel.store(true, Ordering::SeqCst);
            let _ = preparation.thread.join();
            return Ok(None);
        }
        if !preparation.thread.is_finished() {
            self.metrics.segment_preparation_waits += 1;
        }
        let (file, syncs) = match preparation.thread.join() {
            Ok(result) => result?,
            Err(_) => {
                return Err(StorageError::from_io(
                    "prepare",
                    &temporary_segment_name(sequence),
                    std::io::Error::other("the segment preparation thread panicked"),
                ))
            }
        };
        self.metrics.other_syncs += syncs;
        self.metrics.segments_prepared_in_background += 1;
        Ok(Some(file))
    }

    /// Writes one record (built by [`begin_record`], header not yet filled) at the tail and
    /// syncs it; returns where it lies.
    fn write_record(&mut self, mut record: Vec<u8>) -> Result<Run> {
        let length = record.len() as u64;
        assert!(length - RECORD_HEADER_BYTES as u64 <= self.config.max_record_bytes);
        if self.write_offset + length > self.config.segment_size_bytes {
            self.create_segment(self.active_segment + 1)?;
        }
        finish_record(&mut record, RecordType::Write, self.next_record_sequence);
        let offset = self.write_offset;
        let segment_sequence = self.active_segment;
        let segment = self.segment_file(segment_sequence)?;
        segment.file.write_at(offset, &record)?;
        segment.file.sync_data()?;
        self.metrics.record_syncs += 1;
        self.metrics.records_written += 1;
        self.metrics.record_bytes_written += length;
        self.write_offset += length;
        self.next_record_sequence += 1;
        Ok(Run {
            first_index: 0,
            segment: segment_sequence,
            offset,
            length,
        })
    }

    fn write_pending(&mut self) -> Result<()> {
        let pending: Vec<Entry> = match self.pending_from {
            Some(from) if from <= self.last_index => {
                let cache_first = self.cache_first_index();
                assert!(from >= cache_first, "pending entries are always cached");
                self.cache
                    .range((from - cache_first) as usize..)
                    .cloned()
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut hard_state = self.hard_state_pending.then_some(self.hard_state);
        let mut first_index = self.pending_from.unwrap_or(0);
        let mut position = 0;
        loop {
            // As many entries as fit in one record (at least one: appends check the size).
            let mut entry_bytes = 0;
            let mut end = position;
            while end < pending.len() {
                let next = encoded_entry_bytes(&pending[end]);
                if end > position
                    && write_payload_bytes(hard_state.is_some(), entry_bytes + next)
                        > self.config.max_record_bytes
                {
                    break;
                }
                entry_bytes += next;
                end += 1;
            }
            let chunk = &pending[position..end];
            let mut record =
                begin_record(write_payload_bytes(hard_state.is_some(), entry_bytes) as usize);
            encode_write_into(&mut record, hard_state.as_ref(), first_index, chunk);
            let mut run = self.write_record(record)?;
            if let Some(written) = hard_state.take() {
                self.durable_hard_state = written;
            }
            if first_index != 0 {
                run.first_index = first_index;
                self.record_durable_entries(run, chunk);
            }
            position = end;
            if position >= pending.len() {
                break;
            }
            first_index = pending[position].index;
        }
        self.pending_from = None;
        self.pending_bytes = 0;
        self.hard_state_pending = false;
        self.evict_cache();
        Ok(())
    }

    /// Updates the location index after a write record from `run.first_index` became durable.
    fn record_durable_entries(&mut self, run: Run, entries: &[Entry]) {
        let from = run.first_index;
        while self
            .runs
            .back()
            .is_some_and(|last| last.first_index >= from)
        {
            self.runs.pop_back();
        }
        if !entries.is_empty() {
            self.runs.push_back(run);
        }
        self.durable_last_index = from - 1 + entries.len() as u64;
    }

    fn evict_cache(&mut self) {
        let keep_from = self.pending_from.unwrap_or(u64::MAX);
        while self.cache_bytes > self.config.entry_cache_bytes {
            match self.cache.front() {
                Some(entry) if entry.index < keep_from => {
                    self.cache_bytes -= entry.size_bytes();
                    self.cache.pop_front();
                }
                _ => break,
            }
        }
    }

    /// Bytes of pending entries at or after `index` (they sit at the back of the cache).
    fn pending_bytes_from(&self, index: u64) -> u64 {
        let Some(from) = self.pending_from else {
            return 0;
        };
        self.cache
            .iter()
            .rev()
            .take_while(|entry| entry.index >= index.max(from))
            .map(Entry::size_bytes)
            .sum()
    }

    fn cache_first_index(&self) -> u64 {
        self.cache
            .front()
            .map_or(self.last_index + 1, |entry| entry.index)
    }

    /// Drops cached entries from `index` on.
    fn truncate_cache(&mut self, index: u64) {
        while self.cache.back().is_some_and(|entry| entry.index >= index) {
            let entry = self.cache.pop_back().expect("checked");
            self.cache_bytes -= entry.size_bytes();
        }
    }

    fn drop_runs_through(&mut self, index: u64) {
        while self.runs.len() >= 2 && self.runs[1].first_index <= index + 1 {
            self.runs.pop_front();
        }
        if self.durable_last_index <= index {
            self.runs.clear();
        }
    }

    /// Deletes every segment older than the one holding the first live entry (never the
    /// active one), oldest first, with a directory fsync after each.
    fn delete_obsolete_segments(&mut self) -> Result<()> {
        let keep_from = self
            .runs
            .front()
            .map_or(self.active_segment, |run| run.segment);
        let obsolete: Vec<u64> = {
            let names = self.file_system.list()?;
            let mut sequences: Vec<u64> = names
                .iter()
                .filter_map(|name| parse_segment_file_name(name))
                .filter(|sequence| *sequence < keep_from)
                .collect();
            sequences.sort_unstable();
            sequences
        };
        for sequence in obsolete {
            self.guarded(|storage| {
                storage.segments.remove(&sequence);
                storage.file_system.remove(&segment_file_name(sequence))?;
                storage.sync_directory()?;
                storage.metrics.segments_deleted += 1;
                Ok(())
            })?;
        }
        Ok(())
    }

    // ----- reading ----------------------------------------------------------------------------

    fn read_from_disk(&mut self, index: u64, until: u64, out: &mut Vec<Entry>) -> Result<()> {
        let position = self.runs.partition_point(|run| run.first_index <= index);
        assert!(position > 0, "index {index} has no run");
        let run = self.runs[position - 1];
        let run_end = self
            .runs
            .get(position)
            .map_or(self.durable_last_index + 1, |next| next.first_index);
        let name = segment_file_name(run.segment);
        let max_record = self.config.max_record_bytes;
        let segment = self.segment_file(run.segment)?;
        let mut contents = vec![0u8; run.length as usize];
        segment.file.read_at(run.offset, &mut contents)?;
        let contents = Bytes::from(contents);
        let payload = match read_record(&contents, 0, 0, max_record) {
            RecordRead::Valid { payload, .. } => payload,
            RecordRead::End { .. } => {
                return Err(StorageError::corrupt(
                    &name,
                    run.offset,
                    "record fails its checksum",
                ))
            }
        };
        let write = decode_write(&payload)
            .map_err(|error| StorageError::corrupt(&name, run.offset, error.to_string()))?;
        let stop = until.min(run_end);
        for entry in write.entries {
            if entry.index >= index && entry.index < stop {
                out.push(entry);
            }
        }
        self.metrics.entries_read_from_disk += stop - index;
        Ok(())
    }

    fn check_invariants(&self) {
        assert!(self.compacted_through <= self.last_index);
        assert!(self.durable_last_index >= self.compacted_through || self.pending_from.is_some());
        if let Some(front) = self.cache.front() {
            assert_eq!(
                front.index + self.cache.len() as u64 - 1,
                self.last_index,
                "cache must end at the last index"
            );
        }
        if let Some(from) = self.pending_from {
            assert!(from <= self.durable_last_index + 1);
            assert!(from > self.compacted_through);
            assert!(from >= self.cache_first_index());
        }
        if let Some(snapshot) = &self.snapshot {
            assert!(self.compacted_through <= snapshot.index);
        }
    }

    fn validate_append(&self, entries: &[Entry]) -> Result<u64> {
        let first = entries[0].index;
        if first <= self.compacted_through {
            return Err(StorageError::Compacted {
                index: first,
                first_index: self.compacted_through + 1,
            });
        }
        if first > self.last_index + 1 {
            return Err(StorageError::InvalidRequest(format!(
                "append at {first} leaves a gap after the last index {}",
                self.last_index
            )));
        }
        let mut bytes = 0;
        for (position, pair) in entries.windows(2).enumerate() {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(StorageError::InvalidRequest(format!(
                    "entries are not consecutive with non-decreasing terms at position {}",
                    position + 1
                )));
            }
        }
        for entry in entries {
            let record = write_payload_bytes(true, encoded_entry_bytes(entry));
            if record > self.config.max_record_bytes {
                return Err(StorageError::RecordTooLarge {
                    bytes: record,
                    limit: self.config.max_record_bytes,
                });
            }
            bytes += entry.size_bytes();
        }
        // Entries replaced by this append no longer count.
        let replaced = self.pending_bytes_from(first);
        let unsynced = self.pending_bytes - replaced + bytes;
        if unsynced > self.config.max_unsynced_bytes {
            return Err(StorageError::TooMuchUnsynced {
                bytes: unsynced,
                limit: self.config.max_unsynced_bytes,
            });
        }
        Ok(unsynced)
    }
}

impl<F: FileSystem> Drop for DurableStorage<F> {
    /// Stops and joins the helper thread, so that it never outlives the store (a store opened
    /// again on the same directory deletes the temporary file it leaves).
    fn drop(&mut self) {
        if let Some(preparation) = self.preparation.take() {
            preparation.cancel.store(true, Ordering::SeqCst);
            let _ = preparation.thread.join();
        }
    }
}

/// The name a segment is created under before it is complete; recovery deletes every `.tmp`.
fn temporary_segment_name(sequence: u64) -> String {
    format!("{}.tmp", segment_file_name(sequence))
}

/// Writes zeros over `start..end` of `file`, in pieces of at most 1 MiB.
fn zero_fill<File: StorageFile>(file: &mut File, start: u64, end: u64) -> Result<()> {
    let chunk = vec![0u8; (1 << 20).min((end - start) as usize)];
    let mut offset = start;
    while offset < end {
        let length = chunk.len().min((end - offset) as usize);
        file.write_at(offset, &chunk[..length])?;
        offset += length as u64;
    }
    Ok(())
}

/// On the helper thread: creates `name`, zero-fills it to `size` bytes and syncs it. Each
/// piece of [`WRITE_BACK_PIECE_BYTES`] is written back ([`StorageFile::write_back`]) before
/// the next is written, and one `fdatasync` at the end makes the whole file durable. So the
/// disk never has more than one piece of the new segment to write at a time: a single
/// fdatasync of a whole segment (or dirty pages of it flushed all at once) would hold up the
/// log writer's next fdatasync behind tens of megabytes. Returns the file and the number of
/// fdatasync calls; stops with an error once `cancel` is set.
fn prepare_segment<F: FileSystem>(
    file_system: &F,
    name: &str,
    size: u64,
    cancel: &AtomicBool,
) -> Result<(F::File, u64)> {
    let mut file = file_system.create(name)?;
    let mut offset = 0;
    while offset < size {
        if cancel.load(Ordering::Relaxed) {
            return Err(StorageError::from_io(
                "prepare",
                name,
                std::io::Error::other("cancelled: the store was dropped"),
            ));
        }
        let end = (offset + WRITE_BACK_PIECE_BYTES).min(size);
        zero_fill(&mut file, offset, end)?;
        file.write_back(offset, end - offset)?;
        offset = end;
    }
    file.sync_data()?;
    Ok((file, 1))
}

/// What scanning one segment found.
struct SegmentScan {
    header_sequence: u64,
    /// The sequence number the next record after this segment's last one must have.
    next_sequence: u64,
    hard_state: HardState,
    writes: Vec<(format::Write, Run)>,
    entry_count: usize,
    end_offset: u64,
    torn_tail: Option<TornTail>,
}

/// Scans segments on up to `recovery_threads` threads; results come back in segment order.
fn scan_segments<F: FileSystem>(
    file_system: &F,
    config: &StorageConfig,
    sequences: &[u64],
) -> Vec<Result<SegmentScan>> {
    let last = sequences.last().copied();
    let threads = if file_system.allows_parallel_reads() {
        (config.recovery_threads as usize).clamp(1, sequences.len().max(1))
    } else {
        1
    };
    if threads == 1 {
        return sequences
            .iter()
            .map(|sequence| scan_segment(file_system, config, *sequence, Some(*sequence) == last))
            .collect();
    }
    let mut results: Vec<Option<Result<SegmentScan>>> =
        (0..sequences.len()).map(|_| None).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let finished = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let file_system = file_system.clone();
            let (next, finished) = (&next, &finished);
            scope.spawn(move || loop {
                let position = next.fetch_add(1, Ordering::SeqCst);
                let Some(sequence) = sequences.get(position).copied() else {
                    break;
                };
                let scan = scan_segment(&file_system, config, sequence, Some(sequence) == last);
                finished
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push((position, scan));
            });
        }
    });
    for (position, scan) in finished
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
    {
        results[position] = Some(scan);
    }
    results
        .into_iter()
        .map(|scan| scan.expect("every segment scanned"))
        .collect()
}

/// Reads one segment and checks its records; decides where its valid records end.
fn scan_segment<F: FileSystem>(
    file_system: &F,
    config: &StorageConfig,
    sequence: u64,
    is_last: bool,
) -> Result<SegmentScan> {
    let name = segment_file_name(sequence);
    let file = file_system.open(&name)?;
    let length = file.length()?;
    let mut contents = vec![0u8; length as usize];
    file.read_at(0, &mut contents)?;
    let contents = Bytes::from(contents);
    let max_record = config.max_record_bytes;
    // The segment header was synced before the segment got its name: it must be intact.
    let header = decode_record_header(&contents, max_record)
        .map_err(|error| StorageError::corrupt(&name, 0, error.to_string()))?;
    let header_end = RECORD_HEADER_BYTES + header.payload_length as usize;
    if header.record_type != RecordType::SegmentHeader || header_end > contents.len() {
        return Err(StorageError::corrupt(
            &name,
            0,
            "first record is not a segment header",
        ));
    }
    check_payload(&header, &contents[RECORD_HEADER_BYTES..header_end])
        .map_err(|error| StorageError::corrupt(&name, 0, error.to_string()))?;
    let segment_header = decode_segment_header(&contents[RECORD_HEADER_BYTES..header_end])
        .map_err(|error| StorageError::corrupt(&name, 0, error.to_string()))?;
    if segment_header.segment_sequence != sequence {
        return Err(StorageError::corrupt(
            &name,
            0,
            format!("header names segment {}", segment_header.segment_sequence),
        ));
    }
    let mut scan = SegmentScan {
        header_sequence: header.sequence,
        next_sequence: header.sequence + 1,
        hard_state: segment_header.hard_state,
        writes: Vec::new(),
        entry_count: 0,
        end_offset: 0,
        torn_tail: None,
    };
    let mut offset = header_end;
    loop {
        match read_record(&contents, offset, scan.next_sequence, max_record) {
            RecordRead::Valid {
                record_type,
                payload,
            } => {
                if record_type != RecordType::Write {
                    return Err(StorageError::corrupt(
                        &name,
                        offset as u64,
                        "segment header in the middle of a segment",
                    ));
                }
                let write = decode_write(&payload).map_err(|error| {
                    StorageError::corrupt(&name, offset as u64, error.to_string())
                })?;
                let location = Run {
                    first_index: write.first_index,
                    segment: sequence,
                    offset: offset as u64,
                    length: (RECORD_HEADER_BYTES + payload.len()) as u64,
                };
                scan.entry_count += write.entries.len();
                scan.writes.push((write, location));
                scan.next_sequence += 1;
                offset += RECORD_HEADER_BYTES + payload.len();
            }
            RecordRead::End { extent_end } => {
                check_end(
                    &name,
                    &contents,
                    offset,
                    extent_end,
                    is_last,
                    scan.next_sequence,
                    max_record,
                )?;
                let extent_end = extent_end.min(contents.len());
                if contents[offset..extent_end].iter().any(|byte| *byte != 0) {
                    scan.torn_tail = Some(TornTail {
                        segment: sequence,
                        start: offset as u64,
                        end: extent_end as u64,
                    });
                }
                scan.end_offset = offset as u64;
                return Ok(scan);
            }
        }
    }
}

/// Decides whether the log may end at `offset` (zeros, or a torn last record whose sequence
/// would have been `expected_sequence`), or the segment is corrupt there.
fn check_end(
    name: &str,
    contents: &Bytes,
    offset: usize,
    extent_end: usize,
    is_last: bool,
    expected_sequence: u64,
    max_record: u64,
) -> Result<()> {
    if !is_last {
        // Older segments were synced whole before the next one was created.
        if let Some(position) = contents[offset..].iter().position(|byte| *byte != 0) {
            let reason = if position == 0 {
                "damaged record in a sealed segment".to_string()
            } else {
                format!("unexpected bytes at offset {}", offset + position)
            };
            return Err(StorageError::corrupt(name, offset as u64, reason));
        }
        return Ok(());
    }
    let extent_end = extent_end.min(contents.len());
    if let Some(position) = contents[extent_end..].iter().position(|byte| *byte != 0) {
        return Err(StorageError::corrupt(
            name,
            offset as u64,
            format!(
                "damaged record followed by data at offset {} (not a torn tail)",
                extent_end + position
            ),
        ));
    }
    let next_sequence = expected_sequence + 1;
    for candidate in offset + 1..extent_end {
        let sequence_field = candidate + 8;
        if sequence_field + 8 > contents.len()
            || contents[sequence_field..sequence_field + 8] != next_sequence.to_le_bytes()
        {
            continue;
        }
        if let RecordRead::Valid { .. } =
            read_record(contents, candidate, next_sequence, max_record)
        {
            return Err(StorageError::corrupt(
                name,
                offset as u64,
                format!("damaged record followed by a valid record at offset {candidate}"),
            ));
        }
    }
    Ok(())
}

/// The outcome of reading one record.
enum RecordRead {
    Valid {
        record_type: RecordType,
        payload: Bytes,
    },
    /// No valid record here; a torn record could extend to `extent_end`.
    End { extent_end: usize },
}

/// Reads and checks the record at `offset`; `expected_sequence` 0 accepts any sequence.
fn read_record(
    contents: &Bytes,
    offset: usize,
    expected_sequence: u64,
    max_record: u64,
) -> RecordRead {
    let worst_extent = offset
        .saturating_add(RECORD_HEADER_BYTES)
        .saturating_add(max_record as usize);
    let Some(header_bytes) = contents.get(offset..offset.saturating_add(RECORD_HEADER_BYTES))
    else {
        return RecordRead::End {
            extent_end: worst_extent,
        };
    };
    let Ok(header) = decode_record_header(header_bytes, max_record) else {
        return RecordRead::End {
            extent_end: worst_extent,
        };
    };
    let extent_end = offset + RECORD_HEADER_BYTES + header.payload_length as usize;
    if expected_sequence != 0 && header.sequence != expected_sequence {
        return RecordRead::End {
            extent_end: worst_extent,
        };
    }
    if extent_end > contents.len() {
        return RecordRead::End { extent_end };
    }
    let payload = contents.slice(offset + RECORD_HEADER_BYTES..extent_end);
    if check_payload(&header, &payload).is_err() {
        return RecordRead::End { extent_end };
    }
    RecordRead::Valid {
        record_type: header.record_type,
        payload,
    }
}

/// The log as replayed from the records so far.
#[derive(Default)]
struct Replay {
    started: bool,
    next_sequence: u64,
    hard_state: HardState,
    last_index: u64,
    entries: VecDeque<Entry>,
    runs: VecDeque<Run>,
}

impl Replay {
    fn apply(&mut self, write: format::Write, location: Run) {
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        let from = write.first_index;
        if from == 0 {
            return;
        }
        if from > self.last_index + 1 {
            // The log was reset by a snapshot, or its prefix lies in deleted segments.
            self.entries.clear();
            self.runs.clear();
        }
        while self.entries.back().is_some_and(|entry| entry.index >= from) {
            self.entries.pop_back();
        }
        while self.runs.back().is_some_and(|run| run.first_index >= from) {
            self.runs.pop_back();
        }
        if !write.entries.is_empty() {
            self.runs.push_back(location);
        }
        self.last_index = from - 1 + write.entries.len() as u64;
        self.entries.extend(write.entries);
    }
}

impl<F: FileSystem> Storage for DurableStorage<F> {
    type SnapshotWriter = FileSnapshotWriter<F>;
    type SnapshotReader = FileSnapshotReader<F>;

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    fn first_index(&self) -> u64 {
        self.compacted_through + 1
    }

    fn last_index(&self) -> u64 {
        self.last_index
    }

    fn durable_index(&self) -> u64 {
        match self.pending_from {
            Some(from) => self.durable_last_index.min(from - 1),
            None => self.durable_last_index,
        }
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        self.check_writable()?;
        if entries.is_empty() {
            return Ok(());
        }
        let unsynced = self.validate_append(entries)?;
        let first = entries[0].index;
        self.truncate_cache(first);
        if self.cache.is_empty() {
            self.cache_bytes = 0;
        }
        for entry in entries {
            self.cache_bytes += entry.size_bytes();
            self.cache.push_back(entry.clone());
        }
        self.pending_from = Some(self.pending_from.map_or(first, |from| from.min(first)));
        self.pending_bytes = unsynced;
        self.last_index = entries[entries.len() - 1].index;
        self.check_invariants();
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> Result<()> {
        self.check_writable()?;
        if from_index <= self.compacted_through || from_index > self.last_index + 1 {
            return Err(StorageError::InvalidRequest(format!(
                "truncate from {from_index} outside {}..={}",
                self.compacted_through + 1,
                self.last_index + 1
            )));
        }
        if from_index == self.last_index + 1 {
            return Ok(());
        }
        // Entries pending there are dropped before they were written.
        self.pending_bytes -= self.pending_bytes_from(from_index);
        self.truncate_cache(from_index);
        if from_index <= self.durable_last_index {
            self.pending_from = Some(
                self.pending_from
                    .map_or(from_index, |from| from.min(from_index)),
            );
        } else if self.pending_from.is_some_and(|from| from >= from_index) {
            self.pending_from = None;
        }
        self.last_index = from_index - 1;
        self.check_invariants();
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.check_writable()?;
        self.hard_state = hard_state;
        self.hard_state_pending = hard_state != self.durable_hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.check_writable()?;
        let log_pending = self
            .pending_from
            .is_some_and(|from| from <= self.last_index || from <= self.durable_last_index);
        if !log_pending && !self.hard_state_pending {
            self.pending_from = None;
            return Ok(self.durable_index());
        }
        self.guarded(|storage| storage.write_pending())?;
        self.check_invariants();
        Ok(self.durable_index())
    }

    fn compact(&mut self, through_index: u64) -> Result<()> {
        self.check_writable()?;
        let snapshot_index = self.snapshot.as_ref().map_or(0, |meta| meta.index);
        if through_index > snapshot_index {
            return Err(StorageError::InvalidRequest(format!(
                "compact through {through_index} beyond the snapshot index {snapshot_index}"
            )));
        }
        if through_index <= self.compacted_through {
            return Ok(());
        }
        // Make the log on disk the log, so that nothing compacted away is needed to replay it.
        self.sync()?;
        self.compacted_through = through_index;
        if through_index >= self.last_index {
            self.last_index = through_index;
            self.durable_last_index = through_index;
            self.cache.clear();
            self.cache_bytes = 0;
            self.runs.clear();
        } else {
            while self
                .cache
                .front()
                .is_some_and(|entry| entry.index <= through_index)
            {
                let entry = self.cache.pop_front().expect("checked");
                self.cache_bytes -= entry.size_bytes();
            }
            self.drop_runs_through(through_index);
        }
        self.delete_obsolete_segments()?;
        self.check_invariants();
        Ok(())
    }

    fn entries(&mut self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        if low <= self.compacted_through {
            return Err(StorageError::Compacted {
                index: low,
                first_index: self.compacted_through + 1,
            });
        }
        if high > self.last_index + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last_index: self.last_index,
            });
        }
        if low > high {
            return Err(StorageError::InvalidRequest(format!(
                "range {low}..{high} is reversed"
            )));
        }
        let mut out: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let cache_first = self.cache_first_index();
        let mut batch = Vec::new();
        while low + (out.len() as u64) < high {
            let index = low + out.len() as u64;
            batch.clear();
            if index >= cache_first {
                batch.push(self.cache[(index - cache_first) as usize].clone());
            } else {
                self.read_from_disk(index, high.min(cache_first), &mut batch)?;
                assert!(!batch.is_empty(), "a run holds at least one entry");
            }
            for entry in batch.drain(..) {
                // Keep within the byte budget, but always return at least one entry.
                if !out.is_empty() && bytes + entry.size_bytes() > max_bytes {
                    return Ok(out);
                }
                bytes += entry.size_bytes();
                out.push(entry);
            }
        }
        Ok(out)
    }

    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<FileSnapshotWriter<F>> {
        self.check_writable()?;
        let name = format!("snapshot-{}.tmp", self.next_temporary);
        self.next_temporary += 1;
        let buffer = self.config.snapshot_buffer_bytes as usize;
        let poisoned = self.poisoned.clone();
        self.guarded(|storage| {
            FileSnapshotWriter::create(&storage.file_system, &name, meta, buffer, poisoned)
        })
    }

    fn finish_snapshot(&mut self, writer: FileSnapshotWriter<F>) -> Result<()> {
        self.check_writable()?;
        let current = self.snapshot.as_ref().map_or(0, |meta| meta.index);
        if writer.meta().index < current {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot at {} is older than the current one at {current}",
                writer.meta().index
            )));
        }
        let temporary = writer.temporary_name().to_string();
        self.guarded(|storage| {
            let (meta, file) = writer.seal()?;
            drop(file);
            storage.metrics.other_syncs += 1;
            let name = snapshot_file_name(meta.index, meta.term);
            storage.file_system.rename(&temporary, &name)?;
            storage.sync_directory()?;
            let previous = storage.snapshot_file.replace(name.clone());
            storage.snapshot = Some(meta);
            if let Some(previous) = previous.filter(|previous| *previous != name) {
                storage.file_system.remove(&previous)?;
                storage.sync_directory()?;
            }
            Ok(())
        })
    }

    fn open_snapshot(&self) -> Result<Option<(SnapshotMeta, FileSnapshotReader<F>)>> {
        match &self.snapshot_file {
            Some(name) => Ok(Some(open_snapshot_file(&self.file_system, name)?)),
            None => Ok(None),
        }
    }
}
