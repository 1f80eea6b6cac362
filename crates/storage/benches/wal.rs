//! Write-ahead log benchmark: prints figures, asserts nothing about speed.
//!
//! Measures, in one run on one disk:
//! - the raw `pwrite` + `fdatasync` rate of a preallocated file, for the write size of each
//!   batch (the ceiling for a log that needs one fdatasync per batch);
//! - the store's appends/s and MB/s for 256-byte entries in batches of 1, 16 and 256, with the
//!   number of fdatasync calls per batch;
//! - the time to open (recover) a 1 GiB log.
//!
//! Run: `cargo bench -p skiff-storage --bench wal -- [--seconds N] [--open-gib G] [--directory D]`
//! (defaults: 3 seconds a phase, 1 GiB, a fresh directory under the system temp directory;
//! everything it writes is deleted at the end). `SKIFF_BENCH_ONLY_OPEN=1` runs only the open.
//!
//! Raw and log writes alternate one by one, so that both see the same disk: on a shared virtual
//! disk the fdatasync latency drifts by ten times within seconds, and back-to-back phases
//! compare different disks.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_raft::Entry;
use skiff_storage::format::{encode_write, RECORD_HEADER_BYTES};
use skiff_storage::{FileStorage, OsFileSystem, Storage, StorageConfig};

mod support;

use support::{entry, ENTRY_BYTES};
const BATCHES: [usize; 3] = [1, 16, 256];

struct Options {
    phase: Duration,
    open_gib: f64,
    directory: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        phase: Duration::from_secs(3),
        open_gib: 1.0,
        directory: std::env::temp_dir().join(format!("skiff-wal-bench-{}", std::process::id())),
    };
    let arguments: Vec<String> = std::env::args().collect();
    let mut position = 1;
    while position < arguments.len() {
        let value = arguments.get(position + 1);
        match (arguments[position].as_str(), value) {
            ("--seconds", Some(value)) => {
                options.phase = Duration::from_secs_f64(value.parse().expect("--seconds number"));
                position += 1;
            }
            ("--open-gib", Some(value)) => {
                options.open_gib = value.parse().expect("--open-gib number");
                position += 1;
            }
            ("--directory", Some(value)) => {
                options.directory =
                    PathBuf::from(value).join(format!("skiff-wal-bench-{}", std::process::id()));
                position += 1;
            }
            _ => {} // cargo passes --bench; ignore what we do not know
        }
        position += 1;
    }
    options
}

#[derive(Default)]
struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    fn record(&mut self, duration: Duration) {
        self.samples.push(duration);
    }

    fn mean_microseconds(&self) -> f64 {
        let total: Duration = self.samples.iter().sum();
        total.as_secs_f64() * 1e6 / self.samples.len() as f64
    }

    fn percentile_microseconds(&mut self, percentile: f64) -> f64 {
        self.samples.sort_unstable();
        let position = ((self.samples.len() as f64 - 1.0) * percentile).round() as usize;
        self.samples[position].as_secs_f64() * 1e6
    }
}

/// Bytes of the one record a batch of `batch` entries becomes.
fn record_bytes(batch: usize) -> usize {
    let entries: Vec<Entry> = (1..=batch as u64).map(entry).collect();
    RECORD_HEADER_BYTES + encode_write(None, 1, &entries).len()
}

/// A zero-filled, synced file for raw `pwrite` + `fdatasync` at consecutive offsets: what one
/// durable write costs on this disk without any log around it.
struct RawFile {
    file: std::fs::File,
    path: PathBuf,
    size: u64,
    position: u64,
    buffer: Vec<u8>,
}

impl RawFile {
    fn create(directory: &Path, write_bytes: usize) -> RawFile {
        let path = directory.join("raw.bin");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let size: u64 = 64 << 20;
        let zeros = vec![0u8; 1 << 20];
        let mut offset = 0;
        while offset < size {
            file.write_all_at(&zeros, offset).unwrap();
            offset += zeros.len() as u64;
        }
        file.sync_all().unwrap();
        RawFile {
            file,
            path,
            size,
            position: 0,
            buffer: vec![0x5A; write_bytes],
        }
    }

