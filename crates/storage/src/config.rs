//! Every limit of the store, in one place, checked by [`StorageConfig::validate`].

use crate::error::{Result, StorageError};
use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_PAYLOAD_BYTES};

/// Limits and choices of a store. Build one, change fields, then call [`StorageConfig::validate`]
/// (the constructors of every backend call it too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// Size of one log segment file. Segments are preallocated to this size.
    pub segment_size_bytes: u64,
    /// Largest record payload. A batch larger than this is split into several records, each
    /// synced on its own; a single entry larger than this is refused. It also bounds how far
    /// recovery looks past a torn record.
    pub max_record_bytes: u64,
    /// Bytes of recent entries kept in memory to serve `entries()` without reading the disk.
    /// Unsynced entries are always kept and do not count against eviction.
    pub entry_cache_bytes: u64,
    /// Largest amount of appended-but-unsynced entry bytes; an append beyond it is refused.
    pub max_unsynced_bytes: u64,
    /// Write zeros over the whole segment when creating it, so that later `fdatasync` calls
    /// never have to flush file-size or extent changes.
    pub preallocate_segments: bool,
    /// Zero-fill and sync the next segment on a helper thread while the current one fills, so
    /// that a rotation only writes the new segment's header, syncs it and renames it. Takes
    /// effect only with `preallocate_segments` and on a file system that allows background
    /// work ([`crate::FileSystem::allows_background_work`]): never on the simulated disk, whose
    /// order of operations must stay deterministic. Off: segments are created whole at rotation.
    pub prepare_segments_in_background: bool,
    /// Buffer size of snapshot writers and readers.
    pub snapshot_buffer_bytes: u64,
    /// Threads that read and check segments in parallel at open.
    pub recovery_threads: u64,
}

/// The smallest segment the store accepts.
pub const MIN_SEGMENT_SIZE_BYTES: u64 = 4096;
/// The largest segment the store accepts (offsets inside a segment stay well inside `u32`).
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1 << 31;
/// The smallest record limit the store accepts.
pub const MIN_RECORD_BYTES: u64 = 256;

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            segment_size_bytes: 64 << 20,
            max_record_bytes: 4 << 20,
            entry_cache_bytes: 64 << 20,
            max_unsynced_bytes: 64 << 20,
            preallocate_segments: true,
            prepare_segments_in_background: true,
            snapshot_buffer_bytes: 256 << 10,
            recovery_threads: 2,
        }
    }
}

impl StorageConfig {
    /// Small limits for tests and the simulator: many segments, records and rotations.
    pub fn small_for_tests() -> StorageConfig {
        StorageConfig {
            segment_size_bytes: 16 << 10,
            max_record_bytes: 4 << 10,
            entry_cache_bytes: 8 << 10,
            max_unsynced_bytes: 1 << 20,
            preallocate_segments: true,
            prepare_segments_in_background: true,
            snapshot_buffer_bytes: 1 << 10,
            recovery_threads: 1,
        }
    }

    /// Checks every field and how they relate.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(StorageError::InvalidConfig(message));
        if !(MIN_SEGMENT_SIZE_BYTES..=MAX_SEGMENT_SIZE_BYTES).contains(&self.segment_size_bytes) {
            return fail(format!(
                "segment_size_bytes {} is outside {MIN_SEGMENT_SIZE_BYTES}..={MAX_SEGMENT_SIZE_BYTES}",
                self.segment_size_bytes
            ));
        }
        if self.max_record_bytes < MIN_RECORD_BYTES {
            return fail(format!(
                "max_record_bytes {} is below {MIN_RECORD_BYTES}",
                self.max_record_bytes
            ));
        }
        let segment_room = self.segment_size_bytes
            - 2 * RECORD_HEADER_BYTES as u64
            - SEGMENT_HEADER_PAYLOAD_BYTES as u64;
        if self.max_record_bytes > segment_room {
            return fail(format!(
                "max_record_bytes {} does not fit in a segment of {} bytes (at most {segment_room})",
                self.max_record_bytes, self.segment_size_bytes
            ));
        }
        if self.max_unsynced_bytes == 0 {
            return fail("max_unsynced_bytes must be positive".to_string());
        }
        if !(512..=(64 << 20)).contains(&self.snapshot_buffer_bytes) {
            return fail(format!(
                "snapshot_buffer_bytes {} is outside 512..=64 MiB",
                self.snapshot_buffer_bytes
            ));
        }
        if !(1..=64).contains(&self.recovery_threads) {
            return fail(format!(
                "recovery_threads {} is outside 1..=64",
                self.recovery_threads
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_test_configs_are_valid() {
        StorageConfig::default().validate().unwrap();
        StorageConfig::small_for_tests().validate().unwrap();
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = StorageConfig::default();
        let invalid = [
            StorageConfig {
                max_record_bytes: base.segment_size_bytes,
                ..base.clone()
            },
            StorageConfig {
                segment_size_bytes: 100,
                ..base.clone()
            },
            StorageConfig {
                max_record_bytes: 10,
                ..base.clone()
            },
            StorageConfig {
                max_unsynced_bytes: 0,
                ..base.clone()
            },
            StorageConfig {
                snapshot_buffer_bytes: 1,
                ..base.clone()
            },
            StorageConfig {
                recovery_threads: 0,
                ..base.clone()
            },
        ];
        for config in invalid {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
