//! The revision index: every stored version's revision and key, in revision order.
//!
//! Revisions only ever arrive in increasing order (a write takes the next one), so the index is
//! an append-only run of chunks of up to [`CHUNK`] entries, each sorted and after the one
//! before. A `BTreeMap` fed in order leaves its nodes about half full (it splits them in the
//! middle); here every full chunk is full, and appending touches only the last one. A
//! compaction filters the chunks in one pass.
//!
//! The index holds one entry per stored version, so a chunk keeps its entries as bytes, each
//! written against the one before it: the step from the previous main revision and a flag for a
//! sub revision (one varint, one byte for consecutive revisions), the sub revision if not 0,
//! then the key, a short key's length and bytes, or for a key longer than `key::INLINE_BYTES`
//! the position of its bytes in the chunk's `long` list, shared with the key map (a `Bytes`,
//! as the map holds it). An 8-byte key at the next revision costs 10 bytes, against 20 for
//! fixed-width fields and 48 for a `(Revision, Key)`. Finding a revision decodes the chunk it
//! falls in: the index is read in order (watch catch-up from a revision, the hash walk,
//! compaction); only the store's self-check looks revisions up one by one.

use bytes::Bytes;

use crate::key::Key;
use crate::store::Revision;
use crate::wire::put_varint;

/// Entries per chunk: the most a lookup decodes.
const CHUNK: usize = 256;

#[derive(Clone, Debug)]
struct Chunk {
    /// The first entry's revision, the last's, and the entry count.
    first: Revision,
    last: Revision,
    len: usize,
    /// The encoded entries (see the module's description).
    bytes: Vec<u8>,
    long: Vec<Bytes>,
}

impl Chunk {
    /// An empty chunk starting at `revision`, with room for `bytes` of encoded entries.
    fn new(revision: Revision, bytes: usize) -> Chunk {
        Chunk {
            first: revision,
            last: revision,
            len: 0,
            bytes: Vec::with_capacity(bytes),
            long: Vec::new(),
        }
    }

    /// Appends an entry after the last: `key`'s bytes, or `long` (the same bytes, shared) if
    /// given.
    fn push(&mut self, revision: Revision, key: &[u8], long: Option<&Bytes>) {
        // A new chunk's `last` is its first revision, so its first entry has a step of 0.
        let step = u64::try_from(revision.main - self.last.main).expect("revisions increase");
        let sub = u64::try_from(revision.sub).expect("a sub revision is not negative");
        put_varint(&mut self.bytes, (step << 1) | u64::from(sub != 0));
        if sub != 0 {
            put_varint(&mut self.bytes, sub);
        }
        match long {
            Some(bytes) => {
                put_varint(&mut self.bytes, ((self.long.len() as u64) << 1) | 1);
                self.long.push(bytes.clone());
            }
            None => {
                put_varint(&mut self.bytes, (key.len() as u64) << 1);
                self.bytes.extend_from_slice(key);
            }
        }
        self.last = revision;
        self.len += 1;
    }

    fn entries(&self) -> Entries<'_> {
        Entries {
            chunk: self,
            at: 0,
            previous: self.first.main,
        }
    }

    /// The entries at or after `start`.
    fn entries_from(&self, start: Revision) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        self.entries()
            .skip_while(move |(revision, _)| *revision < start)
    }

    /// The entries of `self` that `keep` accepts, as a new chunk (`None` if none).
    fn filtered(&self, keep: &mut impl FnMut(Revision) -> bool) -> Option<Chunk> {
        let mut kept: Option<Chunk> = None;
        for (revision, key, long) in self.entries().with_long() {
            if keep(revision) {
                kept.get_or_insert_with(|| Chunk::new(revision, self.bytes.len()))
                    .push(revision, key, long);
            }
        }
        if let Some(chunk) = &mut kept {
            chunk.fit();
        }
        kept
    }

    /// Moves the entries into allocations of their exact size. Not `shrink_to_fit`: an
    /// allocator may keep a block that shrinks by less than half (mimalloc does), and a
    /// chunk's bytes grown to 4 KiB for 2.6 KiB of entries then held 4 KiB for good (1.7 MB
    /// of a member holding 288,000 revisions).
    fn fit(&mut self) {
        if self.bytes.capacity() > self.bytes.len() {
            let mut bytes = Vec::with_capacity(self.bytes.len());
            bytes.extend_from_slice(&self.bytes);
            self.bytes = bytes;
        }
        if self.long.capacity() > self.long.len() {
            let mut long = Vec::with_capacity(self.long.len());
            long.append(&mut self.long);
            self.long = long;
        }
    }
}

/// Decodes a chunk's entries in order.
struct Entries<'a> {
    chunk: &'a Chunk,
    /// Where the next entry starts in `chunk.bytes`.
    at: usize,
    /// The main revision of the entry before the next (the chunk's first before the first).
    previous: i64,
}

