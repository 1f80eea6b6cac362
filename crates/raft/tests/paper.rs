//! Scenario tests that follow the Raft paper ("In Search of an Understandable Consensus
//! Algorithm", extended version) section by section, plus the durability contract of the
//! Ready API and restarts. Each test pins exact outcomes: roles, terms, votes, message
//! kinds, log contents, commit indexes and applied data.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::*;
use skiff_raft::testkit::Cluster;
use skiff_raft::{
    Config, EntryKind, HardState, Message, MessageBody, PlantedBug, RawNode, Role, COMMIT_NOTICE,
};

/// Ticks `node` until `done` holds; returns the number of ticks it took.
fn ticks_until(node: &mut RawNode, done: impl Fn(&RawNode) -> bool) -> u32 {
    for ticks in 1..=1_000 {
        node.tick();
        if done(node) {
            return ticks;
        }
    }
    panic!("condition never held");
}

// ----- §5.2 leader election ---------------------------------------------------------------

#[test]
fn election_timeout_is_drawn_from_one_to_two_base_timeouts() {
    let mut first_timeouts = BTreeSet::new();
    for seed in 0..200u64 {
        let mut node = member(1, 3, vec![], 0, |config| Config {
            random_seed: seed,
            ..plain(config)
        });
        let first = ticks_until(&mut node, |node| node.status().role == Role::Candidate);
        assert!(
            (10..20).contains(&first),
            "seed {seed}: first timeout {first}"
        );
        assert_eq!(node.status().term, 1);
        // Nobody answers: the candidate times out again after a fresh draw.
        let second = ticks_until(&mut node, |node| node.status().term == 2);
        assert!(
            (10..20).contains(&second),
            "seed {seed}: second timeout {second}"
        );
        first_timeouts.insert(first);
    }
    assert_eq!(
        first_timeouts,
        (10..20).collect::<BTreeSet<u32>>(),
        "200 seeds should reach every timeout in [election_ticks, 2 * election_ticks)"
    );
}

#[test]
fn election_timeouts_differ_between_members_and_repeat_for_a_seed() {
    let timeouts = |configure: &dyn Fn(Config) -> Config| -> Vec<u32> {
        (1..=5)
            .map(|id| {
                let mut node = member(id, 5, vec![], 0, configure);
                ticks_until(&mut node, |node| node.status().role != Role::Follower)
            })
            .collect()
    };
    let by_id = timeouts(&|config| config);
    let distinct: BTreeSet<u32> = by_id.iter().copied().collect();
    assert!(distinct.len() >= 3, "members time out together: {by_id:?}");
    assert_eq!(
        timeouts(&|config| config),
        by_id,
        "same seeds, same timeouts"
    );
    let same_seed = timeouts(&|config| Config {
        random_seed: 42,
        ..config
    });
    assert!(
        same_seed.iter().all(|ticks| *ticks == same_seed[0]),
        "the seed alone decides the timeout: {same_seed:?}"
    );
}

#[test]
fn follower_with_pre_vote_becomes_pre_candidate_without_raising_its_term() {
    let mut node = member(1, 3, log_of(&[1, 1, 2]), 4, |config| config);
    node.ready();
    ticks_until(&mut node, |node| node.status().role != Role::Follower);
    let status = node.status();
    assert_eq!(status.role, Role::PreCandidate);
    assert_eq!(status.term, 4);
    assert_eq!(status.vote, None);
    let ready = node.ready();
    assert_eq!(
        ready.hard_state, None,
        "a pre-vote round changes no durable state"
    );
    assert!(ready.messages_after_persist.is_empty());
    let expected: Vec<Message> = [2, 3]
        .into_iter()
        .map(|to| {
            message(
                1,
                to,
                5,
                MessageBody::RequestVote {
                    pre_vote: true,
                    last_log_index: 3,
                    last_log_term: 2,
                    leadership_transfer: false,
                },
            )
        })
        .collect();
    assert_eq!(ready.messages, expected);
}

#[test]
fn candidate_votes_for_itself_raises_its_term_and_asks_after_persisting() {
    let mut node = member(1, 3, log_of(&[1, 1, 2]), 4, plain);
    node.ready();
    node.campaign();
    let status = node.status();
    assert_eq!(status.role, Role::Candidate);
    assert_eq!(status.term, 5);
    assert_eq!(status.vote, Some(1));
    assert_eq!(status.leader, None);
    let ready = node.ready();
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 5,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(
        ready.messages.is_empty(),
        "vote requests must wait for the vote to be durable"
    );
    let expected: Vec<Message> = [2, 3]
        .into_iter()
        .map(|to| message(1, to, 5, vote_request(3, 2)))
        .collect();
    assert_eq!(ready.messages_after_persist, expected);
}

