//! The in-memory Raft log of one member: entries after the last snapshot, plus the indexes
//! that track how far the log is committed, handed out for persisting, persisted, and
//! handed out for applying.
//!
//! Entries that are applied may be *released*: dropped from memory while the log still
//! knows their terms (as runs, one per term), so that a member need not hold every entry
//! since its last snapshot. Whoever needs a released entry's payload (the leader, to send
//! it) reads it back from the member's own durable log (see `node::EntrySource`).
//!
//! Invariant chain, checked after every step:
//! `snapshot_index <= released <= applied <= applying <= min(committed, persisted)`,
//! `committed <= last_index`, `persisted <= handed_out <= last_index`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::types::Entry;

/// Where a member reads back entries it released from memory: its own durable log (see
/// [`crate::RawNode::release_applied_entries`]). The core calls it synchronously, only to
/// send released entries to a member that lags behind.
pub trait EntrySource: Send + Sync {
    /// The entries in `low..high`, consecutive from `low`, stopping before `max_bytes` (by
    /// [`Entry::size_bytes`]) would be exceeded but at least one. Every index asked for was
    /// persisted and applied by this member and is above the last snapshot the core was told
    /// of. `None` if they cannot be read now, for instance because the log dropped them for
    /// a snapshot the core has not yet heard of: the core sends nothing then, and tries
    /// again at the next chance.
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>>;
}

/// A shared [`EntrySource`], printable so that the core stays `Debug`.
#[derive(Clone)]
pub(crate) struct SourceHandle(pub(crate) Arc<dyn EntrySource>);

impl fmt::Debug for SourceHandle {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("EntrySource")
    }
}

/// The log and its cursors.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Index of the last entry covered by the snapshot (0 without one).
    snapshot_index: u64,
    /// Term of that entry (0 without a snapshot).
    snapshot_term: u64,
    /// Entries up to here (and after `snapshot_index`) are released: not held, but their
    /// terms are in `released_terms`.
    released: u64,
    /// The terms of the released entries, as runs: `(first index, term)`, in order, the
    /// first run starting at `snapshot_index + 1`; empty when nothing is released.
    released_terms: VecDeque<(u64, u64)>,
    /// Entries after `released`: `entries[i].index == released + 1 + i`.
    entries: VecDeque<Entry>,
    /// Highest index known committed.
    committed: u64,
    /// Highest index handed to the application to persist.
    handed_out: u64,
    /// Highest index known durable on this member (a prefix of the current log).
    persisted: u64,
    /// Highest index handed to the application to apply.
    applying: u64,
    /// Highest index the application reported applied.
    applied: u64,
}

