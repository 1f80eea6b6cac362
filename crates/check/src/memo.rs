//! Compact storage for the search's memo: interned model states and the set of explored
//! (linearized operations, state) configurations.
//!
//! The memo is the search's only large structure: one entry per explored configuration, up to
//! the step budget. Storing each entry as its own heap-allocated bitset plus a cloned state would
//! cost hundreds of bytes; here an entry is its bitset words in one shared arena plus a 4-byte
//! state number, found through an open-addressing table of 4-byte slots.

use std::hash::{Hash, Hasher};

/// A multiply-rotate hasher with a final mix: the keys are our own data, so no defence against
/// chosen collisions is needed, and SipHash would dominate the search time.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl WordHasher {
    const MULTIPLIER: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::MULTIPLIER);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("chunk of 8")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buffer = [0u8; 8];
            buffer[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buffer));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    /// Mix high bits into low ones: the table indexes with the low bits, and a bare product's
    /// low bits depend only on its inputs' low bits.
    fn finish(&self) -> u64 {
        let mut hash = self.0;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash
    }
}

fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = WordHasher::default();
    value.hash(&mut hasher);
    hasher.finish()
}

/// An open-addressing (linear probing) index of entries stored elsewhere, by entry number.
#[derive(Debug)]
struct SlotTable {
    /// 0 for an empty slot, else the entry number plus one.
    slots: Vec<u32>,
    len: usize,
}

/// The most entries one table holds; entry numbers must fit a slot.
const MAX_ENTRIES: usize = (u32::MAX - 1) as usize;

impl SlotTable {
    const INITIAL_SLOTS: usize = 64;

    fn new() -> SlotTable {
        SlotTable {
            slots: vec![0; Self::INITIAL_SLOTS],
            len: 0,
        }
    }

    /// The entry equal to the probe (per `is_probe`), or `None` after reserving a slot for
    /// entry number `self.len`, which the caller must then store. `hash_of_entry` rehashes
    /// the stored entries when the table grows.
    fn find_or_insert(
        &mut self,
        hash: u64,
        is_probe: impl Fn(usize) -> bool,
        hash_of_entry: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        // Keep the load at most one half so probe sequences stay short. Grow before probing:
        // the entry a miss reserves is not stored yet, so it could not be rehashed.
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow(hash_of_entry);
        }
        let mask = self.slots.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            match self.slots[slot] {
                0 => break,
                occupied => {
                    let entry = occupied as usize - 1;
                    if is_probe(entry) {
                        return Some(entry);
                    }
                    slot = (slot + 1) & mask;
                }
            }
        }
        assert!(self.len < MAX_ENTRIES, "memo table full");
        self.slots[slot] = (self.len + 1) as u32;
        self.len += 1;
        None
    }

    fn grow(&mut self, hash_of_entry: impl Fn(usize) -> u64) {
        let mut slots = vec![0u32; self.slots.len() * 2];
        let mask = slots.len() - 1;
        for &occupied in self.slots.iter().filter(|&&occupied| occupied != 0) {
            let mut slot = hash_of_entry(occupied as usize - 1) as usize & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = occupied;
        }
        self.slots = slots;
    }
}

/// Numbers distinct model states so the memo and the search handle 4-byte ids, not states.
#[derive(Debug)]
pub(crate) struct StateInterner<S> {
    states: Vec<S>,
    table: SlotTable,
}

impl<S: Hash + Eq> StateInterner<S> {
    pub(crate) fn new() -> Self {
        StateInterner {
            states: Vec::new(),
            table: SlotTable::new(),
        }
    }

    /// The id of `state`, storing it if new.
    pub(crate) fn intern(&mut self, state: S) -> u32 {
        let states = &self.states;
        let found = self.table.find_or_insert(
            hash_of(&state),
            |entry| states[entry] == state,
            |entry| hash_of(&states[entry]),
        );
        match found {
            Some(entry) => entry as u32,
            None => {
                self.states.push(state);
                (self.states.len() - 1) as u32
            }
        }
    }

    pub(crate) fn get(&self, id: u32) -> &S {
        &self.states[id as usize]
    }
}

/// The set of explored configurations: (bitset of linearized operations, state id).
///
/// Operations are numbered in invoke order, so a linearized set is mostly a run of ones (the
/// settled past), a window of mixed bits (the operations in flight) and zeros (the future). An
/// entry stores only the window, plus the length of the run of ones: a key of ten thousand
/// operations costs a word or two per entry, not 157.
#[derive(Debug)]
pub(crate) struct ConfigurationSet {
    words_per_bitset: usize,
    /// The stored windows, back to back.
    window_words: Vec<u64>,
    entries: Vec<Configuration>,
    table: SlotTable,
}

