//! Behaviour of the store's operations on both disks: round trips, truncation, compaction,
//! reads from disk, snapshots, poisoning, ENOSPC.

mod common;

use std::io::{Read, Write};

use common::{entries, scratch_directory, small_config, snapshot_meta};
use skiff_raft::HardState;
use skiff_storage::file_system::WRITE_BACK_PIECE_BYTES;
use skiff_storage::{
    CrashOptions, FileStorage, MemoryStorage, OsFileSystem, SimulatedFileSystem, SimulatedStorage,
    Storage, StorageError,
};

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState { term, vote, commit }
}

#[test]
fn empty_store_recovers_empty() {
    let file_system = SimulatedFileSystem::new();
    let (storage, recovered) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    assert_eq!(recovered.entries.len(), 0);
    assert_eq!(recovered.hard_state, HardState::default());
    assert_eq!(recovered.snapshot, None);
    assert_eq!(storage.last_index(), 0);
    assert_eq!(storage.first_index(), 1);
    drop(storage);
    let (_, recovered) = SimulatedStorage::open(file_system, small_config()).unwrap();
    assert!(recovered.entries.is_empty());
}

#[test]
fn appended_entries_and_hard_state_survive_reopen_on_real_files() {
    let directory = scratch_directory("round-trip");
    let written = entries(1, 300, 1, 7, 100);
    {
        let (mut storage, _) =
            FileStorage::open(OsFileSystem::new(&directory).unwrap(), small_config()).unwrap();
        storage.set_hard_state(hard_state(1, Some(2), 0)).unwrap();
        for chunk in written.chunks(17) {
            storage.append(chunk).unwrap();
            assert_eq!(storage.sync().unwrap(), chunk.last().unwrap().index);
        }
        storage.set_hard_state(hard_state(1, Some(2), 250)).unwrap();
        storage.sync().unwrap();
        assert!(
            storage.metrics().segments_created > 1,
            "the test must rotate segments"
        );
    }
    let (mut storage, recovered) =
        FileStorage::open(OsFileSystem::new(&directory).unwrap(), small_config()).unwrap();
    assert_eq!(recovered.entries, written);
    assert_eq!(recovered.hard_state, hard_state(1, Some(2), 250));
    // Old entries come back from disk, byte for byte.
    let read = storage.entries(1, 301, u64::MAX).unwrap();
    assert_eq!(read, written);
    assert!(storage.metrics().entries_read_from_disk > 0);
    // The store's helper thread may be preparing the next segment in the directory.
    drop(storage);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn one_fsync_per_batch() {
    let (mut storage, _) =
        SimulatedStorage::open(SimulatedFileSystem::new(), small_config()).unwrap();
    let before = storage.metrics();
    storage.append(&entries(1, 8, 1, 0, 50)).unwrap();
    storage.append(&entries(9, 8, 1, 0, 50)).unwrap();
    storage.set_hard_state(hard_state(1, Some(1), 3)).unwrap();
    assert_eq!(storage.durable_index(), 0);
    assert_eq!(storage.sync().unwrap(), 16);
    let after = storage.metrics();
    assert_eq!(after.record_syncs - before.record_syncs, 1);
    assert_eq!(after.records_written - before.records_written, 1);
    // Nothing pending: no fsync.
    storage.sync().unwrap();
    assert_eq!(storage.metrics().record_syncs, after.record_syncs);
}

#[test]
fn conflicting_suffix_is_replaced() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    storage.append(&entries(1, 10, 1, 0, 30)).unwrap();
    storage.sync().unwrap();
    let replacement = entries(6, 3, 2, 9, 30);
    storage.append(&replacement).unwrap();
    assert_eq!(storage.last_index(), 8);
    assert_eq!(storage.durable_index(), 5);
    storage.sync().unwrap();
    let mut expected = entries(1, 5, 1, 0, 30);
    expected.extend(replacement);
    assert_eq!(storage.entries(1, 9, u64::MAX).unwrap(), expected);
    storage.truncate(7).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let (_, recovered) = SimulatedStorage::open(file_system, small_config()).unwrap();
    assert_eq!(recovered.entries, expected[..6].to_vec());
}

#[test]
fn entries_respect_byte_limit_and_bounds() {
    let (mut storage, _) =
        SimulatedStorage::open(SimulatedFileSystem::new(), small_config()).unwrap();
    let written = entries(1, 20, 1, 0, 76);
    storage.append(&written).unwrap();
    storage.sync().unwrap();
    // Each entry counts 100 bytes.
    assert_eq!(storage.entries(1, 21, 250).unwrap().len(), 2);
    assert_eq!(storage.entries(1, 21, 1).unwrap().len(), 1);
    assert_eq!(storage.entries(5, 5, 1).unwrap().len(), 0);
    assert!(matches!(
        storage.entries(1, 22, u64::MAX),
        Err(StorageError::Unavailable { .. })
    ));
    assert!(
        storage.append(&entries(30, 1, 1, 0, 1)).is_err(),
        "gap refused"
    );
    let huge = entries(21, 1, 1, 0, 5000);
    assert!(matches!(
        storage.append(&huge),
        Err(StorageError::RecordTooLarge { .. })
    ));
}

