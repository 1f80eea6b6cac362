//! The MVCC store: every version of every key since the last compaction, leases, client sessions.
//!
//! Layout: `keys` maps a key (a [`Key`]: short ones inline) to its versions in revision order
//! (a tombstone marks a delete); `revisions` maps each stored revision to its key, which is the
//! order watch events and the KV hash walk in (a [`RevisionIndex`]). Both iterate in the data's
//! own order.
//!
//! # Leases and time
//! The store never reads a clock. Each lease stores its TTL and `renewed_at_ms`, the leader's time
//! of the grant or the last keep-alive (both arrive in commands). A lease is expired at time `T`
//! when `T >= renewed_at_ms + ttl × 1000`. The leader asks `expired_leases(now)` and proposes
//! `ExpireLeases { now_ms }` (or one `LeaseRevoke` per lease); every member then deletes the same
//! keys at the same revisions. After an election the new leader proposes `LeasePromote`, renewing
//! every lease as of its own clock.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::command::*;
use crate::config::KvConfig;
use crate::crc::Crc32;
use crate::error::{ConfigError, KvError};
use crate::history::History;
use crate::key::Key;
use crate::revisions::RevisionIndex;
use crate::types::*;
use crate::values::{Mover, Value, ValueLog, Values};

/// A revision: `main` is the store revision of a write request, `sub` orders the changes inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Revision {
    pub(crate) main: i64,
    pub(crate) sub: i64,
}

/// One stored version of a key, without the key (the map holds it once for all versions) or
/// the mod revision (it is `revision.main`); its value is in the store's value log (see
/// `values`). `version == 0` marks a tombstone (a live version's is at least 1). Histories
/// keep versions in a smaller form and give them out as this (see `history`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredVersion {
    pub(crate) revision: Revision,
    pub(crate) create_revision: i64,
    pub(crate) version: i64,
    pub(crate) lease: i64,
    pub(crate) value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lease {
    pub(crate) ttl_seconds: i64,
    pub(crate) renewed_at_ms: i64,
    pub(crate) keys: BTreeSet<Bytes>,
}

impl StoredVersion {
    /// `kv` (a live version; its key and mod revision are implied) at `revision`, its value
    /// kept by `values`.
    pub(crate) fn live(revision: Revision, kv: &KeyValue, values: &mut Values) -> StoredVersion {
        debug_assert!(kv.version >= 1 && kv.mod_revision == revision.main);
        StoredVersion {
            revision,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: values.keep(&kv.value),
        }
    }

    /// A deletion at `revision`.
    pub(crate) fn tombstone(revision: Revision) -> StoredVersion {
        StoredVersion {
            revision,
            create_revision: 0,
            version: 0,
            lease: 0,
            value: Value::default(),
        }
    }

    pub(crate) fn is_tombstone(&self) -> bool {
        self.version == 0
    }

    /// The version as etcd shows it, `None` for a tombstone; its value read from `values`, or
    /// left empty without them (for callers that look only at the rest).
    pub(crate) fn kv(&self, key: &Key, values: Option<&Values>) -> Option<KeyValue> {
        (!self.is_tombstone()).then(|| self.kv_named(key.to_bytes(), values))
    }

    /// The live version as etcd shows it, named by `key` (its key's bytes); its value as in
    /// [`StoredVersion::kv`].
    pub(crate) fn kv_named(&self, key: Bytes, values: Option<&Values>) -> KeyValue {
        debug_assert!(!self.is_tombstone());
        KeyValue {
            key,
            create_revision: self.create_revision,
            mod_revision: self.revision.main,
            version: self.version,
            value: values.map_or_else(Bytes::new, |values| values.bytes(self.value)),
            lease: self.lease,
        }
    }

    /// What a version costs, approximately: its key and value plus a fixed overhead.
    pub(crate) fn size_bytes(&self, key: &[u8]) -> u64 {
        const OVERHEAD_BYTES: u64 = 64;
        OVERHEAD_BYTES + key.len() as u64 + u64::from(self.value.len)
    }
}

impl Lease {
    fn deadline_ms(&self) -> i64 {
        self.renewed_at_ms
            .saturating_add(self.ttl_seconds.saturating_mul(1000))
    }

    fn expired_at(&self, now_ms: i64) -> bool {
        now_ms >= self.deadline_ms()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) sequence: u64,
    pub(crate) last_index: u64,
    pub(crate) response: Response,
}

/// The replicated key-value state machine. See the crate docs.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) config: KvConfig,
    pub(crate) keys: BTreeMap<Key, History>,
    pub(crate) revisions: RevisionIndex,
    pub(crate) current_revision: i64,
    pub(crate) compact_revision: i64,
    pub(crate) applied_index: u64,
    pub(crate) leases: BTreeMap<i64, Lease>,
    pub(crate) sessions: BTreeMap<u64, Session>,
    /// Derived index: (deadline, lease ID) of every lease, for `expired_leases`.
    pub(crate) lease_deadlines: BTreeSet<(i64, i64)>,
    /// Derived index: (last index used, client ID) of every session, for eviction.
    pub(crate) session_order: BTreeSet<(u64, u64)>,
    /// Approximate bytes held by stored versions (see `StoredVersion::size_bytes`).
    pub(crate) stored_bytes: u64,
    /// Where the versions' values are (see `values`).
    pub(crate) values: Values,
}

/// The key range of a request, normalised.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KeyRange<'a> {
    Single(&'a [u8]),
    From(&'a [u8]),
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    pub(crate) fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::From(key),
            end => KeyRange::Between(key, end),
        }
    }

    pub(crate) fn contains(&self, candidate: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => candidate == key,
            KeyRange::From(key) => candidate >= key,
            KeyRange::Between(key, end) => candidate >= key && candidate < end,
        }
    }

    fn bounds(&self) -> Option<KeyBounds<'a>> {
        match *self {
            KeyRange::Single(key) => Some((Bound::Included(key), Bound::Included(key))),
            KeyRange::From(key) => Some((Bound::Included(key), Bound::Unbounded)),
            KeyRange::Between(key, end) if key < end => {
                Some((Bound::Included(key), Bound::Excluded(end)))
            }
            KeyRange::Between(..) => None,
        }
    }
}

