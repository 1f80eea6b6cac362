//! Corruption tests: damage a crash cannot explain is found at open and reported with the file
//! and the offset of the damaged record; the open never skips it silently.

mod common;

use common::{entries, scratch_directory, small_config};
use skiff_raft::Rng;
use skiff_storage::format::{decode_record_header, segment_file_name, RECORD_HEADER_BYTES};
use skiff_storage::{
    FileStorage, OsFileSystem, SimulatedFileSystem, SimulatedStorage, Storage, StorageError,
};

/// Every record of every segment: (file, offset, length).
fn records(file_system: &SimulatedFileSystem) -> Vec<(String, u64, u64)> {
    let max_record = small_config().max_record_bytes;
    let mut out = Vec::new();
    for (name, contents) in file_system.image() {
        if !name.ends_with(".wal") {
            continue;
        }
        let mut offset = 0usize;
        while let Some(header_bytes) = contents.get(offset..offset + RECORD_HEADER_BYTES) {
            let Ok(header) = decode_record_header(header_bytes, max_record) else {
                break;
            };
            let length = RECORD_HEADER_BYTES + header.payload_length as usize;
            out.push((name.clone(), offset as u64, length as u64));
            offset += length;
        }
    }
    out
}

/// A store with a few segments of synced records.
fn populated() -> SimulatedFileSystem {
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    for batch in 0..60u64 {
        storage
            .append(&entries(1 + batch * 5, 5, 1, batch, 120))
            .unwrap();
        storage.sync().unwrap();
    }
    assert!(storage.metrics().segments_created >= 3);
    file_system
}

fn expect_corrupt(file_system: &SimulatedFileSystem, file: &str, offset: u64) {
    match SimulatedStorage::open(file_system.clone(), small_config()) {
        Err(StorageError::Corrupt {
            file: reported_file,
            offset: reported_offset,
            reason,
        }) => {
            assert_eq!(reported_file, file, "{reason}");
            assert_eq!(reported_offset, offset, "{reason}");
        }
        Err(other) => panic!("expected corruption in {file} at {offset}, got {other}"),
        Ok(_) => panic!("expected corruption in {file} at {offset}, the open succeeded"),
    }
}

#[test]
fn flipped_bit_in_any_synced_record_before_the_tail_is_reported() {
    let pristine = populated();
    let all_records = records(&pristine);
    let mut rng = Rng::new(99);
    // Every record but the very last one of the log (which a torn write could explain).
    for (file, offset, length) in &all_records[..all_records.len() - 1] {
        for _ in 0..4 {
            let file_system = populated();
            let position = offset + rng.range(0, *length);
            file_system.flip_bit(file, position, rng.range(0, 8) as u8);
            expect_corrupt(&file_system, file, *offset);
        }
    }
}

#[test]
fn garbage_after_the_tail_beyond_a_record_is_reported() {
    let file_system = populated();
    let last = records(&file_system).pop().unwrap();
    let end = last.1 + last.2;
    file_system.overwrite(&last.0, end + 8000, &[0xAB; 16]);
    expect_corrupt(&file_system, &last.0, end);
}

#[test]
fn missing_segment_in_the_middle_is_reported() {
    let file_system = populated();
    file_system.delete(&segment_file_name(2));
    expect_corrupt(&file_system, &segment_file_name(2), 0);
}

#[test]
fn torn_tail_is_zeroed_at_open() {
    let file_system = populated();
    let last = records(&file_system).pop().unwrap();
    let end = last.1 + last.2;
    // What a torn, never-synced record leaves: half a header and some payload.
    file_system.overwrite(&last.0, end, &[0x5A; 300]);
    let (mut storage, recovered) =
        SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    assert_eq!(recovered.entries.len(), 300);
    let contents = file_system.read_file(&last.0).unwrap();
    assert!(contents[end as usize..].iter().all(|byte| *byte == 0));
    storage.append(&entries(301, 1, 1, 0, 10)).unwrap();
    storage.sync().unwrap();
}

#[test]
fn corruption_in_real_files_names_the_file_and_offset() {
    let directory = scratch_directory("corruption");
    {
        let (mut storage, _) =
            FileStorage::open(OsFileSystem::new(&directory).unwrap(), small_config()).unwrap();
        for batch in 0..20u64 {
            storage
                .append(&entries(1 + batch * 5, 5, 1, batch, 120))
                .unwrap();
            storage.sync().unwrap();
        }
    }
    let name = segment_file_name(1);
    let path = directory.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    // The second record starts right after the segment header record (24 + 44 bytes).
    let second_record = 24 + 44;
    bytes[second_record + 30] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let error = FileStorage::open(OsFileSystem::new(&directory).unwrap(), small_config())
        .err()
        .expect("open must fail");
    let message = error.to_string();
    assert!(
        message.contains(&name) && message.contains(&format!("offset {second_record}")),
        "{message}"
    );
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn reading_a_damaged_old_entry_reports_corruption() {
    let file_system = populated();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), small_config()).unwrap();
    let first_record = records(&file_system)[1].clone();
    file_system.flip_bit(&first_record.0, first_record.1 + 40, 1);
    let error = storage.entries(1, 2, u64::MAX).unwrap_err();
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
}