/// One stored configuration.
#[derive(Clone, Copy, Debug)]
struct Configuration {
    /// Where its window starts in `window_words`.
    offset: usize,
    /// How many leading words of the bitset are all ones.
    full_words: u32,
    /// How many words follow those before the bitset is all zeros.
    window_length: u32,
    state: u32,
}

/// A bitset as (leading all-ones words, window up to the last non-zero word).
fn trim(bitset: &[u64]) -> (u32, &[u64]) {
    let full_words = bitset.iter().take_while(|&&word| word == u64::MAX).count();
    let rest = &bitset[full_words..];
    let window_length = rest
        .iter()
        .rposition(|&word| word != 0)
        .map_or(0, |last| last + 1);
    (full_words as u32, &rest[..window_length])
}

impl ConfigurationSet {
    pub(crate) fn new(words_per_bitset: usize) -> ConfigurationSet {
        assert!(words_per_bitset < u32::MAX as usize, "history too long");
        ConfigurationSet {
            words_per_bitset,
            window_words: Vec::new(),
            entries: Vec::new(),
            table: SlotTable::new(),
        }
    }

    fn hash(full_words: u32, window: &[u64], state: u32) -> u64 {
        let mut hasher = WordHasher::default();
        hasher.add(u64::from(full_words) << 32 | u64::from(state));
        for &word in window {
            hasher.add(word);
        }
        hasher.finish()
    }

    /// Add a configuration; false if it was already present.
    pub(crate) fn insert(&mut self, bitset: &[u64], state: u32) -> bool {
        debug_assert_eq!(bitset.len(), self.words_per_bitset);
        let (full_words, window) = trim(bitset);
        let (words, entries) = (&self.window_words, &self.entries);
        let window_of = |entry: &Configuration| {
            &words[entry.offset..entry.offset + entry.window_length as usize]
        };
        let found = self.table.find_or_insert(
            Self::hash(full_words, window, state),
            |index| {
                let entry = &entries[index];
                entry.state == state && entry.full_words == full_words && window_of(entry) == window
            },
            |index| {
                let entry = &entries[index];
                Self::hash(entry.full_words, window_of(entry), entry.state)
            },
        );
        if found.is_some() {
            return false;
        }
        self.entries.push(Configuration {
            offset: self.window_words.len(),
            full_words,
            window_length: window.len() as u32,
            state,
        });
        self.window_words.extend_from_slice(window);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_gives_equal_states_equal_ids() {
        let mut interner = StateInterner::new();
        let ids: Vec<u32> = (0..1000).map(|n| interner.intern(n % 300)).collect();
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(*interner.get(id), n % 300);
            assert_eq!(id, ids[n % 300]);
        }
    }

    #[test]
    fn trimming_keeps_only_the_window() {
        assert_eq!(
            trim(&[u64::MAX, u64::MAX, 5, 0, 3, 0, 0]),
            (2, &[5, 0, 3][..])
        );
        assert_eq!(trim(&[u64::MAX, u64::MAX]), (2, &[][..]));
        assert_eq!(trim(&[0, 0]), (0, &[][..]));
        assert_eq!(trim(&[]), (0, &[][..]));
    }

    #[test]
    fn configurations_differing_only_in_the_trimmed_parts_are_distinct() {
        let mut set = ConfigurationSet::new(3);
        assert!(set.insert(&[u64::MAX, 1, 0], 0));
        assert!(set.insert(&[u64::MAX, 1, 1], 0));
        assert!(set.insert(&[u64::MAX - 1, 1, 0], 0));
        assert!(set.insert(&[u64::MAX, u64::MAX, 1], 0));
        assert!(set.insert(&[1, 0, 0], 0));
        assert!(!set.insert(&[u64::MAX, 1, 0], 0));
        assert!(!set.insert(&[1, 0, 0], 0));
    }

    #[test]
    fn configuration_set_remembers_across_growth() {
        let mut set = ConfigurationSet::new(2);
        for round in 0..2 {
            for n in 0..5000u64 {
                let bitset = [n, n << 40];
                assert_eq!(set.insert(&bitset, (n % 7) as u32), round == 0, "{n}");
            }
        }
        assert!(
            set.insert(&[1, 1 << 40], 2),
            "a different state is a new entry"
        );
    }
}
