//! One key's versions, oldest first, stored compactly and so that copying them is cheap.
//!
//! # Layout
//! A version is kept as a 32-byte [`Slot`]: its revision, lease and where its value lies. Its
//! create revision and version are not kept, because they follow from the version before it:
//! - a tombstone has neither (both 0);
//! - a live version after a tombstone starts a generation: it was created at its own
//!   revision and is version 1;
//! - a live version after a live one continues its generation: same create revision, version
//!   one more.
//!
//! So a run of slots needs only its first version's two fields, and each later one is found
//! by stepping forward from there. The first of every chunk has them, so that finding any
//! version takes at most a chunk's worth of steps, and so does the tail's first when they are
//! not the ones its slot implies on its own (a tombstone's, or a new generation's): after a
//! compaction that left the history starting inside a generation, or after a full chunk.
//!
//! # Sharing
//! A key's history only grows at the end (a new revision) and shrinks at the front (a
//! compaction). Versions are kept in fixed-size chunks that never change once full and are
//! shared between copies, plus a short tail that is still filling: a copy (a snapshot taken
//! while the store moves on) costs one reference per full chunk and the tail, however long
//! the history is. A compaction rebuilds the chunks, which is rare and linear anyway.

use std::sync::Arc;

use crate::store::{Revision, StoredVersion};
use crate::values::Value;

/// Versions per full chunk.
const CHUNK: usize = 64;

/// A version as a history keeps it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    main: i64,
    lease: i64,
    offset: u64,
    /// The value's length, or [`Slot::TOMBSTONE`].
    len: u32,
    sub: u32,
}

/// A version's create revision and version: both 0 for a tombstone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Generation {
    create_revision: i64,
    version: i64,
}

impl Slot {
    /// `len` of a tombstone: no value is that long (a value log's lengths are below it).
    const TOMBSTONE: u32 = u32::MAX;

    fn new(version: &StoredVersion) -> Slot {
        let sub = u32::try_from(version.revision.sub).expect("sub revisions fit in 32 bits");
        if version.is_tombstone() {
            return Slot {
                main: version.revision.main,
                lease: 0,
                offset: 0,
                len: Slot::TOMBSTONE,
                sub,
            };
        }
        assert!(version.value.len < Slot::TOMBSTONE, "a value under 4 GiB");
        Slot {
            main: version.revision.main,
            lease: version.lease,
            offset: version.value.offset,
            len: version.value.len,
            sub,
        }
    }

    fn is_tombstone(&self) -> bool {
        self.len == Slot::TOMBSTONE
    }

    /// The generation this slot has when nothing comes before it in its history, or after a
    /// tombstone: none for a tombstone, a new one for a live version.
    fn implied(&self) -> Generation {
        if self.is_tombstone() {
            Generation::default()
        } else {
            Generation {
                create_revision: self.main,
                version: 1,
            }
        }
    }

    fn revision(&self) -> Revision {
        Revision {
            main: self.main,
            sub: i64::from(self.sub),
        }
    }

    /// Where a live version's value is.
    fn value(&self) -> Value {
        Value {
            offset: self.offset,
            len: self.len,
        }
    }

    /// The version, given its create revision and version.
    fn version(&self, generation: Generation) -> StoredVersion {
        if self.is_tombstone() {
            return StoredVersion::tombstone(self.revision());
        }
        StoredVersion {
            revision: self.revision(),
            create_revision: generation.create_revision,
            version: generation.version,
            lease: self.lease,
            value: self.value(),
        }
    }

    /// This slot's create revision and version, when `previous` (with `generation`) comes
    /// right before it.
    fn after(&self, previous: &Slot, generation: Generation) -> Generation {
        if self.is_tombstone() || previous.is_tombstone() {
            self.implied()
        } else {
            Generation {
                create_revision: generation.create_revision,
                version: generation.version + 1,
            }
        }
    }
}

impl Generation {
    fn of(version: &StoredVersion) -> Generation {
        Generation {
            create_revision: version.create_revision,
            version: version.version,
        }
    }
}

/// Slots that follow each other, with the first one's generation.
#[derive(Clone, Copy)]
struct Run<'a> {
    first: Generation,
    slots: &'a [Slot],
}

impl Run<'_> {
    /// The generation of the slot at `index`, stepping forward from the first.
    fn generation(&self, index: usize) -> Generation {
        let mut generation = self.first;
        for pair in self.slots[..=index].windows(2) {
            generation = pair[1].after(&pair[0], generation);
        }
        generation
    }

    fn version(&self, index: usize) -> StoredVersion {
        self.slots[index].version(self.generation(index))
    }
}