    fn write_and_sync(&mut self) {
        if self.position + self.buffer.len() as u64 > self.size {
            self.position = 0;
        }
        self.file.write_all_at(&self.buffer, self.position).unwrap();
        self.file.sync_data().unwrap();
        self.position += self.buffer.len() as u64;
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct AppendResult {
    batches: u64,
    appends_per_second: f64,
    megabytes_per_second: f64,
    record_syncs_per_batch: f64,
    other_syncs: u64,
    latencies: Latencies,
    raw_rate: f64,
    raw_latencies: Latencies,
    /// Batches that had to create a segment (zero-fill, fsync, rename, directory fsync).
    rotation_batches: u64,
    rotation_seconds: f64,
}

/// Alternates one raw write+fdatasync and one log batch (append + sync), so that both see the
/// same disk conditions (a shared virtual disk's fsync latency drifts by 10x within seconds).
fn append_benchmark(directory: &Path, batch: usize, phase: Duration) -> AppendResult {
    let log_directory = directory.join(format!("log-batch-{batch}"));
    let (mut storage, _) = FileStorage::open(
        OsFileSystem::new(&log_directory).unwrap(),
        StorageConfig::default(),
    )
    .unwrap();
    let mut raw = RawFile::create(directory, record_bytes(batch));
    let before = storage.metrics();
    let mut next = 1u64;
    let mut latencies = Latencies::default();
    let mut raw_latencies = Latencies::default();
    let mut rotation_batches = 0;
    let mut rotation_seconds = 0.0;
    let start = Instant::now();
    while start.elapsed() < phase {
        let begin = Instant::now();
        raw.write_and_sync();
        raw_latencies.record(begin.elapsed());
        let entries: Vec<Entry> = (next..next + batch as u64).map(entry).collect();
        let begin = Instant::now();
        let segments = storage.metrics().segments_created;
        storage.append(&entries).unwrap();
        let durable = storage.sync().unwrap();
        let elapsed = begin.elapsed();
        latencies.record(elapsed);
        if storage.metrics().segments_created > segments {
            rotation_batches += 1;
            rotation_seconds += elapsed.as_secs_f64();
        }
        next += batch as u64;
        assert_eq!(durable, next - 1);
    }
    let log_seconds: f64 = latencies.samples.iter().sum::<Duration>().as_secs_f64();
    let raw_seconds: f64 = raw_latencies.samples.iter().sum::<Duration>().as_secs_f64();
    let after = storage.metrics();
    let batches = latencies.samples.len() as u64;
    let appends = batches * batch as u64;
    drop(storage);
    std::fs::remove_dir_all(&log_directory).unwrap();
    AppendResult {
        batches,
        appends_per_second: appends as f64 / log_seconds,
        megabytes_per_second: (appends * ENTRY_BYTES as u64) as f64 / log_seconds / 1e6,
        record_syncs_per_batch: (after.record_syncs - before.record_syncs) as f64 / batches as f64,
        other_syncs: after.other_syncs - before.other_syncs,
        latencies,
        raw_rate: raw_latencies.samples.len() as f64 / raw_seconds,
        raw_latencies,
        rotation_batches,
        rotation_seconds,
    }
}

fn open_benchmark(directory: &Path, gibibytes: f64) {
    let log_directory = directory.join("log-open");
    let target_bytes = (gibibytes * (1u64 << 30) as f64) as u64;
    let batch = 4096u64;
    let build_start = Instant::now();
    let mut last_index = 0;
    {
        let (mut storage, _) = FileStorage::open(
            OsFileSystem::new(&log_directory).unwrap(),
            StorageConfig::default(),
        )
        .unwrap();
        while storage.metrics().record_bytes_written < target_bytes {
            let entries: Vec<Entry> = (last_index + 1..=last_index + batch).map(entry).collect();
            storage.append(&entries).unwrap();
            last_index = storage.sync().unwrap();
        }
        println!(
            "built a log of {:.2} GiB ({} entries, {} segments) in {:.1} s",
            storage.metrics().record_bytes_written as f64 / (1u64 << 30) as f64,
            last_index,
            storage.metrics().segments_created,
            build_start.elapsed().as_secs_f64()
        );
    }
    for attempt in 1..=3 {
        let start = Instant::now();
        let (storage, recovered) = FileStorage::open(
            OsFileSystem::new(&log_directory).unwrap(),
            StorageConfig::default(),
        )
        .unwrap();
        let elapsed = start.elapsed();
        assert_eq!(recovered.entries.len() as u64, last_index);
        assert_eq!(
            recovered.entries.last().unwrap().data,
            entry(last_index).data
        );
        println!(
            "open (recover) {gibibytes:.2} GiB log, attempt {attempt}: {:.3} s, {} entries returned",
            elapsed.as_secs_f64(),
            recovered.entries.len()
        );
        drop(recovered);
        drop(storage);
    }
    std::fs::remove_dir_all(&log_directory).unwrap();
}

fn main() {
    let options = options();
    std::fs::create_dir_all(&options.directory).unwrap();
    println!(
        "directory: {} ({} s a phase)",
        options.directory.display(),
        options.phase.as_secs_f64()
    );
    if std::env::var("SKIFF_BENCH_ONLY_OPEN").is_err() {
        println!();
        println!(
            "For each batch size, alternately: one raw pwrite+fdatasync of a preallocated file at"
        );
        println!("the size of the batch's record, then one log batch (append + sync of {ENTRY_BYTES}-byte");
        println!("entries). Rates count only the time spent in each.");
        for batch in BATCHES {
            let bytes = record_bytes(batch);
            let mut result = append_benchmark(&options.directory, batch, options.phase);
            println!();
            println!(
                "batch {batch} ({bytes} bytes a record, {} batches):",
                result.batches
            );
            println!(
                "  raw: {:>8.0} fdatasync/s  mean {:>6.0} us  p50 {:>6.0} us  p99 {:>6.0} us  {:>6.1} MB/s",
                result.raw_rate,
                result.raw_latencies.mean_microseconds(),
                result.raw_latencies.percentile_microseconds(0.5),
                result.raw_latencies.percentile_microseconds(0.99),
                result.raw_rate * bytes as f64 / 1e6
            );
            println!(
                "  log: {:>8.0} batches/s    mean {:>6.0} us  p50 {:>6.0} us  p99 {:>6.0} us  {:>9.0} appends/s  {:>6.1} MB/s of entries",
                result.appends_per_second / batch as f64,
                result.latencies.mean_microseconds(),
                result.latencies.percentile_microseconds(0.5),
                result.latencies.percentile_microseconds(0.99),
                result.appends_per_second,
                result.megabytes_per_second,
            );
            println!(
                "  fdatasync per batch: {:.3} (plus {} for new segments)",
                result.record_syncs_per_batch, result.other_syncs
            );
            if result.rotation_batches > 0 {
                let total_seconds =
                    result.batches as f64 * result.latencies.mean_microseconds() / 1e6;
                let steady_batches = (result.batches - result.rotation_batches) as f64;
                println!(
                    "  {} batches created a 64 MiB segment ({:.0} ms in all); without them: {:.0} appends/s",
                    result.rotation_batches,
                    result.rotation_seconds * 1e3,
                    steady_batches * batch as f64 / (total_seconds - result.rotation_seconds)
                );
            }
            println!(
                "  log mean latency / raw mean latency = {:.2} (target <= 1.2 for batch 1); appends/s / (raw rate x batch) = {:.2} (target >= 0.8)",
                result.latencies.mean_microseconds() / result.raw_latencies.mean_microseconds(),
                result.appends_per_second / (result.raw_rate * batch as f64)
            );
        }
        println!();
    }
    open_benchmark(&options.directory, options.open_gib);
    std::fs::remove_dir_all(&options.directory).unwrap();
}
