//! Where the store keeps its values: in a [`ValueLog`], its own in memory or a caller's.
//!
//! Values are most of a store's bytes (every version since the last compaction keeps its own),
//! and most are never read again. A store appends each new value to its value log and keeps
//! only its position: 12 bytes in the version instead of the value. A new store's log is a
//! vector; a server gives its store a scratch file instead (`Store::set_value_log`), so old
//! values live in the kernel's page cache, which can write them out under memory pressure,
//! instead of in the process.
//!
//! The log is never part of the replicated state: snapshots and hashes read the values back,
//! and a restarted member rebuilds its store from a snapshot and the Raft log, so the log
//! needs no sync and no recovery. This crate does no I/O itself: the log is the caller's.
//!
//! Compaction leaves the values of the versions it removes in the log. When those dead bytes
//! outweigh the live ones (and pass the log's [`ValueLog::collect_floor_bytes`]), the
//! compaction copies the live values to a fresh log, in log order.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::crc::Crc32;

/// Below this many dead bytes a log is never collected, by default.
pub const COLLECT_FLOOR_BYTES: u64 = 16 << 20;

/// An append-only space for value bytes, outside the store (see the module docs).
///
/// A log may be shared by clones of one store, each appending its own values; a value's bytes
/// never change once appended. An implementation that cannot read or write its medium should
/// panic: the store has no way to answer without its values.
pub trait ValueLog: Send + Sync + fmt::Debug {
    /// Appends `bytes` and returns the offset of their first byte.
    fn append(&self, bytes: &[u8]) -> u64;
    /// Appends the `len` bytes at `offset` (all appended earlier) to `out`.
    fn read(&self, offset: u64, len: usize, out: &mut Vec<u8>);
    /// Bytes appended so far (live or not).
    fn len(&self) -> u64;
    /// Whether nothing was appended yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A new, empty log of the same kind, for the live values when this one is collected.
    fn fresh(&self) -> Arc<dyn ValueLog>;
    /// The fewest dead bytes worth collecting the log for.
    fn collect_floor_bytes(&self) -> u64 {
        COLLECT_FLOOR_BYTES
    }
}

/// A [`ValueLog`] in a vector: the same behaviour as a real one, without saving any memory.
/// A new store's log, until it is given another; for tests and simulations.
#[derive(Debug, Default)]
pub struct VecValueLog {
    bytes: std::sync::Mutex<Vec<u8>>,
    /// `collect_floor_bytes`, when not the default.
    collect_floor: Option<u64>,
}

impl VecValueLog {
    /// An empty log collected once `floor` bytes of it are dead (and outweigh the live ones).
    pub fn with_collect_floor(floor: u64) -> VecValueLog {
        VecValueLog {
            collect_floor: Some(floor),
            ..VecValueLog::default()
        }
    }
}

impl ValueLog for VecValueLog {
    fn append(&self, bytes: &[u8]) -> u64 {
        let mut held = self.bytes.lock().expect("value log lock");
        let offset = held.len() as u64;
        held.extend_from_slice(bytes);
        offset
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let held = self.bytes.lock().expect("value log lock");
        let start = usize::try_from(offset).expect("offset fits in memory");
        out.extend_from_slice(&held[start..start + len]);
    }

    fn len(&self) -> u64 {
        self.bytes.lock().expect("value log lock").len() as u64
    }

    fn fresh(&self) -> Arc<dyn ValueLog> {
        Arc::new(VecValueLog {
            collect_floor: self.collect_floor,
            ..VecValueLog::default()
        })
    }

    fn collect_floor_bytes(&self) -> u64 {
        self.collect_floor.unwrap_or(COLLECT_FLOOR_BYTES)
    }
}

/// Where a stored version's value is in the store's value log (`len == 0`: no bytes, and
/// nothing in the log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Value {
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// The store's values: its log, and how many of the log's bytes are live.
#[derive(Clone, Debug)]
pub(crate) struct Values {
    log: Arc<dyn ValueLog>,
    /// Bytes of the values of the store's versions (the rest of the log is dead).
    live_bytes: u64,
}

/// A store's values start in a log in memory, until the store is given another.
impl Default for Values {
    fn default() -> Values {
        Values {
            log: Arc::new(VecValueLog::default()),
            live_bytes: 0,
        }
    }
}

