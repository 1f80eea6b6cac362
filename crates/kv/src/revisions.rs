//! The revision index: every stored version's revision and key, in revision order.
//!
//! Revisions only ever arrive in increasing order (a write takes the next one), so the index is
//! an append-only run of chunks of up to [`CHUNK`] entries, each sorted and after the one
//! before. A `BTreeMap` fed in order leaves its nodes about half full (it splits them in the
//! middle); here every full chunk is full, and appending touches only the last one. A
//! compaction filters the chunks in one pass.
//!
//! The index holds one entry per stored version, so its entries are packed: a revision is
//! its main revision's offset from the chunk's first one and its sub revision, 4 bytes each;
//! a short key's bytes are copied into the chunk's byte buffer behind a 4-byte end offset; a
//! key longer than `key::INLINE_BYTES` is shared with the key map (a `Bytes`, as the map holds
//! it). An 8-byte key costs 20 bytes an entry instead of the 48 of a `(Revision, Key)`.

use bytes::Bytes;

use crate::key::Key;
use crate::store::Revision;

/// Entries per chunk.
const CHUNK: usize = 1024;

/// Marks an entry of [`Chunk::ends`] that is an index into [`Chunk::long`].
const LONG: u32 = 1 << 31;

#[derive(Clone, Debug, Default)]
struct Chunk {
    /// The main revision of the first entry.
    base: i64,
    /// Each entry's main revision minus `base`, and its sub revision.
    revisions: Vec<(u32, u32)>,
    /// Each entry's key: the end of its bytes in `bytes` (it starts where the previous
    /// short key ended), or `LONG | i` for `long[i]`.
    ends: Vec<u32>,
    bytes: Vec<u8>,
    long: Vec<Bytes>,
}

impl Chunk {
    fn len(&self) -> usize {
        self.revisions.len()
    }

    fn revision(&self, at: usize) -> Revision {
        self.unpack(self.revisions[at])
    }

    fn unpack(&self, (offset, sub): (u32, u32)) -> Revision {
        Revision {
            main: self.base + offset as i64,
            sub: sub as i64,
        }
    }

    fn key(&self, at: usize) -> &[u8] {
        entries(self, at).next().expect("an entry at `at`").1
    }

    /// Where the short key at `at`, if it is one, starts in `bytes`: where the last short key
    /// before it ended.
    fn start_of(&self, at: usize) -> usize {
        self.ends[..at]
            .iter()
            .rev()
            .find(|end| *end & LONG == 0)
            .map_or(0, |end| *end as usize)
    }

    /// Whether `revision` can follow this chunk's entries in it.
    fn takes(&self, revision: Revision) -> bool {
        self.len() < CHUNK && u32::try_from(revision.main - self.base).is_ok()
    }

    /// Appends an entry: `key`'s bytes, or `long` (the same bytes, shared) if given.
    fn push(&mut self, revision: Revision, key: &[u8], long: Option<&Bytes>) {
        if self.revisions.is_empty() {
            self.base = revision.main;
        }
        let offset = u32::try_from(revision.main - self.base).expect("checked by `takes`");
        let sub = u32::try_from(revision.sub).expect("a sub revision counts one request's changes");
        self.revisions.push((offset, sub));
        match long {
            Some(bytes) => {
                self.ends.push(LONG | self.long.len() as u32);
                self.long.push(bytes.clone());
            }
            None => {
                self.bytes.extend_from_slice(key);
                self.ends.push(self.bytes.len() as u32);
            }
        }
    }

    /// The entries of `self` that `keep` accepts, as a new chunk (empty if none).
    fn filtered(&self, keep: &mut impl FnMut(Revision) -> bool) -> Chunk {
        let mut kept = Chunk::default();
        for (at, (revision, key)) in entries(self, 0).enumerate() {
            if keep(revision) {
                let end = self.ends[at];
                let long = (end & LONG != 0).then(|| &self.long[(end & !LONG) as usize]);
                kept.push(revision, key, long);
            }
        }
        kept.shrink_to_fit();
        kept
    }

