//! Membership changes (Raft thesis §4): learners, single-member changes, joint consensus,
//! one change at a time, removing the leader, reverting a truncated configuration entry,
//! configurations in snapshots, and removed members that must not disrupt the cluster.

mod common;

use common::{stabilize_routed, Route};

use std::collections::BTreeSet;

use skiff_raft::testkit::Cluster;
use skiff_raft::{
    decode_membership, Config, EntryKind, Membership, MembershipStep, Message, MessageBody, NodeId,
    RaftError, Role,
};

use MembershipStep::{AddLearner, AddVoter, PromoteLearner, Remove};

const ELECTION_TICKS: u32 = 10;

fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
    ids.iter().copied().collect()
}

fn with_learners(voters: &[NodeId], learners: &[NodeId]) -> Membership {
    Membership {
        voters: set(voters),
        voters_outgoing: BTreeSet::new(),
        learners: set(learners),
    }
}

/// A cluster of `1..=size` with leader 1 and spare members `spares` (not in the
/// configuration) running.
fn cluster_with_spares(size: u64, spares: &[NodeId], configure: fn(Config) -> Config) -> Cluster {
    let mut cluster = Cluster::new(size, configure);
    for id in spares {
        cluster.add_spare(configure(Config::new(*id)));
    }
    cluster.elect(1);
    cluster
}

fn commit_of(cluster: &Cluster, id: NodeId) -> u64 {
    cluster.node(id).status().commit
}

/// Ticks the running members until one of `candidates` leads; returns it.
fn await_leader_among(cluster: &mut Cluster, candidates: &[NodeId]) -> NodeId {
    for _ in 0..20 * ELECTION_TICKS {
        cluster.tick_all(1);
        if let Some(leader) = cluster.leader() {
            if candidates.contains(&leader) {
                return leader;
            }
        }
    }
    panic!("none of {candidates:?} became leader");
}

#[test]
fn a_learner_catches_up_but_never_votes_counts_or_campaigns() {
    let mut cluster = cluster_with_spares(3, &[4], |config| config);
    cluster.propose(1, b"before").unwrap();
    cluster.stabilize();
    let (index, _) = cluster.propose_membership(1, [AddLearner(4)]).unwrap();
    cluster.stabilize();
    for id in 1..=4 {
        assert_eq!(
            cluster.node(id).membership(),
            &with_learners(&[1, 2, 3], &[4]),
            "member {id}"
        );
        assert_eq!(commit_of(&cluster, id), index, "member {id}");
    }
    assert_eq!(cluster.applied_data(4), vec![b"before".to_vec()]);
    // The learner's acknowledgements do not count: with two voters cut off, nothing
    // commits although the learner holds the entry.
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.cut_links.remove(&(1, 4));
    cluster.cut_links.remove(&(4, 1));
    let (stuck, _) = cluster.propose(1, b"needs a voter").unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(4).status().last_index, stuck);
    assert!(
        commit_of(&cluster, 1) < stuck,
        "a learner counted toward the quorum"
    );
    // A learner never campaigns, whatever the time without a leader.
    cluster.isolate(4);
    cluster.node_mut(4).campaign();
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick(4);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(4).status().role, Role::Follower);
    assert_eq!(cluster.node(4).status().term, 1);
    // Leadership cannot be handed to it.
    cluster.heal();
    cluster.tick_all(1);
    assert_eq!(
        cluster.node_mut(1).transfer_leader(4),
        Err(RaftError::NotAVoter(4))
    );
}

