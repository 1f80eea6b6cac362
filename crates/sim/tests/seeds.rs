//! The simulator over many seeds: every invariant must hold on every seed. Each cluster
//! size gets its own test so the runs spread over the test threads.

use skiff_sim::{run_seed, Options, SeedReport};

fn run_many(nodes: usize, first: u64, count: u64) {
    let mut operations = 0;
    let mut faults = 0;
    let mut inconclusive = 0;
    let mut failures = Vec::new();
    for seed in first..first + count {
        let mut options = Options::new(seed);
        options.nodes = nodes;
        let report: SeedReport = run_seed(options);
        operations += report.stats.operations_ok;
        faults += report.stats.faults;
        inconclusive += report.stats.linearizability_inconclusive;
        assert!(
            report.stats.operations_ok > 0,
            "seed {seed} completed no operation"
        );
        if let Some(violation) = report.violation {
            failures.push(format!(
                "seed {seed}: {} — {}\n{}\nreproduce: cargo run --release -p skiff-sim -- run --seed {seed} --nodes {nodes}",
                violation.invariant,
                violation.detail,
                report.trace_tail.join("\n")
            ));
        }
    }
    println!(
        "nodes={nodes} seeds={count} operations={operations} faults={faults} inconclusive={inconclusive}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The checker may give up on a rare pathological history, but if it gives up often the
    // simulator has stopped checking linearizability.
    assert!(
        inconclusive * 20 <= count,
        "{inconclusive} of {count} histories could not be checked"
    );
}

#[test]
fn seeds_with_three_members() {
    run_many(3, 10_000, 100);
}

#[test]
fn seeds_with_five_members() {
    run_many(5, 20_000, 100);
}

#[test]
fn seeds_with_seven_members() {
    run_many(7, 30_000, 100);
}

#[test]
fn a_seed_replays_identically() {
    let first = run_seed(Options::new(42));
    let second = run_seed(Options::new(42));
    let other = run_seed(Options::new(43));
    assert_eq!(first.stats.trace_hash, second.stats.trace_hash);
    assert_eq!(first.stats.events, second.stats.events);
    assert_ne!(first.stats.trace_hash, other.stats.trace_hash);
}
