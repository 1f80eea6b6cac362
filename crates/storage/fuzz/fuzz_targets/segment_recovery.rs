//! Opening a store whose last segment holds arbitrary bytes after a valid header either
//! recovers or reports an error; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_storage::format::segment_file_name;
use skiff_storage::{SimulatedFileSystem, SimulatedStorage, StorageConfig};

fuzz_target!(|data: &[u8]| {
    let config = StorageConfig::small_for_tests();
    let file_system = SimulatedFileSystem::new();
    drop(SimulatedStorage::open(file_system.clone(), config.clone()).expect("fresh store"));
    // Keep the segment header (68 bytes) so that the fuzzer explores the records after it.
    let length = data.len().min(config.segment_size_bytes as usize - 68);
    file_system.overwrite(&segment_file_name(1), 68, &data[..length]);
    let _ = SimulatedStorage::open(file_system, config);
});
