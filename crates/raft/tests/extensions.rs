//! Scenario tests for what the Raft thesis adds to the paper: pre-vote and check-quorum
//! (§9.6), linearizable reads with ReadIndex and leases (§6.4), and leadership transfer
//! (§3.10).

mod common;

use common::*;
use skiff_raft::testkit::Cluster;
use skiff_raft::{Config, MessageBody, NodeId, RaftError, ReadMode, ReadState, Role};

const ELECTION_TICKS: u32 = 10;

/// Ticks `ids` (only) until one of them leads; returns it.
fn elect_among(cluster: &mut Cluster, ids: &[NodeId]) -> NodeId {
    for _ in 0..100 {
        tick_members(cluster, ids);
        if let Some(id) = ids
            .iter()
            .copied()
            .find(|id| cluster.node(*id).status().role == Role::Leader)
        {
            return id;
        }
    }
    panic!("none of {ids:?} became leader");
}

fn read_states(cluster: &Cluster, id: NodeId) -> Vec<ReadState> {
    cluster.read_states.get(&id).cloned().unwrap_or_default()
}

// ----- pre-vote and check-quorum ----------------------------------------------------------

#[test]
fn partitioned_follower_keeps_its_term_and_rejoins_without_disruption() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.tick_all(10 * ELECTION_TICKS);
    let status = cluster.node(3).status();
    assert_eq!(status.role, Role::PreCandidate);
    assert_eq!(status.term, 1, "failed pre-votes raise no term");
    cluster.propose(1, b"while away").unwrap();
    cluster.stabilize();

    cluster.heal();
    cluster.tick_all(5);
    for id in 1..=3 {
        let status = cluster.node(id).status();
        assert_eq!(status.term, 1, "member {id}: no election happened");
        assert_eq!(status.leader, Some(1), "member {id}");
        assert_eq!(status.commit, 2, "member {id}");
    }
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    assert_eq!(cluster.applied_data(3), vec![b"while away".to_vec()]);
}

#[test]
fn without_pre_vote_a_rejoining_member_deposes_the_leader() {
    // The contrast that motivates pre-vote: the isolated member's term runs ahead, and
    // the leader's next heartbeat to it comes back with that term.
    let mut cluster = Cluster::new(3, plain);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.tick_all(10 * ELECTION_TICKS);
    let isolated_term = cluster.node(3).status().term;
    assert!(isolated_term > 1);
    cluster.heal();
    cluster.tick_all(1);
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    assert_eq!(cluster.node(1).status().term, isolated_term);
}

#[test]
fn leader_cut_off_from_the_majority_steps_down_after_an_election_timeout() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.isolate(1);
    cluster.node_mut(1).read_index(5).unwrap();
    let mut stepped_down_at = None;
    for tick in 1..=2 * ELECTION_TICKS {
        cluster.tick(1);
        cluster.stabilize();
        if cluster.node(1).status().role != Role::Leader {
            stepped_down_at = Some(tick);
            break;
        }
    }
    let tick = stepped_down_at.expect("still leader after two election timeouts");
    // It heard from everyone on the tick it was cut off, so a full election timeout must
    // pass before it may give up.
    assert!(
        tick >= ELECTION_TICKS,
        "stepped down after {tick} ticks, within an election timeout of hearing from all"
    );
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.term, 1, "stepping down raises no term");
    assert_eq!(status.leader, None);
    assert_eq!(
        read_states(&cluster, 1),
        vec![ReadState {
            context: 5,
            index: None
        }],
        "its pending read is refused"
    );
}

#[test]
fn leader_without_check_quorum_keeps_its_role_when_cut_off() {
    let mut cluster = Cluster::new(3, |config| Config {
        check_quorum: false,
        ..config
    });
    cluster.elect(1);
    cluster.isolate(1);
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick(1);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).status().role, Role::Leader);
}

#[test]
fn follower_that_heard_from_the_leader_recently_ignores_vote_requests() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.tick_all(2);
    for pre_vote in [true, false] {
        cluster.node_mut(2).step(message(
            3,
            2,
            5,
            MessageBody::RequestVote {
                pre_vote,
                last_log_index: 1,
                last_log_term: 1,
                leadership_transfer: false,
            },
        ));
        assert!(
            !cluster.node(2).has_ready(),
            "pre_vote={pre_vote}: no answer, no state change"
        );
        let status = cluster.node(2).status();
        assert_eq!(
            (status.term, status.vote, status.leader),
            (1, Some(1), Some(1))
        );
    }

    // Once the leader has been silent for an election timeout, the same request wins.
    cluster.isolate(1);
    for _ in 0..ELECTION_TICKS {
        cluster.tick(2);
        cluster.stabilize();
    }
    cluster
        .node_mut(2)
        .step(message(3, 2, 5, vote_request(1, 1)));
    let status = cluster.node(2).status();
    assert_eq!((status.term, status.vote), (5, Some(3)));
    let ready = cluster.process_ready(2).unwrap();
    assert_eq!(
        ready.messages_after_persist,
        vec![message(2, 3, 5, vote_response(true))]
    );
}