#[test]
fn candidate_needs_a_majority_of_grants_to_win() {
    let mut node = member(1, 5, vec![], 0, plain);
    node.campaign();
    ready_and_persist(&mut node);
    node.step(message(2, 1, 1, vote_response(true)));
    assert_eq!(node.status().role, Role::Candidate);
    node.step(message(2, 1, 1, vote_response(true)));
    assert_eq!(
        node.status().role,
        Role::Candidate,
        "a repeated grant counts once"
    );
    node.step(message(3, 1, 1, vote_response(false)));
    assert_eq!(node.status().role, Role::Candidate);
    node.step(message(4, 1, 1, vote_response(true)));
    let status = node.status();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.term, 1);
    assert_eq!(status.leader, Some(1));
    let ready = node.ready();
    assert_eq!(ready.entries.len(), 1);
    assert_eq!(ready.entries[0].kind, EntryKind::Noop);
    assert_eq!((ready.entries[0].index, ready.entries[0].term), (1, 1));
    assert_eq!(
        kinds(&ready.messages),
        vec![
            (2, "AppendEntries"),
            (3, "AppendEntries"),
            (4, "AppendEntries"),
            (5, "AppendEntries")
        ]
    );
}

#[test]
fn candidate_rejected_by_a_majority_becomes_follower_in_its_term() {
    let mut node = member(1, 5, vec![], 0, plain);
    node.campaign();
    ready_and_persist(&mut node);
    node.step(message(2, 1, 1, vote_response(false)));
    node.step(message(3, 1, 1, vote_response(false)));
    assert_eq!(node.status().role, Role::Candidate);
    node.step(message(4, 1, 1, vote_response(false)));
    let status = node.status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.term, 1);
    assert_eq!(status.vote, Some(1), "the vote of the term stays recorded");
}

#[test]
fn candidate_steps_down_on_append_entries_of_its_term() {
    let mut node = member(1, 3, vec![], 0, plain);
    node.campaign();
    ready_and_persist(&mut node);
    node.step(message(2, 1, 1, append(0, 0, vec![], 0)));
    let status = node.status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.leader, Some(2));
    assert_eq!(status.term, 1);
    assert_eq!(status.vote, Some(1));
    let ready = node.ready();
    assert_eq!(
        ready.messages_after_persist,
        vec![message(
            1,
            2,
            1,
            MessageBody::AppendEntriesResponse {
                success: true,
                index: 0,
                hint_index: 0,
                hint_term: 0
            }
        )]
    );
}

#[test]
fn pre_candidate_steps_down_on_heartbeat_of_its_term() {
    let mut node = member(1, 3, vec![], 1, |config| config);
    node.campaign();
    assert_eq!(node.status().role, Role::PreCandidate);
    node.ready();
    node.step(message(
        2,
        1,
        1,
        MessageBody::Heartbeat {
            commit: 0,
            sequence: 1,
        },
    ));
    let status = node.status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.leader, Some(2));
    assert_eq!(status.term, 1);
    assert_eq!(
        node.ready().messages,
        vec![message(
            1,
            2,
            1,
            MessageBody::HeartbeatResponse { sequence: 1 }
        )]
    );
}

#[test]
fn candidate_rejects_append_entries_of_an_older_term() {
    let mut node = member(1, 3, vec![], 1, plain);
    node.campaign();
    ready_and_persist(&mut node);
    node.step(message(2, 1, 1, append(0, 0, vec![], 0)));
    let status = node.status();
    assert_eq!(status.role, Role::Candidate);
    assert_eq!(status.term, 2);
    let ready = node.ready();
    assert_eq!(
        ready.messages,
        vec![message(
            1,
            2,
            2,
            MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                hint_index: 0,
                hint_term: 0
            }
        )],
        "the stale leader learns the newer term"
    );
}

#[test]
fn a_vote_request_of_an_older_term_is_refused_with_the_newer_term() {
    // Raft's RequestVote reply carries the voter's term. Without it a candidate that fell
    // behind in terms could stay behind while nobody who knows the newer term can campaign
    // (simulator seed 740239).
    let mut voter = member(1, 3, vec![], 5, plain);
    voter.ready();
    voter.step(message(2, 1, 3, vote_request(0, 0)));
    let ready = voter.ready();
    assert_eq!(
        ready.messages,
        vec![message(1, 2, 5, vote_response(false))],
        "the candidate learns the newer term"
    );
    assert!(ready.messages_after_persist.is_empty());
    let status = voter.status();
    assert_eq!(
        (status.role, status.term, status.vote),
        (Role::Follower, 5, None)
    );

    let mut candidate = member(2, 3, vec![], 1, plain);
    candidate.campaign();
    ready_and_persist(&mut candidate);
    assert_eq!(candidate.status().term, 2);
    candidate.step(message(1, 2, 5, vote_response(false)));
    let status = candidate.status();
    assert_eq!(
        (status.role, status.term, status.vote),
        (Role::Follower, 5, None)
    );
}