#[test]
fn a_promoted_learner_votes_and_counts() {
    let mut cluster = cluster_with_spares(3, &[4], |config| config);
    cluster.propose_membership(1, [AddLearner(4)]).unwrap();
    cluster.stabilize();
    let (index, _) = cluster.propose_membership(1, [PromoteLearner(4)]).unwrap();
    cluster.stabilize();
    for id in 1..=4 {
        assert_eq!(
            cluster.node(id).membership(),
            &Membership::new([1, 2, 3, 4])
        );
        assert_eq!(commit_of(&cluster, id), index);
    }
    // Four voters: two cut off means no majority.
    cluster.isolate(2);
    cluster.isolate(3);
    cluster
        .cut_links
        .retain(|link| *link != (1, 4) && *link != (4, 1));
    let (stuck, _) = cluster.propose(1, b"x").unwrap();
    cluster.stabilize();
    assert!(commit_of(&cluster, 1) < stuck);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(commit_of(&cluster, 1), stuck);
    // The promoted member can now be elected.
    cluster.isolate(1);
    let leader = await_leader_among(&mut cluster, &[2, 3, 4]);
    assert_ne!(leader, 1);
    cluster.heal();
    cluster.node_mut(leader).transfer_leader(4).ok();
    cluster.tick_all(2);
    assert_eq!(cluster.leader(), Some(4), "the promoted member takes over");
}

#[test]
fn a_removed_follower_leaves_the_quorum_and_stops_campaigning() {
    let mut cluster = cluster_with_spares(3, &[], |config| config);
    let (index, _) = cluster.propose_membership(1, [Remove(3)]).unwrap();
    cluster.stabilize();
    assert_eq!(commit_of(&cluster, 1), index);
    assert_eq!(cluster.node(3).membership(), &Membership::new([1, 2]));
    // It was sent the commit covering its removal: the leader stops tracking it.
    cluster.tick_all(1);
    assert_eq!(
        cluster
            .node(1)
            .status()
            .match_indexes
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![1, 2],
        "the leader stops tracking the removed member"
    );
    // Two voters remain: both are needed, the removed member is not.
    cluster.isolate(3);
    let (next, _) = cluster.propose(1, b"without 3").unwrap();
    cluster.stabilize();
    assert_eq!(commit_of(&cluster, 1), next);
    // It knows it is removed: no campaign, no term change, however long it waits.
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick(3);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(3).status().role, Role::Follower);
    assert_eq!(cluster.node(3).status().term, 1);
    cluster.node_mut(3).campaign();
    assert_eq!(cluster.node(3).status().role, Role::Follower);
    // Nobody replicates to it any more: it sends clients away instead of serving reads it
    // could never catch up with, or pointing at a leader that may be long gone.
    assert_eq!(
        cluster.node_mut(3).read_index(1),
        Err(RaftError::NotLeader { leader: None })
    );
    assert_eq!(
        cluster.propose(3, b"x"),
        Err(RaftError::NotLeader { leader: None })
    );
}

#[test]
fn a_removed_leader_replicates_until_commit_without_counting_itself_then_steps_down() {
    let mut cluster = cluster_with_spares(3, &[], |config| config);
    cluster.isolate(3);
    cluster
        .cut_links
        .retain(|link| *link != (1, 2) && *link != (2, 1));
    let (index, _) = cluster.propose_membership(1, [Remove(1)]).unwrap();
    cluster.stabilize();
    // 1 and 2 hold it (a majority of the old configuration), but the new configuration
    // {2, 3} needs 3, and the leader does not count itself any more.
    assert_eq!(cluster.node(2).status().last_index, index);
    assert!(commit_of(&cluster, 1) < index);
    assert_eq!(cluster.node(1).status().role, Role::Leader);
    cluster.heal();
    cluster.tick_all(3);
    assert!(commit_of(&cluster, 2) >= index);
    assert_ne!(
        cluster.node(1).status().role,
        Role::Leader,
        "did not step down"
    );
    let leader = await_leader_among(&mut cluster, &[2, 3]);
    let (next, _) = cluster.propose(leader, b"after").unwrap();
    cluster.tick_all(2 * ELECTION_TICKS);
    assert_eq!(cluster.leader(), Some(leader));
    for id in [2, 3] {
        assert!(commit_of(&cluster, id) >= next);
        assert_eq!(cluster.node(id).membership(), &Membership::new([2, 3]));
    }
    // The old leader never campaigns again.
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    for _ in 0..5 * ELECTION_TICKS {
        cluster.tick(1);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(1).status().role, Role::Follower);
}

