//! Speed of the store alone: puts applied one command at a time (as members apply them, without
//! building watch events), then single-key reads, on keys drawn at random from a key space (as
//! `skiff bench put --key-space-size`), then a snapshot of the result.
//!
//! Run with `cargo bench -p skiff-kv --bench apply`. Optional arguments: `--puts N` (default
//! 300,000), `--key-space N` (default 100,000), `--key-size N` (default 8, bytes),
//! `--value-size N` (default 256, bytes). The value log here is a file in the temporary
//! directory, as a member's is.
//!
//! It also times HashKV's copy and hash (see `Store::hash_kv_copy`).
//!
//! After the puts it prints the heap the store holds (counted by this program's allocator),
//! per put and per key: the figure to watch when changing how the store lays out its versions.
//!
//! This is a figure to compare runs with, not a test: it asserts nothing about speed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use skiff_kv::{Command, KvConfig, Operation, PutRequest, RangeRequest, Store, ValueLog};

/// The system allocator, counting the bytes allocated and not yet freed.
struct Counting;

static HELD_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counter is only arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(pointer, layout)
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD_BYTES.fetch_add(new_size, Ordering::Relaxed);
        HELD_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        System.realloc(pointer, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A value log in an unlinked temporary file, as a member keeps its values outside the heap.
#[derive(Debug)]
struct FileLog {
    file: File,
    len: Mutex<u64>,
}

impl FileLog {
    fn new() -> FileLog {
        let path = std::env::temp_dir().join(format!("skiff-kv-bench-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("creating the bench's value log");
        std::fs::remove_file(&path).expect("unlinking the bench's value log");
        FileLog {
            file,
            len: Mutex::new(0),
        }
    }
}

impl ValueLog for FileLog {
    fn append(&self, bytes: &[u8]) -> u64 {
        let mut len = self.len.lock().expect("log lock");
        let offset = *len;
        self.file
            .write_all_at(bytes, offset)
            .expect("value log write");
        *len += bytes.len() as u64;
        offset
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        self.file
            .read_exact_at(&mut out[start..], offset)
            .expect("value log read");
    }

    fn len(&self) -> u64 {
        *self.len.lock().expect("log lock")
    }

    fn fresh(&self) -> Arc<dyn ValueLog> {
        Arc::new(FileLog::new())
    }
}

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
    store.set_value_log(Arc::new(FileLog::new()));
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
    let before = HELD_BYTES.load(Ordering::Relaxed);
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
    let held = HELD_BYTES.load(Ordering::Relaxed) - before;
    let keys = store
        .range(&RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            count_only: true,
            ..RangeRequest::default()
        })
        .expect("a valid range")
        .count;
    println!(
        "store heap: {:.1} MiB after the puts, {:.1} bytes per put, {keys} keys",
        held as f64 / (1 << 20) as f64,
        held as f64 / puts as f64
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
    // HashKV: a server holds the store's lock only for the copy; the hash reads every value.
    let started = Instant::now();
    let copy = store.hash_kv_copy(0).expect("the current revision");
    let copied = started.elapsed();
    let hash = copy.hash();
    println!(
        "hash kv:    copy {:.1} ms (applying waits for it), hash {:.1} ms after it",
        copied.as_secs_f64() * 1e3,
        (started.elapsed() - copied).as_secs_f64() * 1e3
    );
    assert_eq!(Ok(hash), store.hash_kv(0), "the copy hashes as the store");
}
