//! The revision index: every stored version's revision and key, in revision order.
//!
//! Revisions only ever arrive in increasing order (a write takes the next one), so the index is
//! an append-only run of fixed-size chunks, each sorted and after the one before. A `BTreeMap`
//! fed in order leaves its nodes about half full (it splits them in the middle); here every
//! full chunk is full, and appending touches only the last one. A compaction filters the
//! chunks in one pass.

use crate::key::Key;
use crate::store::Revision;

/// Entries per chunk.
const CHUNK: usize = 1024;

#[derive(Clone, Debug, Default)]
pub(crate) struct RevisionIndex {
    /// Non-empty chunks, each sorted, each after the one before.
    chunks: Vec<Vec<(Revision, Key)>>,
    len: usize,
}

impl RevisionIndex {
    /// An index of `entries` in any order; `Err` with a revision that appears twice.
    pub(crate) fn from_unsorted(
        mut entries: Vec<(Revision, Key)>,
    ) -> Result<RevisionIndex, Revision> {
        entries.sort_unstable_by_key(|(revision, _)| *revision);
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(pair[0].0);
        }
        let mut index = RevisionIndex::default();
        for (revision, key) in entries {
            index.push(revision, key);
        }
        Ok(index)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `revision`, which must be above every revision held.
    pub(crate) fn push(&mut self, revision: Revision, key: Key) {
        if let Some(last) = self.chunks.last().and_then(|chunk| chunk.last()) {
            assert!(
                last.0 < revision,
                "revisions are indexed in increasing order"
            );
        }
        match self.chunks.last_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push((revision, key)),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push((revision, key));
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// The key stored at `revision`.
    pub(crate) fn get(&self, revision: Revision) -> Option<&Key> {
        let (chunk, at) = self.position(revision);
        self.chunks
            .get(chunk)
            .and_then(|entries| entries.get(at))
            .filter(|(held, _)| *held == revision)
            .map(|(_, key)| key)
    }

    /// Entries at or after `start`, in order.
    pub(crate) fn from(&self, start: Revision) -> impl Iterator<Item = &(Revision, Key)> + '_ {
        let (chunk, at) = self.position(start);
        self.chunks
            .iter()
            .skip(chunk)
            .enumerate()
            .flat_map(move |(skipped, entries)| entries[if skipped == 0 { at } else { 0 }..].iter())
    }

    /// Entries at or before `end`, in order.
    pub(crate) fn through(&self, end: Revision) -> impl Iterator<Item = &(Revision, Key)> + '_ {
        self.chunks
            .iter()
            .flat_map(|entries| entries.iter())
            .take_while(move |(revision, _)| *revision <= end)
    }

    /// Keeps the entries whose revision `keep` accepts (a compaction).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Revision) -> bool) {
        for chunk in &mut self.chunks {
            let before = chunk.len();
            chunk.retain(|(revision, _)| keep(*revision));
            if chunk.len() < before {
                chunk.shrink_to_fit();
            }
        }
        self.chunks.retain(|chunk| !chunk.is_empty());
        self.len = self.chunks.iter().map(Vec::len).sum();
    }

    /// The chunk and offset where `revision` is or would be inserted.
    fn position(&self, revision: Revision) -> (usize, usize) {
        // The first chunk whose last entry is at or after `revision`.
        let chunk = self
            .chunks
            .partition_point(|entries| entries.last().is_some_and(|last| last.0 < revision));
        let at = self.chunks.get(chunk).map_or(0, |entries| {
            entries.partition_point(|(held, _)| *held < revision)
        });
        (chunk, at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn key(n: u64) -> Key {
        Key::new(&Bytes::from(n.to_be_bytes().to_vec()))
    }

    fn revision(main: i64) -> Revision {
        Revision { main, sub: 0 }
    }

    proptest! {
        /// The index answers as a `BTreeMap` holding the same entries, through appends,
        /// compactions and lookups, across chunk boundaries.
        #[test]
        fn behaves_as_an_ordered_map(
            steps in prop::collection::vec((1i64..40, any::<u8>(), 0i64..4000), 1..120),
            probes in prop::collection::vec(0i64..6000, 1..20),
        ) {
            let mut index = RevisionIndex::default();
            let mut model = BTreeMap::new();
            let mut next = 1i64;
            for (gap, action, cut) in steps {
                if action % 4 == 0 {
                    // Compact: drop revisions below `cut` whose main is odd.
                    let drop = |r: Revision| r.main < cut && r.main % 2 == 1;
                    index.retain(|r| !drop(r));
                    model.retain(|r: &Revision, _| !drop(*r));
                } else {
                    for _ in 0..gap * 10 {
                        let r = revision(next);
                        next += 1 + (action as i64 % 3);
                        index.push(r, key(r.main as u64));
                        model.insert(r, key(r.main as u64));
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for probe in probes {
                let r = revision(probe);
                prop_assert_eq!(index.get(r), model.get(&r));
                let from: Vec<_> = index.from(r).map(|(r, k)| (*r, k.clone())).collect();
                let model_from: Vec<_> = model.range(r..).map(|(r, k)| (*r, k.clone())).collect();
                prop_assert_eq!(from, model_from);
                let through: Vec<_> = index.through(r).map(|(r, k)| (*r, k.clone())).collect();
                let model_through: Vec<_> = model.range(..=r).map(|(r, k)| (*r, k.clone())).collect();
                prop_assert_eq!(through, model_through);
            }
        }
    }

    #[test]
    fn unsorted_entries_are_sorted_and_duplicates_refused() {
        let index =
            RevisionIndex::from_unsorted(vec![(revision(5), key(5)), (revision(2), key(2))])
                .expect("distinct revisions");
        let order: Vec<i64> = index.from(revision(0)).map(|(r, _)| r.main).collect();
        assert_eq!(order, vec![2, 5]);
        assert_eq!(
            RevisionIndex::from_unsorted(vec![(revision(3), key(3)), (revision(3), key(4))]).err(),
            Some(revision(3))
        );
    }

    #[test]
    #[should_panic(expected = "increasing order")]
    fn out_of_order_appends_are_refused() {
        let mut index = RevisionIndex::default();
        index.push(revision(2), key(2));
        index.push(revision(1), key(1));
    }
}
