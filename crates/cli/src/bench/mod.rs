//! `skiff bench`: a load generator for any etcd v3 endpoint, with the workloads, flags
//! and report of etcd's `tools/benchmark`, so Skiff and etcd are measured by one tool.
//!
//! Shape of a run: [`connect`] opens `conns` gRPC connections (HTTP/2), `clients`
//! tasks are assigned to them round-robin (`client i` uses `conn i % conns`, as etcd
//! does), and each client sends one request at a time until `total` requests have been
//! started. The latencies go into [`report::Stats`], printed like etcd's report.
//!
//! `put`, `range` and `txn-put` go through the benchmark's own lean gRPC client
//! ([`grpc`], on `h2`), so that the tool's own CPU and latency stay small next to the
//! server's; `watch-latency` and `lease-keepalive`, which use streams, go through tonic.
//!
//! Every count and size is bounded (see the `MAX_*` constants) and checked by
//! [`BenchConfig::validate`] before any connection is made; the error names the flag.

pub mod connect;
pub mod grpc;
pub mod random;
pub mod report;
mod workloads;

use std::time::Duration;

pub use report::Stats;

/// Most connections a run may open.
pub const MAX_CONNS: usize = 10_000;
/// Most concurrent clients in a run.
pub const MAX_CLIENTS: usize = 100_000;
/// Most requests in a run (every latency is kept in memory: 8 bytes each).
pub const MAX_TOTAL: u64 = 100_000_000;
/// Largest key a workload may generate, in bytes.
pub const MAX_KEY_SIZE: usize = 64 * 1024;
/// Largest value a workload may generate, in bytes (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;
/// Most puts in one transaction of `txn-put`.
pub const MAX_TXN_OPS: usize = 10_000;
/// Most endpoints in `--endpoints`.
pub const MAX_ENDPOINTS: usize = 1_000;
/// A request that has not completed after this long counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag has a value the benchmark cannot run with.
    #[error("invalid value for {flag}: {reason}")]
    InvalidFlag {
        /// The flag, spelled as on the command line (`--key-size`).
        flag: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A connection to an endpoint could not be opened.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint as given.
        endpoint: String,
        /// The transport's error text.
        reason: String,
    },
    /// `--target-leader` found no leader among the endpoints.
    #[error("no leader found: {0}")]
    LeaderNotFound(String),
    /// A request needed to set up the run (not a measured one) failed.
    #[error("{context}: {status}")]
    Setup {
        /// What the run was doing.
        context: String,
        /// The server's answer.
        status: Box<tonic::Status>,
    },
}

/// Read consistency of `range`, as etcd's `--consistency l|s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable: the read goes through consensus (ReadIndex).
    Linearizable,
    /// Serializable: any member answers from its local state.
    Serializable,
}

/// How to reach the cluster (etcd benchmark's global flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// `host:port` or `http://host:port` of the members to use.
    pub endpoints: Vec<String>,
    /// Number of gRPC connections.
    pub conns: usize,
    /// Number of concurrent clients, spread round-robin over the connections.
    pub clients: usize,
    /// Ask the endpoints who leads and send everything to the leader's client URLs.
    pub target_leader: bool,
    /// How long to wait for a connection to open.
    pub dial_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> ConnectionConfig {
        ConnectionConfig {
            endpoints: vec!["127.0.0.1:2379".to_string()],
            conns: 1,
            clients: 1,
            target_leader: false,
            dial_timeout: Duration::from_secs(2),
        }
    }
}

/// `put`: write keys of `key_size` bytes with one random value of `value_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutConfig {
    /// Key length in bytes; the key number is varint-encoded at its start, as etcd does.
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
    /// Number of puts.
    pub total: u64,
    /// Most requests started per second; 0 means no limit.
    pub rate: u64,
    /// Number of distinct keys.
    pub key_space_size: u64,
    /// Request `i` writes key `i % key_space_size` instead of a random one.
    pub sequential_keys: bool,
}

impl Default for PutConfig {
    fn default() -> PutConfig {
        PutConfig {
            key_size: 8,
            value_size: 8,
            total: 10_000,
            rate: 0,
            key_space_size: 1,
            sequential_keys: false,
        }
    }
}

/// `range KEY [END]`: repeated reads of one key or range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeConfig {
    /// The key, or the start of the range.
    pub key: Vec<u8>,
    /// The end of the range (exclusive), if any.
    pub range_end: Option<Vec<u8>>,
    /// Linearizable or serializable reads.
    pub consistency: Consistency,
    /// Number of reads.
    pub total: u64,
    /// Most requests started per second; 0 means no limit.
    pub rate: u64,
}

/// `txn-put`: transactions made of `txn_ops` puts to distinct keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPutConfig {
    /// Key length in bytes.
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
    /// Puts per transaction.
    pub txn_ops: usize,
    /// Number of transactions.
    pub total: u64,
    /// Most transactions started per second; 0 means no limit.
    pub rate: u64,
    /// Number of distinct keys.
    pub key_space_size: u64,
}

