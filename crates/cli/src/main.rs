//! `skiff`: command-line entry point. Parses flags and hands over to the library.
//!
//! `skiff`, `skiff serve [flags]` and `skiff --some-member-flag ...` all run a member (etcd's
//! flags, see `skiff_cli::serve`); `skiff bench ...` runs the load generator.

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use skiff_cli::bench::{
    self, BenchConfig, BenchError, ConnectionConfig, Consistency, LeaseKeepaliveConfig, PutConfig,
    RangeConfig, TxnPutConfig, WatchLatencyConfig, Workload,
};
use skiff_cli::serve::{self, ServeArgs, ServeOptions};
use skiff_server::ServerConfig;

/// See `skiff_cli::allocator`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run a member (the default when no subcommand is given; etcd's flags, each also read from
    /// SKIFF_<FLAG>).
    Serve(Box<ServeArgs>),
    /// Load generator for any etcd v3 endpoint (flags and report of etcd's benchmark tool).
    Bench(BenchArgs),
    /// Start a local cluster of real members, show a leader failover, then keep serving.
    Demo(DemoArgs),
}

#[derive(Args)]
struct DemoArgs {
    /// Members to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=7))]
    members: u8,
    /// Stop after the scenario instead of serving until Ctrl-C.
    #[arg(long)]
    exit_after_scenario: bool,
    /// Election timeout of the members, milliseconds.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// Heartbeat interval of the members, milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
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

/// Runs a member until SIGTERM/SIGINT (graceful) or until its own disk fails.
async fn run_member(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    skiff_server::run(config, shutdown).await?;
    Ok(())
}

/// Runs a member from parsed (or refused) flags.
fn serve_main(parsed: Result<ServeOptions, serve::FlagError>) -> ExitCode {
    let options = match parsed {
        Ok(options) => options,
        Err(error) => {
            error.print();
            return ExitCode::from(error.exit_code());
        }
    };
    if options.print_config {
        print!("{}", options.describe());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_max_level(options.log_level.tracing_level())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let env_vars = std::env::vars_os().filter_map(|(key, _)| key.into_string().ok());
    for var in serve::unrecognized_env_vars(env_vars) {
        tracing::warn!("unrecognized environment variable {var}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        let shutdown = serve::shutdown_signal()?;
        run_member(options.config, shutdown).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn main() -> ExitCode {
    skiff_cli::allocator::tune();
    skiff_server::client_server::on_connection_end(skiff_cli::allocator::collect_thread);
    let args: Vec<OsString> = std::env::args_os().collect();
    let first = args.get(1).and_then(|arg| arg.to_str());
    let member_flags = match first {
        None => Some(&args[1..]),
        Some("serve") => Some(&args[2..]),
        Some("-h" | "--help" | "-V" | "--version") => None,
        Some(arg) if arg.starts_with('-') => Some(&args[1..]),
        Some(_) => None,
    };
    if let Some(flags) = member_flags {
        return serve_main(serve::parse_serve_args(flags.iter().cloned(), &env_lookup));
    }
    let cli = Cli::parse();
    match cli.command {
        // Normally taken above; reached only through clap's own routing.
        Command::Serve(args) => serve_main(serve::options_from_args(*args, &env_lookup)),
        Command::Demo(args) => {
            let options = skiff_cli::demo::DemoOptions {
                members: usize::from(args.members),
                exit_after_scenario: args.exit_after_scenario,
                election_timeout_ms: args.election_timeout,
                heartbeat_interval_ms: args.heartbeat_interval,
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(skiff_cli::demo::run(options)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
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
