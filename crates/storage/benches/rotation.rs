//! Segment rotation latency: prints figures, asserts nothing about speed.
//!
//! Appends batches of 256-byte entries, each followed by `sync`, until the log has rotated to
//! a new segment `--rotations` times, and reports the latency of every append+sync call: p50,
//! p99, p99.9, the worst call overall, the worst call that rotated, and the worst that did not.
//! Each round runs the two ways of making a segment, on fresh directories:
//! - `at rotation`: `prepare_segments_in_background: false`, the new segment is created, zero
//!   filled and synced by the call that needs it (the only way before background preparation);
//! - `background`: the next segment is zero-filled and synced on the store's helper thread
//!   while the current one fills; the rotating call writes the header, syncs and renames.
//!
//! Run: `cargo bench -p skiff-storage --bench rotation -- [--segment-mib 64] [--rotations 3]
//! [--batch 16] [--rounds 2] [--worst N] [--directory D]` (a fresh directory under the system
//! temp directory by default; everything it writes is deleted at the end). `--worst N` also
//! lists the N slowest calls of each run and how many calls after a rotation they came.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_raft::Entry;
use skiff_storage::{FileStorage, OsFileSystem, Storage, StorageConfig};

mod support;

use support::{entry, ENTRY_BYTES};

struct Options {
    segment_bytes: u64,
    rotations: u64,
    batch: u64,
    rounds: u64,
    worst: usize,
    directory: PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        segment_bytes: 64 << 20,
        rotations: 3,
        batch: 16,
        rounds: 2,
        worst: 0,
        directory: std::env::temp_dir()
            .join(format!("skiff-rotation-bench-{}", std::process::id())),
    };
    let arguments: Vec<String> = std::env::args().collect();
    let mut position = 1;
    while position < arguments.len() {
        let value = arguments.get(position + 1);
        let number = || -> u64 {
            value
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", arguments[position]))
        };
        match arguments[position].as_str() {
            "--segment-mib" => options.segment_bytes = number() << 20,
            "--rotations" => options.rotations = number(),
            "--batch" => options.batch = number(),
            "--rounds" => options.rounds = number(),
            "--worst" => options.worst = number() as usize,
            "--directory" => {
                options.directory = PathBuf::from(value.expect("--directory path"))
                    .join(format!("skiff-rotation-bench-{}", std::process::id()))
            }
            _ => {
                // cargo passes --bench; ignore what we do not know
                position += 1;
                continue;
            }
        }
        position += 2;
    }
    options
}

fn percentile(sorted: &[Duration], percentile: f64) -> Duration {
    let position = ((sorted.len() as f64 - 1.0) * percentile).round() as usize;
    sorted[position]
}

fn milliseconds(duration: Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1e3)
}

fn run(directory: &Path, options: &Options, background: bool) {
    let _ = std::fs::remove_dir_all(directory);
    let config = StorageConfig {
        segment_size_bytes: options.segment_bytes,
        prepare_segments_in_background: background,
        ..StorageConfig::default()
    };
    let (mut storage, _) =
        FileStorage::open(OsFileSystem::new(directory).unwrap(), config).unwrap();
    let mut latencies = Vec::new();
    let mut rotating = Vec::new();
    let mut next = 1u64;
    let started = Instant::now();
    while storage.metrics().segments_created < 1 + options.rotations {
        let entries: Vec<Entry> = (next..next + options.batch).map(entry).collect();
        let segments = storage.metrics().segments_created;
        let start = Instant::now();
        storage.append(&entries).unwrap();
        let durable = storage.sync().unwrap();
        let elapsed = start.elapsed();
        next += options.batch;
        assert_eq!(durable, next - 1);
        latencies.push(elapsed);
        rotating.push(storage.metrics().segments_created > segments);
    }
    let wall = started.elapsed();
    let metrics = storage.metrics();
    drop(storage);
    std::fs::remove_dir_all(directory).unwrap();
    let worst_rotating = latencies
        .iter()
        .zip(&rotating)
        .filter(|(_, rotated)| **rotated)
        .map(|(latency, _)| *latency)
        .max()
        .unwrap_or_default();
    let worst_other = latencies
        .iter()
        .zip(&rotating)
        .filter(|(_, rotated)| !**rotated)
        .map(|(latency, _)| *latency)
        .max()
        .unwrap_or_default();
    if options.worst > 0 {
        let mut since = 0;
        let mut table: Vec<(Duration, usize, usize)> = Vec::new();
        for (position, (latency, rotated)) in latencies.iter().zip(&rotating).enumerate() {
            since = if *rotated { 0 } else { since + 1 };
            table.push((*latency, position, since));
        }
        table.sort_unstable_by(|a, b| b.cmp(a));
        for (latency, position, since) in table.iter().take(options.worst) {
            println!(
                "  call {position}: {} ms, {since} calls after the last rotation",
                milliseconds(*latency)
            );
        }
    }
    let mut sorted = latencies.clone();
    sorted.sort_unstable();
    println!(
        "{:<12} {:>7} {:>6.1} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9} {:>5}",
        if background {
            "background"
        } else {
            "at rotation"
        },
        latencies.len(),
        wall.as_secs_f64(),
        milliseconds(percentile(&sorted, 0.5)),
        milliseconds(percentile(&sorted, 0.99)),
        milliseconds(percentile(&sorted, 0.999)),
        milliseconds(*sorted.last().unwrap()),
        milliseconds(worst_rotating),
        milliseconds(worst_other),
        metrics.segment_preparation_waits,
    );
}

fn main() {
    let options = options();
    std::fs::create_dir_all(&options.directory).unwrap();
    println!(
        "{} MiB segments, {} rotations per run, batches of {} x {ENTRY_BYTES}-byte entries, \
         append+sync latency in ms",
        options.segment_bytes >> 20,
        options.rotations,
        options.batch
    );
    println!(
        "{:<12} {:>7} {:>6} {:>8} {:>8} {:>8} {:>9} {:>11} {:>9} {:>5}",
        "segments",
        "calls",
        "secs",
        "p50",
        "p99",
        "p99.9",
        "max",
        "max rotate",
        "max other",
        "waits"
    );
    for round in 0..options.rounds {
        for background in [false, true] {
            run(
                &options.directory.join(format!("log-{round}-{background}")),
                &options,
                background,
            );
        }
    }
    std::fs::remove_dir_all(&options.directory).unwrap();
}