#[test]
fn live_leader_ignores_vote_requests_of_a_higher_term() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster
        .node_mut(1)
        .step(message(2, 1, 5, vote_request(1, 1)));
    let status = cluster.node(1).status();
    assert_eq!((status.role, status.term), (Role::Leader, 1));
    assert!(cluster.process_ready(1).is_none());
}

#[test]
fn stale_leader_steps_down_on_a_higher_term_answer_and_loses_its_proposal() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.isolate(1);
    let new_leader = elect_among(&mut cluster, &[2, 3]);
    // Term 2, or later if 2 and 3 happened to split their first vote.
    let new_term = cluster.node(new_leader).status().term;
    assert!(new_term > 1);
    cluster.propose(new_leader, b"new").unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.node(1).status().role,
        Role::Leader,
        "the old leader has not noticed"
    );

    cluster.heal();
    assert_eq!(cluster.propose(1, b"stale"), Ok((2, 1)));
    cluster.stabilize();
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.term, new_term);

    cluster.tick_all(3);
    assert_eq!(cluster.node(1).status().leader, Some(new_leader));
    assert_eq!(terms_of(cluster.node(1)), vec![1, new_term, new_term]);
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_data(id),
            vec![b"new".to_vec()],
            "member {id}"
        );
    }
}

// ----- ReadIndex ------------------------------------------------------------------------

#[test]
fn leader_read_is_answered_only_after_a_heartbeat_quorum() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"a").unwrap();
    cluster.stabilize();
    cluster.node_mut(1).read_index(7).unwrap();
    let ready = cluster.process_ready(1).unwrap();
    assert!(ready.read_states.is_empty());
    assert_eq!(
        kinds(&ready.messages),
        vec![(2, "Heartbeat"), (3, "Heartbeat")]
    );
    cluster.drop_messages(|message| message.to == 3);
    assert!(cluster.deliver_one());
    cluster.process(2);
    cluster.process(1);
    assert!(read_states(&cluster, 1).is_empty());
    assert_eq!(cluster.queued(), vec![(2, 1, "HeartbeatResponse")]);
    assert!(cluster.deliver_one());
    cluster.process(1);
    assert_eq!(
        read_states(&cluster, 1),
        vec![ReadState {
            context: 7,
            index: Some(2)
        }]
    );
}

#[test]
fn follower_read_is_forwarded_to_the_leader_and_answered() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"a").unwrap();
    cluster.stabilize();
    cluster.node_mut(2).read_index(9).unwrap();
    let ready = cluster.process_ready(2).unwrap();
    assert_eq!(
        ready.messages,
        vec![message(2, 1, 1, MessageBody::ReadIndex { context: 9 })]
    );
    cluster.stabilize();
    assert_eq!(
        read_states(&cluster, 2),
        vec![ReadState {
            context: 9,
            index: Some(2)
        }]
    );
    assert!(read_states(&cluster, 1).is_empty());
}

#[test]
fn read_without_a_known_leader_is_refused() {
    let mut cluster = Cluster::new(3, |config| config);
    assert_eq!(
        cluster.node_mut(1).read_index(1),
        Err(RaftError::NotLeader { leader: None })
    );
}

#[test]
fn read_on_a_new_leader_waits_for_an_entry_of_its_term_to_commit() {
    let mut cluster = Cluster::new(3, |config| config);
    let hard_state = skiff_raft::HardState {
        term: 1,
        vote: None,
        commit: 0,
    };
    for id in 1..=3 {
        install(&mut cluster, id, log_of(&[1]), hard_state);
    }
    let no_appends = |message: &skiff_raft::Message| {
        if matches!(message.body, MessageBody::AppendEntries { .. }) {
            Route::Drop
        } else {
            Route::Deliver
        }
    };
    cluster.node_mut(1).campaign();
    stabilize_routed(&mut cluster, no_appends);
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    assert_eq!(cluster.node(1).status().commit, 0);
    cluster.node_mut(1).read_index(5).unwrap();
    for _ in 0..3 {
        cluster.tick(1);
        stabilize_routed(&mut cluster, no_appends);
    }
    assert!(
        read_states(&cluster, 1).is_empty(),
        "heartbeats alone must not confirm a read before the no-op commits"
    );
    cluster.tick(1);
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().commit, 2);
    assert_eq!(
        read_states(&cluster, 1),
        vec![ReadState {
            context: 5,
            index: Some(2)
        }]
    );
}