impl RaftLog {
    /// A log restored after a restart: everything given here is already durable.
    pub fn restore(
        snapshot_index: u64,
        snapshot_term: u64,
        entries: Vec<Entry>,
        committed: u64,
    ) -> RaftLog {
        let last_index = snapshot_index + entries.len() as u64;
        let log = RaftLog {
            snapshot_index,
            snapshot_term,
            released: snapshot_index,
            released_terms: VecDeque::new(),
            entries: entries.into(),
            committed: committed.max(snapshot_index),
            handed_out: last_index,
            persisted: last_index,
            applying: snapshot_index,
            applied: snapshot_index,
        };
        for (offset, entry) in log.entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                snapshot_index + 1 + offset as u64,
                "log has a gap"
            );
        }
        log
    }

    /// Index of the last entry (the snapshot index if the log is empty).
    pub fn last_index(&self) -> u64 {
        self.released + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        match self.entries.back() {
            Some(entry) => entry.term,
            None => self
                .released_terms
                .back()
                .map_or(self.snapshot_term, |(_, term)| *term),
        }
    }

    /// First index still held as an entry.
    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// Index covered by the latest snapshot.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Entries up to this index are released: their terms are known, their payloads are
    /// not held (see the module docs).
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Highest committed index.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Highest index durable on this member.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Highest index handed out for applying.
    pub fn applying(&self) -> u64 {
        self.applying
    }

    /// Highest index the application reported applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Term of the entry at `index`; `None` if compacted away or beyond the end.
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        if index < self.snapshot_index {
            return None;
        }
        if index <= self.released {
            let run = self
                .released_terms
                .partition_point(|(first, _)| *first <= index);
            return Some(self.released_terms[run - 1].1);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// The entry at `index`, if held in memory (not compacted, not released).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        if index <= self.released {
            return None;
        }
        self.entries.get((index - self.released - 1) as usize)
    }

    /// True if the entry at `index` has `term` (Raft's log-matching check).
    pub fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Raft's "at least as up to date" rule (§5.4.1): compare the last terms, then the
    /// last indexes.
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index at or below `index` whose term is at most `term`. Used on both
    /// sides of a rejected AppendEntries to skip a whole term per round trip.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> u64 {
        let mut index = index.min(self.last_index());
        while index > self.snapshot_index {
            match self.term(index) {
                Some(found) if found <= term => return index,
                _ => index -= 1,
            }
        }
        index
    }

    /// Entries in `[low, high)` (clamped to the range held in memory), stopping once
    /// `max_bytes` is reached but always including at least one entry if any is available.
    pub fn slice(&self, low: u64, high: u64, max_bytes: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        self.extend_held(&mut out, low, high, max_bytes);
        out
    }

    /// Appends held entries from `low` (clamped to the held range) up to `high` to `out`,
    /// while `out`'s entries fit in `max_bytes`; an empty `out` takes at least one.
    fn extend_held(&self, out: &mut Vec<Entry>, low: u64, high: u64, max_bytes: u64) {
        let mut bytes: u64 = out.iter().map(Entry::size_bytes).sum();
        let high = high.min(self.last_index() + 1);
        for index in low.max(self.released + 1)..high {
            let entry = self.entry(index).expect("index within held range");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
    }

    /// Entries in `[low, high)` like [`RaftLog::slice`], but from `low` on even if released:
    /// released entries are read back from `source`, and held ones follow them within the
    /// same `max_bytes`. `None` if `source` cannot give them now. Panics if it gives entries
    /// other than those asked for (a damaged log must not be replicated).
    pub fn fetch(
        &self,
        source: Option<&dyn EntrySource>,
        low: u64,
        high: u64,
        max_bytes: u64,
    ) -> Option<Vec<Entry>> {
        if low > self.released || low >= high {
            return Some(self.slice(low, high, max_bytes));
        }
        assert!(low > self.snapshot_index, "fetching compacted entry {low}");
        let released_high = high.min(self.released + 1);
        let source = source.expect("entries are released only with a source");
        let mut entries = source.entries(low, released_high, max_bytes)?;
        let expected = !entries.is_empty()
            && entries.len() as u64 <= released_high - low
            && entries.iter().enumerate().all(|(offset, entry)| {
                entry.index == low + offset as u64 && self.term(entry.index) == Some(entry.term)
            });
        assert!(
            expected,
            "the entry source gave {:?} for {low}..{released_high}",
            entries
                .iter()
                .map(|entry| (entry.index, entry.term))
                .collect::<Vec<_>>()
        );
        // Held entries follow only if the source gave every released one asked for.
        let next = low + entries.len() as u64;
        if next == self.released + 1 {
            self.extend_held(&mut entries, next, high, max_bytes);
        }
        Some(entries)
    }

    /// Appends entries that directly follow the last one (the leader's own proposals).
    pub fn append(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            assert_eq!(entry.index, self.last_index() + 1, "append leaves a gap");
            assert!(entry.term >= self.last_term(), "append goes back in term");
            self.entries.push_back(entry);
        }
    }

    /// Merges entries received after a matching `(prev_index, prev_term)`: skips those
    /// already present, truncates the log at the first conflict and appends the rest.
    /// Returns the index of the last entry of the message.
    pub fn merge(&mut self, prev_index: u64, entries: Vec<Entry>) -> u64 {
        let last_new = prev_index + entries.len() as u64;
        let mut to_append = Vec::new();
        for (offset, entry) in entries.into_iter().enumerate() {
            assert_eq!(
                entry.index,
                prev_index + 1 + offset as u64,
                "message has a gap"
            );
            if !to_append.is_empty() {
                to_append.push(entry);
                continue;
            }
            if entry.index <= self.snapshot_index {
                continue; // compacted, hence committed, hence matching
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.committed,
                        "conflict at committed index {} (committed {})",
                        entry.index,
                        self.committed
                    );
                    self.truncate_from(entry.index);
                    to_append.push(entry);
                }
                None => to_append.push(entry),
            }
        }
        self.append(to_append);
        last_new
    }

    fn truncate_from(&mut self, index: u64) {
        // Released entries are applied, hence committed: never truncated.
        assert!(index > self.released && index <= self.last_index());
        self.entries.truncate((index - self.released - 1) as usize);
        self.handed_out = self.handed_out.min(index - 1);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Advances the commit index (never backwards). Panics if `index` is beyond the log.
    pub fn commit_to(&mut self, index: u64) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Hands out the entries not yet given to the application for persisting.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let out = self.slice(self.handed_out + 1, self.last_index() + 1, u64::MAX);
        self.handed_out = self.last_index();
        out
    }

    /// True if some entries await persisting.
    pub fn has_unpersisted(&self) -> bool {
        self.handed_out < self.last_index()
    }

    /// Records that entries up to `(index, term)` are durable. Ignored if the log changed
    /// since (the entry at `index` no longer has `term`) or the entries were never handed out.
    pub fn persisted_to(&mut self, index: u64, term: u64) -> bool {
        if index <= self.persisted || index > self.handed_out || !self.matches(index, term) {
            return false;
        }
        self.persisted = index;
        true
    }

    /// Highest index that may be handed out for applying: committed and durable here.
    fn apply_limit(&self) -> u64 {
        self.committed.min(self.persisted)
    }

    /// True if committed entries await applying.
    pub fn has_to_apply(&self) -> bool {
        self.applying < self.apply_limit()
    }

    /// Hands out committed, durable entries for applying, up to `max_bytes`.
    pub fn take_to_apply(&mut self, max_bytes: u64) -> Vec<Entry> {
        let out = self.slice(self.applying + 1, self.apply_limit() + 1, max_bytes);
        if let Some(last) = out.last() {
            self.applying = last.index;
        }
        out
    }

    /// Marks entries up to `index` as already applied (the state machine was restored to
    /// that point). `index` must be committed and durable.
    pub fn skip_applied(&mut self, index: u64) {
        assert!(index <= self.committed && index <= self.persisted);
        self.applying = self.applying.max(index);
        self.applied = self.applied.max(index);
    }

    /// Records that entries up to `index` are applied.
    pub fn applied_to(&mut self, index: u64) {
        assert!(
            index <= self.applying,
            "applied {index} beyond handed out {}",
            self.applying
        );
        self.applied = self.applied.max(index);
    }

    /// Releases the entries up to `index` (see the module docs): they leave memory, their
    /// terms stay. `index` must be applied; releasing what is already released does nothing.
    pub fn release(&mut self, index: u64) {
        assert!(
            index <= self.applied,
            "release {index} beyond applied {}",
            self.applied
        );
        while self.released < index {
            let entry = self
                .entries
                .pop_front()
                .expect("applied entries are in the log");
            if self.released_terms.back().map(|(_, term)| *term) != Some(entry.term) {
                self.released_terms.push_back((entry.index, entry.term));
            }
            self.released = entry.index;
        }
    }

    /// Drops entries up to `index`, which a snapshot now covers. `index` must be applied.
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(
            index <= self.applied,
            "compact {index} beyond applied {}",
            self.applied
        );
        let term = self.term(index).expect("compacting an entry of the log");
        self.release(index);
        // Runs wholly at or below `index` go; the next one, if it started there, now starts
        // after it.
        while self
            .released_terms
            .get(1)
            .is_some_and(|(first, _)| *first <= index + 1)
        {
            self.released_terms.pop_front();
        }
        if index == self.released {
            self.released_terms.clear();
        } else if let Some(front) = self.released_terms.front_mut() {
            front.0 = front.0.max(index + 1);
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log with a snapshot's position (installing a snapshot received
    /// from the leader). Everything up to `index` counts as committed and applied.
    pub fn reset_to_snapshot(&mut self, index: u64, term: u64) {
        assert!(
            index > self.committed,
            "snapshot {index} not ahead of commit"
        );
        self.entries.clear();
        self.released_terms.clear();
        self.released = index;
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.handed_out = index;
        self.persisted = index;
        self.applying = index;
        self.applied = index;
    }

    /// Checks the invariant chain; panics on a violation.
    pub fn check_invariants(&self) {
        assert!(
            self.snapshot_index <= self.released,
            "released behind snapshot"
        );
        assert!(self.released <= self.applied, "released ahead of applied");
        assert_eq!(
            self.released_terms.front().map(|(first, _)| *first),
            (self.released > self.snapshot_index).then_some(self.snapshot_index + 1),
            "released terms do not start after the snapshot"
        );
        assert!(self.applied <= self.applying, "applied ahead of applying");
        assert!(
            self.applying <= self.committed,
            "applying ahead of committed"
        );
        assert!(
            self.applying <= self.persisted.max(self.snapshot_index),
            "applying ahead of persisted"
        );
        assert!(
            self.committed <= self.last_index(),
            "committed beyond the log"
        );
        assert!(
            self.persisted <= self.handed_out,
            "persisted beyond handed out"
        );
        assert!(
            self.handed_out <= self.last_index(),
            "handed out beyond the log"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;
    use bytes::Bytes;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(offset as u64 + 1, *term))
            .collect();
        RaftLog::restore(0, 0, entries, 0)
    }

    #[test]
    fn merge_skips_duplicates_and_truncates_conflicts() {
        let mut log = log_of(&[1, 1, 2, 2]);
        assert_eq!(log.merge(1, vec![entry(2, 1), entry(3, 2)]), 3);
        assert_eq!(log.last_index(), 4, "matching entries must not truncate");
        assert_eq!(log.merge(2, vec![entry(3, 3)]), 3);
        assert_eq!(log.last_index(), 3);
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.persisted(), 2, "truncation lowers the persisted index");
    }

    #[test]
    #[should_panic(expected = "conflict at committed index")]
    fn merge_refuses_to_rewrite_committed_entries() {
        let mut log = log_of(&[1, 1, 2]);
        log.commit_to(3);
        log.merge(2, vec![entry(3, 3)]);
    }

    #[test]
    fn up_to_date_compares_term_before_index() {
        let log = log_of(&[1, 1, 2]);
        assert!(
            log.is_up_to_date(1, 3),
            "higher last term wins even when shorter"
        );
        assert!(
            !log.is_up_to_date(5, 1),
            "longer log of an older term loses"
        );
        assert!(log.is_up_to_date(3, 2));
        assert!(!log.is_up_to_date(2, 2));
    }

    #[test]
    fn find_conflict_by_term_skips_a_term_at_a_time() {
        let log = log_of(&[1, 1, 4, 4, 5, 5]);
        assert_eq!(log.find_conflict_by_term(6, 4), 4);
        assert_eq!(log.find_conflict_by_term(6, 3), 2);
        assert_eq!(log.find_conflict_by_term(6, 0), 0);
        assert_eq!(log.find_conflict_by_term(10, 9), 6);
    }

    /// A log of `terms`, all persisted, committed and applied.
    fn applied_log_of(terms: &[u64]) -> RaftLog {
        let mut log = log_of(terms);
        log.commit_to(log.last_index());
        log.take_to_apply(u64::MAX);
        log.applied_to(log.last_index());
        log
    }

    #[test]
    fn released_entries_keep_their_terms() {
        let mut log = applied_log_of(&[1, 1, 2, 2, 2, 3]);
        log.release(4);
        log.check_invariants();
        assert_eq!(log.entry(4), None, "released");
        assert_eq!(log.entry(5).map(|entry| entry.term), Some(2));
        let terms: Vec<Option<u64>> = (0..=7).map(|index| log.term(index)).collect();
        assert_eq!(
            terms,
            [
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2),
                Some(2),
                Some(3),
                None
            ]
        );
        assert_eq!(
            log.slice(1, 7, u64::MAX).len(),
            2,
            "slice holds only what is held"
        );
        assert_eq!(
            log.find_conflict_by_term(6, 1),
            2,
            "searches released terms too"
        );
        log.release(2);
        assert_eq!(log.released(), 4, "releasing less does nothing");

        log.compact(3);
        log.check_invariants();
        assert_eq!(log.term(2), None, "compacted");
        assert_eq!(log.term(3), Some(2), "the snapshot's own term");
        assert_eq!(log.term(4), Some(2), "the run cut at the snapshot");
        log.compact(4);
        log.check_invariants();
        assert_eq!((log.term(4), log.term(5)), (Some(2), Some(2)));

        log.release(6);
        log.check_invariants();
        assert_eq!((log.last_index(), log.last_term()), (6, 3), "all released");
        log.append(vec![entry(7, 3), entry(8, 4)]);
        assert_eq!(log.term(6), Some(3));
        assert_eq!(log.term(8), Some(4));
        log.compact(6);
        log.check_invariants();
        assert_eq!(
            (log.snapshot_index(), log.term(6), log.term(5)),
            (6, Some(3), None)
        );
    }

    #[test]
    #[should_panic(expected = "release 3 beyond applied 2")]
    fn only_applied_entries_are_released() {
        let mut log = applied_log_of(&[1, 1]);
        log.append(vec![entry(3, 1)]);
        log.release(3);
    }

    #[test]
    fn merge_accepts_released_entries_that_match() {
        let mut log = applied_log_of(&[1, 1, 2]);
        log.release(3);
        assert_eq!(log.merge(1, vec![entry(2, 1), entry(3, 2), entry(4, 2)]), 4);
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.entry(4).map(|entry| entry.term), Some(2));
    }

    struct Fixed(Vec<Entry>);

    impl EntrySource for Fixed {
        fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>> {
            let mut bytes = 0;
            let wanted = self
                .0
                .iter()
                .filter(|entry| entry.index >= low && entry.index < high);
            Some(
                wanted
                    .take_while(|entry| {
                        bytes += entry.size_bytes();
                        bytes == entry.size_bytes() || bytes <= max_bytes
                    })
                    .cloned()
                    .collect(),
            )
        }
    }

    #[test]
    fn fetch_reads_released_entries_from_the_source() {
        let mut log = applied_log_of(&[1, 1, 2]);
        log.append(vec![entry(4, 2)]);
        log.release(3);
        let source = Fixed(vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        let indexes = |fetched: Option<Vec<Entry>>| -> Vec<u64> {
            fetched.unwrap().iter().map(|entry| entry.index).collect()
        };
        assert_eq!(indexes(log.fetch(Some(&source), 2, 5, u64::MAX)), [2, 3, 4]);
        assert_eq!(indexes(log.fetch(Some(&source), 4, 5, u64::MAX)), [4]);
        let two = 2 * entry(1, 1).size_bytes();
        assert_eq!(
            indexes(log.fetch(Some(&source), 2, 5, two)),
            [2, 3],
            "held entries share the byte budget"
        );
        assert_eq!(
            indexes(log.fetch(Some(&source), 2, 5, 0)),
            [2],
            "at least one"
        );
    }

    #[test]
    #[should_panic(expected = "the entry source gave [(2, 9)] for 2..4")]
    fn fetch_refuses_entries_of_the_wrong_term() {
        let mut log = applied_log_of(&[1, 1, 2]);
        log.release(3);
        log.fetch(Some(&Fixed(vec![entry(2, 9)])), 2, 4, u64::MAX);
    }

    #[test]
    fn apply_waits_for_commit_and_persist() {
        let mut log = log_of(&[]);
        log.append(vec![entry(1, 1), entry(2, 1)]);
        assert_eq!(log.take_unpersisted().len(), 2);
        log.commit_to(2);
        assert!(!log.has_to_apply(), "not durable yet");
        assert!(log.persisted_to(1, 1));
        assert_eq!(log.take_to_apply(u64::MAX).len(), 1);
        assert!(!log.persisted_to(2, 9), "wrong term is ignored");
        assert!(log.persisted_to(2, 1));
        assert_eq!(log.take_to_apply(u64::MAX)[0].index, 2);
        log.applied_to(2);
        log.compact(1);
        assert_eq!(log.first_index(), 2);
        assert_eq!(log.term(1), Some(1));
        assert_eq!(log.term(0), None);
        log.check_invariants();
    }
}
