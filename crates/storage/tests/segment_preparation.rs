//! Background preparation of the next segment (`prepare_segments_in_background`): rotations use
//! a segment zero-filled and synced ahead of time on a helper thread, wait for it when it is not
//! ready, and a prepared but unused segment left by a crash is deleted at open and never read
//! as part of the log. The simulated disk never gets a helper thread.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{entries, scratch_directory, small_config, snapshot_meta};
use skiff_raft::Entry;
use skiff_storage::format::segment_file_name;
use skiff_storage::{
    FileStorage, FileSystem, OsFileSystem, Result, SimulatedFileSystem, SimulatedStorage, Storage,
    StorageConfig, StorageFile,
};

fn file_names(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn segment_sequences(directory: &Path) -> Vec<u64> {
    file_names(directory)
        .iter()
        .filter_map(|name| skiff_storage::format::parse_segment_file_name(name))
        .collect()
}

/// Appends `batches` batches of 7 entries (from `first`), syncing each; returns them.
fn write_synced<S: Storage>(storage: &mut S, first: u64, batches: u64, salt: u64) -> Vec<Entry> {
    let mut written = Vec::new();
    for batch in 0..batches {
        let chunk = entries(first + batch * 7, 7, 1, salt + batch, 150);
        storage.append(&chunk).unwrap();
        assert_eq!(storage.sync().unwrap(), chunk.last().unwrap().index);
        written.extend(chunk);
    }
    written
}

/// Waits until the helper thread has written the whole next segment.
fn wait_for_prepared(directory: &Path, name: &str, size: u64) {
    for _ in 0..2000 {
        if std::fs::metadata(directory.join(name)).is_ok_and(|metadata| metadata.len() == size) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("{name} was never prepared");
}

#[test]
fn rotation_uses_prepared_segments_across_many_segments() {
    let directory = scratch_directory("prepared-rotation");
    let config = small_config();
    assert!(config.prepare_segments_in_background);
    let written;
    {
        let (mut storage, _) =
            FileStorage::open(OsFileSystem::new(&directory).unwrap(), config.clone()).unwrap();
        written = write_synced(&mut storage, 1, 300, 0);
        let metrics = storage.metrics();
        assert!(
            metrics.segments_created >= 20,
            "the test must rotate many segments: {metrics:?}"
        );
        // Segment 1 is created at open; every rotation after it used a prepared file.
        assert_eq!(
            metrics.segments_prepared_in_background,
            metrics.segments_created - 1,
            "{metrics:?}"
        );
        // Every segment is preallocated to its full size, and the next one is being prepared
        // under its temporary name.
        let sequences = segment_sequences(&directory);
        assert_eq!(sequences.len() as u64, metrics.segments_created);
        for sequence in &sequences {
            let length = std::fs::metadata(directory.join(segment_file_name(*sequence)))
                .unwrap()
                .len();
            assert_eq!(length, config.segment_size_bytes, "segment {sequence}");
        }
        let next = format!("{}.tmp", segment_file_name(sequences.last().unwrap() + 1));
        wait_for_prepared(&directory, &next, config.segment_size_bytes);
        // Old entries read back from the sealed segments.
        assert_eq!(storage.entries(1, 50, u64::MAX).unwrap(), written[..49]);
    }
    let (mut storage, recovered) =
        FileStorage::open(OsFileSystem::new(&directory).unwrap(), config.clone()).unwrap();
    assert_eq!(recovered.entries, written);
    // The store goes on rotating after a reopen, and compaction leaves the prepared file alone.
    let last = written.last().unwrap().index;
    let more = write_synced(&mut storage, last + 1, 100, 1000);
    let through = more[200].index;
    let mut writer = storage.begin_snapshot(snapshot_meta(through, 1)).unwrap();
    std::io::Write::write_all(&mut writer, b"state").unwrap();
    storage.finish_snapshot(writer).unwrap();
    storage.compact(through).unwrap();
    assert!(storage.metrics().segments_deleted > 0);
    assert!(storage.metrics().segments_prepared_in_background > 5);
    drop(storage);
    let (_, recovered) = FileStorage::open(OsFileSystem::new(&directory).unwrap(), config).unwrap();
    assert_eq!(recovered.entries, more[201..]);
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn crash_with_a_prepared_unused_segment_recovers_acknowledged_entries() {
    let config = small_config();
    // The prepared file as a crash may leave it: whole, cut short, or empty.
    for (case, keep) in [(0, None), (1, Some(5000u64)), (2, Some(0))] {
        let directory = scratch_directory(&format!("prepared-crash-{case}"));
        let image = scratch_directory(&format!("prepared-crash-image-{case}"));
        let (mut storage, _) =
            FileStorage::open(OsFileSystem::new(&directory).unwrap(), config.clone()).unwrap();
        let acknowledged = write_synced(&mut storage, 1, 40, case * 100);
        let active = *segment_sequences(&directory).last().unwrap();
        let prepared = format!("{}.tmp", segment_file_name(active + 1));
        wait_for_prepared(&directory, &prepared, config.segment_size_bytes);
        // Appended but never synced: not acknowledged, must not come back.
        let last = acknowledged.last().unwrap().index;
        storage.append(&entries(last + 1, 3, 2, case, 100)).unwrap();
        // The power cut: the directory as it is now, while the store is still running.
        std::fs::create_dir_all(&image).unwrap();
        for name in file_names(&directory) {
            std::fs::copy(directory.join(&name), image.join(&name)).unwrap();
        }
        drop(storage);
        std::fs::remove_dir_all(&directory).unwrap();
        if let Some(keep) = keep {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(image.join(&prepared))
                .unwrap();
            file.set_len(keep).unwrap();
        }
        assert!(file_names(&image).contains(&prepared));

        // Recovery without a helper thread: the leftover is deleted, nothing else changes.
        let synchronous = StorageConfig {
            prepare_segments_in_background: false,
            ..config.clone()
        };
        let (storage, recovered) =
            FileStorage::open(OsFileSystem::new(&image).unwrap(), synchronous).unwrap();
        assert_eq!(recovered.entries, acknowledged, "case {case}");
        assert_eq!(storage.last_index(), last);
        assert!(
            file_names(&image)
                .iter()
                .all(|name| !name.ends_with(".tmp")),
            "case {case}: {:?}",
            file_names(&image)
        );
        assert_eq!(*segment_sequences(&image).last().unwrap(), active);
        drop(storage);

        // With a helper thread again: the log continues into a freshly prepared segment.
        let (mut storage, recovered) =
            FileStorage::open(OsFileSystem::new(&image).unwrap(), config.clone()).unwrap();
        assert_eq!(recovered.entries, acknowledged, "case {case}");
        let more = write_synced(&mut storage, last + 1, 20, 7777);
        assert!(storage.metrics().segments_prepared_in_background > 0);
        assert!(*segment_sequences(&image).last().unwrap() > active);
        drop(storage);
        let (_, recovered) =
            FileStorage::open(OsFileSystem::new(&image).unwrap(), config.clone()).unwrap();
        let mut expected = acknowledged.clone();
        expected.extend(more);
        assert_eq!(recovered.entries, expected, "case {case}");
        std::fs::remove_dir_all(&image).unwrap();
    }
}

#[test]
fn dropping_the_store_while_preparing_leaves_nothing_that_breaks_the_next_open() {
    let directory = scratch_directory("prepared-drop");
    // Big segments, so that the helper is still at work when the store is dropped.
    let config = StorageConfig {
        segment_size_bytes: 64 << 20,
        ..StorageConfig::default()
    };
    let mut acknowledged = Vec::new();
    for life in 0..4u64 {
        let (mut storage, recovered) =
            FileStorage::open(OsFileSystem::new(&directory).unwrap(), config.clone()).unwrap();
        assert_eq!(recovered.entries, acknowledged, "life {life}");
        let first = acknowledged.len() as u64 + 1;
        acknowledged.extend(write_synced(&mut storage, first, 3, life * 10));
    }
    let names = file_names(&directory);
    assert_eq!(
        names.iter().filter(|name| name.ends_with(".tmp")).count(),
        1
    );
    std::fs::remove_dir_all(&directory).unwrap();
}

#[test]
fn the_simulated_disk_never_prepares_in_background() {
    let config = small_config();
    assert!(config.prepare_segments_in_background);
    let file_system = SimulatedFileSystem::new();
    let (mut storage, _) = SimulatedStorage::open(file_system.clone(), config.clone()).unwrap();
    let written = write_synced(&mut storage, 1, 100, 0);
    let metrics = storage.metrics();
    assert!(metrics.segments_created > 5);
    assert_eq!(metrics.segments_prepared_in_background, 0);
    assert!(file_system
        .image()
        .keys()
        .all(|name| !name.ends_with(".tmp")));
    drop(storage);
    let (_, recovered) = SimulatedStorage::open(file_system, config).unwrap();
    assert_eq!(recovered.entries, written);
}

// ----- a file system that makes preparation slow and checks how segments are made ----------

/// What happened to one file created under a `.wal.tmp` name.
#[derive(Default)]
struct Tracked {
    /// Bytes from offset 0 on that are known to have been written with zeros.
    zeros_through: u64,
    /// Written since its last sync.
    dirty: bool,
    /// Renamed to its final name.
    named: bool,
}

#[derive(Clone)]
struct CheckingFileSystem {
    inner: OsFileSystem,
    segment_size: u64,
    /// Sleep before each write of zeros to a temporary segment.
    zero_delay: Duration,
    tracked: Arc<Mutex<BTreeMap<String, Arc<Mutex<Tracked>>>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

struct CheckingFile {
    inner: <OsFileSystem as FileSystem>::File,
    tracked: Option<Arc<Mutex<Tracked>>>,
    segment_size: u64,
    zero_delay: Duration,
    violations: Arc<Mutex<Vec<String>>>,
}

impl FileSystem for CheckingFileSystem {
    type File = CheckingFile;

    fn list(&self) -> Result<Vec<String>> {
        self.inner.list()
    }

    fn create(&self, name: &str) -> Result<CheckingFile> {
        let file = self.inner.create(name)?;
        let tracked = name.ends_with(".wal.tmp").then(|| {
            let tracked = Arc::new(Mutex::new(Tracked::default()));
            self.tracked
                .lock()
                .unwrap()
                .insert(name.to_string(), tracked.clone());
            tracked
        });
        Ok(CheckingFile {
            inner: file,
            tracked,
            segment_size: self.segment_size,
            zero_delay: self.zero_delay,
            violations: self.violations.clone(),
        })
    }

    fn open(&self, name: &str) -> Result<CheckingFile> {
        Ok(CheckingFile {
            inner: self.inner.open(name)?,
            tracked: None,
            segment_size: self.segment_size,
            zero_delay: self.zero_delay,
            violations: self.violations.clone(),
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        if let Some(tracked) = self.tracked.lock().unwrap().remove(from) {
            let mut tracked = tracked.lock().unwrap();
            if tracked.zeros_through < self.segment_size || tracked.dirty {
                self.violations.lock().unwrap().push(format!(
                    "{from} renamed with zeros through {} of {}, dirty {}",
                    tracked.zeros_through, self.segment_size, tracked.dirty
                ));
            }
            tracked.named = true;
        }
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> Result<()> {
        self.inner.remove(name)
    }

    fn sync_directory(&self) -> Result<()> {
        self.inner.sync_directory()
    }
}

impl StorageFile for CheckingFile {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn length(&self) -> Result<u64> {
        self.inner.length()
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        self.inner.read_at(offset, buffer)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if let Some(tracked) = &self.tracked {
            let zeros = bytes.iter().all(|byte| *byte == 0);
            if zeros {
                std::thread::sleep(self.zero_delay);
            }
            let mut tracked = tracked.lock().unwrap();
            if zeros && offset <= tracked.zeros_through {
                tracked.zeros_through = tracked.zeros_through.max(offset + bytes.len() as u64);
            }
            // Before its rename a segment only gets zeros and its header at offset 0; a record
            // must never go into a segment that is not complete.
            if !zeros && offset > 0 && !tracked.named {
                self.violations.lock().unwrap().push(format!(
                    "record written at {offset} of {} before it was renamed",
                    self.inner.name()
                ));
            }
            if !zeros && tracked.zeros_through < self.segment_size {
                self.violations.lock().unwrap().push(format!(
                    "data written at {offset} of {} before it was zero-filled",
                    self.inner.name()
                ));
            }
            tracked.dirty = true;
        }
        self.inner.write_at(offset, bytes)
    }

    fn sync_data(&mut self) -> Result<()> {
        self.inner.sync_data()?;
        if let Some(tracked) = &self.tracked {
            tracked.lock().unwrap().dirty = false;
        }
        Ok(())
    }
}

fn run_checked(zero_delay: Duration, background: bool) -> (skiff_storage::StorageMetrics, usize) {
    let directory = scratch_directory(&format!(
        "prepared-checked-{}-{background}",
        zero_delay.as_millis()
    ));
    let config = StorageConfig {
        prepare_segments_in_background: background,
        ..small_config()
    };
    let file_system = CheckingFileSystem {
        inner: OsFileSystem::new(&directory).unwrap(),
        segment_size: config.segment_size_bytes,
        zero_delay,
        tracked: Arc::default(),
        violations: Arc::default(),
    };
    let (mut storage, _) =
        skiff_storage::DurableStorage::open(file_system.clone(), config.clone()).unwrap();
    let written = write_synced(&mut storage, 1, 100, 3);
    let metrics = storage.metrics();
    drop(storage);
    let violations = file_system.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, the first: {:?}",
        violations.len(),
        &violations[..violations.len().min(4)]
    );
    let (_, recovered) = FileStorage::open(OsFileSystem::new(&directory).unwrap(), config).unwrap();
    assert_eq!(recovered.entries, written);
    std::fs::remove_dir_all(&directory).unwrap();
    (metrics, written.len())
}

#[test]
fn a_rotation_waits_for_a_slow_preparation() {
    // Preparing takes longer than filling a segment: every rotation waits for the helper.
    let (metrics, _) = run_checked(Duration::from_millis(40), true);
    assert!(metrics.segments_created > 5, "{metrics:?}");
    assert_eq!(
        metrics.segments_prepared_in_background,
        metrics.segments_created - 1
    );
    assert!(metrics.segment_preparation_waits > 0, "{metrics:?}");
    // The synchronous path follows the same rules.
    let (metrics, _) = run_checked(Duration::ZERO, false);
    assert!(metrics.segments_created > 5, "{metrics:?}");
    assert_eq!(metrics.segments_prepared_in_background, 0);
    assert_eq!(metrics.segment_preparation_waits, 0);
}
