//! Scenario tests for released entries: members that keep only their last few applied
//! entries in memory and read older ones back from their durable log
//! (`RawNode::release_applied_entries`).

use skiff_raft::testkit::Cluster;
use skiff_raft::NodeId;

/// A cluster of `size` members that each keep `keep` applied entries in memory, with member
/// 1 elected.
fn releasing_cluster(size: u64, keep: u64) -> Cluster {
    let mut cluster = Cluster::new(size, |config| config);
    for id in 1..=size {
        cluster.release_entries(id, keep);
    }
    cluster.elect(1);
    cluster
}

fn propose_many(cluster: &mut Cluster, leader: NodeId, count: usize, tag: &str) {
    for n in 0..count {
        cluster
            .propose(leader, format!("{tag}{n}").as_bytes())
            .unwrap();
        cluster.stabilize();
    }
}

/// Ticks the running members until `id` has applied what `reference` has.
fn catch_up(cluster: &mut Cluster, id: NodeId, reference: NodeId) {
    for _ in 0..50 {
        if cluster.applied_data(id) == cluster.applied_data(reference) {
            return;
        }
        cluster.tick_all(1);
    }
    panic!(
        "member {id} applied {} entries, member {reference} {}",
        cluster.applied_data(id).len(),
        cluster.applied_data(reference).len()
    );
}

#[test]
fn released_entries_leave_memory_and_keep_their_terms() {
    let mut cluster = releasing_cluster(3, 2);
    propose_many(&mut cluster, 1, 10, "x");
    let status = cluster.node(1).status();
    assert_eq!(status.applied, 11);
    for id in 1..=3 {
        let node = cluster.node(id);
        let held: Vec<u64> = (1..=11)
            .filter(|index| node.entry(*index).is_some())
            .collect();
        assert_eq!(
            held,
            [10, 11],
            "member {id} keeps the last two applied entries"
        );
        assert!((1..=11).all(|index| node.term_of(index) == Some(1)));
        assert_eq!(
            node.read_entry(3).map(|entry| entry.data.to_vec()),
            Some(b"x1".to_vec()),
            "member {id} reads a released entry back"
        );
    }
    assert_eq!(
        cluster.entries_read_back(1),
        1,
        "only the check above read anything back: the followers were never behind"
    );
}

#[test]
fn a_lagging_follower_gets_released_entries_from_the_log() {
    let mut cluster = releasing_cluster(3, 0);
    cluster.isolate(3);
    propose_many(&mut cluster, 1, 30, "y");
    assert!(cluster.node(1).entry(2).is_none(), "released on the leader");
    assert_eq!(cluster.entries_read_back(1), 0);

    cluster.heal();
    catch_up(&mut cluster, 3, 1);
    assert_eq!(cluster.applied_data(3).len(), 30);
    assert!(
        cluster.entries_read_back(1) >= 30,
        "the leader read the follower's missing entries back ({})",
        cluster.entries_read_back(1)
    );
}

#[test]
fn a_new_leader_sends_entries_it_released_as_a_follower() {
    let mut cluster = releasing_cluster(3, 0);
    cluster.isolate(3);
    propose_many(&mut cluster, 1, 20, "z");
    assert!(
        cluster.node(2).entry(5).is_none(),
        "released on the follower"
    );

    cluster.stop(1);
    cluster.heal();
    // Member 3's log is behind: only member 2 can win.
    for _ in 0..100 {
        if cluster.leader() == Some(2) {
            break;
        }
        cluster.tick_all(1);
    }
    assert_eq!(cluster.leader(), Some(2));
    propose_many(&mut cluster, 2, 3, "after");
    catch_up(&mut cluster, 3, 2);
    assert_eq!(
        cluster.applied_data(3).len(),
        23,
        "member 3 has the first leader's entries and the new ones"
    );
    assert!(cluster.entries_read_back(2) >= 20);

    // The old leader comes back behind nothing: it only learns the new entries.
    cluster.restart(1);
    catch_up(&mut cluster, 1, 2);
    assert_eq!(cluster.leader(), Some(2));
}

#[test]
fn a_follower_behind_the_snapshot_gets_it_and_then_released_entries() {
    let mut cluster = releasing_cluster(3, 0);
    cluster.isolate(3);
    propose_many(&mut cluster, 1, 20, "s");
    // A snapshot at 8: entries 9..=21 are released, not compacted.
    cluster.compact(1, 8);
    assert_eq!(cluster.node(1).term_of(7), None);
    assert_eq!(cluster.node(1).term_of(12), Some(1));

    cluster.heal();
    for _ in 0..50 {
        if cluster.node(3).status().applied == 21 {
            break;
        }
        cluster.tick_all(1);
    }
    assert_eq!(
        cluster.node(3).snapshot_meta().map(|meta| meta.index),
        Some(8),
        "entries up to 8 are only in the snapshot"
    );
    assert_eq!(cluster.node(3).status().applied, 21);
    assert!(
        cluster.entries_read_back(1) >= 13,
        "entries 9..=21 came from the leader's log"
    );
    let data = |id| cluster.node(id).read_entry(21).map(|entry| entry.data);
    assert_eq!(data(3), data(1));
}
