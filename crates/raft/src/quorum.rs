//! Quorum arithmetic over simple and joint configurations. A joint configuration needs a
//! majority of both halves for every decision (Raft thesis §4.3).

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{Membership, NodeId};

/// Outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer be reached.
    Lost,
    /// Still undecided.
    Pending,
}

fn majority_vote(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut granted, mut missing) = (0usize, 0usize);
    for id in voters {
        match votes.get(id) {
            Some(true) => granted += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if granted + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// The largest index that a majority of `voters` has reached, given `acked(id)`.
/// An empty set places no constraint (returns `u64::MAX`).
fn majority_index(voters: &BTreeSet<NodeId>, acked: &impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX;
    }
    let mut indexes: Vec<u64> = voters.iter().map(|id| acked(*id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[voters.len() / 2]
}

/// Counts votes under `membership`: a joint configuration needs both halves to win.
pub fn vote_result(membership: &Membership, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let incoming = majority_vote(&membership.voters, votes);
    let outgoing = majority_vote(&membership.voters_outgoing, votes);
    match (incoming, outgoing) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

/// The largest index acknowledged by a quorum of `membership` (the minimum over both halves).
pub fn quorum_index(membership: &Membership, acked: impl Fn(NodeId) -> u64) -> u64 {
    let incoming = majority_index(&membership.voters, &acked);
    let outgoing = majority_index(&membership.voters_outgoing, &acked);
    incoming.min(outgoing)
}

/// True if the members in `active` form a quorum of `membership`.
pub fn is_quorum(membership: &Membership, active: impl Fn(NodeId) -> bool) -> bool {
    let votes: BTreeMap<NodeId, bool> = membership
        .members()
        .into_iter()
        .map(|id| (id, active(id)))
        .collect();
    vote_result(membership, &votes) == VoteResult::Won
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majority_of_three_and_joint() {
        let simple = Membership::new([1, 2, 3]);
        let mut votes = BTreeMap::new();
        votes.insert(1, true);
        assert_eq!(vote_result(&simple, &votes), VoteResult::Pending);
        votes.insert(2, false);
        assert_eq!(vote_result(&simple, &votes), VoteResult::Pending);
        votes.insert(3, true);
        assert_eq!(vote_result(&simple, &votes), VoteResult::Won);
        votes.insert(3, false);
        assert_eq!(vote_result(&simple, &votes), VoteResult::Lost);

        let mut joint = Membership::new([1, 2, 3]);
        joint.voters_outgoing = [3, 4, 5].into_iter().collect();
        let votes: BTreeMap<_, _> = [(1, true), (2, true), (3, true)].into_iter().collect();
        assert_eq!(vote_result(&joint, &votes), VoteResult::Pending);
        let votes: BTreeMap<_, _> = [(1, true), (2, true), (4, true)].into_iter().collect();
        assert_eq!(vote_result(&joint, &votes), VoteResult::Pending);
        let votes: BTreeMap<_, _> = [(1, true), (3, true), (4, true)].into_iter().collect();
        assert_eq!(vote_result(&joint, &votes), VoteResult::Won);
    }

    #[test]
    fn quorum_index_takes_the_median_and_the_joint_minimum() {
        let simple = Membership::new([1, 2, 3]);
        let matched = |id: NodeId| [0, 10, 7, 3][id as usize];
        assert_eq!(quorum_index(&simple, matched), 7);
        let mut joint = Membership::new([1, 2, 3]);
        joint.voters_outgoing = [3, 4, 5].into_iter().collect();
        let matched = |id: NodeId| [0, 10, 7, 3, 2, 1][id as usize];
        assert_eq!(quorum_index(&joint, matched), 2);
        let even = Membership::new([1, 2, 3, 4]);
        let matched = |id: NodeId| [0, 10, 7, 3, 2][id as usize];
        assert_eq!(quorum_index(&even, matched), 3);
    }
}
