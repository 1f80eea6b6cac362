//! One key's versions, oldest first, stored so that copying them is cheap.
//!
//! A key's history only grows at the end (a new revision) and shrinks at the front (a
//! compaction). Versions are kept in fixed-size chunks that never change once full and are
//! shared between copies, plus a short tail that is still filling: a copy (a snapshot taken
//! while the store moves on) costs one reference per full chunk and the tail, however long
//! the history is. A compaction rebuilds the chunks, which is rare and linear anyway.

use std::ops::Index;
use std::sync::Arc;

use crate::store::StoredVersion;
use crate::values::Value;

/// Versions per full chunk.
const CHUNK: usize = 64;

/// A key's versions in revision order (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// Full chunks of exactly `CHUNK` versions, shared between copies.
    chunks: Chunks,
    /// The versions after the chunks: fewer than `CHUNK`.
    tail: Vec<StoredVersion>,
}

impl History {
    pub(crate) fn len(&self) -> usize {
        self.chunks.as_slice().len() * CHUNK + self.tail.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, index: usize) -> Option<&StoredVersion> {
        let chunks = self.chunks.as_slice();
        let chunked = chunks.len() * CHUNK;
        if index < chunked {
            Some(&chunks[index / CHUNK][index % CHUNK])
        } else {
            self.tail.get(index - chunked)
        }
    }

    pub(crate) fn last(&self) -> Option<&StoredVersion> {
        self.tail
            .last()
            .or_else(|| self.chunks.as_slice().last().and_then(|chunk| chunk.last()))
    }

    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &StoredVersion> + '_ {
        self.chunks
            .as_slice()
            .iter()
            .flat_map(|chunk| chunk.iter())
            .chain(self.tail.iter())
    }

    /// Appends a version (the caller keeps revisions increasing).
    pub(crate) fn push(&mut self, version: StoredVersion) {
        if self.tail.len() == self.tail.capacity() {
            // Most keys keep a few versions: the tail grows by one up to four (a vector would
            // start at four), then doubles.
            let more = if self.tail.len() < 4 {
                1
            } else {
                self.tail.len()
            };
            self.tail.reserve_exact(more.min(CHUNK - self.tail.len()));
        }
        self.tail.push(version);
        if self.tail.len() == CHUNK {
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            self.chunks.push(full.into());
        }
    }

    /// The index of the first version for which `before` is false (`before` must be true for
    /// a prefix and false after it), as `slice::partition_point`.
    pub(crate) fn partition_point(&self, before: impl Fn(&StoredVersion) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if before(&self[middle]) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The index of the version at `revision`, if there is one.
    pub(crate) fn find(&self, revision: crate::store::Revision) -> Option<usize> {
        let index = self.partition_point(|version| version.revision < revision);
        (self.get(index)?.revision == revision).then_some(index)
    }

    /// Removes the `count` oldest versions and returns them, oldest first.
    pub(crate) fn drain_front(&mut self, count: usize) -> Vec<StoredVersion> {
        if count == 0 {
            return Vec::new();
        }
        let mut all: Vec<StoredVersion> = self.iter().cloned().collect();
        let kept = all.split_off(count.min(all.len()));
        self.rebuild(kept);
        all
    }

    /// Replaces every version's value with `place(value)`, rebuilding the chunks (a copy made
    /// earlier keeps the old ones).
    pub(crate) fn map_values(&mut self, mut place: impl FnMut(&Value) -> Value) {
        let versions: Vec<StoredVersion> = self
            .iter()
            .map(|version| StoredVersion {
                value: place(&version.value),
                ..version.clone()
            })
            .collect();
        self.rebuild(versions);
    }

    /// Becomes a history of exactly `versions` (in order), in fresh chunks.
    fn rebuild(&mut self, versions: Vec<StoredVersion>) {
        *self = History::default();
        for version in versions {
            self.push(version);
        }
    }
}

/// The full chunks of a history, boxed: most keys have none, and then they cost a null
/// pointer (8 bytes) in every entry of the key map instead of an empty vector's 24.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(clippy::box_collection)] // The box is the point: 8 bytes instead of 24.
struct Chunks(Option<Box<Vec<Arc<[StoredVersion]>>>>);

