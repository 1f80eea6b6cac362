//! Where the store keeps its values: in the heap, or in a caller's [`ValueLog`].
//!
//! Values are most of a store's bytes (every version since the last compaction keeps its own),
//! and most are never read again. A store given a value log (`Store::set_value_log`) appends
//! each new value there and keeps only its position: 12 bytes in the version instead of the
//! value. The server's log is a scratch file, so old values live in the kernel's page cache,
//! which can write them out under memory pressure, instead of in the process.
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
/// For tests and simulations of a store that logs its values.
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

/// A stored version's value: 16 bytes, so that a version is 56 (a logged value is the
/// common case in a server; a held one costs a box).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// No bytes.
    Empty,
    /// In memory (in a store without a log).
    Held(Box<Bytes>),
    /// In the store's value log.
    Logged { offset: u64, len: u32 },
}

impl Value {
    /// `bytes` held in memory.
    pub(crate) fn held(bytes: Bytes) -> Value {
        if bytes.is_empty() {
            Value::Empty
        } else {
            Value::Held(Box::new(bytes))
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Value::Empty => 0,
            Value::Held(bytes) => bytes.len(),
            Value::Logged { len, .. } => *len as usize,
        }
    }
}

/// The store's values: the log, if it has one, and how many of its bytes are live.
#[derive(Clone, Debug, Default)]
pub(crate) struct Values {
    log: Option<Arc<dyn ValueLog>>,
    /// Bytes of `Value::Logged` values in the store (the rest of the log is dead).
    live_bytes: u64,
}

impl Values {
    pub(crate) fn has_log(&self) -> bool {
        self.log.is_some()
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// (live bytes, all bytes) of the log, if there is one.
    pub(crate) fn usage(&self) -> Option<(u64, u64)> {
        self.log.as_ref().map(|log| (self.live_bytes, log.len()))
    }

    /// Where a new version keeps `bytes`: in the log if there is one.
    pub(crate) fn keep(&mut self, bytes: Bytes) -> Value {
        self.log_slice(&bytes).unwrap_or_else(|| Value::held(bytes))
    }

    /// `bytes` appended to the log, if there is one and they belong there.
    fn log_slice(&mut self, bytes: &[u8]) -> Option<Value> {
        let log = self.log.as_ref()?;
        let len = u32::try_from(bytes.len()).ok().filter(|len| *len > 0)?;
        let offset = log.append(bytes);
        self.live_bytes += u64::from(len);
        Some(Value::Logged { offset, len })
    }

    /// Records that the version holding `value` is gone.
    pub(crate) fn forget(&mut self, value: &Value) {
        if let Value::Logged { len, .. } = value {
            self.live_bytes -= u64::from(*len);
        }
    }

    /// The bytes of `value`.
    pub(crate) fn bytes(&self, value: &Value) -> Bytes {
        match value {
            Value::Empty => Bytes::new(),
            Value::Held(bytes) => Bytes::clone(bytes),
            Value::Logged { .. } => {
                let mut out = Vec::with_capacity(value.len());
                self.append_to(value, &mut out);
                out.into()
            }
        }
    }

    /// Appends the bytes of `value` to `out`.
    pub(crate) fn append_to(&self, value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Empty => {}
            Value::Held(bytes) => out.extend_from_slice(bytes),
            Value::Logged { offset, len } => self
                .log
                .as_ref()
                .expect("a logged value has a log")
                .read(*offset, *len as usize, out),
        }
    }

    /// Feeds the bytes of `value` to `crc`.
    pub(crate) fn hash(&self, value: &Value, crc: &mut Crc32, scratch: &mut Vec<u8>) {
        match value {
            Value::Empty => {}
            Value::Held(bytes) => crc.update(bytes),
            Value::Logged { .. } => {
                scratch.clear();
                self.append_to(value, scratch);
                crc.update(scratch);
            }
        }
    }

    /// Whether enough of the log is dead to copy the live values to a fresh one.
    pub(crate) fn worth_collecting(&self) -> bool {
        self.log.as_ref().is_some_and(|log| {
            let dead = log.len().saturating_sub(self.live_bytes);
            dead > self.live_bytes && dead >= log.collect_floor_bytes()
        })
    }

    /// Switches to `log` (a fresh one, or the first), with no live values yet, and returns the
    /// values as they were: the caller then moves every value over (`Store::switch_value_log`).
    pub(crate) fn start_log(&mut self, log: Arc<dyn ValueLog>) -> Values {
        let old = std::mem::replace(
            self,
            Values {
                log: Some(log),
                live_bytes: 0,
            },
        );
        debug_assert!(self.log.as_ref().is_some_and(|log| log.is_empty()));
        old
    }

    /// A fresh log of the current one's kind.
    pub(crate) fn fresh_log(&self) -> Option<Arc<dyn ValueLog>> {
        self.log.as_ref().map(|log| log.fresh())
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

    /// Copies every logged value among `logged` (all in `from`'s log) to the end of `to`'s
    /// log, in offset order; afterwards [`Mover::moved`] gives each one's new place. Held
    /// values are the caller's to move.
    pub(crate) fn run<'a>(
        logged: impl Iterator<Item = &'a Value>,
        from: &Values,
        to: &mut Values,
    ) -> Mover {
        let mut old: Vec<(u64, u32)> = logged
            .filter_map(|value| match value {
                Value::Logged { offset, len } => Some((*offset, *len)),
                Value::Empty | Value::Held(_) => None,
            })
            .collect();
        old.sort_unstable();
        let mut new = Vec::with_capacity(old.len());
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        let log = from.log.as_ref();
        for &(offset, len) in &old {
            let end = offset + u64::from(len);
            if offset < window_start || end > window_start + window.len() as u64 {
                let log = log.expect("a logged value has a log");
                let want = (log.len() - offset).min(Self::WINDOW_BYTES.max(len as usize) as u64);
                window.clear();
                log.read(offset, want as usize, &mut window);
                window_start = offset;
            }
            let at = (offset - window_start) as usize;
            match to.log_slice(&window[at..at + len as usize]) {
                Some(Value::Logged { offset, .. }) => new.push(offset),
                _ => unreachable!("the new log takes every value the old one did"),
            }
        }
        Mover { old, new }
    }

    /// The place in the new log of `value`, or `value` itself if it was held.
    pub(crate) fn moved(&self, value: &Value) -> Value {
        match value {
            Value::Logged { offset, len } => {
                let index = self
                    .old
                    .binary_search(&(*offset, *len))
                    .expect("every logged value was moved");
                Value::Logged {
                    offset: self.new[index],
                    len: *len,
                }
            }
            held => held.clone(),
        }
    }
}
