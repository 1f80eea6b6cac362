//! Membership changes: the steps an application asks for, the configuration they lead to,
//! and the encoding of a configuration inside an [`EntryKind::ConfigChange`] entry.
//!
//! A configuration entry carries the **whole** configuration it puts in force (not a
//! delta), so a member learns its configuration from the last such entry in its log (or
//! from its snapshot) without replaying history. A change of at most one voter made of one
//! step is applied directly; anything else goes through a joint configuration whose
//! `voters_outgoing` are the old voters, which the leader leaves automatically once the
//! joint entry commits (Raft thesis §4.3).
//!
//! [`EntryKind::ConfigChange`]: crate::types::EntryKind::ConfigChange

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::RaftError;
use crate::types::{Membership, NodeId};

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipStep {
    /// Add a new member that votes at once.
    AddVoter(NodeId),
    /// Add a new non-voting member that receives the log.
    AddLearner(NodeId),
    /// Make a learner a voter.
    PromoteLearner(NodeId),
    /// Remove a voter or a learner.
    Remove(NodeId),
}

impl MembershipStep {
    /// The member the step is about.
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipStep::AddVoter(id)
            | MembershipStep::AddLearner(id)
            | MembershipStep::PromoteLearner(id)
            | MembershipStep::Remove(id) => id,
        }
    }
}

/// A membership change: steps applied together, in order, as one configuration change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MembershipChange {
    /// The steps; each member may appear in at most one. No steps (with a context) re-states
    /// the current configuration, to replicate new application data about its members.
    pub steps: Vec<MembershipStep>,
    /// Opaque application data carried in the configuration entry (e.g. the members'
    /// addresses), read back with [`decode_membership_context`]. Empty for none.
    pub context: Bytes,
}

impl MembershipChange {
    /// A change made of `steps`.
    pub fn new(steps: impl IntoIterator<Item = MembershipStep>) -> MembershipChange {
        MembershipChange {
            steps: steps.into_iter().collect(),
            context: Bytes::new(),
        }
    }

    /// A change of one step.
    pub fn single(step: MembershipStep) -> MembershipChange {
        MembershipChange::new([step])
    }

    /// The same change carrying `context` in its configuration entry.
    pub fn with_context(mut self, context: Bytes) -> MembershipChange {
        self.context = context;
        self
    }
}

/// The configuration `change` leads to from `current`, or why it is refused. A simple
/// transition when the change is one step touching at most one voter; otherwise a joint
/// configuration (`voters_outgoing` = the current voters).
pub fn plan_change(
    current: &Membership,
    change: &MembershipChange,
) -> Result<Membership, RaftError> {
    let invalid = |reason: String| Err(RaftError::InvalidMembershipChange(reason));
    if current.is_joint() {
        // The joint configuration is left by the leader itself; nothing else may start.
        return Err(RaftError::MembershipChangePending);
    }
    if change.steps.is_empty() {
        if change.context.is_empty() {
            return invalid("no steps".into());
        }
        // Only new context for the same configuration.
        return Ok(current.clone());
    }
    let mut seen = BTreeSet::new();
    for step in &change.steps {
        if step.node() == 0 {
            return invalid("node id 0".into());
        }
        if !seen.insert(step.node()) {
            return invalid(format!(
                "node {} appears in more than one step",
                step.node()
            ));
        }
    }
    let mut voters = current.voters.clone();
    let mut learners = current.learners.clone();
    for step in &change.steps {
        let member = voters.contains(&step.node()) || learners.contains(&step.node());
        match *step {
            MembershipStep::AddVoter(id) | MembershipStep::AddLearner(id) if member => {
                return invalid(format!("node {id} is already a member"));
            }
            MembershipStep::AddVoter(id) => {
                voters.insert(id);
            }
            MembershipStep::AddLearner(id) => {
                learners.insert(id);
            }
            MembershipStep::PromoteLearner(id) => {
                if !learners.remove(&id) {
                    return invalid(format!("node {id} is not a learner"));
                }
                voters.insert(id);
            }
            MembershipStep::Remove(id) => {
                if !voters.remove(&id) && !learners.remove(&id) {
                    return invalid(format!("node {id} is not a member"));
                }
            }
        }
    }
    if voters.is_empty() {
        return Err(RaftError::NoVotersLeft);
    }
    let changed_voters = voters.symmetric_difference(&current.voters).count();
    let voters_outgoing = if change.steps.len() == 1 && changed_voters <= 1 {
        BTreeSet::new()
    } else {
        current.voters.clone()
    };
    Ok(Membership {
        voters,
        voters_outgoing,
        learners,
    })
}