type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Revision bookkeeping of one write request.
struct WriteContext {
    main: i64,
    sub: i64,
    /// The request's watch events, when the caller wants them (see [`Store::apply_quietly`]).
    events: Option<Vec<Event>>,
}

impl WriteContext {
    fn recording(&self) -> bool {
        self.events.is_some()
    }

    /// Records the event `make` builds, if events are recorded (else it is not built).
    fn record(&mut self, make: impl FnOnce() -> Event) {
        if let Some(events) = &mut self.events {
            events.push(make());
        }
    }

    fn next_revision(&mut self) -> Revision {
        let revision = Revision {
            main: self.main,
            sub: self.sub,
        };
        self.sub += 1;
        revision
    }
}

/// A copy of what a HashKV reads (see [`Store::hash_kv_copy`]).
#[derive(Clone, Debug)]
pub struct HashKvCopy {
    revisions: RevisionIndex,
    keys: BTreeMap<Key, History>,
    values: Values,
    revision: i64,
    compact_revision: i64,
}

impl HashKvCopy {
    /// The answer [`Store::hash_kv`] gave when the copy was taken.
    pub fn hash(&self) -> HashKvResponse {
        hash_versions(
            &self.revisions,
            &self.keys,
            &self.values,
            self.revision,
            self.compact_revision,
        )
    }
}

/// etcd HashKV's CRC-32 over every version up to `revision`, in revision order.
fn hash_versions(
    revisions: &RevisionIndex,
    keys: &BTreeMap<Key, History>,
    values: &Values,
    revision: i64,
    compact_revision: i64,
) -> HashKvResponse {
    let mut crc = Crc32::default();
    let mut scratch = Vec::new();
    let upper = Revision {
        main: revision,
        sub: i64::MAX,
    };
    for (stored, key) in revisions.through(upper) {
        let version = version_in(keys, key, stored);
        crc.update(&stored.main.to_be_bytes());
        crc.update(&stored.sub.to_be_bytes());
        crc.update(&(key.len() as u64).to_be_bytes());
        crc.update(key);
        if version.is_tombstone() {
            crc.update(&[0]);
        } else {
            crc.update(&[1]);
            for number in [
                version.create_revision,
                version.revision.main,
                version.version,
                version.lease,
            ] {
                crc.update(&number.to_be_bytes());
            }
            crc.update(&u64::from(version.value.len).to_be_bytes());
            values.hash(version.value, &mut crc, &mut scratch);
        }
    }
    HashKvResponse {
        hash: crc.finish(),
        compact_revision,
    }
}

/// The version of `key` at `revision`, which the revision index names.
fn version_in(keys: &BTreeMap<Key, History>, key: &[u8], revision: Revision) -> StoredVersion {
    let versions = keys.get(key).expect("the revision index names stored keys");
    let index = versions
        .find(revision)
        .expect("the revision index names stored versions");
    versions.get(index).expect("found above")
}

/// Appends `version` to `versions`, the history of `key`, and indexes its revision. `key` is
/// the key map's own copy: the revision index shares its bytes.
fn append_version(
    versions: &mut History,
    key: Key,
    version: StoredVersion,
    stored_bytes: &mut u64,
    revisions: &mut RevisionIndex,
) {
    let revision = version.revision;
    if let Some(last) = versions.last() {
        assert!(last.revision < revision, "revisions of a key increase");
    }
    *stored_bytes += version.size_bytes(key.as_slice());
    versions.push(version);
    revisions.push(revision, &key);
}

/// Takes `key` out of its lease's key set (`lease` 0: none).
fn detach(leases: &mut BTreeMap<i64, Lease>, lease: i64, key: &[u8]) {
    if lease != 0 {
        let lease = leases.get_mut(&lease).expect("a key's lease exists");
        let removed = lease.keys.remove(key);
        assert!(removed, "a key is in its lease's key set");
    }
}

/// The key's live version, if any; its value as in [`StoredVersion::kv`].
fn latest(key: &Key, versions: &History, values: Option<&Values>) -> Option<KeyValue> {
    versions.last().and_then(|version| version.kv(key, values))
}

/// The live version a read at `revision` sees, if any.
fn visible_at(versions: &History, revision: i64) -> Option<StoredVersion> {
    let end = versions.partition_point(|stored| stored.main <= revision);
    let index = end.checked_sub(1)?;
    versions
        .get(index)
        .filter(|version| !version.is_tombstone())
}

fn compare_kv(kv: &KeyValue, compare: &Compare) -> bool {
    use std::cmp::Ordering;
    let ordering = match &compare.target {
        CompareTarget::Version(value) => kv.version.cmp(value),
        CompareTarget::Create(value) => kv.create_revision.cmp(value),
        CompareTarget::Mod(value) => kv.mod_revision.cmp(value),
        CompareTarget::Value(value) => kv.value[..].cmp(&value[..]),
        CompareTarget::Lease(value) => kv.lease.cmp(value),
    };
    match compare.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
        CompareResult::NotEqual => ordering != Ordering::Equal,
    }
}

