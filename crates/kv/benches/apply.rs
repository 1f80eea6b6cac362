//! Speed of the store alone: puts applied one command at a time (as members apply them, without
//! building watch events), then single-key reads, on keys drawn at random from a key space (as
//! `skiff bench put --key-space-size`), then a snapshot of the result.
//!
//! Run with `cargo bench -p skiff-kv --bench apply`. Optional arguments: `--puts N` (default
//! 300,000), `--key-space N` (default 100,000), `--key-size N` (default 8, bytes),
//! `--value-size N` (default 256, bytes) and `--held 1` (values in the heap instead of a value
//! log). The value log here is a `VecValueLog` (a vector); a member's is a file, whose reads
//! are system calls.
//!
//! This is a figure to compare runs with, not a test: it asserts nothing about speed.

use std::time::Instant;

use bytes::Bytes;
use skiff_kv::{Command, KvConfig, Operation, PutRequest, RangeRequest, Store};

fn argument(name: &str, default: usize) -> usize {
    let arguments: Vec<String> = std::env::args().collect();
    arguments
        .iter()
        .position(|argument| argument == name)
        .and_then(|at| arguments.get(at + 1))
        .map(|value| value.parse().expect("a number"))
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so every run draws the same keys.
struct Draw(u64);

impl Draw {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key(number: u64, size: usize) -> Bytes {
    let mut key = vec![b'k'; size.max(8)];
    let at = key.len() - 8;
    key[at..].copy_from_slice(&number.to_be_bytes());
    key.truncate(size.max(1));
    Bytes::from(key)
}

fn report(what: &str, count: usize, unit: &str, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{what} in {seconds:.3} s: {:.0} {unit}s/s, {:.0} ns/{unit}",
        count as f64 / seconds,
        seconds * 1e9 / count as f64
    );
}

fn main() {
    let puts = argument("--puts", 300_000);
    let key_space = argument("--key-space", 100_000) as u64;
    let key_size = argument("--key-size", 8);
    let value = Bytes::from(vec![b'v'; argument("--value-size", 256)]);
    let mut store = Store::new(KvConfig::default()).expect("default config");
    if argument("--held", 0) == 0 {
        store.set_value_log(std::sync::Arc::new(skiff_kv::VecValueLog::default()));
    }
    let mut draw = Draw(0x2545_f491_4f6c_dd1d);
    let commands: Vec<Command> = (0..puts)
        .map(|_| {
            Command::new(Operation::Put(PutRequest {
                key: key(draw.next() % key_space, key_size),
                value: value.clone(),
                ..PutRequest::default()
            }))
        })
        .collect();
    let started = Instant::now();
    for (index, command) in commands.iter().enumerate() {
        store.apply_quietly(index as u64 + 1, command);
    }
    report(
        &format!("apply put:  {puts} puts on {key_space} keys of {key_size} bytes"),
        puts,
        "put",
        started,
    );
    let reads = puts;
    let requests: Vec<RangeRequest> = (0..reads)
        .map(|_| RangeRequest {
            key: key(draw.next() % key_space, key_size),
            ..RangeRequest::default()
        })
        .collect();
    let started = Instant::now();
    let mut found = 0usize;
    for request in &requests {
        found += store.range(request).expect("a valid range").kvs.len();
    }
    report(
        &format!("range get:  {reads} single-key reads ({found} found)"),
        reads,
        "read",
        started,
    );
    // A snapshot of everything, as the applier's snapshot thread writes it (into a sink here:
    // the encoding and checksum, not the disk).
    let started = Instant::now();
    let copy = store.snapshot_copy();
    copy.write(std::io::sink()).expect("writing to a sink");
    report(
        &format!("snapshot:   copy and write of {puts} versions"),
        puts,
        "version",
        started,
    );
}
