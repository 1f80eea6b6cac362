//! Crash-image tests: run a seeded workload of appends (some replacing a conflicting suffix),
//! truncations, hard-state changes, snapshots and compactions on the simulated disk; cut the
//! power after a random number of file-system operations; build the image a power loss would
//! leave (unsynced bytes dropped at byte granularity or by sector, a torn last record, a garbage
//! tail, lost directory entries); reopen; and prove that
//!
//! - every entry acknowledged durable is recovered byte for byte (the recovered log is the
//!   acknowledged log, or the acknowledged log with a prefix of the in-flight write applied),
//! - the hard state is never older than the last synced one,
//! - the snapshot is never older than the last published one,
//! - recovery never fails or panics, and the recovered store accepts new writes.
//!
//! Each seed runs several crash-and-recover cycles on the same disk, so torn tails left by one
//! crash are cleaned and overwritten by the next life. Some images are also written out as real
//! files and opened with the real-file backend, which must recover the same state.

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::{entry, scratch_directory, snapshot_meta};
use skiff_raft::{Entry, HardState, Rng};
use skiff_storage::{
    CrashOptions, FileStorage, OsFileSystem, Recovered, SimulatedFileSystem, SimulatedStorage,
    Storage, StorageConfig,
};

/// What the workload believes: the log and hard state as of the last acknowledged sync, and
/// the in-flight changes since.
#[derive(Clone, Debug, Default)]
struct Model {
    acknowledged_log: BTreeMap<u64, Entry>,
    acknowledged_hard_state: HardState,
    acknowledged_snapshot_index: u64,
    current_log: BTreeMap<u64, Entry>,
    current_hard_state: HardState,
    /// Lowest index changed since the last acknowledged sync.
    changed_from: Option<u64>,
    compacted_through: u64,
    term: u64,
}

impl Model {
    fn from_recovered(recovered: &Recovered) -> Model {
        let log: BTreeMap<u64, Entry> = recovered
            .entries
            .iter()
            .map(|entry| (entry.index, entry.clone()))
            .collect();
        let snapshot_index = recovered.snapshot.as_ref().map_or(0, |meta| meta.index);
        let term = recovered
            .entries
            .iter()
            .map(|entry| entry.term)
            .chain(recovered.snapshot.iter().map(|meta| meta.term))
            .chain([recovered.hard_state.term])
            .max()
            .unwrap_or(0);
        Model {
            acknowledged_log: log.clone(),
            acknowledged_hard_state: recovered.hard_state,
            acknowledged_snapshot_index: snapshot_index,
            current_log: log,
            current_hard_state: recovered.hard_state,
            changed_from: None,
            compacted_through: snapshot_index,
            term: term.max(1),
        }
    }

    fn last_index(&self) -> u64 {
        self.current_log
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.compacted_through)
    }

    fn mark_changed(&mut self, from: u64) {
        self.changed_from = Some(self.changed_from.map_or(from, |changed| changed.min(from)));
    }

    fn acknowledge(&mut self) {
        self.acknowledged_log = self.current_log.clone();
        self.acknowledged_hard_state = self.current_hard_state;
        self.changed_from = None;
    }

    /// Checks a recovered state against what was acknowledged and what was in flight.
    fn check(&self, recovered: &Recovered, context: &str) {
        let snapshot_index = recovered.snapshot.as_ref().map_or(0, |meta| meta.index);
        assert!(
            snapshot_index >= self.acknowledged_snapshot_index,
            "{context}: snapshot went back from {} to {snapshot_index}",
            self.acknowledged_snapshot_index
        );
        assert!(
            recovered.hard_state == self.acknowledged_hard_state
                || recovered.hard_state == self.current_hard_state,
            "{context}: hard state {:?} is neither the acknowledged {:?} nor the in-flight {:?}",
            recovered.hard_state,
            self.acknowledged_hard_state,
            self.current_hard_state
        );
        let recovered_log: Vec<&Entry> = recovered.entries.iter().collect();
        for (position, pair) in recovered.entries.windows(2).enumerate() {
            assert_eq!(
                pair[0].index + 1,
                pair[1].index,
                "{context}: hole at {position}"
            );
        }
        if let Some(first) = recovered.entries.first() {
            assert_eq!(
                first.index,
                snapshot_index + 1,
                "{context}: log does not follow snapshot"
            );
        }
        let above = |log: &BTreeMap<u64, Entry>| -> Vec<Entry> {
            log.range(snapshot_index + 1..)
                .map(|(_, entry)| entry.clone())
                .collect()
        };
        let mut candidates = vec![above(&self.acknowledged_log)];
        if let Some(from) = self.changed_from {
            let mut base: BTreeMap<u64, Entry> = self
                .acknowledged_log
                .range(..from)
                .map(|(index, entry)| (*index, entry.clone()))
                .collect();
            candidates.push(above(&base));
            for (index, entry) in self.current_log.range(from..) {
                base.insert(*index, entry.clone());
                candidates.push(above(&base));
            }
        }
        let matches = candidates
            .iter()
            .any(|candidate| candidate.iter().collect::<Vec<_>>() == recovered_log);
        assert!(
            matches,
            "{context}: recovered log (snapshot {snapshot_index}) {:?} matches no allowed state; acknowledged {:?}, changed from {:?}",
            recovered.entries.iter().map(|entry| (entry.index, entry.term)).collect::<Vec<_>>(),
            self.acknowledged_log.values().map(|entry| (entry.index, entry.term)).collect::<Vec<_>>(),
            self.changed_from
        );
    }
}

