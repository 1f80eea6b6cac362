//! Quick end-to-end checks of the in-process cluster.

use skiff_raft::testkit::Cluster;
use skiff_raft::{RaftError, Role};

#[test]
fn three_members_elect_and_replicate() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    for value in 0..10u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    cluster.stabilize();
    cluster.tick_all(2);
    for id in 1..=3 {
        assert_eq!(cluster.applied_data(id).len(), 10, "member {id}");
        assert_eq!(cluster.node(id).status().commit, 11);
    }
    assert_eq!(
        cluster.propose(2, b"x"),
        Err(RaftError::NotLeader { leader: Some(1) })
    );
}

#[test]
fn election_happens_by_timeout_alone() {
    let mut cluster = Cluster::new(5, |config| config);
    cluster.tick_all(40);
    let leader = cluster.leader().expect("a leader within two timeouts");
    let leaders = (1..=5)
        .filter(|id| cluster.node(*id).status().role == Role::Leader)
        .count();
    assert_eq!(leaders, 1);
    cluster.stop(leader);
    cluster.tick_all(60);
    let next = cluster
        .leader()
        .expect("a new leader after the old one stops");
    assert_ne!(next, leader);
}

#[test]
fn a_follower_whose_ack_arrives_after_the_commit_learns_it_without_a_heartbeat() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    // Member 3 is probed (one message in flight, then paused until it answers).
    cluster.node_mut(1).report_unreachable(3);
    cluster.propose(1, b"x").unwrap();
    cluster.process(1);
    while cluster.deliver_one() {}
    cluster.process(2);
    cluster.process(3);
    // Member 2's answer commits the entry while member 3 is paused; member 3's answer
    // arrives afterwards, when the commit index no longer changes.
    let answer_of_3: Vec<_> = cluster
        .network
        .iter()
        .filter(|message| message.from == 3)
        .cloned()
        .collect();
    cluster.network.retain(|message| message.from != 3);
    while cluster.deliver_one() {}
    cluster.process(1);
    let commit = cluster.node(1).status().commit;
    while cluster.deliver_one() {}
    cluster.process(2);
    cluster.process(3);
    cluster.network.clear();
    for message in answer_of_3 {
        cluster.send(message);
    }
    cluster.stabilize();
    assert_eq!(cluster.node(1).status().commit, commit);
    assert_eq!(
        cluster.node(3).status().commit,
        commit,
        "member 3 learned the commit without waiting for a heartbeat"
    );
}

#[test]
fn a_lost_snapshot_is_sent_again_after_the_snapshot_timeout() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.isolate(3);
    for value in 0..10u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    cluster.stabilize();
    let commit = cluster.node(1).status().commit;
    cluster.node_mut(1).compact(commit);
    cluster.heal();
    let timeout = cluster.node(1).config().snapshot_timeout_ticks;
    let mut snapshots_sent = Vec::new();
    for tick in 0..timeout + 20 {
        cluster.tick(1);
        cluster.tick(2);
        cluster.tick(3);
        // Carry everything out, but lose every snapshot on the way to member 3.
        for _ in 0..100 {
            let mut moved = false;
            for id in 1..=3 {
                moved |= cluster.process(id);
            }
            if cluster.any_queued(|message| message.body.name() == "InstallSnapshot") {
                snapshots_sent.push(tick);
                cluster.drop_messages(|message| message.body.name() == "InstallSnapshot");
            }
            while cluster.deliver_one() {
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }
    assert!(
        snapshots_sent.len() >= 2,
        "the snapshot was sent again: {snapshots_sent:?}"
    );
    let gap = snapshots_sent[1] - snapshots_sent[0];
    assert!(
        gap >= timeout,
        "not before the timeout ({gap} ticks < {timeout})"
    );
    assert_eq!(cluster.node(1).status().role, Role::Leader);
}

/// Ticks every member `ticks` times, carrying everything out; counts the InstallSnapshot
/// messages that were sent (and delivered) meanwhile, with the snapshot index of the last.
fn run_counting_snapshots(cluster: &mut Cluster, ticks: u32) -> (usize, u64) {
    let (mut count, mut index) = (0, 0);
    for _ in 0..ticks {
        for id in 1..=3 {
            cluster.tick(id);
        }
        for _ in 0..1000 {
            let mut moved = false;
            for id in 1..=3 {
                moved |= cluster.process(id);
            }
            for (_, _, name) in cluster.queued() {
                count += usize::from(name == "InstallSnapshot");
            }
            if let Some(meta) = cluster.queued_snapshot() {
                index = meta;
            }
            while cluster.deliver_one() {
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }
    (count, index)
}

#[test]
fn a_follower_within_the_kept_tail_catches_up_from_entries_not_the_snapshot() {
    let mut cluster = Cluster::new(3, |config| config);
    cluster.elect(1);
    cluster.isolate(3);
    for value in 0..10u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    cluster.stabilize();
    let first_snapshot = cluster.node(1).status().commit;
    // Member 3 is 10 entries behind; a tail of 20 still holds what it needs.
    cluster.node_mut(1).compact_keeping(first_snapshot, 20);
    let meta = cluster.node(1).snapshot_meta().cloned().expect("snapshot");
    assert_eq!(meta.index, first_snapshot);
    assert!(cluster.node(1).status().first_index <= first_snapshot.saturating_sub(9));
    cluster.heal();
    let (snapshots, _) = run_counting_snapshots(&mut cluster, 10);
    assert_eq!(snapshots, 0, "member 3 needed no snapshot");
    assert_eq!(cluster.applied_data(3), cluster.applied_data(1));

    // Far behind the tail: it gets the newest snapshot, and entries after it.
    cluster.isolate(3);
    for value in 10..40u8 {
        cluster.propose(1, &[value]).unwrap();
    }
    cluster.stabilize();
    let second_snapshot = cluster.node(1).status().commit;
    cluster.node_mut(1).compact_keeping(second_snapshot, 5);
    assert_eq!(
        cluster.node(1).status().first_index,
        second_snapshot - 5 + 1,
        "the log keeps exactly the tail"
    );
    cluster.propose(1, &[40]).unwrap();
    cluster.stabilize();
    cluster.heal();
    let (snapshots, index) = run_counting_snapshots(&mut cluster, 10);
    assert!(snapshots >= 1, "member 3 needed a snapshot");
    assert_eq!(
        index, second_snapshot,
        "the newest snapshot, not the tail's start"
    );
    assert_eq!(
        cluster.node(3).status().applied,
        cluster.node(1).status().applied
    );
}