/// Why a configuration entry's payload does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipDecodeError {
    /// The payload ends early.
    #[error("configuration payload truncated")]
    Truncated,
    /// Unknown format version.
    #[error("unknown configuration format version {0}")]
    UnknownVersion(u8),
    /// A set is not strictly ascending, holds zero, or the sets overlap wrongly.
    #[error("malformed configuration: {0}")]
    Malformed(&'static str),
    /// Bytes follow the configuration.
    #[error("trailing bytes after the configuration")]
    TrailingBytes,
}

/// Version 1: the configuration alone. Version 2: followed by a varint length and the
/// application's context bytes.
const FORMAT_VERSION: u8 = 1;
const FORMAT_VERSION_WITH_CONTEXT: u8 = 2;

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn get_varint(input: &mut &[u8]) -> Result<u64, MembershipDecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input
            .split_first()
            .ok_or(MembershipDecodeError::Truncated)?;
        *input = rest;
        let bits = (byte & 0x7f) as u64;
        if shift == 63 && bits > 1 {
            return Err(MembershipDecodeError::Malformed("varint overflows"));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(MembershipDecodeError::Malformed("varint too long"))
}

/// Encodes a configuration as the payload of a `ConfigChange` entry: a version byte, then
/// voters, outgoing voters and learners, each as a varint count and varint ids ascending.
pub fn encode_membership(membership: &Membership) -> Bytes {
    encode_membership_with_context(membership, &[])
}

/// Encodes a configuration and the application's `context` (format version 2 when the
/// context is not empty, so entries without one keep version 1).
pub fn encode_membership_with_context(membership: &Membership, context: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(if context.is_empty() {
        FORMAT_VERSION
    } else {
        FORMAT_VERSION_WITH_CONTEXT
    });
    for set in [
        &membership.voters,
        &membership.voters_outgoing,
        &membership.learners,
    ] {
        put_varint(&mut buf, set.len() as u64);
        for id in set {
            put_varint(&mut buf, *id);
        }
    }
    if !context.is_empty() {
        put_varint(&mut buf, context.len() as u64);
        buf.put_slice(context);
    }
    buf.freeze()
}

/// Decodes the payload of a `ConfigChange` entry. Never panics; refuses anything that
/// [`encode_membership`] would not produce for a valid configuration (no voters, id zero,
/// unsorted or duplicate ids, a learner that also votes, trailing bytes).
pub fn decode_membership(input: &[u8]) -> Result<Membership, MembershipDecodeError> {
    decode_membership_context(input).map(|(membership, _)| membership)
}