impl Chunks {
    fn as_slice(&self) -> &[Arc<[StoredVersion]>] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    fn push(&mut self, chunk: Arc<[StoredVersion]>) {
        self.0.get_or_insert_with(Box::default).push(chunk);
    }
}

impl Index<usize> for History {
    type Output = StoredVersion;

    fn index(&self, index: usize) -> &StoredVersion {
        self.get(index).expect("version index in range")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Revision;

    fn version(main: i64) -> StoredVersion {
        StoredVersion::tombstone(Revision { main, sub: 0 })
    }

    fn mains(history: &History) -> Vec<i64> {
        history.iter().map(|v| v.revision.main).collect()
    }

    #[test]
    fn behaves_like_a_vector_across_chunk_boundaries() {
        let mut history = History::default();
        let mut model = Vec::new();
        for main in 1..=(3 * CHUNK as i64 + 5) {
            history.push(version(2 * main));
            model.push(2 * main);
            assert_eq!(history.len(), model.len());
            assert_eq!(history.last().unwrap().revision.main, 2 * main);
        }
        assert_eq!(mains(&history), model);
        for (index, main) in model.iter().enumerate() {
            assert_eq!(history[index].revision.main, *main);
            let revision = Revision {
                main: *main,
                sub: 0,
            };
            assert_eq!(history.find(revision), Some(index));
            assert_eq!(
                history.find(Revision {
                    main: main + 1,
                    sub: 0
                }),
                None
            );
            // Versions at or below `main`, as the slice method counts them.
            let at_or_below = model.partition_point(|m| m <= main);
            assert_eq!(
                history.partition_point(|v| v.revision.main <= *main),
                at_or_below
            );
        }
        assert_eq!(history.partition_point(|_| true), model.len());
        assert_eq!(history.partition_point(|_| false), 0);
        assert_eq!(
            history
                .iter()
                .rev()
                .map(|v| v.revision.main)
                .collect::<Vec<_>>(),
            model.iter().rev().copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn short_histories_hold_no_spare_room() {
        assert_eq!(std::mem::size_of::<StoredVersion>(), 56);
        let mut history = History::default();
        for main in 1..=4 {
            history.push(version(main));
            assert_eq!(history.tail.capacity(), history.len());
        }
        for main in 5..=(CHUNK as i64 + 1) {
            history.push(version(main));
            assert!(history.tail.capacity() <= CHUNK);
        }
        assert_eq!(
            (history.chunks.as_slice().len(), history.tail.len()),
            (1, 1)
        );
    }

    #[test]
    fn draining_the_front_keeps_the_rest_in_order() {
        for count in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 3 * CHUNK] {
            let mut history = History::default();
            for main in 1..=(2 * CHUNK as i64 + 3) {
                history.push(version(main));
            }
            let total = history.len();
            let drained = history.drain_front(count);
            let removed = count.min(total);
            assert_eq!(
                drained.iter().map(|v| v.revision.main).collect::<Vec<_>>(),
                (1..=removed as i64).collect::<Vec<_>>()
            );
            assert_eq!(
                mains(&history),
                ((removed as i64 + 1)..=total as i64).collect::<Vec<_>>()
            );
            history.push(version(1000));
            assert_eq!(history.last().unwrap().revision.main, 1000);
        }
    }

    #[test]
    fn a_history_is_32_bytes() {
        // One per key in the key map's nodes: the tail's vector and a pointer to the chunks.
        assert_eq!(std::mem::size_of::<History>(), 32);
    }

    #[test]
    fn a_copy_shares_full_chunks_and_does_not_see_later_versions() {
        let mut history = History::default();
        for main in 1..=(2 * CHUNK as i64) {
            history.push(version(main));
        }
        let copy = history.clone();
        assert!(Arc::ptr_eq(
            &copy.chunks.as_slice()[0],
            &history.chunks.as_slice()[0]
        ));
        history.push(version(10_000));
        history.drain_front(CHUNK + 1);
        assert_eq!(mains(&copy), (1..=2 * CHUNK as i64).collect::<Vec<_>>());
    }
}