#[test]
fn deposed_leader_never_confirms_a_read() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"a").unwrap();
    cluster.stabilize();
    cluster.isolate(1);
    let new_leader = elect_among(&mut cluster, &[2, 3]);
    cluster.propose(new_leader, b"b").unwrap();
    cluster.propose(new_leader, b"c").unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(new_leader).status().commit, 5);

    // The old leader still believes it leads term 1.
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    cluster.node_mut(1).read_index(11).unwrap();
    cluster.stabilize();
    assert!(read_states(&cluster, 1).is_empty());
    cluster.heal();
    cluster.tick(1);
    cluster.stabilize();
    cluster.tick_all(3);
    assert_eq!(
        read_states(&cluster, 1),
        vec![ReadState {
            context: 11,
            index: None
        }],
        "the read is refused, never answered with the stale index 2"
    );
    assert_eq!(cluster.node(1).status().leader, Some(new_leader));
}

#[test]
fn deposed_leader_never_confirms_a_read_forwarded_by_its_last_follower() {
    let mut cluster = Cluster::new(5, |config| config);
    cluster.elect(1);
    cluster.tick_all(1);
    // {1, 5} | {2, 3, 4}: the majority elects a new leader and commits; 5 still follows 1.
    for old_side in [1, 5] {
        for new_side in [2, 3, 4] {
            cluster.cut_links.insert((old_side, new_side));
            cluster.cut_links.insert((new_side, old_side));
        }
    }
    let new_leader = elect_among(&mut cluster, &[2, 3, 4]);
    cluster.propose(new_leader, b"b").unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(5).status().leader, Some(1));

    cluster.node_mut(5).read_index(4).unwrap();
    for _ in 0..2 * ELECTION_TICKS {
        tick_members(&mut cluster, &[1, 5]);
    }
    assert_eq!(
        cluster.node(1).status().role,
        Role::Follower,
        "check-quorum deposed it"
    );
    assert!(read_states(&cluster, 1).is_empty());
    assert_eq!(
        read_states(&cluster, 5),
        vec![ReadState {
            context: 4,
            index: None
        }],
        "1 and 5 alone are no quorum of five"
    );
}

#[test]
fn pending_reads_are_limited() {
    let mut cluster = Cluster::new(3, |config| Config {
        max_pending_reads: 2,
        ..config
    });
    cluster.elect(1);
    cluster.node_mut(1).read_index(1).unwrap();
    cluster.node_mut(1).read_index(2).unwrap();
    assert_eq!(
        cluster.node_mut(1).read_index(3),
        Err(RaftError::TooManyPendingReads)
    );
    // A forwarded read over the limit is refused explicitly.
    cluster.node_mut(2).read_index(4).unwrap();
    cluster.process(2);
    cluster.deliver_one();
    cluster.stabilize();
    assert_eq!(
        read_states(&cluster, 2),
        vec![ReadState {
            context: 4,
            index: None
        }]
    );
    let contexts: Vec<u64> = read_states(&cluster, 1)
        .iter()
        .map(|read| read.context)
        .collect();
    assert_eq!(contexts, vec![1, 2]);
    cluster.node_mut(1).read_index(5).unwrap();
}

// ----- leases ---------------------------------------------------------------------------

/// A three-member cluster with lease reads whose leader holds a lease; returns the leader.
fn lease_cluster() -> (Cluster, NodeId) {
    lease_cluster_with_drift(Config::new(1).lease_clock_drift_ticks)
}

fn lease_cluster_with_drift(lease_clock_drift_ticks: u32) -> (Cluster, NodeId) {
    let mut cluster = Cluster::new(3, |config| Config {
        read_mode: ReadMode::LeaseBased,
        lease_clock_drift_ticks,
        ..config
    });
    for _ in 0..100 {
        cluster.tick_all(1);
        if cluster.leader().is_some() {
            break;
        }
    }
    let leader = cluster.leader().expect("a leader");
    cluster.tick_all(1);
    assert!(cluster.node(leader).lease_valid());
    (cluster, leader)
}