#[test]
fn split_vote_is_resolved_by_a_new_election() {
    let mut cluster = Cluster::new(4, plain);
    // Member 3 only hears candidate 1 and member 4 only hears candidate 2.
    cluster.cut_links.insert((1, 4));
    cluster.cut_links.insert((2, 3));
    cluster.node_mut(1).campaign();
    cluster.node_mut(2).campaign();
    cluster.stabilize();
    for id in [1, 2] {
        let status = cluster.node(id).status();
        assert_eq!(status.role, Role::Candidate, "member {id}");
        assert_eq!(status.term, 1);
        assert_eq!(status.vote, Some(id));
    }
    assert_eq!(cluster.node(3).status().vote, Some(1));
    assert_eq!(cluster.node(4).status().vote, Some(2));
    assert_eq!(cluster.leader(), None);

    cluster.heal();
    let mut ticks = 0;
    while cluster.leader().is_none() {
        cluster.tick_all(1);
        ticks += 1;
        assert!(ticks < 20, "no leader within two election timeouts");
    }
    let leader = cluster.leader().unwrap();
    let term = cluster.node(leader).status().term;
    assert_eq!(term, 2, "the next election settles it");
    for id in 1..=4 {
        let status = cluster.node(id).status();
        assert_eq!(status.term, 2, "member {id}");
        assert_eq!(status.leader, Some(leader), "member {id}");
    }
}

