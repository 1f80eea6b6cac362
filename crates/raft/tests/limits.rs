//! Flow control and limits (Raft thesis §10.2): inflight windows, message sizes,
//! uncommitted bytes, refusals on followers, and the validation of every config field.

mod common;

use common::*;
use skiff_raft::testkit::Cluster;
use skiff_raft::{
    Config, ConfigError, HardState, InitialState, Membership, Message, MessageBody, RaftError,
    RawNode, ReadMode, ReadState, Role, ENTRY_OVERHEAD_BYTES,
};

const PAYLOAD_BYTES: usize = 100;
const ENTRY_BYTES: u64 = ENTRY_OVERHEAD_BYTES + PAYLOAD_BYTES as u64;

fn appends_to(trace: &[Message], to: u64) -> Vec<&Message> {
    trace
        .iter()
        .filter(|message| {
            message.to == to && matches!(message.body, MessageBody::AppendEntries { .. })
        })
        .collect()
}

fn entry_count(message: &Message) -> usize {
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => entries.len(),
        other => panic!("not an AppendEntries: {other:?}"),
    }
}

// ----- inflight windows ------------------------------------------------------------------

#[test]
fn leader_sends_at_most_max_inflight_appends_to_a_silent_follower() {
    const WINDOW: usize = 3;
    let mut cluster = Cluster::new(3, |config| Config {
        max_inflight_messages: WINDOW,
        // One entry per message.
        max_message_bytes: 1,
        ..config
    });
    cluster.elect(1);
    cluster.tick_all(1);
    // 3 still receives, but every answer it sends is lost.
    cluster.cut_links.insert((3, 1));
    let mut trace = Vec::new();
    for value in 0..10u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    trace.extend(stabilize_traced(&mut cluster));
    for value in 10..15u8 {
        cluster.propose(1, &[value]).unwrap();
        trace.extend(stabilize_traced(&mut cluster));
    }
    for _ in 0..5 {
        trace.extend(tick_traced(&mut cluster));
    }
    let to_silent = appends_to(&trace, 3);
    assert_eq!(to_silent.len(), WINDOW);
    assert!(to_silent.iter().all(|message| entry_count(message) == 1));
    let carrying = |to| {
        appends_to(&trace, to)
            .into_iter()
            .filter(|message| carries_entries(message))
            .count()
    };
    assert_eq!(carrying(2), 15, "the live follower gets everything");
    assert_eq!(cluster.node(1).status().commit, 16);

    // Once its answers get through again, the silent follower catches up.
    cluster.heal();
    cluster.tick_all(4);
    assert_eq!(cluster.applied_data(3).len(), 15);
}

#[test]
fn inflight_bytes_limit_the_window_too() {
    let mut cluster = Cluster::new(3, |config| Config {
        max_inflight_bytes: 2 * ENTRY_BYTES,
        max_message_bytes: 1,
        ..config
    });
    cluster.elect(1);
    cluster.tick_all(1);
    cluster.cut_links.insert((3, 1));
    for _ in 0..6 {
        cluster.propose(1, &[7; PAYLOAD_BYTES]).unwrap();
    }
    let trace = stabilize_traced(&mut cluster);
    assert_eq!(appends_to(&trace, 3).len(), 2);
    let to_live = appends_to(&trace, 2);
    assert_eq!(
        to_live
            .iter()
            .filter(|message| carries_entries(message))
            .count(),
        6
    );
}

#[test]
fn follower_in_probe_state_gets_one_append_at_a_time() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.cut_links.insert((3, 1));
    cluster.node_mut(1).campaign();
    let mut trace = stabilize_traced(&mut cluster);
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    for value in 0..5u8 {
        cluster.propose(1, &[value]).unwrap();
        trace.extend(stabilize_traced(&mut cluster));
    }
    for _ in 0..3 {
        trace.extend(tick_traced(&mut cluster));
    }
    let to_probed = appends_to(&trace, 3);
    assert_eq!(
        to_probed.len(),
        1,
        "only the first probe: it is never answered"
    );
    assert_eq!(cluster.node(1).status().match_indexes[&3], 0);
}

// ----- message and uncommitted sizes -------------------------------------------------------

#[test]
fn max_message_bytes_splits_a_batch() {
    let mut cluster = Cluster::new(3, |config| Config {
        max_message_bytes: 3 * ENTRY_BYTES,
        ..config
    });
    cluster.elect(1);
    cluster.tick_all(1);
    for _ in 0..10 {
        cluster.propose(1, &[1; PAYLOAD_BYTES]).unwrap();
    }
    let ready = cluster.process_ready(1).unwrap();
    assert_eq!(ready.entries.len(), 10);
    for to in [2, 3] {
        let batches = appends_to(&ready.messages, to);
        let sizes: Vec<usize> = batches.iter().map(|message| entry_count(message)).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1], "to {to}");
        let prevs: Vec<u64> = batches
            .iter()
            .map(|message| match message.body {
                MessageBody::AppendEntries { prev_log_index, .. } => prev_log_index,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(prevs, vec![1, 4, 7, 10], "to {to}");
    }
    cluster.stabilize();
    cluster.tick_all(1);
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id).len(), 10);
    }
}