    fn shrink_to_fit(&mut self) {
        self.revisions.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.bytes.shrink_to_fit();
        self.long.shrink_to_fit();
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct RevisionIndex {
    /// Non-empty chunks, each sorted, each after the one before.
    chunks: Vec<Chunk>,
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
            index.push(revision, &key);
        }
        Ok(index)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends `revision`, which must be above every revision held.
    pub(crate) fn push(&mut self, revision: Revision, key: &Key) {
        if let Some(chunk) = self.chunks.last() {
            assert!(
                chunk.revision(chunk.len() - 1) < revision,
                "revisions are indexed in increasing order"
            );
        }
        if !self
            .chunks
            .last()
            .is_some_and(|chunk| chunk.takes(revision))
        {
            if let Some(full) = self.chunks.last_mut() {
                full.shrink_to_fit();
            }
            self.chunks.push(Chunk::default());
        }
        let long = match key {
            Key::Shared(bytes) => Some(bytes),
            Key::Inline { .. } => None,
        };
        self.chunks
            .last_mut()
            .expect("just ensured")
            .push(revision, key.as_slice(), long);
        self.len += 1;
    }

    /// The key stored at `revision`.
    pub(crate) fn get(&self, revision: Revision) -> Option<&[u8]> {
        let (chunk, at) = self.position(revision);
        let chunk = self.chunks.get(chunk)?;
        (at < chunk.len() && chunk.revision(at) == revision).then(|| chunk.key(at))
    }

    /// Entries at or after `start`, in order.
    pub(crate) fn from(&self, start: Revision) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        let (first, at) = self.position(start);
        self.chunks
            .iter()
            .enumerate()
            .skip(first)
            .flat_map(move |(number, chunk)| {
                let from = if number == first { at } else { 0 };
                entries(chunk, from)
            })
    }

    /// Entries at or before `end`, in order.
    pub(crate) fn through(&self, end: Revision) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        self.chunks
            .iter()
            .flat_map(|chunk| entries(chunk, 0))
            .take_while(move |(revision, _)| *revision <= end)
    }

    /// Keeps the entries whose revision `keep` accepts (a compaction).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Revision) -> bool) {
        for chunk in &mut self.chunks {
            let before = chunk.len();
            let all_kept = (0..before).all(|at| keep(chunk.revision(at)));
            if !all_kept {
                *chunk = chunk.filtered(&mut keep);
            }
        }
        self.chunks.retain(|chunk| chunk.len() > 0);
        self.len = self.chunks.iter().map(Chunk::len).sum();
    }

    /// The chunk and offset where `revision` is or would be inserted.
    fn position(&self, revision: Revision) -> (usize, usize) {
        // The first chunk whose last entry is at or after `revision`.
        let chunk = self
            .chunks
            .partition_point(|chunk| chunk.revision(chunk.len() - 1) < revision);
        let at = self.chunks.get(chunk).map_or(0, |chunk| {
            chunk
                .revisions
                .partition_point(|packed| chunk.unpack(*packed) < revision)
        });
        (chunk, at)
    }
}

/// A chunk's entries from `from` on, with each short key's start carried along.
fn entries(chunk: &Chunk, from: usize) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
    let mut start = chunk.start_of(from);
    (from..chunk.len()).map(move |at| {
        let end = chunk.ends[at];
        let key: &[u8] = if end & LONG != 0 {
            &chunk.long[(end & !LONG) as usize]
        } else {
            let key = &chunk.bytes[start..end as usize];
            start = end as usize;
            key
        };
        (chunk.revision(at), key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A short key, or for a multiple of 3 one too long to be held inline.
    fn key(n: u64) -> Key {
        let mut bytes = n.to_be_bytes().to_vec();
        if n.is_multiple_of(3) {
            bytes.extend_from_slice(&[b'x'; 30]);
        }
        Key::new(&Bytes::from(bytes))
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
                        // Some requests change two keys: sub revisions 0 and 1.
                        for sub in 0..=(action % 5 == 1) as i64 {
                            let r = Revision { main: next, sub };
                            index.push(r, &key(r.main as u64 + sub as u64));
                            model.insert(r, key(r.main as u64 + sub as u64));
                        }
                        next += 1 + (action as i64 % 3);
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for probe in probes {
                let r = revision(probe);
                prop_assert_eq!(index.get(r), model.get(&r).map(Key::as_slice));
                let from: Vec<_> = index.from(r).map(|(r, k)| (r, k.to_vec())).collect();
                let model_from: Vec<_> =
                    model.range(r..).map(|(r, k)| (*r, k.as_slice().to_vec())).collect();
                prop_assert_eq!(from, model_from);
                let through: Vec<_> = index.through(r).map(|(r, k)| (r, k.to_vec())).collect();
                let model_through: Vec<_> =
                    model.range(..=r).map(|(r, k)| (*r, k.as_slice().to_vec())).collect();
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
        assert_eq!(index.get(revision(5)), Some(key(5).as_slice()));
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
        index.push(revision(2), &key(2));
        index.push(revision(1), &key(1));
    }
}