/// A full chunk: exactly `CHUNK` slots.
#[derive(Debug, PartialEq, Eq)]
struct Chunk {
    first: Generation,
    slots: [Slot; CHUNK],
}

impl Chunk {
    fn run(&self) -> Run<'_> {
        Run {
            first: self.first,
            slots: &self.slots,
        }
    }
}

/// A key's versions in revision order (see the module docs): 32 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// The full chunks and the tail's first generation, if there are chunks or that
    /// generation is not the one the tail's first slot implies; most keys need neither, and
    /// then this is a null pointer.
    more: Option<Box<More>>,
    /// The slots after the chunks: fewer than `CHUNK`.
    tail: Vec<Slot>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct More {
    /// Full chunks, shared between copies.
    chunks: Vec<Arc<Chunk>>,
    /// The generation of the tail's first slot (when the tail has one).
    tail_first: Generation,
}

impl History {
    pub(crate) fn len(&self) -> usize {
        self.chunks().len() * CHUNK + self.tail.len()
    }

    fn chunks(&self) -> &[Arc<Chunk>] {
        self.more.as_deref().map_or(&[], |more| &more.chunks)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn tail_run(&self) -> Run<'_> {
        let first = match (&self.more, self.tail.first()) {
            (Some(more), _) => more.tail_first,
            (None, Some(slot)) => slot.implied(),
            (None, None) => Generation::default(),
        };
        Run {
            first,
            slots: &self.tail,
        }
    }

    /// The run holding the version at `index`, and its index there.
    fn locate(&self, index: usize) -> Option<(Run<'_>, usize)> {
        let chunks = self.chunks();
        let chunked = chunks.len() * CHUNK;
        if index < chunked {
            Some((chunks[index / CHUNK].run(), index % CHUNK))
        } else {
            (index - chunked < self.tail.len()).then(|| (self.tail_run(), index - chunked))
        }
    }

    /// The slot at `index` (in range).
    fn slot(&self, index: usize) -> &Slot {
        let (run, at) = self.locate(index).expect("index in range");
        &run.slots[at]
    }

    /// Whether the version at `index` (in range) is a tombstone.
    pub(crate) fn is_tombstone(&self, index: usize) -> bool {
        self.slot(index).is_tombstone()
    }

    pub(crate) fn get(&self, index: usize) -> Option<StoredVersion> {
        let (run, at) = self.locate(index)?;
        Some(run.version(at))
    }

    pub(crate) fn last(&self) -> Option<StoredVersion> {
        self.len().checked_sub(1).and_then(|index| self.get(index))
    }