/// Replaces voters 2 and 3 of {1, 2, 3} by 4 and 5 while `cut` is cut off from everyone:
/// the joint entry reaches a majority of one half only and must not commit; once `cut` is
/// back it commits, and the leader leaves the joint configuration on its own.
fn joint_change_with_one_half_cut_off(cut: [NodeId; 2]) {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    for id in cut {
        cluster.isolate(id);
    }
    let (joint_index, _) = cluster
        .propose_membership(1, [Remove(2), Remove(3), AddVoter(4), AddVoter(5)])
        .unwrap();
    cluster.tick_all(3);
    let reached = if cut == [2, 3] { 4 } else { 2 };
    let joint = cluster.node(reached).membership().clone();
    assert_eq!(joint.voters, set(&[1, 4, 5]));
    assert_eq!(joint.voters_outgoing, set(&[1, 2, 3]));
    assert_eq!(cluster.node(reached).status().last_index, joint_index);
    assert!(
        commit_of(&cluster, 1) < joint_index,
        "committed with {cut:?} cut off"
    );
    assert_eq!(
        cluster.propose_membership(1, [AddLearner(6)]),
        Err(RaftError::MembershipChangePending)
    );
    // Everyone back: the joint entry commits and the leader leaves joint on its own.
    cluster.heal();
    cluster.tick_all(3);
    let leave_index = joint_index + 1;
    let leave = cluster
        .node(1)
        .entry(leave_index)
        .expect("leave entry")
        .clone();
    assert_eq!(leave.kind, EntryKind::ConfigChange);
    assert_eq!(
        decode_membership(&leave.data),
        Ok(Membership::new([1, 4, 5]))
    );
    for id in [1, 4, 5] {
        assert_eq!(commit_of(&cluster, id), leave_index, "member {id}");
        assert_eq!(cluster.node(id).membership(), &Membership::new([1, 4, 5]));
    }
    // The new configuration works without the removed members.
    cluster.isolate(2);
    cluster.isolate(3);
    cluster.isolate(4);
    cluster
        .cut_links
        .retain(|(a, b)| [*a, *b].iter().any(|id| *id != 1 && *id != 5));
    let (next, _) = cluster.propose(1, b"new majority").unwrap();
    cluster.stabilize();
    assert_eq!(commit_of(&cluster, 1), next);
}

#[test]
fn a_joint_change_cannot_commit_without_the_old_majority() {
    joint_change_with_one_half_cut_off([2, 3]);
}

#[test]
fn a_joint_change_cannot_commit_without_the_new_majority() {
    joint_change_with_one_half_cut_off([4, 5]);
}

#[test]
fn only_one_change_at_a_time_and_invalid_changes_are_refused() {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    assert_eq!(
        cluster.propose_membership(2, [AddLearner(4)]),
        Err(RaftError::NotLeader { leader: Some(1) })
    );
    let refused = [
        vec![AddVoter(2)],
        vec![AddLearner(3)],
        vec![Remove(9)],
        vec![PromoteLearner(2)],
        vec![Remove(1), AddLearner(1)],
        vec![],
    ];
    for steps in refused {
        let before = cluster.node(1).status();
        let result = cluster.propose_membership(1, steps.clone());
        assert!(
            matches!(result, Err(RaftError::InvalidMembershipChange(_))),
            "{steps:?}: {result:?}"
        );
        assert_eq!(cluster.node(1).status(), before, "{steps:?} changed state");
    }
    assert_eq!(
        cluster.propose_membership(1, [Remove(1), Remove(2), Remove(3)]),
        Err(RaftError::NoVotersLeft)
    );
    cluster.isolate(2);
    cluster.isolate(3);
    let (index, _) = cluster.propose_membership(1, [AddLearner(4)]).unwrap();
    let before = cluster.node(1).status();
    assert_eq!(
        cluster.propose_membership(1, [AddLearner(5)]),
        Err(RaftError::MembershipChangePending)
    );
    assert_eq!(cluster.node(1).status(), before);
    cluster.heal();
    cluster.tick_all(3);
    assert_eq!(commit_of(&cluster, 1), index);
    cluster.propose_membership(1, [AddLearner(5)]).unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.node(1).membership(),
        &with_learners(&[1, 2, 3], &[4, 5])
    );
}