impl Values {
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// (live bytes, all bytes) of the log.
    pub(crate) fn usage(&self) -> (u64, u64) {
        (self.live_bytes, self.log.len())
    }

    /// Appends `bytes`, the value of a new version, to the log.
    pub(crate) fn keep(&mut self, bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::default();
        }
        let len = u32::try_from(bytes.len()).expect("a value under 4 GiB");
        let offset = self.log.append(bytes);
        self.live_bytes += u64::from(len);
        Value { offset, len }
    }

    /// Records that the version holding `value` is gone.
    pub(crate) fn forget(&mut self, value: Value) {
        self.live_bytes -= u64::from(value.len);
    }

    /// The bytes of `value`.
    pub(crate) fn bytes(&self, value: Value) -> Bytes {
        if value.len == 0 {
            return Bytes::new();
        }
        let mut out = Vec::with_capacity(value.len as usize);
        self.append_to(value, &mut out);
        out.into()
    }

    /// Appends the bytes of `value` to `out`.
    pub(crate) fn append_to(&self, value: Value, out: &mut Vec<u8>) {
        if value.len > 0 {
            self.log.read(value.offset, value.len as usize, out);
        }
    }

    /// Feeds the bytes of `value` to `crc`.
    pub(crate) fn hash(&self, value: Value, crc: &mut Crc32, scratch: &mut Vec<u8>) {
        scratch.clear();
        self.append_to(value, scratch);
        crc.update(scratch);
    }

    /// Whether enough of the log is dead to copy the live values to a fresh one.
    pub(crate) fn worth_collecting(&self) -> bool {
        let dead = self.log.len().saturating_sub(self.live_bytes);
        dead > self.live_bytes && dead >= self.log.collect_floor_bytes()
    }

    /// Switches to `log` (empty), with no live values yet, and returns the values as they
    /// were: the caller then moves every value over (`Store::switch_value_log`).
    pub(crate) fn start_log(&mut self, log: Arc<dyn ValueLog>) -> Values {
        debug_assert!(log.is_empty());
        std::mem::replace(self, Values { log, live_bytes: 0 })
    }

    /// A fresh log of the current one's kind.
    pub(crate) fn fresh_log(&self) -> Arc<dyn ValueLog> {
        self.log.fresh()
    }
}

/// Moves values from an old log to a new one in the old log's order, reading it in large
/// sequential pieces.
pub(crate) struct Mover {
    /// (old offset, length) of every value to move, sorted by offset.
    old: Vec<(u64, u32)>,
    /// New offset of each entry of `old`.
    new: Vec<u64>,
}

impl Mover {
    /// Bytes read from the old log at once.
    const WINDOW_BYTES: usize = 1 << 20;

    /// Copies every value among `values` (all in `from`'s log) to the end of `to`'s log, in
    /// offset order; afterwards [`Mover::moved`] gives each one's new place.
    pub(crate) fn run(
        values: impl Iterator<Item = Value>,
        from: &Values,
        to: &mut Values,
    ) -> Mover {
        let mut old: Vec<(u64, u32)> = values
            .filter(|value| value.len > 0)
            .map(|value| (value.offset, value.len))
            .collect();
        old.sort_unstable();
        let mut new = Vec::with_capacity(old.len());
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let log = &from.log;
        for &(offset, len) in &old {
            let end = offset + u64::from(len);
            if offset < window_start || end > window_start + window.len() as u64 {
                let want = (log.len() - offset).min(Self::WINDOW_BYTES.max(len as usize) as u64);
                window.clear();
                log.read(offset, want as usize, &mut window);
                window_start = offset;
            }
            let at = (offset - window_start) as usize;
            new.push(to.keep(&window[at..at + len as usize]).offset);
        }
        Mover { old, new }
    }

    /// The place in the new log of `value`.
    pub(crate) fn moved(&self, value: Value) -> Value {
        if value.len == 0 {
            return value;
        }
        let index = self
            .old
            .binary_search(&(value.offset, value.len))
            .expect("every value was moved");
        Value {
            offset: self.new[index],
            len: value.len,
        }
    }
}