#[test]
fn compaction_deletes_whole_segments_and_keeps_the_rest() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    let written = entries(1, 400, 1, 3, 100);
    for chunk in written.chunks(10) {
        storage.append(chunk).unwrap();
        storage.sync().unwrap();
    }
    let segments_before = file_system.image().len();
    assert!(segments_before > 3);
    assert!(
        storage.compact(300).is_err(),
        "compaction needs a snapshot first"
    );
    let mut writer = storage.begin_snapshot(snapshot_meta(300, 1)).unwrap();
    writer.write_all(b"state at 300").unwrap();
    storage.finish_snapshot(writer).unwrap();
    storage.compact(300).unwrap();
    assert!(file_system.image().len() < segments_before);
    assert!(storage.metrics().segments_deleted > 0);
    assert!(matches!(
        storage.entries(300, 301, 10),
        Err(StorageError::Compacted { .. })
    ));
    assert_eq!(
        storage.entries(301, 401, u64::MAX).unwrap(),
        written[300..].to_vec()
    );
    drop(storage);
    let (mut storage, recovered) = SimulatedStorage::open(file_system, small_config()).unwrap();
    assert_eq!(recovered.snapshot, Some(snapshot_meta(300, 1)));
    assert_eq!(recovered.entries, written[300..].to_vec());
    let (_, mut reader) = storage.open_snapshot().unwrap().unwrap();
    let mut data = Vec::new();
    reader.read_to_end(&mut data).unwrap();
    assert_eq!(data, b"state at 300");
    storage.append(&entries(401, 1, 2, 0, 10)).unwrap();
    storage.sync().unwrap();
}

#[test]
fn a_large_snapshot_is_written_back_in_pieces_as_it_is_written() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    let mut writer = storage.begin_snapshot(snapshot_meta(500, 3)).unwrap();
    let name = writer.temporary_name().to_string();
    let chunk = vec![7u8; 64 * 1024];
    let total = 5 * WRITE_BACK_PIECE_BYTES + 12_345;
    let mut written = 0;
    while written < total {
        let length = chunk.len().min((total - written) as usize);
        writer.write_all(&chunk[..length]).unwrap();
        written += length as u64;
    }
    storage.finish_snapshot(writer).unwrap();
    let pieces: Vec<(u64, u64)> = file_system
        .write_backs()
        .into_iter()
        .filter(|(file, _, _)| *file == name)
        .map(|(_, offset, length)| (offset, length))
        .collect();
    // Contiguous pieces from the start of the file, each of at least one piece's size and
    // less than a piece and a write buffer more, covering all but the tail.
    assert!(pieces.len() >= 4, "{pieces:?}");
    let mut end = 0;
    for (offset, length) in &pieces {
        assert_eq!(*offset, end, "{pieces:?}");
        assert!(*length >= WRITE_BACK_PIECE_BYTES, "{pieces:?}");
        assert!(*length < 2 * WRITE_BACK_PIECE_BYTES, "{pieces:?}");
        end += length;
    }
    assert!(total - end < 2 * WRITE_BACK_PIECE_BYTES, "{end} of {total}");
    // The snapshot reads back whole.
    let (_, mut reader) = storage.open_snapshot().unwrap().unwrap();
    let mut data = Vec::new();
    reader.read_to_end(&mut data).unwrap();
    assert_eq!(data.len() as u64, total);
    assert!(data.iter().all(|byte| *byte == 7));
}

#[test]
fn snapshot_beyond_the_log_resets_it() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    storage.append(&entries(1, 50, 1, 0, 100)).unwrap();
    storage.sync().unwrap();
    let writer = storage.begin_snapshot(snapshot_meta(500, 3)).unwrap();
    storage.finish_snapshot(writer).unwrap();
    storage.compact(500).unwrap();
    assert_eq!(storage.last_index(), 500);
    assert_eq!(storage.first_index(), 501);
    let after = entries(501, 30, 3, 1, 100);
    storage.append(&after).unwrap();
    storage.sync().unwrap();
    drop(storage);
    let (_, recovered) = SimulatedStorage::open(file_system, small_config()).unwrap();
    assert_eq!(recovered.entries, after);
}