#[test]
fn single_entry_larger_than_max_message_bytes_still_travels() {
    let mut cluster = Cluster::new(3, |config| Config {
        max_message_bytes: 10,
        ..config
    });
    cluster.elect(1);
    cluster.propose(1, &[5; 1000]).unwrap();
    cluster.stabilize();
    cluster.tick_all(1);
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id), vec![vec![5; 1000]]);
    }
}

#[test]
fn uncommitted_limit_refuses_proposals_until_entries_commit() {
    let limit = 3 * ENTRY_BYTES;
    let mut cluster = Cluster::new(3, |config| Config {
        max_uncommitted_bytes: limit,
        ..config
    });
    cluster.elect(1);
    for _ in 0..3 {
        cluster.propose(1, &[1; PAYLOAD_BYTES]).unwrap();
    }
    assert_eq!(
        cluster.propose(1, &[1; PAYLOAD_BYTES]),
        Err(RaftError::UncommittedLimit {
            uncommitted_bytes: limit,
            proposal_bytes: ENTRY_BYTES,
            limit_bytes: limit,
        })
    );
    assert_eq!(cluster.node(1).status().last_index, 4, "nothing appended");
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().commit, 4);
    for _ in 0..3 {
        cluster.propose(1, &[2; PAYLOAD_BYTES]).unwrap();
    }
    assert!(cluster.propose(1, &[2; PAYLOAD_BYTES]).is_err());
    cluster.stabilize();
    // With nothing uncommitted, even a proposal above the limit is let through, so that
    // an oversized command cannot wedge the leader.
    cluster.propose(1, &[3; 4 * PAYLOAD_BYTES]).unwrap();
    cluster.stabilize();
    cluster.tick_all(1);
    assert_eq!(cluster.applied_data(2).len(), 7);
}

#[test]
fn apply_is_paced_by_max_apply_bytes() {
    let mut node = member(2, 3, vec![], 1, |config| Config {
        max_apply_bytes: 2 * ENTRY_BYTES,
        ..config
    });
    node.ready();
    let entries: Vec<skiff_raft::Entry> = (1..=5)
        .map(|index| skiff_raft::Entry {
            data: bytes::Bytes::from(vec![index as u8; PAYLOAD_BYTES]),
            ..entry(index, 1)
        })
        .collect();
    node.step(message(1, 2, 1, append(0, 0, entries, 5)));
    let ready = ready_and_persist(&mut node);
    assert_eq!(ready.entries.len(), 5);
    let mut batches = Vec::new();
    while node.has_ready() {
        let ready = node.ready();
        if let Some(last) = ready.committed_entries.last() {
            node.on_applied(last.index);
        }
        batches.push(ready.committed_entries.len());
    }
    assert_eq!(batches, vec![2, 2, 1]);
    assert_eq!(node.status().applied, 5);
}

#[test]
fn uncommitted_limit_counts_proposals_only_not_the_leaders_noop() {
    // The no-op of a new leader is not a proposal and is never added to the uncommitted
    // bytes; committing it must not take anything off them either.
    let limit = 3 * ENTRY_BYTES;
    let mut cluster = Cluster::new(3, |config| Config {
        max_uncommitted_bytes: limit,
        ..config
    });
    cluster.node_mut(1).campaign();
    step_until(&mut cluster, |cluster| {
        cluster.node(1).status().role == Role::Leader
    });
    // The no-op goes out; three proposals arrive before it commits.
    cluster.process(1);
    for _ in 0..3 {
        cluster.propose(1, &[1; PAYLOAD_BYTES]).unwrap();
    }
    while cluster.deliver_one() {
        cluster.process(2);
        cluster.process(3);
    }
    assert_eq!(
        cluster.node(1).status().commit,
        1,
        "only the no-op committed"
    );
    assert_eq!(
        cluster.propose(1, &[]),
        Err(RaftError::UncommittedLimit {
            uncommitted_bytes: limit,
            proposal_bytes: ENTRY_OVERHEAD_BYTES,
            limit_bytes: limit,
        }),
        "three proposals ({limit} bytes) are still uncommitted"
    );
}

// ----- refusals -------------------------------------------------------------------------

#[test]
fn proposal_on_a_non_leader_names_the_leader_it_knows() {
    let mut cluster = Cluster::new(3, |config| config);
    assert_eq!(
        cluster.propose(1, b"x"),
        Err(RaftError::NotLeader { leader: None })
    );
    cluster.elect(1);
    for id in [2, 3] {
        assert_eq!(
            cluster.propose(id, b"x"),
            Err(RaftError::NotLeader { leader: Some(1) })
        );
        assert!(!cluster.node(id).has_ready(), "a refusal changes nothing");
    }
    cluster.isolate(2);
    cluster.node_mut(2).campaign();
    assert_eq!(cluster.node(2).status().role, Role::PreCandidate);
    assert_eq!(
        cluster.propose(2, b"x"),
        Err(RaftError::NotLeader { leader: None })
    );
}

