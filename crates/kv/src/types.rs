//! Requests and responses. They mirror the fields of etcd's `etcdserverpb` messages so the server can
//! convert protobuf to and from them field by field; response headers are left to the server (the
//! store reports the header revision beside each response).

use bytes::Bytes;

/// One version of a key (etcd `mvccpb.KeyValue`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: Bytes,
    /// Revision of the last creation of the key.
    pub create_revision: i64,
    /// Revision of this version.
    pub mod_revision: i64,
    /// 1 at creation, +1 per put; 0 for a deleted key.
    pub version: i64,
    /// The value.
    pub value: Bytes,
    /// Attached lease ID, 0 for none.
    pub lease: i64,
}

/// Order of a range's results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortOrder {
    /// Key order (unless a non-key target is given: then ascending).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// What a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value.
    Value,
}

/// etcd `RangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// First key (must not be empty).
    pub key: Bytes,
    /// Empty: only `key`; `"\0"`: every key ≥ `key`; otherwise `[key, range_end)`.
    pub range_end: Bytes,
    /// At most this many KVs (0: no limit).
    pub limit: i64,
    /// Read at this revision (≤ 0: the latest).
    pub revision: i64,
    /// Sort order.
    pub sort_order: SortOrder,
    /// Sort target.
    pub sort_target: SortTarget,
    /// Local read (the server's concern; the store ignores it).
    pub serializable: bool,
    /// Leave values out.
    pub keys_only: bool,
    /// Only count.
    pub count_only: bool,
    /// Drop KVs with a smaller mod revision (0: no filter).
    pub min_mod_revision: i64,
    /// Drop KVs with a larger mod revision (0: no filter).
    pub max_mod_revision: i64,
    /// Drop KVs with a smaller create revision (0: no filter).
    pub min_create_revision: i64,
    /// Drop KVs with a larger create revision (0: no filter).
    pub max_create_revision: i64,
}

/// etcd `RangeResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// The KVs.
    pub kvs: Vec<KeyValue>,
    /// More KVs matched than `limit` allowed.
    pub more: bool,
    /// Number of keys in the range (before the min/max filters and the limit).
    pub count: i64,
}

/// etcd `PutRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutRequest {
    /// The key (must not be empty).
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous KV.
    pub prev_kv: bool,
    /// Keep the current value (the key must exist).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist).
    pub ignore_lease: bool,
}

/// etcd `PutResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// The previous KV when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// etcd `DeleteRangeRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeRequest {
    /// First key (must not be empty).
    pub key: Bytes,
    /// As in `RangeRequest`.
    pub range_end: Bytes,
    /// Return the deleted KVs.
    pub prev_kv: bool,
}

/// etcd `DeleteRangeResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteRangeResponse {
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted KVs when asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare's actual value must relate to the given one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareResult {
    /// Equal.
    #[default]
    Equal,
    /// Actual greater than given.
    Greater,
    /// Actual less than given.
    Less,
    /// Not equal.
    NotEqual,
}

/// What a compare looks at, with the value to compare to (etcd's `target` and `target_union` in one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    Create(i64),
    /// The mod revision (0 for a missing key).
    Mod(i64),
    /// The value (a compare on a missing key is false).
    Value(Bytes),
    /// The lease (0 for a missing key or no lease).
    Lease(i64),
}

/// etcd `Compare`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    /// Expected relation.
    pub result: CompareResult,
    /// Field and value.
    pub target: CompareTarget,
    /// The key (must not be empty).
    pub key: Bytes,
    /// As in `RangeRequest`: every key in the range must satisfy the compare.
    pub range_end: Bytes,
}

/// One operation of a txn (etcd `RequestOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested txn.
    Txn(TxnRequest),
}

/// etcd `TxnRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnRequest {
    /// All must hold for `success` to run; otherwise `failure` runs.
    pub compare: Vec<Compare>,
    /// Ops run when every compare holds.
    pub success: Vec<RequestOp>,
    /// Ops run otherwise.
    pub failure: Vec<RequestOp>,
}

/// The result of one txn operation (etcd `ResponseOp`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseOp {
    /// Of a range.
    Range(RangeResponse),
    /// Of a put.
    Put(PutResponse),
    /// Of a delete.
    DeleteRange(DeleteRangeResponse),
    /// Of a nested txn.
    Txn(TxnResponse),
}

/// etcd `TxnResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held.
    pub succeeded: bool,
    /// One response per op of the branch that ran.
    pub responses: Vec<ResponseOp>,
}

/// etcd `CompactionRequest`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactionRequest {
    /// Drop every version older than the newest one at or below this revision.
    pub revision: i64,
    /// Wait until durable (the server's concern).
    pub physical: bool,
}

/// etcd `LeaseGrantResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseGrantResponse {
    /// The lease ID.
    pub id: i64,
    /// The TTL granted in seconds (at least the minimum TTL).
    pub ttl: i64,
}

/// etcd `LeaseKeepAliveResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseKeepAliveResponse {
    /// The lease ID.
    pub id: i64,
    /// The new TTL, 0 when the lease is unknown or expired.
    pub ttl: i64,
}

/// etcd `LeaseTimeToLiveResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTimeToLiveResponse {
    /// The lease ID.
    pub id: i64,
    /// Seconds left, -1 for an unknown lease.
    pub ttl: i64,
    /// The TTL granted, 0 for an unknown lease.
    pub granted_ttl: i64,
    /// Keys attached, in key order, when asked for.
    pub keys: Vec<Bytes>,
}

/// etcd `HashKVResponse` without its header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HashKvResponse {
    /// CRC-32 of the key space up to the revision.
    pub hash: u32,
    /// The compact revision (-1 when never compacted).
    pub compact_revision: i64,
}

/// What happened to a key in a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Put.
    Put,
    /// Delete.
    Delete,
}

/// A change, as etcd's `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Put or delete.
    pub kind: EventType,
    /// The new KV; for a delete only `key` and `mod_revision` (the delete's revision) are set.
    pub kv: KeyValue,
    /// The KV before the change, if the key existed (the server drops it unless the watcher asked).
    pub prev_kv: Option<KeyValue>,
}

/// Events answered by `Store::events_since`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvents {
    /// Events in revision order; a revision is never split.
    Events {
        /// The events.
        events: Vec<Event>,
        /// Where the next fetch should start: one past the last revision examined.
        next_revision: i64,
    },
    /// The start revision was compacted: etcd cancels the watch with this compact revision.
    Compacted {
        /// The store's compact revision.
        compact_revision: i64,
    },
}
