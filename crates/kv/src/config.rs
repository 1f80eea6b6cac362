//! Limits of the state machine.
//!
//! `KvConfig` is part of the definition of the replicated state machine: every member of a cluster must
//! use the same values, because `apply` enforces them (a member with a different `max_txn_ops` would
//! answer a command differently and the replicas would diverge). The server takes them from etcd's
//! flags (`--max-txn-ops`, `--max-request-bytes`) and from the election timeout (minimum lease TTL).

use crate::error::ConfigError;

/// Limits and constants of the key-value state machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvConfig {
    /// Most compares, success ops or failure ops in one txn (etcd `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Largest encoded command accepted (etcd `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// Deepest nesting of txns inside txns.
    pub max_txn_depth: usize,
    /// Most events one `events_since` call returns (a revision is never split, so a batch may exceed
    /// this by the events of its last revision).
    pub max_watch_events_per_fetch: usize,
    /// Most client sessions kept for exactly-once application; the least recently used is evicted.
    pub max_sessions: usize,
    /// Leases are granted at least this TTL (etcd: ceil(1.5 × election timeout), 2 s by default).
    pub min_lease_ttl_seconds: i64,
    /// Largest TTL a lease may ask for (etcd: 9,000,000,000 s).
    pub max_lease_ttl_seconds: i64,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_txn_ops: 128,
            max_request_bytes: 1536 * 1024,
            max_txn_depth: 32,
            max_watch_events_per_fetch: 1000,
            max_sessions: 10_000,
            min_lease_ttl_seconds: 2,
            max_lease_ttl_seconds: 9_000_000_000,
        }
    }
}

impl KvConfig {
    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(ConfigError(what)) };
        check(self.max_txn_ops >= 1, "max_txn_ops must be at least 1")?;
        check(
            self.max_request_bytes >= 64,
            "max_request_bytes must be at least 64",
        )?;
        check(
            (1..=crate::wire::MAX_DECODE_DEPTH).contains(&self.max_txn_depth),
            "max_txn_depth must be between 1 and 64",
        )?;
        check(
            self.max_watch_events_per_fetch >= 1,
            "max_watch_events_per_fetch must be at least 1",
        )?;
        check(self.max_sessions >= 1, "max_sessions must be at least 1")?;
        check(
            self.min_lease_ttl_seconds >= 1,
            "min_lease_ttl_seconds must be at least 1",
        )?;
        check(
            self.max_lease_ttl_seconds >= self.min_lease_ttl_seconds,
            "max_lease_ttl_seconds must be at least min_lease_ttl_seconds",
        )?;
        check(
            self.max_lease_ttl_seconds <= i64::MAX / 1000,
            "max_lease_ttl_seconds must fit in milliseconds",
        )?;
        Ok(())
    }
}