#[test]
fn a_truncated_uncommitted_configuration_entry_reverts_the_configuration() {
    let mut cluster = cluster_with_spares(5, &[6], |config| config);
    let original = Membership::new([1, 2, 3, 4, 5]);
    // Only 2 receives the change.
    cluster.isolate(1);
    cluster
        .cut_links
        .retain(|link| *link != (1, 2) && *link != (2, 1));
    let (index, _) = cluster.propose_membership(1, [AddLearner(6)]).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(2).status().last_index, index);
    assert_eq!(
        cluster.node(2).membership(),
        &with_learners(&[1, 2, 3, 4, 5], &[6])
    );
    assert_eq!(cluster.node(2).status().membership_index, index);
    // A leader is elected by 3, 4, 5 and overwrites index `index` with its no-op.
    cluster.isolate(1);
    cluster.isolate(2);
    let leader = await_leader_among(&mut cluster, &[3, 4, 5]);
    let term = cluster.node(leader).status().term;
    for id in 3..=5 {
        cluster.cut_links.remove(&(2, id));
        cluster.cut_links.remove(&(id, 2));
    }
    cluster.tick_all(2);
    assert_eq!(cluster.node(2).term_of(index), Some(term));
    assert_eq!(
        cluster.node(2).membership(),
        &original,
        "member 2 kept a truncated config"
    );
    assert_eq!(cluster.node(2).status().membership_index, 0);
    // The old leader reverts too once it learns the new leader's log.
    cluster.heal();
    cluster.tick_all(2);
    assert_eq!(cluster.node(1).status().role, Role::Follower);
    assert_eq!(cluster.node(1).membership(), &original);
    // The change is possible again under the new leader.
    cluster.propose_membership(leader, [AddLearner(6)]).unwrap();
    cluster.stabilize();
    assert_eq!(
        cluster.node(6).membership(),
        &with_learners(&[1, 2, 3, 4, 5], &[6])
    );
}

#[test]
fn snapshots_carry_the_configuration_and_restarts_keep_it() {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    cluster.propose_membership(1, [AddLearner(4)]).unwrap();
    cluster.stabilize();
    let (promoted, _) = cluster.propose_membership(1, [PromoteLearner(4)]).unwrap();
    cluster.stabilize();
    cluster.propose(1, b"a").unwrap();
    cluster.stabilize();
    let four = Membership::new([1, 2, 3, 4]);
    // A snapshot below the last change carries the configuration in force there.
    assert_eq!(
        cluster.node(2).membership_at(promoted - 1),
        Some(with_learners(&[1, 2, 3], &[4]))
    );
    let applied = cluster.node(2).status().applied;
    cluster.compact(2, applied);
    assert_eq!(
        cluster.stores[&2].snapshot.as_ref().unwrap().membership,
        four
    );
    cluster.stop(2);
    cluster.restart(2);
    assert_eq!(cluster.node(2).membership(), &four);
    assert_eq!(cluster.node(2).status().first_index, applied + 1);
    // A snapshot between the changes, then a restart: the log tail re-applies the rest.
    cluster.stop(3);
    cluster.compact(3, promoted - 1);
    cluster.restart(3);
    assert_eq!(cluster.node(3).membership(), &four);
    // A new learner whose entries are compacted on the leader learns its configuration
    // (including itself) from the snapshot it installs.
    cluster.drop_messages(|_| true);
    cluster.isolate(5);
    let (added, _) = cluster.propose_membership(1, [AddLearner(5)]).unwrap();
    cluster.stabilize();
    cluster.propose(1, b"b").unwrap();
    cluster.stabilize();
    let applied = cluster.node(1).status().applied;
    assert!(applied > added);
    cluster.compact(1, applied);
    cluster.heal();
    cluster.tick_all(3);
    let expected = with_learners(&[1, 2, 3, 4], &[5]);
    assert_eq!(
        cluster.stores[&5].snapshot.as_ref().unwrap().membership,
        expected
    );
    assert_eq!(cluster.node(5).membership(), &expected);
    assert_eq!(commit_of(&cluster, 5), commit_of(&cluster, 1));
    cluster.stop(5);
    cluster.restart(5);
    assert_eq!(cluster.node(5).membership(), &expected);
}