    /// Every version, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = StoredVersion> + '_ {
        let runs = self.chunks().iter().map(|chunk| chunk.run());
        runs.chain(std::iter::once(self.tail_run()))
            .flat_map(|run| {
                let mut generation = run.first;
                run.slots.iter().enumerate().map(move |(index, slot)| {
                    if index > 0 {
                        generation = slot.after(&run.slots[index - 1], generation);
                    }
                    slot.version(generation)
                })
            })
    }

    /// Whether `version` can come next: its revision is later than the last one's, and its
    /// create revision and version are the ones that follow (see the module docs).
    pub(crate) fn follows(&self, version: &StoredVersion) -> bool {
        let Some(index) = self.len().checked_sub(1) else {
            return true;
        };
        let (run, at) = self.locate(index).expect("the last index is in range");
        let last = run.slots[at];
        last.revision() < version.revision
            && Slot::new(version).after(&last, run.generation(at)) == Generation::of(version)
    }

    /// Appends a version, which must follow the last one (see [`History::follows`]).
    pub(crate) fn push(&mut self, version: StoredVersion) {
        debug_assert!(self.follows(&version), "{version:?} follows {self:?}");
        let slot = Slot::new(&version);
        if self.tail.is_empty() {
            let first = Generation::of(&version);
            match &mut self.more {
                Some(more) => more.tail_first = first,
                None if first == slot.implied() => {}
                None => {
                    self.more = Some(Box::new(More {
                        chunks: Vec::new(),
                        tail_first: first,
                    }))
                }
            }
        }
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
        self.tail.push(slot);
        if self.tail.len() == CHUNK {
            let first = self.tail_run().first;
            let full = std::mem::replace(&mut self.tail, Vec::with_capacity(CHUNK));
            let chunk = Chunk {
                first,
                slots: full.try_into().expect("a full tail is a chunk"),
            };
            let more = self.more.get_or_insert_with(Box::default);
            more.chunks.push(Arc::new(chunk));
            // The next push starts a new tail and sets it again.
            more.tail_first = Generation::default();
        }
    }

    /// The index of the first version for which `before` (given its revision) is false;
    /// `before` must be true for a prefix and false after it, as for `slice::partition_point`.
    pub(crate) fn partition_point(&self, before: impl Fn(Revision) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            if before(self.slot(middle).revision()) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    /// The index of the version at `revision`, if there is one.
    pub(crate) fn find(&self, revision: Revision) -> Option<usize> {
        let index = self.partition_point(|stored| stored < revision);
        (index < self.len() && self.slot(index).revision() == revision).then_some(index)
    }

    /// Removes the `count` oldest versions and returns them, oldest first.
    pub(crate) fn drain_front(&mut self, count: usize) -> Vec<StoredVersion> {
        if count == 0 {
            return Vec::new();
        }
        let mut all: Vec<StoredVersion> = self.iter().collect();
        let kept = all.split_off(count.min(all.len()));
        self.rebuild(kept);
        all
    }

    /// Every version's value, oldest first.
    pub(crate) fn values(&self) -> impl Iterator<Item = Value> + '_ {
        self.chunks()
            .iter()
            .flat_map(|chunk| chunk.slots.iter())
            .chain(self.tail.iter())
            .filter(|slot| !slot.is_tombstone())
            .map(Slot::value)
    }

    /// Replaces every version's value with `place(value)`, rebuilding the chunks (a copy made
    /// earlier keeps the old ones).
    pub(crate) fn map_values(&mut self, mut place: impl FnMut(Value) -> Value) {
        let versions: Vec<StoredVersion> = self
            .iter()
            .map(|version| {
                if version.is_tombstone() {
                    version
                } else {
                    StoredVersion {
                        value: place(version.value),
                        ..version
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tombstone(main: i64) -> StoredVersion {
        StoredVersion::tombstone(Revision { main, sub: 0 })
    }

    fn mains(history: &History) -> Vec<i64> {
        history.iter().map(|v| v.revision.main).collect()
    }

    /// `count` versions of one key as a store writes them, from revision 2: puts and deletes
    /// drawn from `seed`, with their create revisions and versions by etcd's rules.
    fn writes(count: usize, seed: u64) -> Vec<StoredVersion> {
        let mut draw = seed | 1;
        let mut versions: Vec<StoredVersion> = Vec::new();
        for main in 2..2 + count as i64 {
            draw ^= draw << 13;
            draw ^= draw >> 7;
            draw ^= draw << 17;
            let live = versions.last().filter(|last| !last.is_tombstone()).copied();
            // A delete needs a live key; about one write in five is one.
            let version = if live.is_some() && draw.is_multiple_of(5) {
                tombstone(main)
            } else {
                let (create_revision, version) =
                    live.map_or((main, 1), |live| (live.create_revision, live.version + 1));
                StoredVersion {
                    revision: Revision {
                        main,
                        sub: (draw % 3) as i64,
                    },
                    create_revision,
                    version,
                    lease: (draw % 4) as i64 * 1000,
                    value: Value {
                        offset: draw % 10_000,
                        len: (draw % 300) as u32,
                    },
                }
            };
            versions.push(version);
        }
        versions
    }

    fn check(history: &History, model: &[StoredVersion]) {
        assert_eq!(history.len(), model.len());
        assert_eq!(history.iter().collect::<Vec<_>>(), model);
        for (index, version) in model.iter().enumerate() {
            assert_eq!(history.get(index).as_ref(), Some(version));
            assert_eq!(history.is_tombstone(index), version.is_tombstone());
            assert_eq!(history.find(version.revision), Some(index));
        }
        assert_eq!(history.get(model.len()), None);
        assert_eq!(history.last().as_ref(), model.last());
        let values: Vec<Value> = model
            .iter()
            .filter(|version| !version.is_tombstone())
            .map(|version| version.value)
            .collect();
        assert_eq!(history.values().collect::<Vec<_>>(), values);
    }

    #[test]
    fn gives_back_every_version_as_written_across_chunks_and_compactions() {
        for seed in 1..=20 {
            let model = writes(3 * CHUNK + 7, seed);
            let mut history = History::default();
            for (count, version) in model.iter().enumerate() {
                assert!(history.follows(version), "seed {seed}, version {count}");
                history.push(*version);
                if count % 17 == 0 || count + 1 == model.len() {
                    check(&history, &model[..=count]);
                }
            }
            // A compaction can leave the history starting anywhere, also inside a generation.
            for count in [1, 2, CHUNK - 1, CHUNK, CHUNK + 3, 2 * CHUNK + 1] {
                let mut compacted = history.clone();
                assert_eq!(compacted.drain_front(count), model[..count]);
                check(&compacted, &model[count..]);
                let next = writes(model.len() + 1, seed)[model.len()];
                let mut grown = model[count..].to_vec();
                if compacted.follows(&next) {
                    compacted.push(next);
                    grown.push(next);
                }
                check(&compacted, &grown);
            }
            // Values are replaced in place; every other field stays.
            let mut moved = history.clone();
            moved.map_values(|value| Value {
                offset: value.offset + 1,
                ..value
            });
            let shifted: Vec<StoredVersion> = model
                .iter()
                .map(|version| match version.is_tombstone() {
                    true => *version,
                    false => StoredVersion {
                        value: Value {
                            offset: version.value.offset + 1,
                            ..version.value
                        },
                        ..*version
                    },
                })
                .collect();
            check(&moved, &shifted);
            check(&history, &model);
        }
    }

    #[test]
    fn a_version_that_does_not_follow_is_refused() {
        let model = writes(2 * CHUNK, 7);
        let mut history = History::default();
        for version in &model[..CHUNK + 1] {
            history.push(*version);
        }
        let next = model[CHUNK + 1];
        assert!(history.follows(&next));
        let main = next.revision.main;
        let live = StoredVersion {
            revision: next.revision,
            create_revision: main,
            version: 1,
            lease: 0,
            value: Value::default(),
        };
        // A live version after a live one continues its generation; after a tombstone it
        // starts one at its own revision.
        let last = history.last().unwrap();
        let wrong = if last.is_tombstone() {
            vec![
                StoredVersion { version: 2, ..live },
                StoredVersion {
                    create_revision: main - 1,
                    ..live
                },
            ]
        } else {
            vec![
                StoredVersion {
                    create_revision: last.create_revision,
                    version: last.version + 2,
                    ..live
                },
                StoredVersion {
                    create_revision: last.create_revision + 1,
                    version: last.version + 1,
                    ..live
                },
                live,
            ]
        };
        for version in wrong {
            assert!(!history.follows(&version), "{version:?} after {last:?}");
        }
        // Nor does a revision at or before the last one.
        assert!(!history.follows(&StoredVersion {
            revision: last.revision,
            ..next
        }));
    }

    #[test]
    fn behaves_like_a_vector_across_chunk_boundaries() {
        let mut history = History::default();
        let mut model = Vec::new();
        for main in 1..=(3 * CHUNK as i64 + 5) {
            history.push(tombstone(2 * main));
            model.push(2 * main);
            assert_eq!(history.len(), model.len());
            assert_eq!(history.last().unwrap().revision.main, 2 * main);
        }
        assert_eq!(mains(&history), model);
        for (index, main) in model.iter().enumerate() {
            assert_eq!(history.get(index).unwrap().revision.main, *main);
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
                history.partition_point(|stored| stored.main <= *main),
                at_or_below
            );
        }
        assert_eq!(history.partition_point(|_| true), model.len());
        assert_eq!(history.partition_point(|_| false), 0);
    }

    #[test]
    fn short_histories_hold_no_spare_room() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        let mut history = History::default();
        for main in 1..=4 {
            history.push(tombstone(main));
            assert_eq!(history.tail.capacity(), history.len());
        }
        for main in 5..=(CHUNK as i64 + 1) {
            history.push(tombstone(main));
            assert!(history.tail.capacity() <= CHUNK);
        }
        assert_eq!((history.chunks().len(), history.tail.len()), (1, 1));
    }

    #[test]
    fn draining_the_front_keeps_the_rest_in_order() {
        for count in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, 3 * CHUNK] {
            let mut history = History::default();
            for main in 1..=(2 * CHUNK as i64 + 3) {
                history.push(tombstone(main));
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
            history.push(tombstone(1000));
            assert_eq!(history.last().unwrap().revision.main, 1000);
        }
    }

    #[test]
    fn a_history_is_32_bytes() {
        // One per key in the key map's nodes: the tail's vector and a pointer, null unless the
        // key has full chunks or starts inside a generation.
        assert_eq!(std::mem::size_of::<History>(), 32);
        let mut history = History::default();
        for version in writes(CHUNK - 1, 3) {
            history.push(version);
        }
        assert!(history.more.is_none());
    }

    #[test]
    fn a_copy_shares_full_chunks_and_does_not_see_later_versions() {
        let mut history = History::default();
        for main in 1..=(2 * CHUNK as i64) {
            history.push(tombstone(main));
        }
        let copy = history.clone();
        assert!(Arc::ptr_eq(&copy.chunks()[0], &history.chunks()[0]));
        history.push(tombstone(10_000));
        history.drain_front(CHUNK + 1);
        assert_eq!(mains(&copy), (1..=2 * CHUNK as i64).collect::<Vec<_>>());
    }
}