/// Runs random operations until one fails (the power cut) or `steps` are done.
fn run_workload(
    storage: &mut SimulatedStorage,
    model: &mut Model,
    rng: &mut Rng,
    steps: u64,
    salt: u64,
) {
    for _ in 0..steps {
        let result = step(storage, model, rng, salt);
        if result.is_err() {
            return;
        }
    }
}

fn step(
    storage: &mut SimulatedStorage,
    model: &mut Model,
    rng: &mut Rng,
    salt: u64,
) -> skiff_storage::Result<()> {
    match rng.range(0, 100) {
        0..=54 => {
            // Append, sometimes replacing a suffix with entries of a new term.
            let last = model.last_index();
            let mut first = last + 1;
            if rng.chance(1, 6) && last > model.compacted_through {
                first = model.compacted_through + 1 + rng.range(0, last - model.compacted_through);
                model.term += 1;
            }
            let bound = if rng.chance(1, 5) { 60 } else { 8 };
            let count = 1 + rng.range(0, bound);
            let length = rng.range(0, 300) as usize;
            let batch: Vec<Entry> = (first..first + count)
                .map(|index| entry(index, model.term, salt ^ rng.next_u64(), length))
                .collect();
            storage.append(&batch)?;
            model.current_log.split_off(&first);
            for item in batch {
                model.current_log.insert(item.index, item);
            }
            model.mark_changed(first);
            if rng.chance(3, 4) {
                sync(storage, model)?;
            }
        }
        55..=62 => {
            let last = model.last_index();
            if last > model.compacted_through {
                let from =
                    model.compacted_through + 1 + rng.range(0, last - model.compacted_through);
                storage.truncate(from)?;
                model.current_log.split_off(&from);
                model.mark_changed(from);
                sync(storage, model)?;
            }
        }
        63..=77 => {
            if rng.chance(1, 3) {
                model.term += 1;
            }
            let hard_state = HardState {
                term: model.term,
                vote: if rng.chance(1, 2) {
                    Some(1 + rng.range(0, 5))
                } else {
                    None
                },
                commit: rng.range(0, model.last_index() + 1),
            };
            storage.set_hard_state(hard_state)?;
            model.current_hard_state = hard_state;
            sync(storage, model)?;
        }
        78..=92 => sync(storage, model)?,
        93..=97 => {
            // Snapshot at a durable index, then compact through it.
            sync(storage, model)?;
            let last = model.last_index();
            if last > model.compacted_through {
                let index =
                    model.compacted_through + 1 + rng.range(0, last - model.compacted_through);
                let term = model.current_log[&index].term;
                publish_snapshot(storage, model, index, term, rng)?;
                storage.compact(index)?;
                compact_model(model, index);
            }
        }
        _ => {
            // Install a snapshot beyond the log (as a lagging follower does).
            let from = model.compacted_through + 1;
            if from <= model.last_index() {
                storage.truncate(from)?;
                model.current_log.split_off(&from);
                model.mark_changed(from);
            }
            sync(storage, model)?;
            model.term += 1;
            let index = model.last_index() + 1 + rng.range(0, 50);
            publish_snapshot(storage, model, index, model.term, rng)?;
            storage.compact(index)?;
            compact_model(model, index);
        }
    }
    Ok(())
}

fn sync(storage: &mut SimulatedStorage, model: &mut Model) -> skiff_storage::Result<()> {
    let durable = storage.sync()?;
    assert_eq!(durable, model.last_index());
    model.acknowledge();
    Ok(())
}

