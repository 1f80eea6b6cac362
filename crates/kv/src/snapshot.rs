//! Snapshot and restore of the whole state as a byte stream.
//!
//! Format: the magic `SKIFFKV\x01`; then records, each a little-endian `u32` length and that many
//! bytes (a tag byte, then fields in the `wire` encoding); then a little-endian `u32` CRC-32 of every
//! byte before it. Records: one header (applied index, current and compact revision, counts), then
//! every stored version in key and revision order, every lease, every client session. Records are
//! written and read one at a time, so a large state is never held twice in memory; a restore builds
//! a new `Store` and returns it only after the checksum matched, so a bad stream changes nothing.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;

use bytes::Bytes;

use crate::command::Response;
use crate::config::KvConfig;
use crate::crc::Crc32;
use crate::error::{DecodeError, SnapshotError};
use crate::history::History;
use crate::key::Key;
use crate::revisions::RevisionIndex;
use crate::store::{Lease, Revision, Session, Store, StoredVersion};
use crate::types::KeyValue;
use crate::values::{ValueLog, Values};
use crate::wire::{decode_all, put_slice, put_varint, Input, Wire};

const MAGIC: &[u8; 8] = b"SKIFFKV\x01";
const TAG_HEADER: u8 = 1;
const TAG_VERSION: u8 = 2;
const TAG_LEASE: u8 = 3;
const TAG_SESSION: u8 = 4;

#[derive(Clone, Debug)]
struct Header {
    applied_index: u64,
    current_revision: i64,
    compact_revision: i64,
    version_count: u64,
    lease_count: u64,
    session_count: u64,
}

struct VersionRecord {
    key: Bytes,
    main: i64,
    sub: i64,
    kv: Option<KeyValue>,
}

#[derive(Clone, Debug)]
struct LeaseRecord {
    id: i64,
    ttl_seconds: i64,
    renewed_at_ms: i64,
}

#[derive(Clone, Debug)]
struct SessionRecord {
    client_id: u64,
    sequence: u64,
    last_index: u64,
    response: Response,
}

macro_rules! record {
    ($name:ident, $tag:expr, { $($field:ident),* }) => {
        impl Wire for $name {
            fn put(&self, out: &mut Vec<u8>) {
                out.push($tag);
                $( self.$field.put(out); )*
            }
            fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
                if <u64 as Wire>::get(input)? != $tag as u64 {
                    return Err(DecodeError(concat!("expected a ", stringify!($name))));
                }
                Ok($name { $( $field: Wire::get(input)?, )* })
            }
        }
    };
}

record!(Header, TAG_HEADER, { applied_index, current_revision, compact_revision, version_count, lease_count, session_count });
record!(VersionRecord, TAG_VERSION, { key, main, sub, kv });
record!(LeaseRecord, TAG_LEASE, { id, ttl_seconds, renewed_at_ms });
record!(SessionRecord, TAG_SESSION, { client_id, sequence, last_index, response });

/// Encodes `version` of `key` as its [`VersionRecord`], straight from the store's data: a
/// snapshot writes every version, and building each record would copy the key (when inline)
/// and take a reference to the value, whose count other threads are touching.
fn put_version_record(out: &mut Vec<u8>, key: &[u8], version: &StoredVersion, values: &Values) {
    out.push(TAG_VERSION);
    put_slice(out, key);
    version.revision.main.put(out);
    version.revision.sub.put(out);
    if version.is_tombstone() {
        out.push(0); // no KeyValue
        return;
    }
    // The KeyValue of `StoredVersion::kv_named`, field by field as `KeyValue` is encoded.
    out.push(1);
    put_slice(out, key);
    version.create_revision.put(out);
    version.revision.main.put(out);
    version.version.put(out);
    put_varint(out, u64::from(version.value.len));
    values.append_to(version.value, out);
    version.lease.put(out);
}

struct ChecksumWriter<W> {
    inner: W,
    crc: Crc32,
    /// The record being encoded, reused from one record to the next.
    record: Vec<u8>,
}

