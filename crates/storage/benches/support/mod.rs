//! What the storage benchmarks share.

use bytes::Bytes;
use skiff_raft::{Entry, EntryKind};

/// Payload size of every benchmark entry (a small etcd put).
pub const ENTRY_BYTES: usize = 256;

/// Entry `index` of term 1 with an [`ENTRY_BYTES`] payload that varies with the index (so
/// checksums and compression see realistic data).
pub fn entry(index: u64) -> Entry {
    let mut data = vec![0u8; ENTRY_BYTES];
    for (position, byte) in data.iter_mut().enumerate() {
        *byte = (index as usize).wrapping_mul(31).wrapping_add(position) as u8;
    }
    Entry {
        term: 1,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(data),
    }
}
