//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use skiff_raft::{Entry, EntryKind, Membership, Rng, SnapshotMeta};
use skiff_storage::StorageConfig;

/// An entry whose payload is derived from (index, term, salt), so any mix-up shows.
pub fn entry(index: u64, term: u64, salt: u64, length: usize) -> Entry {
    let mut rng = Rng::new(index ^ (term << 32) ^ salt.rotate_left(17));
    let data: Vec<u8> = (0..length).map(|_| rng.next_u64() as u8).collect();
    Entry {
        term,
        index,
        kind: if length == 0 {
            EntryKind::Noop
        } else {
            EntryKind::Normal
        },
        data: Bytes::from(data),
    }
}

/// Consecutive entries `from..from+count` of `term`.
pub fn entries(from: u64, count: u64, term: u64, salt: u64, length: usize) -> Vec<Entry> {
    (from..from + count)
        .map(|index| entry(index, term, salt, length))
        .collect()
}

/// Snapshot metadata for tests.
pub fn snapshot_meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term,
        membership: Membership::new([1, 2, 3]),
    }
}

/// The small configuration: 16 KiB segments, 4 KiB records, 8 KiB cache.
pub fn small_config() -> StorageConfig {
    StorageConfig::small_for_tests()
}

/// A fresh directory under the target directory, removed first if it exists.
pub fn scratch_directory(name: &str) -> std::path::PathBuf {
    let directory =
        std::env::temp_dir().join(format!("skiff-storage-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}
