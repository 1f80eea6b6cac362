//! Errors. `KvError` carries etcd's exact message strings: Go clients recognise errors by their text,
//! so the server passes `to_string()` through unchanged and maps `KvError::grpc_code` to the status code.

use thiserror::Error;

/// A request the state machine refused. Refusing changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum KvError {
    /// Empty key in a range, put, delete or compare.
    #[error("etcdserver: key is not provided")]
    KeyNotProvided,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// More compares or ops in a txn than `max_txn_ops` (or txns nested deeper than `max_txn_depth`).
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes a key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The encoded request exceeds `max_request_bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// The requested revision was compacted away.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision does not exist yet.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// Unknown lease.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease with this ID exists already.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// The TTL asked for is above `max_lease_ttl_seconds`.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A retried command whose sequence number is older than the last one applied for its client:
    /// its response is no longer kept, so it cannot be answered (and is not applied again).
    #[error("skiff: request sequence number is older than the client's last applied request")]
    StaleRequest,
}

/// The gRPC status code etcd uses for an error (numeric values of `google.golang.org/grpc/codes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcCode {
    /// 3
    InvalidArgument = 3,
    /// 5
    NotFound = 5,
    /// 9
    FailedPrecondition = 9,
    /// 11
    OutOfRange = 11,
}

impl KvError {
    /// The gRPC code etcd answers this error with.
    pub fn grpc_code(&self) -> GrpcCode {
        use KvError::*;
        match self {
            KeyNotProvided | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps
            | DuplicateKey | RequestTooLarge => GrpcCode::InvalidArgument,
            Compacted | FutureRevision | LeaseTtlTooLarge => GrpcCode::OutOfRange,
            LeaseNotFound => GrpcCode::NotFound,
            LeaseExists | StaleRequest => GrpcCode::FailedPrecondition,
        }
    }
}

/// Bytes that are not a valid encoding (a command, a response or a snapshot record).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("decode error: {0}")]
pub struct DecodeError(pub &'static str);

/// A `KvConfig` limit that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("invalid kv config: {0}")]
pub struct ConfigError(pub &'static str);

/// Writing or reading a snapshot failed.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// The underlying reader or writer failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The stream is not a valid snapshot (bad magic, version, record or checksum).
    #[error("corrupt snapshot: {0}")]
    Corrupt(&'static str),
}

impl From<DecodeError> for SnapshotError {
    fn from(error: DecodeError) -> Self {
        SnapshotError::Corrupt(error.0)
    }
}