impl Default for TxnPutConfig {
    fn default() -> TxnPutConfig {
        TxnPutConfig {
            key_size: 8,
            value_size: 8,
            txn_ops: 1,
            total: 10_000,
            rate: 0,
            key_space_size: 1,
        }
    }
}

/// `watch-latency`: every client watches one key; puts to it at `put_rate` measure the
/// time from the start of a put until each watcher has its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLatencyConfig {
    /// Number of puts (each gives one sample per client).
    pub total: u64,
    /// Puts per second.
    pub put_rate: u64,
    /// Key length in bytes.
    pub key_size: usize,
    /// Value length in bytes.
    pub value_size: usize,
}

impl Default for WatchLatencyConfig {
    fn default() -> WatchLatencyConfig {
        WatchLatencyConfig {
            total: 10_000,
            put_rate: 100,
            key_size: 32,
            value_size: 32,
        }
    }
}

/// `lease-keepalive`: every client grants a lease, then renews it once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKeepaliveConfig {
    /// Number of keep-alive round trips.
    pub total: u64,
}

/// One of the benchmark's workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// `put`.
    Put(PutConfig),
    /// `range`.
    Range(RangeConfig),
    /// `txn-put`.
    TxnPut(TxnPutConfig),
    /// `watch-latency`.
    WatchLatency(WatchLatencyConfig),
    /// `lease-keepalive`.
    LeaseKeepalive(LeaseKeepaliveConfig),
}

impl Workload {
    /// The subcommand name, used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Put(_) => "put",
            Workload::Range(_) => "range",
            Workload::TxnPut(_) => "txn-put",
            Workload::WatchLatency(_) => "watch-latency",
            Workload::LeaseKeepalive(_) => "lease-keepalive",
        }
    }
}

/// A whole benchmark run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchConfig {
    /// Where and how to connect.
    pub connection: ConnectionConfig,
    /// What to send.
    pub workload: Workload,
    /// Draw a progress bar on standard error (only when it is a terminal).
    pub show_progress: bool,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> BenchError {
    BenchError::InvalidFlag {
        flag,
        reason: reason.into(),
    }
}

fn check_range<T: PartialOrd + std::fmt::Display>(
    flag: &'static str,
    value: T,
    least: T,
    most: T,
) -> Result<(), BenchError> {
    if value < least || value > most {
        return Err(invalid(flag, format!("{value} is not in {least}..={most}")));
    }
    Ok(())
}