#[test]
fn lease_read_is_answered_at_once_while_the_lease_holds_and_not_after() {
    let (mut cluster, leader) = lease_cluster();
    let config = cluster.node(leader).config().clone();
    let commit = cluster.node(leader).status().commit;
    cluster.node_mut(leader).read_index(1).unwrap();
    let ready = cluster.process_ready(leader).unwrap();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            context: 1,
            index: Some(commit)
        }]
    );
    assert!(ready.messages.is_empty(), "no heartbeat round needed");

    cluster.isolate(leader);
    let lease_ticks = (config.election_ticks - config.lease_clock_drift_ticks) as u64;
    for tick in 1..lease_ticks {
        cluster.tick(leader);
        cluster.stabilize();
        assert!(cluster.node(leader).lease_valid(), "tick {tick}");
        cluster.node_mut(leader).read_index(100 + tick).unwrap();
        let ready = cluster.process_ready(leader).unwrap();
        assert_eq!(
            ready.read_states,
            vec![ReadState {
                context: 100 + tick,
                index: Some(commit)
            }]
        );
    }
    cluster.tick(leader);
    cluster.stabilize();
    assert!(!cluster.node(leader).lease_valid());
    cluster.node_mut(leader).read_index(200).unwrap();
    let ready = cluster.process_ready(leader).unwrap();
    assert!(ready.read_states.is_empty(), "the lease has expired");
}

#[test]
fn lease_never_outlives_the_leadership() {
    // All clocks run at the same rate; the old leader is cut off and keeps trying to read
    // from its lease while the others elect a new leader. Without a drift margin the lease
    // ends exactly when the followers may first vote again.
    for drift in [0, 2] {
        lease_outlives_no_leadership(drift);
    }
}

fn lease_outlives_no_leadership(drift: u32) {
    let (mut cluster, old) = lease_cluster_with_drift(drift);
    cluster.isolate(old);
    let mut answered_from_lease = 0;
    let mut new_leader = None;
    for round in 1..=6 * ELECTION_TICKS as u64 {
        cluster.tick_all(1);
        new_leader = (1..=3)
            .filter(|id| *id != old)
            .find(|id| cluster.node(*id).status().role == Role::Leader);
        if cluster.node(old).status().role != Role::Leader {
            continue;
        }
        cluster.node_mut(old).read_index(round).unwrap();
        let ready = cluster.process_ready(old).unwrap();
        if ready.read_states.iter().any(|read| read.index.is_some()) {
            answered_from_lease += 1;
            assert_eq!(
                new_leader, None,
                "drift {drift}, round {round}: the old leader served a read while another leads"
            );
        }
    }
    assert!(answered_from_lease > 0);
    assert!(new_leader.is_some(), "the majority elects a new leader");
}

#[test]
fn timeout_now_voids_the_lease() {
    let (mut cluster, leader) = lease_cluster();
    let target = if leader == 1 { 2 } else { 1 };
    cluster.node_mut(leader).transfer_leader(target).unwrap();
    assert!(!cluster.node(leader).lease_valid());
    cluster.node_mut(leader).read_index(1).unwrap();
    let ready = cluster.process_ready(leader).unwrap();
    assert!(ready.read_states.is_empty());
    assert!(ready
        .messages
        .iter()
        .any(|message| message.to == target && message.body == MessageBody::TimeoutNow));
    cluster.stabilize();
    assert_eq!(cluster.node(target).status().role, Role::Leader);
}

#[test]
fn restarted_member_with_leases_ignores_vote_requests_for_an_election_timeout() {
    let (mut cluster, leader) = lease_cluster();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let candidate = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let last = cluster.node(candidate).status();
    let request = message(
        candidate,
        follower,
        9,
        vote_request(last.last_index, last.last_term),
    );
    cluster.isolate(follower);
    cluster.stop(follower);
    cluster.restart(follower);
    cluster.process(follower);
    cluster.node_mut(follower).step(request.clone());
    assert!(
        !cluster.node(follower).has_ready(),
        "a just restarted member may still be inside an old leader's lease"
    );
    for _ in 0..ELECTION_TICKS {
        cluster.tick(follower);
        cluster.stabilize();
    }
    cluster.node_mut(follower).step(request);
    let status = cluster.node(follower).status();
    assert_eq!((status.term, status.vote), (9, Some(candidate)));
}

// ----- leadership transfer ----------------------------------------------------------------