impl<W: Write> ChecksumWriter<W> {
    fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }

    fn write_record<T: Wire>(&mut self, record: &T) -> std::io::Result<()> {
        self.write_encoded(|out| record.put(out))
    }

    /// Writes the record `encode` puts into the buffer, with its length in front.
    fn write_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
        let mut bytes = std::mem::take(&mut self.record);
        bytes.clear();
        encode(&mut bytes);
        let length = u32::try_from(bytes.len())
            .map_err(|_| std::io::Error::other("snapshot record over 4 GiB"))?;
        self.write_bytes(&length.to_le_bytes())?;
        let written = self.write_bytes(&bytes);
        self.record = bytes;
        written
    }
}

struct ChecksumReader<R> {
    inner: R,
    crc: Crc32,
    buffer: Vec<u8>,
}

impl<R: Read> ChecksumReader<R> {
    fn read_exact_bytes(&mut self, bytes: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(bytes).map_err(truncated)?;
        self.crc.update(bytes);
        Ok(())
    }

    fn read_record<T: Wire>(&mut self) -> Result<T, SnapshotError> {
        let mut length = [0u8; 4];
        self.read_exact_bytes(&mut length)?;
        let length = u32::from_le_bytes(length) as u64;
        // Grow the buffer with the data actually read, so a garbage length allocates nothing big.
        self.buffer.clear();
        let read = (&mut self.inner)
            .take(length)
            .read_to_end(&mut self.buffer)?;
        if read as u64 != length {
            return Err(SnapshotError::Corrupt("truncated record"));
        }
        self.crc.update(&self.buffer);
        Ok(decode_all(&self.buffer)?)
    }
}

fn truncated(error: std::io::Error) -> SnapshotError {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        SnapshotError::Corrupt("truncated snapshot")
    } else {
        SnapshotError::Io(error)
    }
}

/// A copy of what a snapshot holds: the store's replicated state without its derived indexes
/// (the revision index, lease deadlines, session order), so taking it costs a fraction of a
/// whole [`Store`] clone (keys and values are shared, reference-counted). Write it with
/// [`SnapshotCopy::write`], e.g. on another thread while the store moves on.
#[derive(Clone, Debug)]
pub struct SnapshotCopy {
    header: Header,
    keys: BTreeMap<Key, History>,
    values: Values,
    leases: Vec<LeaseRecord>,
    sessions: Vec<SessionRecord>,
}

impl SnapshotCopy {
    /// The applied index of the copied state.
    pub fn applied_index(&self) -> u64 {
        self.header.applied_index
    }

    /// Writes the snapshot to `writer`, exactly as [`Store::snapshot`] would have at the time of
    /// the copy (buffer it: many small writes are made).
    pub fn write<W: Write>(&self, writer: W) -> Result<(), SnapshotError> {
        write_snapshot(
            writer,
            &self.header,
            &self.keys,
            &self.values,
            self.leases.iter(),
            self.sessions.iter(),
        )
    }
}

impl Store {
    fn snapshot_header(&self) -> Header {
        Header {
            applied_index: self.applied_index,
            current_revision: self.current_revision,
            compact_revision: self.compact_revision,
            version_count: self.revisions.len() as u64,
            lease_count: self.leases.len() as u64,
            session_count: self.sessions.len() as u64,
        }
    }