#[test]
fn member_votes_once_per_term() {
    let mut node = member(1, 5, vec![], 0, plain);
    node.step(message(2, 1, 1, vote_request(0, 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(
        ready.messages_after_persist,
        vec![message(1, 2, 1, vote_response(true))]
    );
    assert_eq!(node.status().vote, Some(2));

    node.step(message(3, 1, 1, vote_request(0, 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(ready.messages, vec![message(1, 3, 1, vote_response(false))]);
    assert!(ready.messages_after_persist.is_empty());
    assert_eq!(node.status().vote, Some(2));

    // The same candidate asking again (its request was duplicated) gets the same answer.
    node.step(message(2, 1, 1, vote_request(0, 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(
        ready.messages_after_persist,
        vec![message(1, 2, 1, vote_response(true))]
    );

    // A new term is a new vote.
    node.step(message(3, 1, 2, vote_request(0, 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(
        ready.messages_after_persist,
        vec![message(1, 3, 2, vote_response(true))]
    );
    assert_eq!(node.status().vote, Some(3));
    assert_eq!(node.status().term, 2);
}

#[test]
fn leader_steps_down_on_any_message_with_a_higher_term() {
    let bodies = [
        (append(0, 0, vec![], 0), Some(2)),
        (
            MessageBody::Heartbeat {
                commit: 0,
                sequence: 1,
            },
            Some(2),
        ),
        (
            MessageBody::AppendEntriesResponse {
                success: false,
                index: 0,
                hint_index: 0,
                hint_term: 0,
            },
            None,
        ),
        (MessageBody::HeartbeatResponse { sequence: 1 }, None),
        (vote_response(false), None),
        (MessageBody::ReadIndex { context: 1 }, None),
        (
            MessageBody::ReadIndexResponse {
                context: 1,
                index: None,
            },
            None,
        ),
        (MessageBody::TimeoutNow, None),
    ];
    for (body, leader) in bodies {
        let name = body.name();
        let mut cluster = Cluster::new(3, |config| config);
        cluster.elect(1);
        cluster.node_mut(1).step(message(2, 1, 5, body));
        let status = cluster.node(1).status();
        assert_eq!(status.role, Role::Follower, "{name}");
        assert_eq!(status.term, 5, "{name}");
        assert_eq!(status.leader, leader, "{name}");
        assert_eq!(status.vote, None, "{name}");
    }

    // A vote request of a higher term deposes the leader too, unless check-quorum makes it
    // ignore disruptors while it is live (see extensions.rs).
    let mut cluster = Cluster::new(3, |config| Config {
        check_quorum: false,
        ..config
    });
    cluster.elect(1);
    cluster
        .node_mut(1)
        .step(message(2, 1, 5, vote_request(1, 1)));
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.term, 5);
    assert_eq!(status.vote, Some(2));
}

#[test]
fn pre_vote_request_never_changes_a_leaders_term() {
    let mut cluster = Cluster::new(3, |config| Config {
        check_quorum: false,
        ..config
    });
    cluster.elect(1);
    cluster.node_mut(1).step(message(
        2,
        1,
        5,
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        },
    ));
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.term, 1);
}

// ----- §5.4.1 election restriction ---------------------------------------------------------

#[test]
fn vote_is_granted_only_to_a_log_at_least_as_up_to_date() {
    // The voter's log has terms [1, 1, 2]: last index 3, last term 2.
    let cases = [
        (3, 2, true, "same last entry"),
        (4, 2, true, "same last term, longer"),
        (2, 2, false, "same last term, shorter"),
        (5, 1, false, "longer log with an older last term"),
        (1, 3, true, "shorter log with a newer last term"),
        (0, 0, false, "empty log"),
    ];
    for pre_vote in [false, true] {
        for (last_log_index, last_log_term, granted, case) in cases {
            let mut node = member(1, 3, log_of(&[1, 1, 2]), 2, |config| config);
            node.ready();
            node.step(message(
                2,
                1,
                3,
                MessageBody::RequestVote {
                    pre_vote,
                    last_log_index,
                    last_log_term,
                    leadership_transfer: false,
                },
            ));
            let ready = node.ready();
            let answers: Vec<&Message> = ready
                .messages
                .iter()
                .chain(ready.messages_after_persist.iter())
                .collect();
            assert_eq!(answers.len(), 1, "{case}");
            assert_eq!(
                answers[0].body,
                MessageBody::RequestVoteResponse { pre_vote, granted },
                "pre_vote={pre_vote}: {case}"
            );
            let expected_vote = (granted && !pre_vote).then_some(2);
            assert_eq!(node.status().vote, expected_vote, "{case}");
        }
    }
}

#[test]
fn up_to_date_check_catches_a_voter_that_compares_log_length_only() {
    // The known bug planted: the longer log of an older term gets the vote, which the
    // assertions above forbid.
    let mut node = member(1, 3, log_of(&[1, 1, 2]), 2, |config| Config {
        planted_bug: PlantedBug::VoteByLogLength,
        ..plain(config)
    });
    node.ready();
    node.step(message(2, 1, 3, vote_request(5, 1)));
    assert_eq!(node.status().vote, Some(2));
}

#[test]
fn longer_log_with_an_older_last_term_cannot_become_leader() {
    let mut cluster = Cluster::new(3, |config| config);
    let hard_state = HardState {
        term: 2,
        vote: None,
        commit: 0,
    };
    install(&mut cluster, 1, log_of(&[1, 1, 1, 1, 1]), hard_state);
    install(&mut cluster, 2, log_of(&[1, 2]), hard_state);
    install(&mut cluster, 3, log_of(&[1, 2]), hard_state);
    cluster.node_mut(1).campaign();
    cluster.stabilize();
    for id in 1..=3 {
        let status = cluster.node(id).status();
        assert_eq!(status.role, Role::Follower, "member {id}");
        assert_eq!(status.term, 2, "a failed pre-vote raises no term");
    }

    cluster.elect(2);
    cluster.tick_all(1);
    assert_eq!(terms_of(cluster.node(1)), vec![1, 2, 3]);
    assert_eq!(
        cluster.node(1).entry(2).unwrap().data,
        Bytes::from_static(b"2@2")
    );
    assert_eq!(cluster.node(1).status().commit, 3);
    assert_eq!(
        cluster.applied_data(1),
        vec![b"1@1".to_vec(), b"2@2".to_vec()]
    );
}

// ----- §5.3 log replication ---------------------------------------------------------------

#[test]
fn leader_appends_a_proposal_and_replicates_it() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    assert_eq!(cluster.propose(1, b"a"), Ok((2, 1)));
    let ready = cluster.process_ready(1).unwrap();
    assert_eq!(ready.entries.len(), 1);
    let proposed = ready.entries[0].clone();
    assert_eq!((proposed.index, proposed.term), (2, 1));
    assert_eq!(proposed.kind, EntryKind::Normal);
    assert_eq!(proposed.data, Bytes::from_static(b"a"));
    let expected: Vec<Message> = [2, 3]
        .into_iter()
        .map(|to| message(1, to, 1, append(1, 1, vec![proposed.clone()], 1)))
        .collect();
    assert_eq!(ready.messages, expected);
    assert!(ready.committed_entries.is_empty());

    cluster.stabilize();
    for id in 1..=3 {
        assert_eq!(cluster.node(id).status().commit, 2, "member {id}");
        assert_eq!(cluster.applied_data(id), vec![b"a".to_vec()], "member {id}");
    }
}

#[test]
fn follower_rejects_a_log_mismatch_with_a_conflict_hint() {
    let rejection = |hint_index, hint_term, index| MessageBody::AppendEntriesResponse {
        success: false,
        index,
        hint_index,
        hint_term,
    };
    // (prev_log_index, prev_log_term) -> expected (hint_index, hint_term)
    let cases = [
        ((7, 3), (5, 2), "beyond the follower's log"),
        ((4, 1), (2, 1), "follower has a newer term there"),
        ((4, 3), (4, 2), "follower has an older term there"),
    ];
    for ((prev_index, prev_term), (hint_index, hint_term), case) in cases {
        let mut node = member(2, 3, log_of(&[1, 1, 2, 2, 2]), 3, |config| config);
        node.ready();
        node.step(message(
            1,
            2,
            3,
            append(prev_index, prev_term, vec![entry(prev_index + 1, 3)], 0),
        ));
        let ready = node.ready();
        assert_eq!(
            ready.messages,
            vec![message(
                2,
                1,
                3,
                rejection(hint_index, hint_term, prev_index)
            )],
            "{case}"
        );
        assert!(ready.messages_after_persist.is_empty(), "{case}");
        assert!(ready.entries.is_empty(), "{case}");
        assert_eq!(
            terms_of(&node),
            vec![1, 1, 2, 2, 2],
            "{case}: log unchanged"
        );
    }
}

/// Sets up member 1 with `leader_terms` and member 2 with `follower_terms` (member 3
/// empty), elects 1 and lets replication run. Returns the cluster and the number of
/// AppendEntries member 2 rejected.
fn replicate_over_conflicts(leader_terms: &[u64], follower_terms: &[u64]) -> (Cluster, usize) {
    let term = leader_terms
        .iter()
        .chain(follower_terms.iter())
        .copied()
        .max()
        .unwrap_or(0);
    let hard_state = HardState {
        term,
        vote: None,
        commit: 0,
    };
    let mut cluster = Cluster::new(3, |config| config);
    install(&mut cluster, 1, log_of(leader_terms), hard_state);
    install(&mut cluster, 2, log_of(follower_terms), hard_state);
    install(&mut cluster, 3, vec![], hard_state);
    cluster.node_mut(1).campaign();
    let trace = stabilize_traced(&mut cluster);
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    assert_eq!(cluster.node(1).status().term, term + 1);
    let rejections = trace
        .iter()
        .filter(|message| {
            message.from == 2
                && matches!(
                    message.body,
                    MessageBody::AppendEntriesResponse { success: false, .. }
                )
        })
        .count();
    (cluster, rejections)
}

#[test]
fn leader_backs_off_a_term_per_round_trip_and_overwrites_conflicts() {
    // Figure 7 of the paper: the leader of term 8 and followers (a) to (f), plus two cases
    // with long runs of conflicting entries.
    let figure_7_leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let long_leader: Vec<u64> = std::iter::once(1).chain([3; 100]).collect();
    let long_follower: Vec<u64> = std::iter::once(1).chain([2; 200]).collect();
    let cases: Vec<(&str, Vec<u64>, Vec<u64>, usize)> = vec![
        (
            "a: missing entries",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6],
            1,
        ),
        (
            "b: missing a lot",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 4],
            1,
        ),
        (
            "c: one extra entry",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
            0,
        ),
        (
            "d: extra entries of a newer term",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
            0,
        ),
        (
            "e: missing and extra",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 4, 4, 4, 4],
            1,
        ),
        (
            "f: extra entries of two old terms",
            figure_7_leader.to_vec(),
            vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
            1,
        ),
        (
            "interleaved terms",
            vec![1, 1, 3, 3, 5, 5],
            vec![1, 1, 2, 2, 4, 4, 4, 4],
            2,
        ),
        (
            "200 conflicting entries of one term",
            long_leader,
            long_follower,
            1,
        ),
    ];
    for (case, leader_terms, follower_terms, expected_rejections) in cases {
        let (cluster, rejections) = replicate_over_conflicts(&leader_terms, &follower_terms);
        let leader_term = cluster.node(1).status().term;
        let mut expected_log = leader_terms.clone();
        expected_log.push(leader_term);
        // Terms of the entries, on either side, at positions where the two logs differ.
        let positions = leader_terms.len().max(follower_terms.len());
        let differing_terms: BTreeSet<u64> = (0..positions)
            .filter(|at| leader_terms.get(*at) != follower_terms.get(*at))
            .flat_map(|at| [leader_terms.get(at), follower_terms.get(at)])
            .flatten()
            .copied()
            .collect();
        assert!(
            rejections <= differing_terms.len(),
            "{case}: {rejections} rejections for {} differing terms",
            differing_terms.len()
        );
        assert_eq!(rejections, expected_rejections, "{case}");
        assert_eq!(terms_of(cluster.node(2)), expected_log, "{case}");
        let last = expected_log.len() as u64;
        for index in 1..=last {
            assert_eq!(
                cluster.node(2).entry(index),
                cluster.node(1).entry(index),
                "{case}: entry {index}"
            );
        }
        assert_eq!(cluster.node(1).status().commit, last, "{case}");
        assert_eq!(cluster.node(2).status().commit, last, "{case}");
        assert_eq!(
            cluster.applied_data(2),
            cluster.applied_data(1),
            "{case}: same state machine"
        );
    }
}

#[test]
fn follower_keeps_its_log_on_a_stale_append_and_truncates_on_a_conflict() {
    let mut node = member(2, 3, log_of(&[1, 1, 1, 1]), 1, |config| config);
    node.ready();
    // A delayed message whose entries match: nothing after them may be dropped.
    node.step(message(1, 2, 1, append(1, 1, vec![entry(2, 1)], 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(terms_of(&node), vec![1, 1, 1, 1]);
    assert!(ready.entries.is_empty());
    assert_eq!(
        ready.messages_after_persist,
        vec![message(
            2,
            1,
            1,
            MessageBody::AppendEntriesResponse {
                success: true,
                index: 2,
                hint_index: 0,
                hint_term: 0
            }
        )]
    );

    // A new leader whose entry 3 differs: 3 and everything after it go.
    node.step(message(3, 2, 2, append(2, 1, vec![entry(3, 2)], 0)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(terms_of(&node), vec![1, 1, 2]);
    assert_eq!(ready.entries, vec![entry(3, 2)]);
    assert_eq!(node.status().leader, Some(3));
}

#[test]
fn commit_index_reaches_followers_by_commit_notices_and_heartbeats() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"a").unwrap();
    let trace = stabilize_traced(&mut cluster);
    for id in [2, 3] {
        assert!(
            trace.iter().any(|message| message.to == id
                && message.body
                    == MessageBody::Heartbeat {
                        commit: 2,
                        sequence: COMMIT_NOTICE
                    }),
            "member {id} learns the commit from a commit notice"
        );
        assert!(
            !trace.iter().any(|message| message.from == id
                && matches!(message.body, MessageBody::HeartbeatResponse { .. })),
            "member {id} does not answer a commit notice"
        );
        assert_eq!(cluster.node(id).status().commit, 2);
        assert_eq!(cluster.applied_data(id), vec![b"a".to_vec()]);
    }

    // Lose the notices of the next commit: the heartbeat carries it.
    cluster.propose(1, b"b").unwrap();
    stabilize_routed(&mut cluster, |message| {
        if matches!(
            message.body,
            MessageBody::Heartbeat {
                sequence: COMMIT_NOTICE,
                ..
            }
        ) {
            Route::Drop
        } else {
            Route::Deliver
        }
    });
    assert_eq!(cluster.node(1).status().commit, 3);
    for id in [2, 3] {
        assert_eq!(cluster.node(id).status().commit, 2, "member {id}");
        assert_eq!(cluster.node(id).status().last_index, 3, "member {id}");
    }
    cluster.tick(1);
    let trace = stabilize_traced(&mut cluster);
    for id in [2, 3] {
        assert!(trace.iter().any(|message| message.to == id
            && matches!(message.body, MessageBody::Heartbeat { commit: 3, sequence } if sequence != COMMIT_NOTICE)));
        assert_eq!(cluster.node(id).status().commit, 3, "member {id}");
        assert_eq!(cluster.applied_data(id), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}

// ----- §5.4.2 committing entries from previous terms ------------------------------------

#[test]
fn new_leader_commits_earlier_entries_through_its_noop() {
    let mut cluster = Cluster::new(3, |config| config);
    let hard_state = HardState {
        term: 1,
        vote: None,
        commit: 0,
    };
    for id in 1..=3 {
        install(&mut cluster, id, log_of(&[1]), hard_state);
    }
    cluster.node_mut(1).campaign();
    // The entry of term 1 is on every member, yet it commits only with the no-op.
    step_until(&mut cluster, |cluster| cluster.node(1).status().commit > 0);
    assert_eq!(cluster.node(1).status().commit, 2);
    cluster.stabilize();
    // A follower whose acknowledgement arrives after the commit moved learns it from the
    // next heartbeat.
    cluster.tick_all(1);
    let noop = cluster.node(1).entry(2).unwrap().clone();
    assert_eq!(noop.kind, EntryKind::Noop);
    assert_eq!(noop.term, 2);
    assert!(noop.data.is_empty());
    for id in 1..=3 {
        assert_eq!(terms_of(cluster.node(id)), vec![1, 2], "member {id}");
        assert_eq!(cluster.node(id).status().commit, 2, "member {id}");
        assert_eq!(
            cluster.applied_data(id),
            vec![b"1@1".to_vec()],
            "member {id}"
        );
    }
}

/// Figure 8, state (c): S1 is leader of term 4 and has brought the entry (2, term 2) to S2
/// and S3 (a majority of five), but its own no-op (3, term 4) is on S1 only. S4 and S5 are
/// cut off; S5 holds a conflicting (2, term 3).
fn figure_8(planted_bug: PlantedBug) -> Cluster {
    let mut cluster = Cluster::new(5, |config| Config {
        pre_vote: false,
        check_quorum: false,
        planted_bug,
        ..config
    });
    let hard_state = HardState {
        term: 3,
        vote: None,
        commit: 1,
    };
    install(&mut cluster, 1, log_of(&[1, 2]), hard_state);
    install(&mut cluster, 2, log_of(&[1, 2]), hard_state);
    install(&mut cluster, 3, log_of(&[1]), hard_state);
    install(&mut cluster, 4, log_of(&[1]), hard_state);
    install(&mut cluster, 5, log_of(&[1, 3]), hard_state);
    cluster.isolate(4);
    cluster.isolate(5);
    cluster.node_mut(1).campaign();
    // S1 "crashes" before any entry of its own term leaves: strip them from every message.
    stabilize_routed(&mut cluster, |message| match &message.body {
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } if entries.iter().any(|entry| entry.index >= 3) => {
            let mut stripped = message.clone();
            stripped.body = append(
                *prev_log_index,
                *prev_log_term,
                entries
                    .iter()
                    .filter(|entry| entry.index < 3)
                    .cloned()
                    .collect(),
                *commit,
            );
            Route::Replace(stripped)
        }
        _ => Route::Deliver,
    });
    let status = cluster.node(1).status();
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.term, 4);
    let matched: Vec<u64> = status.match_indexes.values().copied().collect();
    assert_eq!(matched, vec![3, 2, 2, 0, 0]);
    for id in 1..=3 {
        assert_eq!(cluster.node(id).term_of(2), Some(2), "member {id}");
    }
    cluster
}

#[test]
fn figure_8_entry_of_an_earlier_term_is_not_committed_by_counting_replicas() {
    let mut cluster = figure_8(PlantedBug::None);
    assert_eq!(
        cluster.node(1).status().commit,
        1,
        "(2, term 2) is on a majority but must not count as committed"
    );
    assert_eq!(cluster.applied_data(1), vec![b"1@1".to_vec()]);

    // State (d): S1 crashes, S5 wins term 5 with S2, S3 and S4 and overwrites index 2.
    // Had S1 committed (2, term 2), a committed entry would now be lost.
    cluster.stop(1);
    cluster.heal();
    cluster.node_mut(5).campaign();
    cluster.stabilize();
    assert_eq!(
        cluster.node(5).status().role,
        Role::Candidate,
        "S2 and S3 voted in term 4"
    );
    cluster.elect(5);
    assert_eq!(cluster.node(5).status().term, 5);
    cluster.tick_all(1);
    for id in 2..=5 {
        assert_eq!(terms_of(cluster.node(id)), vec![1, 3, 5], "member {id}");
        assert_eq!(cluster.node(id).status().commit, 3, "member {id}");
        assert_eq!(
            cluster.applied_data(id),
            vec![b"1@1".to_vec(), b"2@3".to_vec()],
            "member {id}"
        );
    }
}

#[test]
fn figure_8_entry_of_an_earlier_term_commits_with_one_of_the_current_term() {
    let mut cluster = figure_8(PlantedBug::None);
    // State (e): the no-op of term 4 reaches S2 and S3; it commits, and (2, term 2) with it.
    for _ in 0..3 {
        cluster.tick(1);
        cluster.stabilize();
    }
    for id in 1..=3 {
        assert_eq!(terms_of(cluster.node(id)), vec![1, 2, 4], "member {id}");
        assert_eq!(cluster.node(id).status().commit, 3, "member {id}");
        assert_eq!(
            cluster.applied_data(id),
            vec![b"1@1".to_vec(), b"2@2".to_vec()],
            "member {id}"
        );
    }
    // Now S5 can never win: a majority holds a newer log than its (2, term 3).
    cluster.stop(1);
    cluster.heal();
    for _ in 0..3 {
        cluster.node_mut(5).campaign();
        cluster.stabilize();
        assert_ne!(cluster.node(5).status().role, Role::Leader);
    }
}

#[test]
fn figure_8_check_catches_a_leader_that_commits_by_counting_replicas() {
    // The same scenario with the known bug planted: the assertion above would fire.
    let cluster = figure_8(PlantedBug::CommitByReplicaCount);
    assert_eq!(cluster.node(1).status().commit, 2);
}

// ----- durability: the Ready contract ----------------------------------------------------

#[test]
fn follower_acknowledges_entries_only_after_persisting_them() {
    let mut node = member(2, 3, vec![], 1, |config| config);
    node.ready();
    node.step(message(1, 2, 1, append(0, 0, vec![entry(1, 1)], 0)));
    let ready = node.ready();
    assert_eq!(ready.entries, vec![entry(1, 1)]);
    assert!(
        ready.messages.is_empty(),
        "no acknowledgement before the entries are durable"
    );
    assert_eq!(
        kinds(&ready.messages_after_persist),
        vec![(1, "AppendEntriesResponse")]
    );
}

#[test]
fn granted_vote_is_sent_only_after_persisting_it() {
    let mut node = member(2, 3, vec![], 0, |config| config);
    node.ready();
    node.step(message(1, 2, 1, vote_request(0, 0)));
    let ready = node.ready();
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(ready.messages.is_empty());
    assert_eq!(
        ready.messages_after_persist,
        vec![message(2, 1, 1, vote_response(true))]
    );
}

#[test]
fn overwritten_entries_are_never_reported_durable_or_applied() {
    let mut node = member(2, 3, vec![], 2, |config| config);
    node.ready();
    node.step(message(
        1,
        2,
        2,
        append(0, 0, vec![entry(1, 2), entry(2, 2), entry(3, 2)], 0),
    ));
    let first = node.ready();
    assert_eq!(first.last_entry(), Some((3, 2)));
    // A leader of term 3 replaces entries 2 and 3 before the first write is durable.
    node.step(message(3, 2, 3, append(1, 2, vec![entry(2, 3)], 2)));
    let second = node.ready();
    assert_eq!(second.entries, vec![entry(2, 3)]);
    // The writes complete in order; the first report names entries that are gone.
    node.on_persisted(3, 2);
    assert_eq!(node.status().persisted, 0);
    assert!(node.ready().committed_entries.is_empty());
    node.on_persisted(2, 3);
    assert_eq!(node.status().persisted, 2);
    assert_eq!(
        node.ready().committed_entries,
        vec![entry(1, 2), entry(2, 3)]
    );
}

#[test]
fn leader_counts_itself_toward_commit_only_after_persisting() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.propose(1, b"x").unwrap();
    let ready = cluster.node_mut(1).ready();
    assert_eq!(ready.last_entry(), Some((2, 1)));
    for message in ready.messages.into_iter().filter(|message| message.to == 2) {
        cluster.node_mut(2).step(message);
    }
    let answer = ready_and_persist(cluster.node_mut(2));
    for message in answer.messages_after_persist {
        cluster.node_mut(1).step(message);
    }
    let status = cluster.node(1).status();
    assert_eq!(status.match_indexes[&2], 2);
    assert_eq!(status.match_indexes[&1], 1);
    assert_eq!(status.commit, 1, "the leader's copy is not durable yet");
    cluster.node_mut(1).on_persisted(2, 1);
    assert_eq!(cluster.node(1).status().commit, 2);
}

#[test]
fn committed_entries_are_applied_only_after_they_are_durable_locally() {
    // On a follower that learns the commit together with the entries.
    let mut node = member(2, 3, vec![], 1, |config| config);
    node.ready();
    node.step(message(
        1,
        2,
        1,
        append(0, 0, vec![entry(1, 1), entry(2, 1)], 2),
    ));
    assert_eq!(node.status().commit, 2);
    let ready = node.ready();
    assert_eq!(ready.entries.len(), 2);
    assert!(ready.committed_entries.is_empty(), "not durable yet");
    node.on_persisted(2, 1);
    assert_eq!(
        node.ready().committed_entries,
        vec![entry(1, 1), entry(2, 1)]
    );

    // On a leader whose followers persisted faster than itself.
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.propose(1, b"x").unwrap();
    let ready = cluster.node_mut(1).ready();
    for message in ready.messages {
        let to = message.to;
        cluster.node_mut(to).step(message);
        let answer = ready_and_persist(cluster.node_mut(to));
        for message in answer.messages_after_persist {
            cluster.node_mut(1).step(message);
        }
    }
    assert_eq!(
        cluster.node(1).status().commit,
        2,
        "a quorum of followers holds it"
    );
    let ready = cluster.node_mut(1).ready();
    assert!(
        ready.committed_entries.is_empty(),
        "not durable on the leader"
    );
    cluster.node_mut(1).on_persisted(2, 1);
    let ready = cluster.node_mut(1).ready();
    assert_eq!(ready.committed_entries.len(), 1);
    assert_eq!(ready.committed_entries[0].data, Bytes::from_static(b"x"));
}

// ----- restart ----------------------------------------------------------------------------

#[test]
fn restarted_member_keeps_its_term_and_vote() {
    let mut cluster = Cluster::new(3, plain);
    cluster
        .node_mut(2)
        .step(message(3, 2, 5, vote_request(0, 0)));
    cluster.process(2);
    cluster.network.clear();
    cluster.stop(2);
    cluster.restart(2);
    let status = cluster.node(2).status();
    assert_eq!((status.term, status.vote), (5, Some(3)));

    cluster
        .node_mut(2)
        .step(message(1, 2, 5, vote_request(0, 0)));
    let ready = cluster.process_ready(2).unwrap();
    assert_eq!(ready.messages, vec![message(2, 1, 5, vote_response(false))]);
    assert!(ready.messages_after_persist.is_empty());

    cluster
        .node_mut(2)
        .step(message(3, 2, 5, vote_request(0, 0)));
    let ready = cluster.process_ready(2).unwrap();
    assert_eq!(
        ready.messages_after_persist,
        vec![message(2, 3, 5, vote_response(true))]
    );
}

#[test]
fn restarted_member_reapplies_committed_entries_from_its_store() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    for data in [b"a", b"b", b"c"] {
        cluster.propose(1, data).unwrap();
    }
    cluster.stabilize();
    let expected = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
    assert_eq!(cluster.applied_data(2), expected);
    for id in [1, 2] {
        cluster.isolate(id);
        cluster.stop(id);
        cluster.restart(id);
        assert!(cluster.applied_data(id).is_empty());
        let status = cluster.node(id).status();
        assert_eq!(status.role, Role::Follower);
        assert_eq!((status.term, status.commit, status.last_index), (1, 4, 4));
        // Without hearing from anyone, the member re-applies what it knew committed.
        cluster.process(id);
        assert_eq!(cluster.applied_data(id), expected, "member {id}");
    }
}

#[test]
fn unsent_vote_may_be_forgotten_but_a_sent_one_never_is() {
    // The granted vote travels only with the Ready that persists it, so a crash before
    // persisting loses the vote and the answer together.
    let mut cluster = Cluster::new(3, plain);
    cluster
        .node_mut(2)
        .step(message(3, 2, 5, vote_request(0, 0)));
    cluster.stop(2);
    cluster.restart(2);
    let status = cluster.node(2).status();
    assert_eq!((status.term, status.vote), (0, None));
    assert!(cluster.network.is_empty(), "the answer was never sent");
    cluster
        .node_mut(2)
        .step(message(1, 2, 5, vote_request(0, 0)));
    let ready = cluster.process_ready(2).unwrap();
    assert_eq!(
        ready.messages_after_persist,
        vec![message(2, 1, 5, vote_response(true))]
    );
}

#[test]
fn proposal_data_round_trips_through_the_log() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    let payload: Vec<u8> = (0..=255).collect();
    let (index, term) = cluster.propose(1, &payload).unwrap();
    cluster.stabilize();
    for id in 1..=3 {
        let held = cluster.node(id).entry(index).unwrap();
        assert_eq!((held.term, held.kind), (term, EntryKind::Normal));
        assert_eq!(cluster.applied_data(id), vec![payload.clone()]);
    }
}