impl<'a> Entries<'a> {
    fn varint(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.chunk.bytes[self.at];
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
            shift += 7;
        }
    }

    /// The next entry, with the shared bytes of a long key.
    fn next_entry(&mut self) -> Option<(Revision, &'a [u8], Option<&'a Bytes>)> {
        if self.at == self.chunk.bytes.len() {
            return None;
        }
        let head = self.varint();
        let main = self.previous + (head >> 1) as i64;
        let sub = if head & 1 == 1 {
            self.varint() as i64
        } else {
            0
        };
        self.previous = main;
        let key = self.varint();
        let (bytes, long) = if key & 1 == 1 {
            let long = &self.chunk.long[(key >> 1) as usize];
            (&long[..], Some(long))
        } else {
            let end = self.at + (key >> 1) as usize;
            let bytes = &self.chunk.bytes[self.at..end];
            self.at = end;
            (bytes, None)
        };
        Some((Revision { main, sub }, bytes, long))
    }

    fn with_long(mut self) -> impl Iterator<Item = (Revision, &'a [u8], Option<&'a Bytes>)> {
        std::iter::from_fn(move || self.next_entry())
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (Revision, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_entry().map(|(revision, key, _)| (revision, key))
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
                chunk.last < revision,
                "revisions are indexed in increasing order"
            );
        }
        if self.chunks.last().is_none_or(|chunk| chunk.len >= CHUNK) {
            // Room for as many bytes as the last chunk took, and an eighth more: a chunk
            // fills without growing step by step (each step a block left behind among the
            // histories' small ones), and `fit` trims it when it is full.
            let mut room = 0;
            if let Some(full) = self.chunks.last_mut() {
                full.fit();
                room = full.bytes.len() + full.bytes.len() / 8;
            }
            self.chunks.push(Chunk::new(revision, room));
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
        let chunk = self.chunks.get(self.chunk_of(revision))?;
        let (found, key) = chunk.entries_from(revision).next()?;
        (found == revision).then_some(key)
    }

    /// Entries at or after `start`, in order.
    pub(crate) fn from(&self, start: Revision) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        // Every entry of the chunks after the first one found is above `start`.
        self.chunks[self.chunk_of(start)..]
            .iter()
            .flat_map(move |chunk| chunk.entries_from(start))
    }

    /// Entries at or before `end`, in order.
    pub(crate) fn through(&self, end: Revision) -> impl Iterator<Item = (Revision, &[u8])> + '_ {
        self.chunks
            .iter()
            .take_while(move |chunk| chunk.first <= end)
            .flat_map(Chunk::entries)
            .take_while(move |(revision, _)| *revision <= end)
    }

    /// Keeps the entries whose revision `keep` accepts (a compaction).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Revision) -> bool) {
        let mut kept = Vec::with_capacity(self.chunks.len());
        for chunk in std::mem::take(&mut self.chunks) {
            if chunk.entries().all(|(revision, _)| keep(revision)) {
                kept.push(chunk);
            } else if let Some(filtered) = chunk.filtered(&mut keep) {
                kept.push(filtered);
            }
        }
        self.chunks = kept;
        self.len = self.chunks.iter().map(|chunk| chunk.len).sum();
    }

    /// The first chunk whose last entry is at or after `revision` (the number of chunks if
    /// none is).
    fn chunk_of(&self, revision: Revision) -> usize {
        self.chunks.partition_point(|chunk| chunk.last < revision)
    }
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
    fn wide_steps_and_sub_revisions_come_back_as_written() {
        let mut written = Vec::new();
        let mut main = 1i64;
        for n in 0..1000u64 {
            // Steps and sub revisions of one to nine varint bytes, long keys among short ones.
            main += 1 + ((n * 7919) % 64) as i64 * (1i64 << (n % 7 * 8));
            let sub = if n % 3 == 0 {
                0
            } else {
                (n * n) as i64 % (1 << 40)
            };
            let r = Revision { main, sub };
            written.push((r, key(n)));
        }
        let mut index = RevisionIndex::default();
        for (r, k) in &written {
            index.push(*r, k);
        }
        let read: Vec<_> = index
            .from(revision(0))
            .map(|(r, k)| (r, k.to_vec()))
            .collect();
        let expected: Vec<_> = written
            .iter()
            .map(|(r, k)| (*r, k.as_slice().to_vec()))
            .collect();
        assert_eq!(read, expected);
        for (r, k) in &written {
            assert_eq!(index.get(*r), Some(k.as_slice()));
        }
        // Every other entry compacted away: the rest still read back whole.
        let mut odd = false;
        index.retain(|_| {
            odd = !odd;
            odd
        });
        let kept: Vec<_> = index.through(written[999].0).map(|(r, _)| r).collect();
        let expected: Vec<_> = written.iter().step_by(2).map(|(r, _)| *r).collect();
        assert_eq!(kept, expected);
        assert_eq!(index.len(), 500);
    }

    #[test]
    fn a_short_key_at_the_next_revision_takes_ten_bytes() {
        let mut index = RevisionIndex::default();
        for main in 1..=(CHUNK as i64) {
            index.push(revision(main), &Key::new(&Bytes::from_static(b"key00001")));
        }
        let chunk = &index.chunks[0];
        assert_eq!((index.chunks.len(), chunk.len), (1, CHUNK));
        assert_eq!(chunk.bytes.len(), 10 * CHUNK);
        assert!(chunk.long.is_empty());
    }

    #[test]
    #[should_panic(expected = "increasing order")]
    fn out_of_order_appends_are_refused() {
        let mut index = RevisionIndex::default();
        index.push(revision(2), &key(2));
        index.push(revision(1), &key(1));
    }
}
