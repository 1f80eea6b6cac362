//! `skiff`: command-line entry point. Parses flags and hands over to the library;
//! `serve` and `demo` will join `bench` as sibling subcommands.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use skiff_cli::bench::{
    self, BenchConfig, BenchError, ConnectionConfig, Consistency, LeaseKeepaliveConfig, PutConfig,
    RangeConfig, TxnPutConfig, WatchLatencyConfig, Workload,
};

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "Skiff: a Raft key-value store speaking the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load generator for any etcd v3 endpoint (flags and report of etcd's benchmark tool).
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Comma-separated member addresses (host:port or http://host:port).
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients, assigned round-robin to the connections.
    #[arg(long, global = true, default_value_t = 1)]
    clients: usize,
    /// Send all requests to the leader's client URLs (found with Status and MemberList).
    #[arg(long, global = true)]
    target_leader: bool,
    /// Seconds to wait for a connection to open.
    #[arg(long, global = true, default_value_t = 2.0)]
    dial_timeout: f64,
    /// Print only one line of JSON (requests/s, average and percentile latencies in ms).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    workload: WorkloadCommand,
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Put keys (binary, varint-numbered) with one random value.
    Put {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Most requests per second; 0 for no limit.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Write key i % key-space-size for request i instead of a random key.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Read KEY (or the range [KEY, END)) repeatedly.
    Range {
        key: String,
        end: Option<String>,
        /// l: linearizable, s: serializable.
        #[arg(long, value_enum, default_value = "l")]
        consistency: ConsistencyFlag,
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Most requests per second; 0 for no limit.
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Transactions of --txn-ops puts to distinct keys.
    TxnPut {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 8)]
        val_size: usize,
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        /// Most requests per second; 0 for no limit.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
    },
    /// Time from a put to its watch event at every client.
    WatchLatency {
        #[arg(long, default_value_t = 10_000)]
        total: u64,
        #[arg(long, default_value_t = 100)]
        put_rate: u64,
        #[arg(long, default_value_t = 32)]
        key_size: usize,
        #[arg(long, default_value_t = 32)]
        val_size: usize,
    },
    /// Lease keep-alive round trips.
    LeaseKeepalive {
        #[arg(long, default_value_t = 10_000)]
        total: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ConsistencyFlag {
    L,
    S,
}

fn workload(command: WorkloadCommand) -> Workload {
    match command {
        WorkloadCommand::Put {
            key_size,
            val_size,
            total,
            rate,
            key_space_size,
            sequential_keys,
        } => Workload::Put(PutConfig {
            key_size,
            value_size: val_size,
            total,
            rate,
            key_space_size,
            sequential_keys,
        }),
        WorkloadCommand::Range {
            key,
            end,
            consistency,
            total,
            rate,
        } => Workload::Range(RangeConfig {
            key: key.into_bytes(),
            range_end: end.map(String::into_bytes),
            consistency: match consistency {
                ConsistencyFlag::L => Consistency::Linearizable,
                ConsistencyFlag::S => Consistency::Serializable,
            },
            total,
            rate,
        }),
        WorkloadCommand::TxnPut {
            key_size,
            val_size,
            txn_ops,
            total,
            rate,
            key_space_size,
        } => Workload::TxnPut(TxnPutConfig {
            key_size,
            value_size: val_size,
            txn_ops,
            total,
            rate,
            key_space_size,
        }),
        WorkloadCommand::WatchLatency {
            total,
            put_rate,
            key_size,
            val_size,
        } => Workload::WatchLatency(WatchLatencyConfig {
            total,
            put_rate,
            key_size,
            value_size: val_size,
        }),
        WorkloadCommand::LeaseKeepalive { total } => {
            Workload::LeaseKeepalive(LeaseKeepaliveConfig { total })
        }
    }
}

fn bench_config(args: BenchArgs) -> Result<(BenchConfig, bool), BenchError> {
    if !(args.dial_timeout.is_finite() && args.dial_timeout > 0.0 && args.dial_timeout <= 3600.0) {
        return Err(BenchError::InvalidFlag {
            flag: "--dial-timeout",
            reason: format!("{} is not in (0, 3600] seconds", args.dial_timeout),
        });
    }
    let config = BenchConfig {
        connection: ConnectionConfig {
            endpoints: args.endpoints,
            conns: args.conns,
            clients: args.clients,
            target_leader: args.target_leader,
            dial_timeout: Duration::from_secs_f64(args.dial_timeout),
        },
        workload: workload(args.workload),
        show_progress: !args.json,
    };
    config.validate()?;
    Ok((config, args.json))
}

async fn bench(config: BenchConfig, json: bool) -> anyhow::Result<bool> {
    let report = bench::run(&config).await?;
    if json {
        println!("{}", report.json_line());
    } else {
        print!("{}", report.text());
        println!("{}", report.json_line());
    }
    Ok(report.stats.failed() == 0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => {
            let (config, json) = match bench_config(args) {
                Ok(parsed) => parsed,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(bench(config, json)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