#[test]
fn single_member_cluster_commits_and_reads_alone() {
    let mut cluster = Cluster::new(1, |config| config);
    cluster.node_mut(1).campaign();
    let status = cluster.node(1).status();
    assert_eq!((status.role, status.term), (Role::Leader, 1));
    assert_eq!(status.commit, 0, "the no-op is not durable yet");
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().commit, 1);
    cluster.propose(1, b"a").unwrap();
    cluster.stabilize();
    assert_eq!(cluster.applied_data(1), vec![b"a".to_vec()]);
    cluster.node_mut(1).read_index(3).unwrap();
    let ready = cluster.process_ready(1).unwrap();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            context: 3,
            index: Some(2)
        }]
    );
}

// ----- configuration ----------------------------------------------------------------------

#[test]
fn config_validation_rejects_each_bad_field() {
    type Change = fn(&mut Config);
    let cases: Vec<(&str, Change)> = vec![
        ("id", |config| config.id = 0),
        ("heartbeat_ticks", |config| config.heartbeat_ticks = 0),
        ("election_ticks", |config| {
            config.election_ticks = config.heartbeat_ticks
        }),
        ("election_ticks", |config| {
            config.heartbeat_ticks = 5;
            config.election_ticks = 3;
        }),
        ("election_ticks", |config| {
            config.election_ticks = (1 << 20) + 1
        }),
        ("read_mode", |config| {
            config.read_mode = ReadMode::LeaseBased;
            config.check_quorum = false;
        }),
        ("lease_clock_drift_ticks", |config| {
            config.read_mode = ReadMode::LeaseBased;
            config.lease_clock_drift_ticks = config.election_ticks;
        }),
        ("max_inflight_messages", |config| {
            config.max_inflight_messages = 0
        }),
        ("max_inflight_bytes", |config| config.max_inflight_bytes = 0),
        ("max_message_bytes", |config| config.max_message_bytes = 0),
        ("max_uncommitted_bytes", |config| {
            config.max_uncommitted_bytes = 0
        }),
        ("max_apply_bytes", |config| config.max_apply_bytes = 0),
        ("max_pending_reads", |config| config.max_pending_reads = 0),
    ];
    for (field, change) in cases {
        let mut config = Config::new(1);
        change(&mut config);
        match config.validate() {
            Err(ConfigError::Invalid { field: named, .. }) => {
                assert_eq!(named, field)
            }
            other => panic!("{field}: expected a rejection, got {other:?}"),
        }
        let built = RawNode::new(
            config,
            InitialState {
                membership: Membership::new([1, 2, 3]),
                ..InitialState::default()
            },
        );
        assert!(
            matches!(built, Err(ConfigError::Invalid { field: named, .. }) if named == field),
            "{field}: a member is never built from an invalid config"
        );
    }
}

#[test]
fn config_validation_accepts_the_defaults_and_the_boundaries() {
    let accepted: Vec<fn(&mut Config)> = vec![
        |_| {},
        |config| {
            config.heartbeat_ticks = 9;
            config.election_ticks = 10;
        },
        |config| config.election_ticks = 1 << 20,
        |config| {
            config.read_mode = ReadMode::LeaseBased;
            config.lease_clock_drift_ticks = config.election_ticks - 1;
        },
        // The drift only matters for leases.
        |config| config.lease_clock_drift_ticks = 1_000,
        |config| {
            config.max_inflight_messages = 1;
            config.max_inflight_bytes = 1;
            config.max_message_bytes = 1;
            config.max_uncommitted_bytes = 1;
            config.max_apply_bytes = 1;
            config.max_pending_reads = 1;
        },
    ];
    for (case, change) in accepted.into_iter().enumerate() {
        let mut config = Config::new(7);
        change(&mut config);
        assert_eq!(config.validate(), Ok(()), "case {case}");
    }
}

#[test]
fn initial_state_is_checked() {
    let build = |initial: InitialState| RawNode::new(Config::new(1), initial);
    let voters = Membership::new([1, 2, 3]);
    assert!(matches!(
        build(InitialState::default()),
        Err(ConfigError::InitialState(_))
    ));
    let mut gap = log_of(&[1, 1, 1]);
    gap.remove(1);
    assert!(matches!(
        build(InitialState {
            entries: gap,
            membership: voters.clone(),
            ..InitialState::default()
        }),
        Err(ConfigError::InitialState(_))
    ));
    assert!(matches!(
        build(InitialState {
            entries: log_of(&[1]),
            membership: voters.clone(),
            applied: 2,
            ..InitialState::default()
        }),
        Err(ConfigError::InitialState(_))
    ));
    // Entries newer than the hard state (a torn write) lift the term and drop the vote.
    let node = build(InitialState {
        hard_state: HardState {
            term: 1,
            vote: Some(2),
            commit: 0,
        },
        entries: log_of(&[1, 3]),
        membership: voters,
        ..InitialState::default()
    })
    .unwrap();
    let status = node.status();
    assert_eq!((status.term, status.vote), (3, None));
}