fn check_length(argument: &'static str, bytes: &[u8]) -> Result<(), BenchError> {
    if bytes.is_empty() || bytes.len() > MAX_KEY_SIZE {
        return Err(invalid(
            argument,
            format!(
                "must be 1 to {MAX_KEY_SIZE} bytes long, not {}",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Bytes needed by Go's `binary.PutVarint` (zig-zag, 7 bits a byte) for `number`.
pub fn varint_length(number: u64) -> usize {
    let zigzag = number << 1; // non-negative: zig-zag doubles it
    let bits = 64 - zigzag.leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

fn check_key_space(key_size: usize, key_space_size: u64) -> Result<(), BenchError> {
    check_range("--key-space-size", key_space_size, 1, 1 << 62)?;
    let needed = varint_length(key_space_size - 1);
    if key_size < needed {
        return Err(invalid(
            "--key-size",
            format!("{key_size} bytes cannot hold {key_space_size} distinct keys (need at least {needed})"),
        ));
    }
    Ok(())
}

impl BenchConfig {
    /// Checks every flag against its limits; the error names the first bad flag.
    pub fn validate(&self) -> Result<(), BenchError> {
        let connection = &self.connection;
        check_range("--endpoints", connection.endpoints.len(), 1, MAX_ENDPOINTS)?;
        for endpoint in &connection.endpoints {
            connect::endpoint_uri(endpoint)?;
        }
        check_range("--conns", connection.conns, 1, MAX_CONNS)?;
        check_range("--clients", connection.clients, 1, MAX_CLIENTS)?;
        if connection.dial_timeout.is_zero() {
            return Err(invalid("--dial-timeout", "must be positive"));
        }
        match &self.workload {
            Workload::Put(put) => {
                check_range("--total", put.total, 1, MAX_TOTAL)?;
                check_range("--key-size", put.key_size, 1, MAX_KEY_SIZE)?;
                check_range("--val-size", put.value_size, 0, MAX_VALUE_SIZE)?;
                check_key_space(put.key_size, put.key_space_size)?;
            }
            Workload::Range(range) => {
                check_range("--total", range.total, 1, MAX_TOTAL)?;
                check_length("KEY", &range.key)?;
                if let Some(end) = &range.range_end {
                    check_length("END", end)?;
                }
            }
            Workload::TxnPut(txn) => {
                check_range("--total", txn.total, 1, MAX_TOTAL)?;
                check_range("--key-size", txn.key_size, 1, MAX_KEY_SIZE)?;
                check_range("--val-size", txn.value_size, 0, MAX_VALUE_SIZE)?;
                check_range("--txn-ops", txn.txn_ops, 1, MAX_TXN_OPS)?;
                check_key_space(txn.key_size, txn.key_space_size)?;
                if txn.key_space_size < txn.txn_ops as u64 {
                    return Err(invalid(
                        "--key-space-size",
                        format!(
                            "{} is below --txn-ops {}: a transaction would repeat a key",
                            txn.key_space_size, txn.txn_ops
                        ),
                    ));
                }
            }
            Workload::WatchLatency(watch) => {
                check_range(
                    "--total",
                    watch.total,
                    1,
                    MAX_TOTAL / connection.clients as u64,
                )?;
                check_range("--put-rate", watch.put_rate, 1, 1_000_000)?;
                check_range("--key-size", watch.key_size, 1, MAX_KEY_SIZE)?;
                check_range("--val-size", watch.value_size, 0, MAX_VALUE_SIZE)?;
            }
            Workload::LeaseKeepalive(lease) => {
                check_range("--total", lease.total, 1, MAX_TOTAL)?;
            }
        }
        Ok(())
    }
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The workload's name (`put`, `range`, ...).
    pub workload: &'static str,
    /// The endpoints the load went to (after `--target-leader`).
    pub endpoints: Vec<String>,
    /// Latencies and errors.
    pub stats: Stats,
}

impl Report {
    /// etcd's text report.
    pub fn text(&self) -> String {
        report::render_text(&self.stats)
    }

    /// One line of JSON with requests/s, average and percentile latencies.
    pub fn json_line(&self) -> String {
        report::render_json_line(self.workload, &self.endpoints, &self.stats)
    }
}

/// Validates the configuration, connects and runs the workload to completion.
pub async fn run(config: &BenchConfig) -> Result<Report, BenchError> {
    config.validate()?;
    let endpoints = connect::endpoints(&config.connection).await?;
    let stats = workloads::run(config, &endpoints).await?;
    Ok(Report {
        workload: config.workload.name(),
        endpoints,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_config(put: PutConfig) -> BenchConfig {
        BenchConfig {
            connection: ConnectionConfig::default(),
            workload: Workload::Put(put),
            show_progress: false,
        }
    }

    fn flag_of(config: &BenchConfig) -> &'static str {
        match config.validate() {
            Err(BenchError::InvalidFlag { flag, .. }) => flag,
            other => panic!("expected an invalid flag, got {other:?}"),
        }
    }

    #[test]
    fn varint_lengths_match_go() {
        // Go: binary.PutVarint(buf, 63) writes 1 byte, 64 needs 2.
        assert_eq!(varint_length(0), 1);
        assert_eq!(varint_length(63), 1);
        assert_eq!(varint_length(64), 2);
        assert_eq!(varint_length(8191), 2);
        assert_eq!(varint_length(8192), 3);
    }

    #[test]
    fn defaults_are_valid() {
        assert!(put_config(PutConfig::default()).validate().is_ok());
    }

    #[test]
    fn each_bad_flag_is_named() {
        let mut config = put_config(PutConfig::default());
        config.connection.conns = 0;
        assert_eq!(flag_of(&config), "--conns");

        let mut config = put_config(PutConfig::default());
        config.connection.clients = MAX_CLIENTS + 1;
        assert_eq!(flag_of(&config), "--clients");

        let mut config = put_config(PutConfig::default());
        config.connection.endpoints = vec!["https://127.0.0.1:2379".into()];
        assert_eq!(flag_of(&config), "--endpoints");

        let mut config = put_config(PutConfig::default());
        config.connection.endpoints = vec![String::new()];
        assert_eq!(flag_of(&config), "--endpoints");

        let config = put_config(PutConfig {
            total: 0,
            ..PutConfig::default()
        });
        assert_eq!(flag_of(&config), "--total");

        let config = put_config(PutConfig {
            key_space_size: 0,
            ..PutConfig::default()
        });
        assert_eq!(flag_of(&config), "--key-space-size");

        let config = put_config(PutConfig {
            key_size: 1,
            key_space_size: 1000,
            ..PutConfig::default()
        });
        assert_eq!(flag_of(&config), "--key-size");

        let config = BenchConfig {
            workload: Workload::TxnPut(TxnPutConfig {
                txn_ops: 0,
                ..TxnPutConfig::default()
            }),
            ..put_config(PutConfig::default())
        };
        assert_eq!(flag_of(&config), "--txn-ops");

        let config = BenchConfig {
            workload: Workload::WatchLatency(WatchLatencyConfig {
                put_rate: 0,
                ..WatchLatencyConfig::default()
            }),
            ..put_config(PutConfig::default())
        };
        assert_eq!(flag_of(&config), "--put-rate");

        let config = BenchConfig {
            workload: Workload::Range(RangeConfig {
                key: Vec::new(),
                range_end: None,
                consistency: Consistency::Serializable,
                total: 1,
                rate: 0,
            }),
            ..put_config(PutConfig::default())
        };
        assert_eq!(flag_of(&config), "KEY");
    }
}
