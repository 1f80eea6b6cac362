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