#[test]
fn transfer_to_an_up_to_date_follower() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.node_mut(1).transfer_leader(2).unwrap();
    assert_eq!(cluster.propose(1, b"x"), Err(RaftError::TransferInProgress));
    let ready = cluster.process_ready(1).unwrap();
    assert_eq!(
        ready.messages,
        vec![message(1, 2, 1, MessageBody::TimeoutNow)]
    );
    cluster.stabilize();
    for id in 1..=3 {
        let status = cluster.node(id).status();
        assert_eq!((status.term, status.leader), (2, Some(2)), "member {id}");
    }
    assert_eq!(cluster.node(2).status().role, Role::Leader);
    cluster.propose(2, b"y").unwrap();
    cluster.stabilize();
    cluster.tick_all(1);
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), vec![b"y".to_vec()]);
    }
}

#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.cut_links.insert((1, 3));
    for value in 0..5u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().commit, 6);
    assert_eq!(cluster.node(3).status().last_index, 1);
    cluster.heal();

    cluster.node_mut(1).transfer_leader(3).unwrap();
    let mut trace = stabilize_traced(&mut cluster);
    for _ in 0..ELECTION_TICKS {
        if cluster.node(3).status().role == Role::Leader {
            break;
        }
        trace.extend(tick_traced(&mut cluster));
    }
    assert_eq!(cluster.node(3).status().role, Role::Leader);
    assert_eq!(cluster.node(3).status().term, 2);
    let timeout_now = trace
        .iter()
        .position(|message| message.body == MessageBody::TimeoutNow)
        .expect("TimeoutNow sent");
    let caught_up = trace
        .iter()
        .position(|message| {
            message.from == 3
                && matches!(
                    message.body,
                    MessageBody::AppendEntriesResponse {
                        success: true,
                        index: 6,
                        ..
                    }
                )
        })
        .expect("3 acknowledged the whole log");
    assert!(caught_up < timeout_now, "TimeoutNow before 3 caught up");
    assert_eq!(
        trace
            .iter()
            .filter(|message| message.body == MessageBody::TimeoutNow)
            .count(),
        1
    );
    cluster.tick_all(1);
    let expected: Vec<Vec<u8>> = (0..5u8).map(|value| vec![value]).collect();
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), expected, "member {id}");
    }
}

#[test]
fn transfer_is_abandoned_after_an_election_timeout_if_the_target_is_unreachable() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.isolate(3);
    cluster.node_mut(1).transfer_leader(3).unwrap();
    for tick in 1..=ELECTION_TICKS {
        cluster.tick_all(1);
        let result = cluster.propose(1, &[tick as u8]);
        if tick < ELECTION_TICKS {
            assert_eq!(result, Err(RaftError::TransferInProgress), "tick {tick}");
        } else {
            assert!(result.is_ok(), "tick {tick}: {result:?}");
        }
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    assert_eq!(cluster.node(1).status().term, 1);
    assert_eq!(cluster.node(3).status().term, 1);
    assert_eq!(cluster.applied_data(2), vec![vec![ELECTION_TICKS as u8]]);
}

#[test]
fn transfer_to_self_to_a_non_member_or_from_a_follower_is_refused() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    assert_eq!(
        cluster.node_mut(1).transfer_leader(1),
        Err(RaftError::TransferToSelf)
    );
    assert_eq!(
        cluster.node_mut(1).transfer_leader(9),
        Err(RaftError::NotAVoter(9))
    );
    assert_eq!(
        cluster.node_mut(2).transfer_leader(3),
        Err(RaftError::NotLeader { leader: Some(1) })
    );
    assert!(!cluster.node(1).has_ready(), "refusals change nothing");
    assert_eq!(cluster.propose(1, b"x"), Ok((2, 1)));
}

/// Two followers that time out together after the leader dies would both pass the pre-vote
/// and split the real vote, costing another election timeout. Of simultaneous pre-candidates
/// with equal logs only the highest id gets through, so one round elects a leader.
#[test]
fn simultaneous_pre_candidates_do_not_split_the_vote() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"x").unwrap();
    cluster.stabilize();
    let term = cluster.node(2).status().term;
    cluster.stop(1);
    // Both remaining members campaign at the same instant (as if their timers fired together).
    cluster.node_mut(2).campaign();
    cluster.node_mut(3).campaign();
    cluster.process(2);
    cluster.process(3);
    cluster.stabilize();
    assert_eq!(
        cluster.leader(),
        Some(3),
        "one round should elect the higher id"
    );
    assert_eq!(
        cluster.node(3).status().term,
        term + 1,
        "elected in the first term tried"
    );
}