fn publish_snapshot(
    storage: &mut SimulatedStorage,
    model: &mut Model,
    index: u64,
    term: u64,
    rng: &mut Rng,
) -> skiff_storage::Result<()> {
    let mut writer = storage.begin_snapshot(snapshot_meta(index, term))?;
    let length = rng.range(0, 3000) as usize;
    let data: Vec<u8> = (0..length)
        .map(|position| (position as u64 ^ index) as u8)
        .collect();
    writer
        .write_all(&data)
        .map_err(|error| skiff_storage::StorageError::InvalidRequest(error.to_string()))?;
    storage.finish_snapshot(writer)?;
    model.acknowledged_snapshot_index = index;
    Ok(())
}

fn compact_model(model: &mut Model, index: u64) {
    model.compacted_through = index;
    model.current_log = model.current_log.split_off(&(index + 1));
    model.acknowledged_log = model.acknowledged_log.split_off(&(index + 1));
}

fn crash_options(rng: &mut Rng) -> CrashOptions {
    CrashOptions {
        tear_writes: rng.chance(3, 4),
        garbage: rng.chance(1, 2),
        lose_directory_changes: rng.chance(3, 4),
    }
}

/// Writes the simulated disk's files into a real directory and opens them with the real
/// backend.
fn recover_on_real_files(
    file_system: &SimulatedFileSystem,
    config: &StorageConfig,
    seed: u64,
) -> Recovered {
    let directory = scratch_directory(&format!("crash-image-{seed}"));
    std::fs::create_dir_all(&directory).unwrap();
    for (name, contents) in file_system.image() {
        std::fs::write(directory.join(name), contents).unwrap();
    }
    let (_, recovered) = FileStorage::open(OsFileSystem::new(&directory).unwrap(), config.clone())
        .unwrap_or_else(|error| panic!("seed {seed}: real-file recovery failed: {error}"));
    std::fs::remove_dir_all(&directory).unwrap();
    recovered
}

fn run_seed(seed: u64, config: &StorageConfig, real_files: bool) {
    let mut rng = Rng::new(seed);
    let file_system = SimulatedFileSystem::new();
    let mut model = Model::default();
    for cycle in 0..4 {
        let context = format!("seed {seed} cycle {cycle}");
        // The fault that ends this life: a power cut after some operations, or a failed write
        // or fsync (which poisons the store) somewhere in the workload.
        match rng.range(0, 4) {
            0 => file_system.fail_next_write(),
            1 => file_system.fail_next_sync(),
            _ => file_system.power_cut_after(rng.range(0, 900)),
        }
        match SimulatedStorage::open(file_system.clone(), config.clone()) {
            Ok((mut storage, recovered)) => {
                if cycle > 0 {
                    model.check(&recovered, &context);
                }
                model = Model::from_recovered(&recovered);
                let steps = 50 + rng.range(0, 250);
                run_workload(&mut storage, &mut model, &mut rng, steps, seed);
            }
            Err(error) => {
                assert!(
                    error.to_string().contains("simulated"),
                    "{context}: open failed for another reason than the power cut: {error}"
                );
            }
        }
        file_system.crash(rng.next_u64(), crash_options(&mut rng));
        if real_files && cycle == 3 {
            let on_real_files = recover_on_real_files(&file_system, config, seed);
            let (_, simulated) = SimulatedStorage::open(file_system.clone(), config.clone())
                .unwrap_or_else(|error| panic!("{context}: recovery failed: {error}"));
            assert_eq!(on_real_files, simulated, "{context}: real files disagree");
        }
    }
    let (mut storage, recovered) = SimulatedStorage::open(file_system.clone(), config.clone())
        .unwrap_or_else(|error| panic!("seed {seed}: final recovery failed: {error}"));
    model.check(&recovered, &format!("seed {seed} final"));
    // The recovered store reads back what it recovered and accepts new writes.
    let first = storage.first_index();
    let last = storage.last_index();
    assert_eq!(
        storage.entries(first, last + 1, u64::MAX).unwrap(),
        recovered.entries
    );
    let next = entry(last + 1, recovered.hard_state.term.max(1) + 1000, seed, 10);
    storage.append(&[next]).unwrap();
    assert_eq!(storage.sync().unwrap(), last + 1);
}

fn seeds() -> u64 {
    std::env::var("SKIFF_CRASH_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1500)
}

#[test]
fn crash_images_recover_every_acknowledged_write() {
    let config = StorageConfig::small_for_tests();
    for seed in 0..seeds() {
        run_seed(seed, &config, seed % 50 == 0);
    }
}

#[test]
fn crash_images_recover_without_preallocation() {
    let config = StorageConfig {
        preallocate_segments: false,
        ..StorageConfig::small_for_tests()
    };
    for seed in 0..seeds() / 3 {
        run_seed(1_000_000 + seed, &config, seed % 50 == 0);
    }
}