    fn lease_records(&self) -> impl Iterator<Item = LeaseRecord> + '_ {
        self.leases.iter().map(|(id, lease)| LeaseRecord {
            id: *id,
            ttl_seconds: lease.ttl_seconds,
            renewed_at_ms: lease.renewed_at_ms,
        })
    }

    fn session_records(&self) -> impl Iterator<Item = SessionRecord> + '_ {
        self.sessions
            .iter()
            .map(|(client_id, session)| SessionRecord {
                client_id: *client_id,
                sequence: session.sequence,
                last_index: session.last_index,
                response: session.response.clone(),
            })
    }

    /// Writes the whole state to `writer` (buffer it: many small writes are made).
    pub fn snapshot<W: Write>(&self, writer: W) -> Result<(), SnapshotError> {
        let leases: Vec<LeaseRecord> = self.lease_records().collect();
        let sessions: Vec<SessionRecord> = self.session_records().collect();
        write_snapshot(
            writer,
            &self.snapshot_header(),
            &self.keys,
            &self.values,
            leases.iter(),
            sessions.iter(),
        )
    }

    /// Copies what a snapshot of the current state holds (see [`SnapshotCopy`]).
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        SnapshotCopy {
            header: self.snapshot_header(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            leases: self.lease_records().collect(),
            sessions: self.session_records().collect(),
        }
    }

    /// Reads a state written by `snapshot`. Checks the checksum and the store's invariants; on any
    /// error nothing is returned.
    pub fn restore<R: Read>(reader: R, config: KvConfig) -> Result<Store, SnapshotError> {
        Store::restore_with(reader, config, None)
    }

    /// [`Store::restore`], keeping the values in `log` (empty, and used by no other store) as
    /// they are read, if one is given (see [`Store::set_value_log`]).
    pub fn restore_with<R: Read>(
        reader: R,
        config: KvConfig,
        log: Option<Arc<dyn ValueLog>>,
    ) -> Result<Store, SnapshotError> {
        let mut store = Store::new(config).map_err(|_| SnapshotError::Corrupt("invalid config"))?;
        if let Some(log) = log {
            store.set_value_log(log);
        }
        let mut input = ChecksumReader {
            inner: reader,
            crc: Crc32::default(),
            buffer: Vec::new(),
        };
        let mut magic = [0u8; 8];
        input.read_exact_bytes(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::Corrupt("not a skiff-kv snapshot"));
        }
        let header: Header = input.read_record()?;
        let corrupt = |ok: bool, what: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(SnapshotError::Corrupt(what))
            }
        };
        corrupt(header.current_revision >= 1, "current revision below 1")?;
        corrupt(
            header.compact_revision >= -1 && header.compact_revision <= header.current_revision,
            "compact revision out of range",
        )?;
        store.applied_index = header.applied_index;
        store.current_revision = header.current_revision;
        store.compact_revision = header.compact_revision;
        let mut previous: Option<(Bytes, Revision)> = None;
        // The revision index, filled in key order and sorted at the end.
        let mut indexed = Vec::new();
        for _ in 0..header.version_count {
            let record: VersionRecord = input.read_record()?;
            let revision = Revision {
                main: record.main,
                sub: record.sub,
            };
            corrupt(
                record.main >= 2
                    && record.main <= header.current_revision
                    && (0..=i64::from(u32::MAX)).contains(&record.sub),
                "version revision out of range",
            )?;
            if let Some(kv) = &record.kv {
                corrupt(
                    kv.key == record.key && kv.mod_revision == record.main,
                    "version does not match its record",
                )?;
                corrupt(
                    kv.version >= 1
                        && kv.create_revision >= 1
                        && kv.create_revision <= kv.mod_revision,
                    "bad version fields",
                )?;
            }
            if let Some((previous_key, previous_revision)) = &previous {
                corrupt(
                    (previous_key, *previous_revision) < (&record.key, revision),
                    "versions out of order",
                )?;
            }
            // A key's versions are adjacent: all of them share its first record's bytes.
            let key = match previous {
                Some((previous_key, _)) if previous_key == record.key => previous_key,
                _ => record.key,
            };
            let stored_key = Key::new(&key);
            indexed.push((revision, stored_key.clone()));
            let version = match &record.kv {
                Some(kv) => StoredVersion::live(revision, kv, &mut store.values),
                None => StoredVersion::tombstone(revision),
            };
            store.stored_bytes += version.size_bytes(&key);
            let versions = store.keys.entry(stored_key).or_default();
            // A key's create revisions and versions follow from its first one (see `history`).
            corrupt(
                versions.follows(&version),
                "version fields do not follow the key's history",
            )?;
            versions.push(version);
            previous = Some((key, revision));
        }
        store.revisions = RevisionIndex::from_unsorted(indexed)
            .map_err(|_| SnapshotError::Corrupt("revision used twice"))?;
        let mut previous_lease = None;
        for _ in 0..header.lease_count {
            let record: LeaseRecord = input.read_record()?;
            corrupt(
                previous_lease < Some(record.id) && record.id != 0,
                "leases out of order",
            )?;
            corrupt(record.ttl_seconds >= 1, "lease TTL below 1")?;
            previous_lease = Some(record.id);
            let lease = Lease {
                ttl_seconds: record.ttl_seconds,
                renewed_at_ms: record.renewed_at_ms,
                keys: BTreeSet::new(),
            };
            store.insert_lease(record.id, lease);
        }
        let mut sessions = BTreeMap::new();
        for _ in 0..header.session_count {
            let record: SessionRecord = input.read_record()?;
            corrupt(
                record.last_index <= header.applied_index,
                "session used after the applied index",
            )?;
            let session = Session {
                sequence: record.sequence,
                last_index: record.last_index,
                response: record.response,
            };
            corrupt(
                sessions.insert(record.client_id, session).is_none(),
                "session listed twice",
            )?;
        }
        corrupt(
            sessions.len() <= store.config.max_sessions,
            "more sessions than max_sessions",
        )?;
        store.session_order = sessions
            .iter()
            .map(|(client_id, session)| (session.last_index, *client_id))
            .collect();
        corrupt(
            store.session_order.len() == sessions.len(),
            "sessions share a last index",
        )?;
        store.sessions = sessions;
        let expected = input.crc.finish();
        let mut checksum = [0u8; 4];
        input.inner.read_exact(&mut checksum).map_err(truncated)?;
        corrupt(
            u32::from_le_bytes(checksum) == expected,
            "checksum mismatch",
        )?;
        let mut extra = [0u8; 1];
        corrupt(
            input.inner.read(&mut extra)? == 0,
            "bytes after the checksum",
        )?;
        for (key, versions) in &store.keys {
            // A tombstone's lease is 0: only live keys on a lease are attached.
            if let Some(latest) = versions.last().filter(|version| version.lease != 0) {
                let lease = store
                    .leases
                    .get_mut(&latest.lease)
                    .ok_or(SnapshotError::Corrupt("key on an unknown lease"))?;
                lease.keys.insert(key.to_bytes());
            }
        }
        Ok(store)
    }
}

