//! The simulator must catch known Raft bugs, planted behind a test-only switch, within
//! 1,000 seeds. If it stops catching them, its faults or checks have gone blind.

use skiff_raft::PlantedBug;
use skiff_sim::{run_seed, Options};

fn first_catch(bug: PlantedBug) -> Option<(u64, String)> {
    first_catch_with(bug, None)
}

fn first_catch_with(bug: PlantedBug, churn: Option<bool>) -> Option<(u64, String)> {
    (0..1_000).find_map(|seed| {
        let mut options = Options::new(seed);
        options.planted_bug = bug;
        options.churn = churn;
        let report = run_seed(options);
        report.violation.map(|violation| {
            (
                seed,
                format!("{}: {}", violation.invariant, violation.detail),
            )
        })
    })
}

#[test]
fn voting_by_log_length_is_caught() {
    let caught = first_catch(PlantedBug::VoteByLogLength);
    println!("vote-by-log-length caught: {caught:?}");
    assert!(caught.is_some(), "not caught within 1,000 seeds");
}

#[test]
fn committing_an_earlier_term_by_counting_is_caught() {
    let caught = first_catch(PlantedBug::CommitByReplicaCount);
    println!("commit-by-replica-count caught: {caught:?}");
    assert!(caught.is_some(), "not caught within 1,000 seeds");
}

#[test]
fn changing_several_voters_without_a_joint_configuration_is_caught() {
    let caught = first_catch_with(PlantedBug::MembershipWithoutJoint, Some(true));
    println!("membership-without-joint caught: {caught:?}");
    assert!(caught.is_some(), "not caught within 1,000 seeds");
}