/// Decodes the payload of a `ConfigChange` entry into the configuration and the context the
/// application attached to it (empty if none). Never panics.
pub fn decode_membership_context(
    mut input: &[u8],
) -> Result<(Membership, &[u8]), MembershipDecodeError> {
    let (&version, rest) = input
        .split_first()
        .ok_or(MembershipDecodeError::Truncated)?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_WITH_CONTEXT {
        return Err(MembershipDecodeError::UnknownVersion(version));
    }
    input = rest;
    let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
    for set in sets.iter_mut() {
        let count = get_varint(&mut input)?;
        if count > input.len() as u64 {
            return Err(MembershipDecodeError::Truncated);
        }
        let mut previous = 0u64;
        for _ in 0..count {
            let id = get_varint(&mut input)?;
            if id <= previous {
                return Err(MembershipDecodeError::Malformed(
                    "ids not strictly ascending or zero",
                ));
            }
            previous = id;
            set.insert(id);
        }
    }
    let mut context: &[u8] = &[];
    if version == FORMAT_VERSION_WITH_CONTEXT {
        let length = get_varint(&mut input)?;
        if length == 0 {
            return Err(MembershipDecodeError::Malformed("empty context"));
        }
        if length > input.len() as u64 {
            return Err(MembershipDecodeError::Truncated);
        }
        (context, input) = input.split_at(length as usize);
    }
    if !input.is_empty() {
        return Err(MembershipDecodeError::TrailingBytes);
    }
    let [voters, voters_outgoing, learners] = sets;
    if voters.is_empty() {
        return Err(MembershipDecodeError::Malformed("no voters"));
    }
    if learners
        .iter()
        .any(|id| voters.contains(id) || voters_outgoing.contains(id))
    {
        return Err(MembershipDecodeError::Malformed("a learner also votes"));
    }
    Ok((
        Membership {
            voters,
            voters_outgoing,
            learners,
        },
        context,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn encoding_round_trips_and_garbage_never_panics() {
        let membership = Membership {
            voters: set(&[1, 2, 300]),
            voters_outgoing: set(&[1, 2, 3]),
            learners: set(&[u64::MAX]),
        };
        let bytes = encode_membership(&membership);
        assert_eq!(decode_membership(&bytes), Ok(membership));
        for cut in 0..bytes.len() {
            assert!(decode_membership(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut state = 7u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (state >> 60) as usize;
            let data: Vec<u8> = (0..len)
                .map(|i| (state >> (i * 4 % 56)) as u8 ^ i as u8)
                .collect();
            let _ = decode_membership(&data);
        }
        assert!(decode_membership(&[1, 0, 0, 0]).is_err(), "no voters");
        assert!(
            decode_membership(&[1, 1, 2, 0, 1, 2]).is_err(),
            "learner votes"
        );
        assert!(decode_membership(&[1, 2, 2, 2, 0, 0]).is_err(), "duplicate");
        assert!(decode_membership(&[1, 1, 2, 0, 0, 9]).is_err(), "trailing");
        assert!(decode_membership(&[3, 1, 2, 0, 0]).is_err(), "version");
    }

    #[test]
    fn context_round_trips_and_version_one_entries_still_decode() {
        let membership = Membership::new([1, 2, 3]);
        let plain = encode_membership(&membership);
        assert_eq!(plain[0], 1, "no context keeps format version 1");
        assert_eq!(
            decode_membership_context(&plain),
            Ok((membership.clone(), &[][..]))
        );
        let bytes = encode_membership_with_context(&membership, b"addresses");
        assert_eq!(bytes[0], 2);
        assert_eq!(
            decode_membership_context(&bytes),
            Ok((membership.clone(), &b"addresses"[..]))
        );
        assert_eq!(decode_membership(&bytes), Ok(membership));
        for cut in 0..bytes.len() {
            assert!(decode_membership(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert_eq!(
            decode_membership(&trailing),
            Err(MembershipDecodeError::TrailingBytes)
        );
        assert!(
            decode_membership(&[2, 1, 2, 0, 0, 0]).is_err(),
            "an empty context is written as version 1"
        );
    }

    #[test]
    fn a_change_without_steps_restates_the_configuration_only_with_a_context() {
        let current = Membership::new([1, 2, 3]);
        assert!(plan_change(&current, &MembershipChange::default()).is_err());
        let restated = MembershipChange::default().with_context(Bytes::from_static(b"x"));
        assert_eq!(plan_change(&current, &restated), Ok(current));
    }

    #[test]
    fn plan_uses_a_simple_transition_only_for_one_step_of_at_most_one_voter() {
        let current = Membership::new([1, 2, 3]);
        let add = plan_change(
            &current,
            &MembershipChange::single(MembershipStep::AddVoter(4)),
        )
        .unwrap();
        assert_eq!(add, Membership::new([1, 2, 3, 4]));
        let replace = plan_change(
            &current,
            &MembershipChange::new([
                MembershipStep::Remove(1),
                MembershipStep::Remove(2),
                MembershipStep::AddVoter(4),
                MembershipStep::AddVoter(5),
            ]),
        )
        .unwrap();
        assert_eq!(replace.voters, set(&[3, 4, 5]));
        assert_eq!(replace.voters_outgoing, set(&[1, 2, 3]));
        let refused = |steps: Vec<MembershipStep>| {
            plan_change(&current, &MembershipChange::new(steps)).unwrap_err()
        };
        assert!(matches!(
            refused(vec![MembershipStep::AddVoter(2)]),
            RaftError::InvalidMembershipChange(_)
        ));
        assert!(matches!(
            refused(vec![MembershipStep::Remove(9)]),
            RaftError::InvalidMembershipChange(_)
        ));
        assert!(matches!(
            refused(vec![MembershipStep::PromoteLearner(2)]),
            RaftError::InvalidMembershipChange(_)
        ));
        assert!(matches!(
            refused(vec![
                MembershipStep::Remove(1),
                MembershipStep::AddLearner(1)
            ]),
            RaftError::InvalidMembershipChange(_)
        ));
        assert_eq!(
            refused(vec![
                MembershipStep::Remove(1),
                MembershipStep::Remove(2),
                MembershipStep::Remove(3)
            ]),
            RaftError::NoVotersLeft
        );
        assert_eq!(
            plan_change(
                &replace,
                &MembershipChange::single(MembershipStep::Remove(3))
            ),
            Err(RaftError::MembershipChangePending)
        );
    }
}
