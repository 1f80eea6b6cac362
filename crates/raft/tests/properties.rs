//! Property tests of the pieces with the trickiest arithmetic: merging AppendEntries into a
//! log (against a plain vector model) and quorum counting (against brute force).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use skiff_raft::log::RaftLog;
use skiff_raft::quorum::{quorum_index, vote_result, VoteResult};
use skiff_raft::{Entry, EntryKind, Membership};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::new(),
    }
}

/// Terms that never decrease, as a Raft log's do.
fn log_terms(max_len: usize) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u64..3, 0..max_len).prop_map(|steps| {
        let mut term = 1;
        steps
            .into_iter()
            .map(|step| {
                term += step;
                term
            })
            .collect()
    })
}

proptest! {
    /// Merging `incoming` after `prev` gives: the old log up to `prev`, then the incoming
    /// entries; old entries after the incoming ones survive only if nothing conflicted.
    #[test]
    fn merge_matches_a_vector_model(
        old in log_terms(20),
        incoming_raw in log_terms(10),
        prev_pick in 0usize..21,
        shift in 0u64..3,
        replay in any::<bool>(),
    ) {
        let prev = (prev_pick.min(old.len())) as u64;
        let floor = if prev == 0 { 1 } else { old[prev as usize - 1] };
        let incoming: Vec<u64> = if replay {
            // A duplicated or delayed message: entries the log already holds, followed by
            // new ones at most.
            let held = &old[prev as usize..];
            let take = incoming_raw.len().min(held.len());
            let mut terms = held[..take].to_vec();
            let last = terms.last().copied().unwrap_or(floor);
            terms.extend(incoming_raw[take..].iter().map(|term| term + last - 1 + shift));
            terms
        } else {
            incoming_raw.iter().map(|term| term + floor - 1 + shift).collect()
        };
        let entries: Vec<Entry> = old
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(offset as u64 + 1, *term))
            .collect();
        let mut log = RaftLog::restore(0, 0, entries, 0);
        let message: Vec<Entry> = incoming
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(prev + 1 + offset as u64, *term))
            .collect();
        let last_new = log.merge(prev, message);
        prop_assert_eq!(last_new, prev + incoming.len() as u64);

        let mut model: Vec<u64> = old[..prev as usize].to_vec();
        model.extend(&incoming);
        let conflict = incoming
            .iter()
            .enumerate()
            .any(|(offset, term)| old.get(prev as usize + offset).is_some_and(|old_term| old_term != term));
        if !conflict && old.len() > model.len() {
            model.extend(&old[model.len()..]);
        }
        let merged: Vec<u64> = (1..=log.last_index()).map(|index| log.term(index).unwrap()).collect();
        prop_assert_eq!(&merged, &model);
        // The persisted index never covers an entry that changed.
        let unchanged = old.iter().zip(&merged).take_while(|(a, b)| a == b).count() as u64;
        prop_assert!(log.persisted() <= unchanged);
        log.check_invariants();
    }

    /// The quorum index is the largest index a majority of each half has reached.
    #[test]
    fn quorum_index_matches_brute_force(
        voters in prop::collection::btree_set(1u64..8, 1..6),
        outgoing in prop::collection::btree_set(1u64..8, 0..6),
        matches in prop::collection::vec(0u64..20, 8),
    ) {
        let membership = Membership {
            voters: voters.clone(),
            voters_outgoing: outgoing.clone(),
            learners: BTreeSet::new(),
        };
        let acked = |id: u64| matches[id as usize];
        let majority_reaches = |set: &BTreeSet<u64>, index: u64| {
            set.is_empty() || set.iter().filter(|id| acked(**id) >= index).count() * 2 > set.len()
        };
        let expected = (0..=20u64)
            .filter(|index| majority_reaches(&voters, *index) && majority_reaches(&outgoing, *index))
            .max()
            .unwrap();
        prop_assert_eq!(quorum_index(&membership, acked), expected);
    }

    /// Votes win only with a majority of grants in each half, and lose only when that has
    /// become impossible.
    #[test]
    fn vote_result_matches_brute_force(
        voters in prop::collection::btree_set(1u64..8, 1..6),
        outgoing in prop::collection::btree_set(1u64..8, 0..6),
        answers in prop::collection::vec(prop::option::of(any::<bool>()), 8),
    ) {
        let membership = Membership {
            voters: voters.clone(),
            voters_outgoing: outgoing.clone(),
            learners: BTreeSet::new(),
        };
        let votes: BTreeMap<u64, bool> = (1u64..8)
            .filter_map(|id| answers[id as usize].map(|granted| (id, granted)))
            .collect();
        let count = |set: &BTreeSet<u64>, granted_if_missing: bool| {
            set.iter()
                .filter(|id| votes.get(id).copied().unwrap_or(granted_if_missing))
                .count()
        };
        let wins = |set: &BTreeSet<u64>, optimistic: bool| set.is_empty() || count(set, optimistic) * 2 > set.len();
        let expected = if wins(&voters, false) && wins(&outgoing, false) {
            VoteResult::Won
        } else if wins(&voters, true) && wins(&outgoing, true) {
            VoteResult::Pending
        } else {
            VoteResult::Lost
        };
        prop_assert_eq!(vote_result(&membership, &votes), expected);
    }
}
