//! An in-memory store with the same contract as the durable one, for unit tests of the code
//! above the store. It keeps a durable copy updated at `sync`, so [`MemoryStorage::restart`]
//! behaves like a clean restart after a crash (unsynced writes are lost).

use std::collections::VecDeque;
use std::io;

use bytes::Bytes;
use skiff_raft::{Entry, HardState, SnapshotMeta};

use crate::config::StorageConfig;
use crate::error::{Result, StorageError};
use crate::{Recovered, Storage};

#[derive(Clone, Debug, Default)]
struct LogState {
    compacted_through: u64,
    last_index: u64,
    entries: VecDeque<Entry>,
    hard_state: HardState,
}

impl LogState {
    fn first_present(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.last_index + 1, |entry| entry.index)
    }

    fn truncate(&mut self, from_index: u64) {
        while self
            .entries
            .back()
            .is_some_and(|entry| entry.index >= from_index)
        {
            self.entries.pop_back();
        }
        self.last_index = self.last_index.min(from_index - 1);
    }
}

/// The in-memory backend.
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    config: StorageConfig,
    current: LogState,
    durable: LogState,
    /// Lowest index changed since the last sync.
    dirty_from: Option<u64>,
    unsynced_bytes: u64,
    snapshot: Option<(SnapshotMeta, Bytes)>,
}

/// Collects a snapshot in memory; publish it with `finish_snapshot`.
#[derive(Debug)]
pub struct MemorySnapshotWriter {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

impl io::Write for MemorySnapshotWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new(config: StorageConfig) -> Result<MemoryStorage> {
        config.validate()?;
        Ok(MemoryStorage {
            config,
            current: LogState::default(),
            durable: LogState::default(),
            dirty_from: None,
            unsynced_bytes: 0,
            snapshot: None,
        })
    }

    /// The store as it would reopen after a crash now: only synced writes survive.
    pub fn restart(&self) -> (MemoryStorage, Recovered) {
        let storage = MemoryStorage {
            config: self.config.clone(),
            current: self.durable.clone(),
            durable: self.durable.clone(),
            dirty_from: None,
            unsynced_bytes: 0,
            snapshot: self.snapshot.clone(),
        };
        let recovered = Recovered {
            hard_state: storage.durable.hard_state,
            snapshot: storage.snapshot.as_ref().map(|(meta, _)| meta.clone()),
            entries: storage.durable.entries.iter().cloned().collect(),
        };
        (storage, recovered)
    }

    fn mark_dirty(&mut self, index: u64) {
        self.dirty_from = Some(self.dirty_from.map_or(index, |from| from.min(index)));
    }
}

impl Storage for MemoryStorage {
    type SnapshotWriter = MemorySnapshotWriter;
    type SnapshotReader = io::Cursor<Bytes>;

    fn hard_state(&self) -> HardState {
        self.current.hard_state
    }

    fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|(meta, _)| meta)
    }

    fn first_index(&self) -> u64 {
        self.current.compacted_through + 1
    }

    fn last_index(&self) -> u64 {
        self.current.last_index
    }

    fn durable_index(&self) -> u64 {
        match self.dirty_from {
            Some(from) => self.durable.last_index.min(from - 1),
            None => self.durable.last_index,
        }
    }

    fn append(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.current.compacted_through {
            return Err(StorageError::Compacted {
                index: first.index,
                first_index: self.current.compacted_through + 1,
            });
        }
        if first.index > self.current.last_index + 1 {
            return Err(StorageError::InvalidRequest(format!(
                "append at {} leaves a gap after the last index {}",
                first.index, self.current.last_index
            )));
        }
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index + 1 || pair[1].term < pair[0].term {
                return Err(StorageError::InvalidRequest(
                    "entries are not consecutive with non-decreasing terms".to_string(),
                ));
            }
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        if self.unsynced_bytes + bytes > self.config.max_unsynced_bytes {
            return Err(StorageError::TooMuchUnsynced {
                bytes: self.unsynced_bytes + bytes,
                limit: self.config.max_unsynced_bytes,
            });
        }
        self.unsynced_bytes += bytes;
        self.current.truncate(first.index);
        self.current.entries.extend(entries.iter().cloned());
        self.current.last_index = entries[entries.len() - 1].index;
        self.mark_dirty(first.index);
        Ok(())
    }

    fn truncate(&mut self, from_index: u64) -> Result<()> {
        if from_index <= self.current.compacted_through || from_index > self.current.last_index + 1
        {
            return Err(StorageError::InvalidRequest(format!(
                "truncate from {from_index} outside the log"
            )));
        }
        if from_index <= self.current.last_index {
            self.current.truncate(from_index);
            self.mark_dirty(from_index);
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: HardState) -> Result<()> {
        self.current.hard_state = hard_state;
        Ok(())
    }

    fn sync(&mut self) -> Result<u64> {
        self.durable = self.current.clone();
        self.dirty_from = None;
        self.unsynced_bytes = 0;
        Ok(self.durable.last_index)
    }

    fn compact(&mut self, through_index: u64) -> Result<()> {
        let snapshot_index = self.snapshot_meta().map_or(0, |meta| meta.index);
        if through_index > snapshot_index {
            return Err(StorageError::InvalidRequest(format!(
                "compact through {through_index} beyond the snapshot index {snapshot_index}"
            )));
        }
        if through_index <= self.current.compacted_through {
            return Ok(());
        }
        self.sync()?;
        for state in [&mut self.current, &mut self.durable] {
            state.compacted_through = through_index;
            while state
                .entries
                .front()
                .is_some_and(|entry| entry.index <= through_index)
            {
                state.entries.pop_front();
            }
            state.last_index = state.last_index.max(through_index);
        }
        Ok(())
    }

    fn entries(&mut self, low: u64, high: u64, max_bytes: u64) -> Result<Vec<Entry>> {
        let state = &self.current;
        if low <= state.compacted_through {
            return Err(StorageError::Compacted {
                index: low,
                first_index: state.compacted_through + 1,
            });
        }
        if high > state.last_index + 1 {
            return Err(StorageError::Unavailable {
                index: high - 1,
                last_index: state.last_index,
            });
        }
        if low > high {
            return Err(StorageError::InvalidRequest(format!(
                "range {low}..{high} is reversed"
            )));
        }
        let first_present = state.first_present();
        let mut out = Vec::new();
        let mut bytes = 0;
        for index in low..high {
            let entry = &state.entries[(index - first_present) as usize];
            if !out.is_empty() && bytes + entry.size_bytes() > max_bytes {
                break;
            }
            bytes += entry.size_bytes();
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn begin_snapshot(&mut self, meta: SnapshotMeta) -> Result<MemorySnapshotWriter> {
        Ok(MemorySnapshotWriter {
            meta,
            data: Vec::new(),
        })
    }

    fn finish_snapshot(&mut self, writer: MemorySnapshotWriter) -> Result<()> {
        let current = self.snapshot_meta().map_or(0, |meta| meta.index);
        if writer.meta.index < current {
            return Err(StorageError::InvalidRequest(format!(
                "snapshot at {} is older than the current one at {current}",
                writer.meta.index
            )));
        }
        self.snapshot = Some((writer.meta, Bytes::from(writer.data)));
        Ok(())
    }

    fn open_snapshot(&self) -> Result<Option<(SnapshotMeta, io::Cursor<Bytes>)>> {
        Ok(self
            .snapshot
            .as_ref()
            .map(|(meta, data)| (meta.clone(), io::Cursor::new(data.clone()))))
    }
}
