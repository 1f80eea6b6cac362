//! The simulator over many seeds: every invariant must hold on every seed. Each cluster
//! size gets its own test so the runs spread over the test threads.

use skiff_sim::{run_seed, Options, SeedReport};

fn run_many(nodes: usize, first: u64, count: u64) {
    run_many_with(nodes, first, count, None);
}

fn run_many_with(nodes: usize, first: u64, count: u64, churn: Option<bool>) {
    let mut operations = 0;
    let mut faults = 0;
    let mut inconclusive = 0;
    let mut read_back = 0;
    let mut failures = Vec::new();
    for seed in first..first + count {
        let mut options = Options::new(seed);
        options.nodes = nodes;
        options.churn = churn;
        let report: SeedReport = run_seed(options);
        operations += report.stats.operations_ok;
        faults += report.stats.faults;
        inconclusive += report.stats.linearizability_inconclusive;
        read_back += report.stats.entries_read_back;
        assert!(
            report.stats.operations_ok > 0,
            "seed {seed} completed no operation"
        );
        if let Some(violation) = report.violation {
            failures.push(format!(
                "seed {seed}: {} — {}\n{}\nreproduce: cargo run --release -p skiff-sim -- run --seed {seed}{}{}",
                violation.invariant,
                violation.detail,
                report.trace_tail.join("\n"),
                if nodes == 0 { String::new() } else { format!(" --nodes {nodes}") },
                match churn {
                    Some(true) => " --churn on",
                    Some(false) => " --churn off",
                    None => "",
                },
            ));
        }
    }
    println!(
        "nodes={nodes} seeds={count} operations={operations} faults={faults} inconclusive={inconclusive} entries_read_back={read_back}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Four seeds in five release applied entries: over a hundred seeds, lagging members
    // must have been sent some, read back from the senders' logs.
    assert!(
        count < 100 || read_back > 0,
        "no released entry was ever read back"
    );
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

// 1,000 seeds with membership churn, in two halves so they run on two test threads. Every
// seed adds spare members as learners, promotes them, removes members (the leader too) and
// makes joint changes, with snapshots and InstallSnapshot, on top of the usual faults.
#[test]
fn seeds_with_membership_churn_first_half() {
    run_many_with(0, 40_000, 500, Some(true));
}

#[test]
fn seeds_with_membership_churn_second_half() {
    run_many_with(0, 40_500, 500, Some(true));
}

/// Seeds that found liveness bugs of the membership code, kept as regression tests (each
/// failed before the fixes). Seed 46 (no leader after healing), analysed: a leader that
/// removed itself lost leadership before the change committed; the remaining voter still
/// needed its vote, and it, outside its own latest configuration, did not campaign. Fixed:
/// a member removed by an uncommitted entry still campaigns (Raft thesis §4.2.2); a removed
/// member is replicated to until it was sent the commit of its removal; answers with a
/// higher term from outside the configuration are ignored. The other seeds (no leader, or
/// operations pending after healing) failed in the same run and pass with the same fixes;
/// they were not analysed one by one. Seeds 343 and 434 (operations pending after
/// healing), analysed for 343: a removed member kept forwarding reads to its last known
/// leader, itself removed since, and clients retried it forever. Fixed: a member outside
/// its committed configuration knows no leader (clients go elsewhere). Seed 740239 (no
/// leader after healing), analysed: without pre-vote, a removed member kept raising the
/// term of the learner being promoted (whose log lacked the promotion, so it could not
/// campaign), and the leader-to-be, several terms behind, had its vote requests dropped
/// unanswered, so it never learned the newer term. Fixed: a vote request of an older term
/// is refused with the voter's term, as Raft's reply carries it.
#[test]
fn membership_churn_regressions() {
    let mut failures = Vec::new();
    for seed in [
        46, 50, 51, 343, 402, 434, 439, 552, 574, 778, 801, 898, 740_239,
    ] {
        let mut options = Options::new(seed);
        options.churn = Some(true);
        let report = run_seed(options);
        if let Some(violation) = report.violation {
            failures.push(format!(
                "seed {seed}: {} — {}\nreproduce: cargo run --release -p skiff-sim -- run --seed {seed} --churn on",
                violation.invariant, violation.detail
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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

// Regression: a candidate of term 13 won with a vote that arrived after a leader of term 14
// had committed entry 80. Raft allows it (an older term's leader can commit nothing more),
// and leader completeness only covers entries committed in earlier terms; the check used
// to demand every committed entry.
#[test]
fn seed_201786_a_late_vote_elects_a_leader_of_an_older_term() {
    run_many(0, 201_786, 1);
}