fn branch(txn: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// Keys a txn (or one branch) may write: used to refuse a key written twice.
#[derive(Default)]
struct Writes {
    puts: BTreeSet<Bytes>,
    deletes: Vec<(Bytes, Bytes)>,
}

impl Writes {
    fn put_conflicts(&self, key: &[u8]) -> bool {
        self.puts.contains(key)
            || self
                .deletes
                .iter()
                .any(|(start, end)| KeyRange::new(start, end).contains(key))
    }

    fn delete_conflicts(&self, start: &[u8], end: &[u8]) -> bool {
        let range = KeyRange::new(start, end);
        self.puts.iter().any(|key| range.contains(key))
    }

    fn conflicts(&self, other: &Writes) -> bool {
        other.puts.iter().any(|key| self.put_conflicts(key))
            || other
                .deletes
                .iter()
                .any(|(start, end)| self.delete_conflicts(start, end))
    }

    fn merge(&mut self, other: Writes) {
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
    }
}

/// The writes of a list of ops that can all run together; an overlap of two of them is an error.
/// The two branches of a nested txn never both run, so they are checked against the ops around
/// them separately and not against each other.
fn collect_writes(ops: &[RequestOp]) -> Result<Writes, KvError> {
    let mut writes = Writes::default();
    for op in ops {
        match op {
            RequestOp::Range(_) => {}
            RequestOp::Put(put) => {
                if writes.put_conflicts(&put.key) {
                    return Err(KvError::DuplicateKey);
                }
                writes.puts.insert(put.key.clone());
            }
            RequestOp::DeleteRange(delete) => {
                if writes.delete_conflicts(&delete.key, &delete.range_end) {
                    return Err(KvError::DuplicateKey);
                }
                writes
                    .deletes
                    .push((delete.key.clone(), delete.range_end.clone()));
            }
            RequestOp::Txn(txn) => {
                let success = collect_writes(&txn.success)?;
                let failure = collect_writes(&txn.failure)?;
                if writes.conflicts(&success) || writes.conflicts(&failure) {
                    return Err(KvError::DuplicateKey);
                }
                writes.merge(success);
                writes.merge(failure);
            }
        }
    }
    Ok(writes)
}

impl Store {
    /// An empty store at revision 1, as a fresh etcd.
    pub fn new(config: KvConfig) -> Result<Store, ConfigError> {
        config.validate()?;
        Ok(Store {
            config,
            keys: BTreeMap::new(),
            revisions: RevisionIndex::default(),
            current_revision: 1,
            compact_revision: -1,
            applied_index: 0,
            leases: BTreeMap::new(),
            sessions: BTreeMap::new(),
            lease_deadlines: BTreeSet::new(),
            session_order: BTreeSet::new(),
            stored_bytes: 0,
            values: Values::default(),
        })
    }

    /// Keeps every value (the ones stored now and every later one) in `log` instead of the
    /// store's current log (at first, one in memory; see [`ValueLog`]). `log` must be empty
    /// and used by no other store.
    pub fn set_value_log(&mut self, log: Arc<dyn ValueLog>) {
        assert!(log.is_empty(), "a store starts an empty value log");
        self.switch_value_log(log);
    }

    /// The bytes of the value log that the store's versions use, and the bytes it holds.
    pub fn value_log_usage(&self) -> (u64, u64) {
        self.values.usage()
    }

    /// Moves every value to `log` (empty), in the old log's order.
    fn switch_value_log(&mut self, log: Arc<dyn ValueLog>) {
        let old = self.values.start_log(log);
        let values = self.keys.values().flat_map(History::values);
        let mover = Mover::run(values, &old, &mut self.values);
        for versions in self.keys.values_mut() {
            versions.map_values(|value| mover.moved(value));
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KvConfig {
        &self.config
    }

    /// The store revision (1 when empty; +1 per write request that changed something).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, -1 if none.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// Approximate bytes of key space held, every version since the last compaction included
    /// (for Status `dbSize` and a space quota).
    pub fn approximate_size_bytes(&self) -> u64 {
        self.stored_bytes
    }

    /// The Raft index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Records that a log entry without a command (a no-op, a configuration change) was applied.
    pub fn advance_applied_index(&mut self, index: u64) {
        assert!(
            index > self.applied_index,
            "applied index must increase: {} after {}",
            index,
            self.applied_index
        );
        self.applied_index = index;
    }

    /// Refuses an encoded request larger than `max_request_bytes` (before proposing it).
    pub fn check_request_size(&self, encoded_bytes: usize) -> Result<(), KvError> {
        if encoded_bytes > self.config.max_request_bytes {
            Err(KvError::RequestTooLarge)
        } else {
            Ok(())
        }
    }

    /// The checks that need no state (empty keys, ignore_* conflicts, op counts, duplicate keys).
    /// The server runs them before proposing; `apply` runs them again.
    pub fn validate_command(&self, command: &Command) -> Result<(), KvError> {
        match &command.operation {
            Operation::Range(range) => check_key(&range.key),
            Operation::Put(put) => check_put_static(put),
            Operation::DeleteRange(delete) => check_key(&delete.key),
            Operation::Txn(txn) => {
                self.check_txn_static(txn, self.config.max_txn_ops, 1)?;
                collect_writes(&txn.success)?;
                collect_writes(&txn.failure)?;
                Ok(())
            }
            Operation::LeaseGrant {
                id, ttl_seconds, ..
            } => {
                if *ttl_seconds > self.config.max_lease_ttl_seconds {
                    Err(KvError::LeaseTtlTooLarge)
                } else if *id == 0 {
                    Err(KvError::LeaseNotFound)
                } else {
                    Ok(())
                }
            }
            Operation::Compact(_)
            | Operation::LeaseRevoke { .. }
            | Operation::LeaseKeepAlive { .. }
            | Operation::ExpireLeases { .. }
            | Operation::LeasePromote { .. } => Ok(()),
        }
    }

    /// Checks every internal invariant and panics on a violation: the revision index and the key
    /// versions name each other, revisions increase and stay at or below the store revision, every
    /// live key is in its lease's key set and nowhere else, and the derived lease and session
    /// indexes match. `O(state)`: for tests, simulators and debug checks.
    pub fn check_invariants(&self) {
        assert!(self.current_revision >= 1);
        assert!(self.compact_revision >= -1 && self.compact_revision <= self.current_revision);
        let mut stored = 0;
        let mut stored_bytes = 0;
        let mut logged_bytes = 0;
        let mut lease_keys: BTreeMap<i64, BTreeSet<Bytes>> = BTreeMap::new();
        for (key, versions) in &self.keys {
            assert!(!versions.is_empty(), "no empty key histories");
            for (older, newer) in versions.iter().zip(versions.iter().skip(1)) {
                assert!(older.revision < newer.revision, "versions increase");
            }
            for version in versions.iter() {
                stored += 1;
                stored_bytes += version.size_bytes(key.as_slice());
                logged_bytes += u64::from(version.value.len);
                assert!(
                    version.revision.main <= self.current_revision && version.revision.main >= 2
                );
                assert_eq!(
                    self.revisions.get(version.revision),
                    Some(key.as_slice()),
                    "revision index"
                );
                if version.is_tombstone() {
                    assert_eq!(version, StoredVersion::tombstone(version.revision));
                } else {
                    assert!(
                        version.create_revision >= 1
                            && version.create_revision <= version.revision.main
                    );
                }
            }
            if let Some(kv) = latest(key, versions, None) {
                if kv.lease != 0 {
                    lease_keys.entry(kv.lease).or_default().insert(kv.key);
                }
            }
        }
        assert_eq!(
            stored,
            self.revisions.len(),
            "revision index has no extra entries"
        );
        assert_eq!(logged_bytes, self.values.live_bytes(), "live value bytes");
        assert_eq!(stored_bytes, self.stored_bytes, "size accounting");
        for (id, lease) in &self.leases {
            assert_eq!(
                lease.keys,
                lease_keys.remove(id).unwrap_or_default(),
                "lease {id} keys"
            );
            assert!(self.lease_deadlines.contains(&(lease.deadline_ms(), *id)));
        }
        assert!(lease_keys.is_empty(), "keys attached to unknown leases");
        assert_eq!(self.lease_deadlines.len(), self.leases.len());
        assert_eq!(self.session_order.len(), self.sessions.len());
        for (client_id, session) in &self.sessions {
            assert!(self
                .session_order
                .contains(&(session.last_index, *client_id)));
            assert!(session.last_index <= self.applied_index);
        }
        assert!(self.sessions.len() <= self.config.max_sessions);
    }

    fn check_txn_static(
        &self,
        txn: &TxnRequest,
        max_ops: usize,
        depth: usize,
    ) -> Result<(), KvError> {
        if depth > self.config.max_txn_depth {
            return Err(KvError::TooManyOps);
        }
        let ops = txn
            .compare
            .len()
            .max(txn.success.len())
            .max(txn.failure.len());
        if ops > max_ops {
            return Err(KvError::TooManyOps);
        }
        for compare in &txn.compare {
            check_key(&compare.key)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(range) => check_key(&range.key)?,
                RequestOp::Put(put) => check_put_static(put)?,
                RequestOp::DeleteRange(delete) => check_key(&delete.key)?,
                RequestOp::Txn(inner) => self.check_txn_static(inner, max_ops - ops, depth + 1)?,
            }
        }
        Ok(())
    }

    /// Applies one committed command. Deterministic: the same commands at the same indexes give the
    /// same responses, events and state on every member. `index` must be above `applied_index()`
    /// (after a restart or a snapshot install the caller skips entries already applied); a smaller
    /// one is a bug in the caller and panics.
    pub fn apply(&mut self, index: u64, command: &Command) -> Applied {
        self.apply_recording(index, command, true)
    }

    /// As [`Store::apply`], without building the watch events: the same state and response.
    /// For a member, whose watchers read the events back from the history
    /// ([`Store::events_since`]); building them would cost copies of every written key and
    /// value, and of the version each write replaces.
    pub fn apply_quietly(&mut self, index: u64, command: &Command) -> Response {
        self.apply_recording(index, command, false).response
    }

    fn apply_recording(&mut self, index: u64, command: &Command, record: bool) -> Applied {
        self.advance_applied_index(index);
        if let Some(request_id) = command.request_id {
            if let Some(session) = self.sessions.get_mut(&request_id.client_id) {
                if request_id.sequence == session.sequence {
                    let moved = self
                        .session_order
                        .remove(&(session.last_index, request_id.client_id));
                    assert!(moved, "every session is in the eviction order");
                    session.last_index = index;
                    self.session_order.insert((index, request_id.client_id));
                    return Applied {
                        response: session.response.clone(),
                        events: Vec::new(),
                    };
                }
                if request_id.sequence < session.sequence {
                    let response = Response {
                        revision: self.current_revision,
                        result: Err(KvError::StaleRequest),
                    };
                    return Applied {
                        response,
                        events: Vec::new(),
                    };
                }
            }
        }
        let (result, events) = match self.validate_command(command) {
            Ok(()) => self.apply_operation(&command.operation, record),
            Err(error) => (Err(error), Vec::new()),
        };
        let response = Response {
            revision: self.current_revision,
            result,
        };
        if let Some(request_id) = command.request_id {
            self.record_session(request_id, index, &response);
        }
        Applied { response, events }
    }

    fn record_session(&mut self, request_id: RequestId, index: u64, response: &Response) {
        let session = Session {
            sequence: request_id.sequence,
            last_index: index,
            response: response.clone(),
        };
        if let Some(replaced) = self.sessions.insert(request_id.client_id, session) {
            let moved = self
                .session_order
                .remove(&(replaced.last_index, request_id.client_id));
            assert!(moved, "every session is in the eviction order");
        }
        self.session_order.insert((index, request_id.client_id));
        if self.sessions.len() > self.config.max_sessions {
            let (_, oldest) = self
                .session_order
                .pop_first()
                .expect("session table is not empty");
            assert_ne!(
                oldest, request_id.client_id,
                "the session just used is the newest"
            );
            self.sessions
                .remove(&oldest)
                .expect("the eviction order names sessions");
        }
        assert!(self.sessions.len() <= self.config.max_sessions);
        debug_assert_eq!(self.sessions.len(), self.session_order.len());
    }

    fn apply_operation(
        &mut self,
        operation: &Operation,
        record: bool,
    ) -> (Result<ResponseBody, KvError>, Vec<Event>) {
        let no_events = |result| (result, Vec::new());
        match operation {
            Operation::Range(range) => no_events(self.range(range).map(ResponseBody::Range)),
            Operation::Put(put) => {
                let mut context = self.begin_write(record);
                match self.put_key(&mut context, put) {
                    Err(error) => no_events(Err(error)),
                    Ok(response) => (Ok(ResponseBody::Put(response)), self.end_write(context)),
                }
            }
            Operation::DeleteRange(delete) => {
                let mut context = self.begin_write(record);
                let response = self.delete_range(&mut context, delete);
                (
                    Ok(ResponseBody::DeleteRange(response)),
                    self.end_write(context),
                )
            }
            Operation::Txn(txn) => self.apply_txn(txn, record),
            Operation::Compact(compaction) => no_events(
                self.compact(compaction.revision)
                    .map(|()| ResponseBody::Compact),
            ),
            Operation::LeaseGrant {
                id,
                ttl_seconds,
                now_ms,
            } => no_events(
                self.lease_grant(*id, *ttl_seconds, *now_ms)
                    .map(ResponseBody::LeaseGrant),
            ),
            Operation::LeaseRevoke { id } => match self.leases.contains_key(id) {
                false => no_events(Err(KvError::LeaseNotFound)),
                true => (Ok(ResponseBody::LeaseRevoke), self.revoke(*id, record)),
            },
            Operation::LeaseKeepAlive { id, now_ms } => no_events(Ok(
                ResponseBody::LeaseKeepAlive(self.lease_keep_alive(*id, *now_ms)),
            )),
            Operation::ExpireLeases { now_ms, max_leases } => {
                let revoked = self.expired_leases(*now_ms, *max_leases as usize);
                let mut events = Vec::new();
                for id in &revoked {
                    events.extend(self.revoke(*id, record));
                }
                (Ok(ResponseBody::ExpireLeases { revoked }), events)
            }
            Operation::LeasePromote { now_ms } => {
                let ids: Vec<i64> = self.leases.keys().copied().collect();
                for id in ids {
                    self.renew(id, *now_ms);
                }
                no_events(Ok(ResponseBody::LeasePromote))
            }
        }
    }

    fn begin_write(&self, record: bool) -> WriteContext {
        WriteContext {
            main: self.current_revision + 1,
            sub: 0,
            events: record.then(Vec::new),
        }
    }

    /// Ends a write request: the revision moves only if something changed.
    fn end_write(&mut self, context: WriteContext) -> Vec<Event> {
        debug_assert_eq!(context.main, self.current_revision + 1);
        debug_assert!(context
            .events
            .as_ref()
            .is_none_or(|events| events.len() == context.sub as usize));
        if context.sub > 0 {
            self.current_revision += 1;
        }
        context.events.unwrap_or_default()
    }

    /// The key's live version, if any; its value read only when `with_value`.
    fn latest_kv(&self, key: &[u8], with_value: bool) -> Option<KeyValue> {
        let (key, versions) = self.keys.get_key_value(key)?;
        latest(key, versions, with_value.then_some(&self.values))
    }

    fn keys_in(&self, range: KeyRange<'_>) -> impl Iterator<Item = (&Key, &History)> + '_ {
        let bounds = range.bounds();
        let empty = bounds.is_none();
        let bounds = bounds.unwrap_or((Bound::Unbounded, Bound::Unbounded));
        self.keys.range::<[u8], _>(bounds).filter(move |_| !empty)
    }

    fn check_read_revision(&self, revision: i64) -> Result<(), KvError> {
        if revision > self.current_revision {
            Err(KvError::FutureRevision)
        } else if revision > 0 && revision < self.compact_revision {
            Err(KvError::Compacted)
        } else {
            Ok(())
        }
    }

    /// A read at the latest revision or at `request.revision` (etcd Range). The header revision of
    /// the answer is `current_revision()` even for a historical read.
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        check_key(&request.key)?;
        self.check_read_revision(request.revision)?;
        let read_revision = if request.revision > 0 {
            request.revision
        } else {
            i64::MAX
        };
        let filtered = request.min_mod_revision != 0
            || request.max_mod_revision != 0
            || request.min_create_revision != 0
            || request.max_create_revision != 0;
        let sort_order = match (request.sort_order, request.sort_target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (order, _) => order,
        };
        let fetch_limit = match request.limit {
            limit if limit > 0 && sort_order == SortOrder::None && !filtered => limit as usize + 1,
            _ => usize::MAX,
        };
        // A keys-only answer reads no value, unless values decide the order.
        let with_values = !request.keys_only || request.sort_target == SortTarget::Value;
        let mut count = 0i64;
        let mut kvs = Vec::new();
        for (key, versions) in self.keys_in(KeyRange::new(&request.key, &request.range_end)) {
            let Some(visible) = visible_at(versions, read_revision) else {
                continue;
            };
            count += 1;
            if !request.count_only && kvs.len() < fetch_limit {
                kvs.extend(visible.kv(key, with_values.then_some(&self.values)));
            }
        }
        if filtered {
            kvs.retain(|kv| {
                !(request.max_mod_revision != 0 && kv.mod_revision > request.max_mod_revision
                    || request.min_mod_revision != 0 && kv.mod_revision < request.min_mod_revision
                    || request.max_create_revision != 0
                        && kv.create_revision > request.max_create_revision
                    || request.min_create_revision != 0
                        && kv.create_revision < request.min_create_revision)
            });
        }
        sort_kvs(&mut kvs, sort_order, request.sort_target);
        let mut more = false;
        if request.limit > 0 && kvs.len() > request.limit as usize {
            kvs.truncate(request.limit as usize);
            more = true;
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(RangeResponse { kvs, more, count })
    }

    /// The state checks of a put: ignore_* needs the key, a lease must exist.
    fn check_put(&self, put: &PutRequest) -> Result<(), KvError> {
        let previous = self.latest_kv(&put.key, false);
        if (put.ignore_value || put.ignore_lease) && previous.is_none() {
            return Err(KvError::KeyNotFound);
        }
        let lease = if put.ignore_lease {
            previous.map_or(0, |kv| kv.lease)
        } else {
            put.lease
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound);
        }
        Ok(())
    }

    /// Writes `put` at the context's next revision, finding its key once. Refuses it, changing
    /// nothing, when `check_put` would.
    fn put_key(
        &mut self,
        context: &mut WriteContext,
        put: &PutRequest,
    ) -> Result<PutResponse, KvError> {
        let entry = self.keys.entry(Key::new(&put.key));
        let replaced = match &entry {
            Entry::Occupied(entry) => entry.get().last().filter(|version| !version.is_tombstone()),
            Entry::Vacant(_) => None,
        };
        if (put.ignore_value || put.ignore_lease) && replaced.is_none() {
            return Err(KvError::KeyNotFound);
        }
        // The replaced version as a whole is only wanted by the answer and the event; it is
        // named by the request's key (the same bytes, no copy of an inline key).
        let previous = replaced
            .filter(|_| put.prev_kv || context.recording())
            .map(|version| version.kv_named(put.key.clone(), Some(&self.values)));
        let lease = match replaced {
            Some(replaced) if put.ignore_lease => replaced.lease,
            _ => put.lease,
        };
        if lease != 0 && !self.leases.contains_key(&lease) {
            return Err(KvError::LeaseNotFound);
        }
        let revision = context.next_revision();
        let (create_revision, version, replaced_lease) = match replaced {
            Some(replaced) => (
                replaced.create_revision,
                replaced.version + 1,
                replaced.lease,
            ),
            None => (revision.main, 1, 0),
        };
        let value = match replaced {
            Some(replaced) if put.ignore_value => self.values.bytes(replaced.value),
            _ => put.value.clone(),
        };
        // The revision index shares the map's copy of the key.
        let (key, versions) = match entry {
            Entry::Occupied(entry) => (entry.key().clone(), entry.into_mut()),
            Entry::Vacant(entry) => (entry.key().clone(), entry.insert(History::default())),
        };
        detach(&mut self.leases, replaced_lease, &put.key);
        if lease != 0 {
            let lease = self
                .leases
                .get_mut(&lease)
                .expect("the lease was found above");
            lease.keys.insert(put.key.clone());
        }
        context.record(|| Event {
            kind: EventType::Put,
            kv: KeyValue {
                key: put.key.clone(),
                create_revision,
                mod_revision: revision.main,
                version,
                value: value.clone(),
                lease,
            },
            prev_kv: previous.clone(),
        });
        let stored = StoredVersion {
            revision,
            create_revision,
            version,
            lease,
            value: self.values.keep(&value),
        };
        append_version(
            versions,
            key,
            stored,
            &mut self.stored_bytes,
            &mut self.revisions,
        );
        Ok(PutResponse {
            prev_kv: if put.prev_kv { previous } else { None },
        })
    }

    fn push_version(&mut self, key: &Bytes, version: StoredVersion) {
        let entry = self.keys.entry(Key::new(key));
        // The map's own copy of the key when it has one.
        let key = entry.key().clone();
        append_version(
            entry.or_default(),
            key,
            version,
            &mut self.stored_bytes,
            &mut self.revisions,
        );
    }

    fn delete_range(
        &mut self,
        context: &mut WriteContext,
        delete: &DeleteRangeRequest,
    ) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self
            .keys_in(KeyRange::new(&delete.key, &delete.range_end))
            .filter_map(|(key, versions)| {
                latest(
                    key,
                    versions,
                    (delete.prev_kv || context.recording()).then_some(&self.values),
                )
            })
            .collect();
        for kv in &doomed {
            self.delete_key(context, kv);
        }
        let deleted = doomed.len() as i64;
        DeleteRangeResponse {
            deleted,
            prev_kvs: if delete.prev_kv { doomed } else { Vec::new() },
        }
    }

    fn delete_key(&mut self, context: &mut WriteContext, previous: &KeyValue) {
        let revision = context.next_revision();
        detach(&mut self.leases, previous.lease, &previous.key);
        self.push_version(&previous.key, StoredVersion::tombstone(revision));
        context.record(|| Event {
            kind: EventType::Delete,
            kv: KeyValue {
                key: previous.key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            },
            prev_kv: Some(previous.clone()),
        });
    }

    fn compare_holds(&self, compare: &Compare) -> bool {
        let mut matched = false;
        for (key, versions) in self.keys_in(KeyRange::new(&compare.key, &compare.range_end)) {
            let with_value = matches!(compare.target, CompareTarget::Value(_));
            if let Some(kv) = latest(key, versions, with_value.then_some(&self.values)) {
                matched = true;
                if !compare_kv(&kv, compare) {
                    return false;
                }
            }
        }
        matched
            || (!matches!(compare.target, CompareTarget::Value(_))
                && compare_kv(&KeyValue::default(), compare))
    }

    /// Which branch every txn (outer, then nested ones in order) takes, decided on the state before
    /// the txn runs.
    fn txn_path(&self, txn: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = txn
            .compare
            .iter()
            .all(|compare| self.compare_holds(compare));
        path.push(succeeded);
        for op in branch(txn, succeeded) {
            if let RequestOp::Txn(inner) = op {
                self.txn_path(inner, path);
            }
        }
    }

    fn check_txn_path(
        &self,
        txn: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<(), KvError> {
        let succeeded = *path.next().expect("path covers every txn");
        for op in branch(txn, succeeded) {
            match op {
                RequestOp::Range(range) => self.check_read_revision(range.revision)?,
                RequestOp::Put(put) => self.check_put(put)?,
                RequestOp::DeleteRange(_) => {}
                RequestOp::Txn(inner) => self.check_txn_path(inner, path)?,
            }
        }
        Ok(())
    }

    fn apply_txn(
        &mut self,
        txn: &TxnRequest,
        record: bool,
    ) -> (Result<ResponseBody, KvError>, Vec<Event>) {
        let mut path = Vec::new();
        self.txn_path(txn, &mut path);
        if let Err(error) = self.check_txn_path(txn, &mut path.iter()) {
            return (Err(error), Vec::new());
        }
        let mut context = self.begin_write(record);
        let mut steps = path.iter();
        let response = self.execute_txn(&mut context, txn, &mut steps);
        assert!(steps.next().is_none(), "the whole path was used");
        (Ok(ResponseBody::Txn(response)), self.end_write(context))
    }

    fn execute_txn(
        &mut self,
        context: &mut WriteContext,
        txn: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> TxnResponse {
        let succeeded = *path.next().expect("path covers every txn");
        let mut responses = Vec::new();
        for op in branch(txn, succeeded) {
            responses.push(match op {
                RequestOp::Range(range) => {
                    ResponseOp::Range(self.range(range).expect("txn checked the range"))
                }
                RequestOp::Put(put) => ResponseOp::Put(
                    self.put_key(context, put)
                        .expect("check_txn_path checked every put"),
                ),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_range(context, delete))
                }
                RequestOp::Txn(inner) => ResponseOp::Txn(self.execute_txn(context, inner, path)),
            });
        }
        TxnResponse {
            succeeded,
            responses,
        }
    }

    /// Drops every version older than the newest one at or below `revision` (and that one too if it
    /// is a tombstone). Does not change the store revision.
    fn compact(&mut self, revision: i64) -> Result<(), KvError> {
        if revision <= self.compact_revision {
            return Err(KvError::Compacted);
        }
        if revision > self.current_revision {
            return Err(KvError::FutureRevision);
        }
        let mut emptied = Vec::new();
        let mut removed = Vec::new();
        for (key, versions) in self.keys.iter_mut() {
            let at_or_below = versions.partition_point(|stored| stored.main <= revision);
            let keep_from = match at_or_below.checked_sub(1) {
                None => 0,
                Some(newest) if !versions.is_tombstone(newest) => newest,
                Some(newest) => newest + 1,
            };
            for version in versions.drain_front(keep_from) {
                self.stored_bytes -= version.size_bytes(key.as_slice());
                self.values.forget(version.value);
                removed.push(version.revision);
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        removed.sort_unstable();
        self.revisions
            .retain(|revision| removed.binary_search(&revision).is_err());
        for key in emptied {
            self.keys.remove(&key);
        }
        self.compact_revision = revision;
        if self.values.worth_collecting() {
            let fresh = self.values.fresh_log();
            self.switch_value_log(fresh);
        }
        Ok(())
    }

    fn lease_grant(
        &mut self,
        id: i64,
        ttl_seconds: i64,
        now_ms: i64,
    ) -> Result<LeaseGrantResponse, KvError> {
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists);
        }
        let ttl_seconds = ttl_seconds.max(self.config.min_lease_ttl_seconds);
        self.insert_lease(
            id,
            Lease {
                ttl_seconds,
                renewed_at_ms: now_ms,
                keys: BTreeSet::new(),
            },
        );
        Ok(LeaseGrantResponse {
            id,
            ttl: ttl_seconds,
        })
    }

    pub(crate) fn insert_lease(&mut self, id: i64, lease: Lease) {
        self.lease_deadlines.insert((lease.deadline_ms(), id));
        let replaced = self.leases.insert(id, lease);
        assert!(replaced.is_none(), "lease IDs are unique");
    }

    fn renew(&mut self, id: i64, now_ms: i64) {
        let lease = self
            .leases
            .get_mut(&id)
            .expect("renewal of an existing lease");
        let moved = self.lease_deadlines.remove(&(lease.deadline_ms(), id));
        assert!(moved, "every lease is in the deadline index");
        lease.renewed_at_ms = now_ms;
        self.lease_deadlines.insert((lease.deadline_ms(), id));
    }

    /// Deletes the lease's keys in one write request (one revision) and forgets the lease.
    fn revoke(&mut self, id: i64, record: bool) -> Vec<Event> {
        let lease = self.leases.get(&id).expect("revoke of an existing lease");
        let attached: Vec<KeyValue> = lease
            .keys
            .iter()
            .map(|key| self.latest_kv(key, record).expect("a lease's key exists"))
            .collect();
        let mut context = self.begin_write(record);
        for kv in &attached {
            self.delete_key(&mut context, kv);
        }
        let lease = self.leases.remove(&id).expect("lease still exists");
        assert!(
            lease.keys.is_empty(),
            "deleting a lease's keys detaches them all"
        );
        let removed = self.lease_deadlines.remove(&(lease.deadline_ms(), id));
        assert!(removed, "every lease is in the deadline index");
        self.end_write(context)
    }

    fn lease_keep_alive(&mut self, id: i64, now_ms: i64) -> LeaseKeepAliveResponse {
        match self.leases.get(&id) {
            Some(lease) if !lease.expired_at(now_ms) => {
                let ttl = lease.ttl_seconds;
                self.renew(id, now_ms);
                LeaseKeepAliveResponse { id, ttl }
            }
            _ => LeaseKeepAliveResponse { id, ttl: 0 },
        }
    }

    /// Leases expired at `now_ms`, earliest deadline first (then lowest ID), at most `limit`.
    /// `O(limit · log n)`: the leader may ask on every tick.
    pub fn expired_leases(&self, now_ms: i64, limit: usize) -> Vec<i64> {
        self.lease_deadlines
            .range(..=(now_ms, i64::MAX))
            .map(|(_, id)| *id)
            .take(limit)
            .collect()
    }

    /// etcd LeaseTimeToLive at the caller's time: TTL -1 for an unknown lease.
    pub fn lease_time_to_live(&self, id: i64, keys: bool, now_ms: i64) -> LeaseTimeToLiveResponse {
        match self.leases.get(&id) {
            None => LeaseTimeToLiveResponse {
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(lease) => LeaseTimeToLiveResponse {
                id,
                ttl: (lease.deadline_ms().saturating_sub(now_ms) / 1000).max(0),
                granted_ttl: lease.ttl_seconds,
                keys: if keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
        }
    }

    /// etcd LeaseLeases: every lease ID, ascending.
    pub fn lease_leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// etcd HashKV: a CRC-32 over every stored version up to `revision` (≤ 0: current), in
    /// revision order. Equal on members that applied the same log. It reads every value
    /// back: a server computes it from [`Store::hash_kv_copy`] instead, off the store's lock.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKvResponse, KvError> {
        let revision = self.hashed_revision(revision)?;
        Ok(hash_versions(
            &self.revisions,
            &self.keys,
            &self.values,
            revision,
            self.compact_revision,
        ))
    }

    /// What [`Store::hash_kv`] reads, copied (the key map's histories, the revision index;
    /// values are shared): [`HashKvCopy::hash`] gives the same answer while the store moves
    /// on. Taking it is linear in the keys and versions, but reads no value.
    pub fn hash_kv_copy(&self, revision: i64) -> Result<HashKvCopy, KvError> {
        let revision = self.hashed_revision(revision)?;
        Ok(HashKvCopy {
            revisions: self.revisions.clone(),
            keys: self.keys.clone(),
            values: self.values.clone(),
            revision,
            compact_revision: self.compact_revision,
        })
    }

    /// The revision a HashKV of `revision` covers, if it may be read.
    fn hashed_revision(&self, revision: i64) -> Result<i64, KvError> {
        self.check_read_revision(revision)?;
        Ok(if revision > 0 {
            revision
        } else {
            self.current_revision
        })
    }

    /// Watch events on `[key, range_end)` (as in a range; an empty key means `"\0"`) from
    /// `start_revision` on, at most `limit` events (0: the configured maximum) but never splitting a
    /// revision. A start below the compact revision answers `Compacted`, as etcd cancels the watch.
    pub fn events_since(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
        limit: usize,
    ) -> WatchEvents {
        if start_revision < self.compact_revision {
            return WatchEvents::Compacted {
                compact_revision: self.compact_revision,
            };
        }
        let key: &[u8] = if key.is_empty() { b"\0" } else { key };
        let range = KeyRange::new(key, range_end);
        let limit = match limit {
            0 => self.config.max_watch_events_per_fetch,
            limit => limit.min(self.config.max_watch_events_per_fetch),
        };
        let max_scanned = limit.saturating_mul(64);
        let start = Revision {
            main: start_revision.max(1),
            sub: 0,
        };
        let mut events = Vec::new();
        let mut next_revision = self.current_revision + 1;
        let mut last_main = None;
        for (scanned, (revision, stored_key)) in self.revisions.from(start).enumerate() {
            let full = events.len() >= limit || scanned >= max_scanned;
            if full && last_main != Some(revision.main) {
                next_revision = revision.main;
                break;
            }
            last_main = Some(revision.main);
            if range.contains(stored_key) {
                events.push(self.event_at(stored_key, revision));
            }
        }
        next_revision = next_revision.max(start.main);
        WatchEvents::Events {
            events,
            next_revision,
        }
    }

    fn event_at(&self, key: &[u8], revision: Revision) -> Event {
        let (key, versions) = self
            .keys
            .get_key_value(key)
            .expect("the revision index names stored keys");
        let index = versions
            .find(revision)
            .expect("the revision index names stored versions");
        let name = key.to_bytes();
        let prev_kv = index
            .checked_sub(1)
            .and_then(|previous| versions.get(previous))
            .filter(|previous| !previous.is_tombstone())
            .map(|previous| previous.kv_named(name.clone(), Some(&self.values)));
        let version = versions.get(index).expect("found above");
        if version.is_tombstone() {
            Event {
                kind: EventType::Delete,
                kv: KeyValue {
                    key: name,
                    mod_revision: revision.main,
                    ..KeyValue::default()
                },
                prev_kv,
            }
        } else {
            Event {
                kind: EventType::Put,
                kv: version.kv_named(name, Some(&self.values)),
                prev_kv,
            }
        }
    }
}

fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        Err(KvError::KeyNotProvided)
    } else {
        Ok(())
    }
}

fn check_put_static(put: &PutRequest) -> Result<(), KvError> {
    check_key(&put.key)?;
    if put.ignore_value && !put.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if put.ignore_lease && put.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let ascending = match order {
        SortOrder::None => return,
        SortOrder::Ascend => true,
        SortOrder::Descend => false,
    };
    let key_order = |left: &KeyValue, right: &KeyValue| match target {
        SortTarget::Key => left.key.cmp(&right.key),
        SortTarget::Version => left.version.cmp(&right.version),
        SortTarget::Create => left.create_revision.cmp(&right.create_revision),
        SortTarget::Mod => left.mod_revision.cmp(&right.mod_revision),
        SortTarget::Value => left.value.cmp(&right.value),
    };
    if ascending {
        kvs.sort_by(key_order);
    } else {
        kvs.sort_by(|left, right| key_order(right, left));
    }
}