/// A member removed while cut off never learns it; when it comes back it must not depose
/// the leader, with pre-vote and check-quorum and without both.
fn removed_member_returns(configure: fn(Config) -> Config) {
    let mut cluster = cluster_with_spares(3, &[], configure);
    cluster.isolate(3);
    let (index, _) = cluster.propose_membership(1, [Remove(3)]).unwrap();
    cluster.stabilize();
    assert_eq!(commit_of(&cluster, 1), index);
    assert_eq!(cluster.node(3).membership(), &Membership::new([1, 2, 3]));
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick(3);
        cluster.stabilize();
    }
    assert!(cluster.node(3).status().role != Role::Leader);
    cluster.heal();
    for _ in 0..5 * ELECTION_TICKS {
        cluster.tick_all(1);
        assert_eq!(cluster.leader(), Some(1));
        assert_eq!(cluster.node(1).status().term, 1, "the leader was deposed");
        assert_eq!(cluster.node(2).status().term, 1);
    }
    let (next, _) = cluster.propose(1, b"still fine").unwrap();
    cluster.stabilize();
    assert_eq!(commit_of(&cluster, 2), next);
}

#[test]
fn a_removed_member_does_not_disrupt_with_pre_vote_and_check_quorum() {
    removed_member_returns(|config| config);
}

#[test]
fn a_removed_member_does_not_disrupt_without_pre_vote_or_check_quorum() {
    removed_member_returns(|config| Config {
        pre_vote: false,
        check_quorum: false,
        ..config
    });
}

#[test]
fn reads_in_a_joint_configuration_need_both_majorities() {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    cluster.isolate(2);
    cluster.isolate(3);
    cluster
        .cut_links
        .retain(|(a, b)| [*a, *b].iter().any(|id| *id == 2 || *id == 3));
    cluster
        .propose_membership(1, [Remove(2), Remove(3), AddVoter(4), AddVoter(5)])
        .unwrap();
    cluster.stabilize();
    assert!(cluster.node(1).membership().is_joint());
    cluster.node_mut(1).read_index(7).unwrap();
    cluster.tick_all(2);
    assert!(
        cluster
            .read_states
            .get(&1)
            .is_none_or(|states| states.is_empty()),
        "a read confirmed by the new majority alone"
    );
    assert!(
        !cluster.any_queued(|message| matches!(message.body, MessageBody::TimeoutNow)),
        "no transfer"
    );
    // The leader cannot hold on without the old majority either (check-quorum).
    cluster.tick_all(2 * ELECTION_TICKS);
    assert_ne!(cluster.node(1).status().role, Role::Leader);
}

