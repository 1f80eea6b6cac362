//! `skiff-sim run` explores seeds; `skiff-sim check` checks history files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use skiff_raft::PlantedBug;
use skiff_sim::{run_seed, Options};

#[derive(Parser)]
#[command(
    name = "skiff-sim",
    about = "Deterministic simulator for skiff-raft clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run seeds and check every invariant.
    Run {
        /// Number of seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Run exactly this seed (overrides --seeds/--start).
        #[arg(long)]
        seed: Option<u64>,
        /// Cluster size: 3, 5 or 7 (default: drawn from each seed).
        #[arg(long, value_parser = parse_nodes)]
        nodes: Option<usize>,
        /// Print the event trace.
        #[arg(long)]
        trace: bool,
        /// Simulated milliseconds of faults per seed.
        #[arg(long, default_value_t = 6_000)]
        fault_ms: u64,
        /// Simulated milliseconds allowed for recovery after healing.
        #[arg(long, default_value_t = 4_000)]
        heal_ms: u64,
        /// Membership churn: `on` for every seed, `off` for none (default: half the seeds,
        /// drawn from each seed).
        #[arg(long, value_parser = parse_churn)]
        churn: Option<bool>,
        /// Plant a known bug to prove the simulator catches it: `vote-by-log-length` or
        /// `commit-by-replica-count`.
        #[arg(long, value_parser = parse_bug, hide = true)]
        planted_bug: Option<PlantedBug>,
    },
    /// Check history files for linearizability.
    Check {
        /// `jepsen` (one register) or `kv` (multi-key).
        #[arg(long)]
        format: String,
        /// Files to check.
        files: Vec<PathBuf>,
    },
}

fn parse_bug(text: &str) -> Result<PlantedBug, String> {
    match text {
        "vote-by-log-length" => Ok(PlantedBug::VoteByLogLength),
        "commit-by-replica-count" => Ok(PlantedBug::CommitByReplicaCount),
        "membership-without-joint" => Ok(PlantedBug::MembershipWithoutJoint),
        _ => Err(format!("unknown --planted-bug {text:?}")),
    }
}

fn parse_churn(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("--churn must be on or off, not {text:?}")),
    }
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size @ (3 | 5 | 7)) => Ok(size),
        _ => Err(format!("--nodes must be 3, 5 or 7, not {text:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            seeds,
            start,
            seed,
            nodes,
            trace,
            fault_ms,
            heal_ms,
            churn,
            planted_bug,
        } => {
            let (first, count) = match seed {
                Some(seed) => (seed, 1),
                None => (start, seeds),
            };
            let settings = Settings {
                nodes: nodes.unwrap_or(0),
                trace,
                fault_ms,
                heal_ms,
                planted_bug: planted_bug.unwrap_or_default(),
                churn,
            };
            run(first, count, &settings)
        }
        Command::Check { format, files } => {
            ExitCode::from(skiff_check::run_check_command(&format, &files) as u8)
        }
    }
}

struct Settings {
    nodes: usize,
    trace: bool,
    fault_ms: u64,
    heal_ms: u64,
    planted_bug: PlantedBug,
    churn: Option<bool>,
}

fn run(first: u64, count: u64, settings: &Settings) -> ExitCode {
    let started = Instant::now();
    let (mut violations, mut operations, mut unknown, mut faults, mut crashes, mut events) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut inconclusive = 0u64;
    let (mut churn_seeds, mut membership_changes, mut read_back) = (0u64, 0u64, 0u64);
    for seed in first..first + count {
        let mut options = Options::new(seed);
        options.nodes = settings.nodes;
        options.trace = settings.trace;
        options.fault_ms = settings.fault_ms;
        options.heal_ms = settings.heal_ms;
        options.planted_bug = settings.planted_bug;
        options.churn = settings.churn;
        let report = run_seed(options);
        operations += report.stats.operations_ok;
        unknown += report.stats.operations_unknown;
        faults += report.stats.faults;
        crashes += report.stats.crashes;
        events += report.stats.events;
        inconclusive += report.stats.linearizability_inconclusive;
        churn_seeds += report.stats.churn;
        membership_changes += report.stats.membership_changes;
        read_back += report.stats.entries_read_back;
        if count == 1 {
            println!("trace-hash={:016x}", report.stats.trace_hash);
        }
        if let Some(violation) = report.violation {
            violations += 1;
            println!(
                "VIOLATION seed={seed} invariant={} at={}us: {}",
                violation.invariant, violation.at_micros, violation.detail
            );
            for line in &report.trace_tail {
                println!("  {line}");
            }
            println!("reproduce: cargo run --release -p skiff-sim -- run --seed {seed}");
        }
    }
    println!(
        "seeds={count} violations={violations} operations={operations} unknown={unknown} faults={faults} crashes={crashes} events={events} linearizability_inconclusive={inconclusive} churn_seeds={churn_seeds} membership_changes={membership_changes} entries_read_back={read_back} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