#[test]
fn snapshot_streams_and_replaces_older_ones_on_real_files() {
    let directory = scratch_directory("snapshots");
    let file_system = OsFileSystem::new(&directory).unwrap();
    let (mut storage, _) = FileStorage::open(file_system.clone(), small_config()).unwrap();
    for (index, fill) in [(10u64, 1u8), (20, 2)] {
        let mut writer = storage.begin_snapshot(snapshot_meta(index, 1)).unwrap();
        for _ in 0..100 {
            writer.write_all(&[fill; 1000]).unwrap();
        }
        storage.finish_snapshot(writer).unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".snap"))
        .collect();
    assert_eq!(names.len(), 1, "older snapshots are deleted: {names:?}");
    let (meta, mut reader) = storage.open_snapshot().unwrap().unwrap();
    assert_eq!(meta, snapshot_meta(20, 1));
    let mut data = Vec::new();
    reader.read_to_end(&mut data).unwrap();
    assert_eq!(data, vec![2u8; 100_000]);
    let stale = storage.begin_snapshot(snapshot_meta(5, 1)).unwrap();
    assert!(storage.finish_snapshot(stale).is_err());
    drop(storage);
    // A flipped data bit is caught by the reader.
    let path = directory.join(&names[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5000] ^= 4;
    std::fs::write(&path, bytes).unwrap();
    let (storage, _) = FileStorage::open(file_system, small_config()).unwrap();
    let (_, mut reader) = storage.open_snapshot().unwrap().unwrap();
    let error = reader.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    drop(storage);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn failed_write_poisons_the_store() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    storage.append(&entries(1, 5, 1, 0, 10)).unwrap();
    storage.sync().unwrap();
    file_system.fail_next_write();
    storage.append(&entries(6, 5, 1, 0, 10)).unwrap();
    assert!(matches!(storage.sync(), Err(StorageError::Io { .. })));
    assert!(storage.is_poisoned());
    assert!(matches!(storage.sync(), Err(StorageError::Poisoned)));
    assert!(matches!(
        storage.append(&entries(6, 1, 1, 0, 1)),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(
        storage.set_hard_state(HardState::default()),
        Err(StorageError::Poisoned)
    ));
    drop(storage);
    file_system.crash(1, CrashOptions::default());
    let (_, recovered) = SimulatedStorage::open(file_system, small_config()).unwrap();
    assert_eq!(recovered.entries[..5], entries(1, 5, 1, 0, 10)[..]);
}

#[test]
fn failed_fsync_poisons_the_store_and_is_not_retried() {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    storage.append(&entries(1, 5, 1, 0, 10)).unwrap();
    file_system.fail_next_sync();
    assert!(storage.sync().is_err());
    let syncs = file_system.data_syncs();
    assert!(matches!(storage.sync(), Err(StorageError::Poisoned)));
    assert_eq!(file_system.data_syncs(), syncs, "no second fsync");
    assert_eq!(storage.durable_index(), 0);
}

#[test]
fn no_space_is_typed_and_a_restart_recovers_after_space_is_freed() {
    let file_system = SimulatedFileSystem::new();
    let config = small_config();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
    // Room for the first segment and half of a second one.
    file_system.set_capacity_bytes(Some(config.segment_size_bytes * 3 / 2));
    let mut acknowledged = Vec::new();
    let mut next = 1;
    let error = loop {
        let batch = entries(next, 4, 1, 5, 200);
        storage.append(&batch).unwrap();
        match storage.sync() {
            Ok(durable) => {
                assert_eq!(durable, next + 3);
                acknowledged.extend(batch);
                next += 4;
            }
            Err(error) => break error,
        }
    };
    assert!(matches!(error, StorageError::NoSpace { .. }), "{error}");
    assert!(matches!(storage.sync(), Err(StorageError::Poisoned)));
    drop(storage);
    file_system.crash(7, CrashOptions::default());
    // Still full: the store opens (it only needs to read) and has everything acknowledged.
    let (storage, recovered) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
    assert_eq!(recovered.entries, acknowledged);
    drop(storage);
    file_system.set_capacity_bytes(None);
    let (mut storage, recovered) = SimulatedStorage::open(file_system, config).unwrap();
    assert_eq!(recovered.entries, acknowledged);
    storage.append(&entries(next, 4, 1, 5, 200)).unwrap();
    storage.sync().unwrap();
}

#[test]
fn memory_backend_keeps_only_synced_writes_across_restart() {
    let mut storage = MemoryStorage::new(small_config()).unwrap();
    storage.append(&entries(1, 10, 1, 0, 10)).unwrap();
    storage.set_hard_state(hard_state(1, Some(1), 5)).unwrap();
    storage.sync().unwrap();
    storage.append(&entries(8, 5, 2, 0, 10)).unwrap();
    assert_eq!(storage.durable_index(), 7);
    let (mut restarted, recovered) = storage.restart();
    assert_eq!(recovered.entries, entries(1, 10, 1, 0, 10));
    assert_eq!(recovered.hard_state, hard_state(1, Some(1), 5));
    assert_eq!(
        restarted.entries(3, 5, u64::MAX).unwrap(),
        entries(3, 2, 1, 0, 10)
    );
    let mut writer = restarted.begin_snapshot(snapshot_meta(8, 1)).unwrap();
    writer.write_all(b"abc").unwrap();
    restarted.finish_snapshot(writer).unwrap();
    restarted.compact(8).unwrap();
    assert_eq!(restarted.first_index(), 9);
}

#[test]
fn stores_can_move_to_their_own_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<FileStorage>();
    assert_send::<SimulatedStorage>();
    assert_send::<MemoryStorage>();
}