#[test]
fn a_readded_member_with_a_higher_term_catches_up_without_pre_vote_or_check_quorum() {
    // Found by the simulator (membership churn): a removed member that knows it is removed
    // cannot campaign, so when its term is above the cluster's (it campaigned while cut
    // off), nothing brings the cluster's term up to it. Re-added as a learner, it ignored
    // the lower-term leader without a word and never caught up.
    let mut cluster = cluster_with_spares(3, &[], |config| Config {
        pre_vote: false,
        check_quorum: false,
        ..config
    });
    cluster.propose_membership(1, [Remove(3)]).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(3).membership(), &Membership::new([1, 2]));
    // Member 3 learns of a higher term (a vote request it refuses).
    cluster.send(Message {
        from: 2,
        to: 3,
        term: 9,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 0,
            last_log_term: 0,
            leadership_transfer: false,
        },
    });
    cluster.drop_messages(|message| message.from == 3);
    while cluster.deliver_one() {}
    cluster.process(3);
    cluster.drop_messages(|message| message.from == 3);
    assert_eq!(cluster.node(3).status().term, 9);
    let leader = cluster.leader().unwrap();
    let (index, _) = cluster.propose_membership(leader, [AddLearner(3)]).unwrap();
    for _ in 0..10 * ELECTION_TICKS {
        cluster.tick_all(1);
    }
    let leader = cluster.leader().expect("a leader");
    assert!(commit_of(&cluster, leader) >= index);
    assert_eq!(
        commit_of(&cluster, 3),
        commit_of(&cluster, leader),
        "3 did not catch up"
    );
    assert_eq!(cluster.node(3).membership(), &with_learners(&[1, 2], &[3]));
}

#[test]
fn a_leader_that_removed_itself_and_lost_leadership_before_the_commit_can_finish_the_change() {
    // Found by the simulator (membership churn): {1, 2} with leader 1 removes 1; the entry
    // reaches only 1, then 1 steps down (check-quorum: its new configuration {2} is not
    // with it). 2 still has {1, 2} and needs 1's vote, which 1 refuses (its log is ahead),
    // while 1 — outside its own latest configuration — did not campaign: no leader ever.
    // Raft thesis §4.2.2: a member removed by an uncommitted entry still campaigns.
    let mut cluster = cluster_with_spares(2, &[], |config| config);
    cluster.cut_links.insert((1, 2));
    let (index, _) = cluster.propose_membership(1, [Remove(1)]).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).membership(), &Membership::new([2]));
    assert_eq!(cluster.node(2).membership(), &Membership::new([1, 2]));
    for _ in 0..3 * ELECTION_TICKS {
        cluster.tick_all(1);
    }
    assert_ne!(cluster.node(1).status().role, Role::Leader, "check-quorum");
    assert!(
        cluster.node(1).can_campaign(),
        "its removal is not committed"
    );
    cluster.heal();
    let leader = await_leader_among(&mut cluster, &[2]);
    assert_eq!(leader, 2);
    cluster.tick_all(2);
    assert!(commit_of(&cluster, 2) >= index);
    assert_eq!(cluster.node(2).membership(), &Membership::new([2]));
    assert!(commit_of(&cluster, 1) >= index);
    assert!(
        !cluster.node(1).can_campaign(),
        "it knows its removal is committed"
    );
}

#[test]
fn a_new_leader_leaves_a_joint_configuration_its_predecessor_could_not() {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    let (joint_index, _) = cluster
        .propose_membership(1, [Remove(2), Remove(3), AddVoter(4), AddVoter(5)])
        .unwrap();
    // The joint entry commits, but the entry leaving it never leaves member 1.
    stabilize_routed(&mut cluster, |message| match &message.body {
        MessageBody::AppendEntries { entries, .. }
            if entries.iter().any(|entry| entry.index > joint_index) =>
        {
            Route::Drop
        }
        _ => Route::Deliver,
    });
    assert_eq!(commit_of(&cluster, 1), joint_index);
    assert_eq!(cluster.node(1).status().last_index, joint_index + 1);
    assert!(cluster.node(4).membership().is_joint());
    cluster.stop(1);
    let leader = await_leader_among(&mut cluster, &[2, 3, 4, 5]);
    cluster.tick_all(2);
    let status = cluster.node(leader).status();
    assert_eq!(status.membership, Membership::new([1, 4, 5]));
    assert!(
        status.commit >= status.membership_index,
        "leave entry committed"
    );
    // If the new leader was a removed voter (2 or 3), it stepped down after the commit
    // and 4 or 5 took over.
    let leader = await_leader_among(&mut cluster, &[4, 5]);
    let (next, _) = cluster.propose(leader, b"after").unwrap();
    cluster.stabilize();
    for id in [4, 5] {
        assert_eq!(commit_of(&cluster, id), next);
    }
}