/// Writes a snapshot: the magic, the header, every version, lease and session, the checksum.
fn write_snapshot<'a, W: Write>(
    writer: W,
    header: &Header,
    keys: &BTreeMap<Key, History>,
    values: &Values,
    leases: impl Iterator<Item = &'a LeaseRecord>,
    sessions: impl Iterator<Item = &'a SessionRecord>,
) -> Result<(), SnapshotError> {
    let mut out = ChecksumWriter {
        inner: writer,
        crc: Crc32::default(),
        record: Vec::new(),
    };
    out.write_bytes(MAGIC)?;
    out.write_record(header)?;
    for (key, versions) in keys {
        let key: &[u8] = key.borrow();
        for version in versions.iter() {
            out.write_encoded(|record| put_version_record(record, key, &version, values))?;
        }
    }
    for lease in leases {
        out.write_record(lease)?;
    }
    for session in sessions {
        out.write_record(session)?;
    }
    let checksum = out.crc.finish();
    out.inner.write_all(&checksum.to_le_bytes())?;
    out.inner.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot of `versions` (key, main, sub, version and create revision; version 0 is a
    /// tombstone) with a valid checksum, so only restore's own checks can refuse it.
    fn snapshot_of(versions: &[(&str, i64, i64, i64, i64)]) -> Vec<u8> {
        let mut out = ChecksumWriter {
            inner: Vec::new(),
            crc: Crc32::default(),
            record: Vec::new(),
        };
        out.write_bytes(MAGIC).unwrap();
        let header = Header {
            applied_index: 9,
            current_revision: 20,
            compact_revision: -1,
            version_count: versions.len() as u64,
            lease_count: 0,
            session_count: 0,
        };
        out.write_record(&header).unwrap();
        for &(key, main, sub, version, create_revision) in versions {
            let key = Bytes::copy_from_slice(key.as_bytes());
            let kv = (version > 0).then(|| KeyValue {
                key: key.clone(),
                create_revision,
                mod_revision: main,
                version,
                value: Bytes::from_static(b"v"),
                lease: 0,
            });
            out.write_record(&VersionRecord { key, main, sub, kv })
                .unwrap();
        }
        let checksum = out.crc.finish();
        let mut bytes = out.inner;
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Histories keep only the first version's create revision and version and derive the
    /// rest (see `history`), so restore refuses versions that do not follow each other so,
    /// and sub revisions a history cannot keep.
    #[test]
    fn versions_that_do_not_follow_are_refused() {
        let restore = |versions: &[(&str, i64, i64, i64, i64)]| match Store::restore(
            &snapshot_of(versions)[..],
            KvConfig::default(),
        ) {
            Ok(_) => Ok(()),
            Err(SnapshotError::Corrupt(what)) => Err(what),
            Err(error) => panic!("{error}"),
        };
        let refused = Err("version fields do not follow the key's history");
        // A history may start inside a generation (after a compaction), then continue it;
        // a tombstone ends it and the next put starts one.
        let good = [
            ("a", 3, 0, 4, 2),
            ("a", 5, 0, 5, 2),
            ("a", 6, 0, 0, 0),
            ("a", 8, 0, 1, 8),
            ("b", 4, 0, 1, 4),
        ];
        assert_eq!(restore(&good), Ok(()));
        for wrong in [
            [("a", 3, 0, 4, 2), ("a", 5, 0, 6, 2)], // skips a version
            [("a", 3, 0, 4, 2), ("a", 5, 0, 5, 3)], // changes the create revision
            [("a", 6, 0, 0, 0), ("a", 8, 0, 2, 8)], // a new generation not at version 1
            [("a", 6, 0, 0, 0), ("a", 8, 0, 1, 7)], // ... nor created at its own revision
        ] {
            assert_eq!(restore(&wrong), refused, "{wrong:?}");
        }
        assert_eq!(
            restore(&[("a", 3, 1 << 32, 1, 3)]),
            Err("version revision out of range")
        );
    }

    /// The records the writer encodes in place are the ones `VersionRecord` encodes (and
    /// restore decodes), for live versions and tombstones.
    #[test]
    fn versions_are_written_as_version_records() {
        let mut values = Values::default();
        values.keep(b"an earlier value");
        let live = StoredVersion {
            revision: Revision { main: 300, sub: 2 },
            create_revision: 7,
            version: 5,
            lease: -9,
            value: values.keep(b"a value"),
        };
        let tombstone = StoredVersion::tombstone(Revision { main: 301, sub: 0 });
        for key in [&b"k"[..], b"", b"a key longer than the store keeps inline"] {
            for version in [&live, &tombstone] {
                let mut direct = Vec::new();
                put_version_record(&mut direct, key, version, &values);
                let name = Bytes::copy_from_slice(key);
                let record = VersionRecord {
                    key: name.clone(),
                    main: version.revision.main,
                    sub: version.revision.sub,
                    kv: (!version.is_tombstone()).then(|| version.kv_named(name, Some(&values))),
                };
                if let Some(kv) = &record.kv {
                    assert_eq!(&kv.value[..], b"a value");
                }
                let mut encoded = Vec::new();
                record.put(&mut encoded);
                assert_eq!(direct, encoded);
            }
        }
    }
}