#[test]
fn the_application_context_rides_with_the_joint_entry_and_the_entry_that_leaves_it() {
    let mut cluster = cluster_with_spares(3, &[4, 5], |config| config);
    let context = bytes::Bytes::from_static(b"m4 and m5 addresses");
    let change =
        skiff_raft::MembershipChange::new([AddVoter(4), AddVoter(5)]).with_context(context.clone());
    let (joint_index, _) = cluster.node_mut(1).propose_membership(change).unwrap();
    cluster.stabilize();
    let status = cluster.node(1).status();
    assert!(
        !status.membership.is_joint(),
        "left the joint configuration"
    );
    assert!(status.membership_index > joint_index);
    for index in [joint_index, status.membership_index] {
        let entry = cluster.node(1).entry(index).expect("held").clone();
        assert_eq!(entry.kind, EntryKind::ConfigChange);
        let (_, carried) = skiff_raft::decode_membership_context(&entry.data).unwrap();
        assert_eq!(carried, &context[..], "entry {index}");
    }
    // Every member has heard from the leader lately.
    assert_eq!(
        cluster.node(1).status().recently_active,
        set(&[1, 2, 3, 4, 5])
    );
}

#[test]
fn a_member_without_a_leader_takes_the_term_of_a_removed_member_it_refuses() {
    // Found by the simulator (membership churn, no pre-vote): member 3 held the entry that
    // removed it but not its commit, so it kept campaigning; a member that had missed the
    // removal granted it every vote. The only member that could win refused 3 without
    // adopting its terms, so each of its own campaigns came a term behind 3's, found the
    // other voter already voted, and no leader was elected for good. Refusing without
    // adopting the term protects a leader from being deposed; without one, the term is
    // taken as usual.
    let mut cluster = cluster_with_spares(3, &[], |config| Config {
        pre_vote: false,
        ..config
    });
    cluster.propose_membership(1, [Remove(3)]).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.node(1).membership(), &Membership::new([1, 2]));
    let vote_request = |term| Message {
        from: 3,
        to: 1,
        term,
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: 1,
            last_log_term: 1,
            leadership_transfer: false,
        },
    };
    let refusals_to_3 = |cluster: &Cluster| {
        cluster.any_queued(|message| {
            message.to == 3
                && matches!(
                    message.body,
                    MessageBody::RequestVoteResponse { granted: false, .. }
                )
        })
    };
    // While it leads, member 1 keeps its term.
    cluster.node_mut(1).step(vote_request(7));
    cluster.process(1);
    assert_eq!(cluster.node(1).status().term, 1);
    assert_eq!(cluster.leader(), Some(1));
    cluster.drop_messages(|message| message.to == 3);
    // Cut off from 2, it steps down (check-quorum) and has no leader.
    cluster.isolate(2);
    for _ in 0..3 * ELECTION_TICKS {
        cluster.tick(1);
        cluster.stabilize();
    }
    let status = cluster.node(1).status();
    assert_eq!((status.role, status.leader), (Role::Follower, None));
    let term = status.term;
    cluster.node_mut(1).step(vote_request(term + 5));
    cluster.process(1);
    assert!(refusals_to_3(&cluster));
    assert_eq!(
        cluster.node(1).status().term,
        term + 5,
        "the term is adopted"
    );
}
