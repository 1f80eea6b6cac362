//! Helpers shared by the scenario tests: building members with a given log, crafting
//! messages, and driving a [`Cluster`] while watching or rewriting what crosses the network.
#![allow(dead_code)]

use bytes::Bytes;
use skiff_raft::testkit::Cluster;
use skiff_raft::{
    Config, Entry, EntryKind, HardState, InitialState, Membership, Message, MessageBody, NodeId,
    RawNode, Ready,
};

/// An application entry whose payload names its position, e.g. `"3@2"`.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from(format!("{index}@{term}")),
    }
}

/// A log from index 1 whose entries have the given terms.
pub fn log_of(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(offset, term)| entry(offset as u64 + 1, *term))
        .collect()
}

/// The terms of a member's log, from index 1 to its last index.
pub fn terms_of(node: &RawNode) -> Vec<u64> {
    let last = node.status().last_index;
    (1..=last)
        .map(|index| node.term_of(index).expect("held entry"))
        .collect()
}

/// A member `id` of a cluster `1..=size` that starts with `entries` and `term`.
pub fn member(
    id: NodeId,
    size: u64,
    entries: Vec<Entry>,
    term: u64,
    configure: impl Fn(Config) -> Config,
) -> RawNode {
    RawNode::new(
        configure(Config::new(id)),
        InitialState {
            hard_state: HardState {
                term,
                vote: None,
                commit: 0,
            },
            snapshot: None,
            entries,
            membership: Membership::new(1..=size),
            applied: 0,
        },
    )
    .expect("valid member")
}

/// A config without pre-vote, for tests of the plain Raft election.
pub fn plain(config: Config) -> Config {
    Config {
        pre_vote: false,
        ..config
    }
}

/// A message.
pub fn message(from: NodeId, to: NodeId, term: u64, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

/// A real (not pre-) vote request.
pub fn vote_request(last_log_index: u64, last_log_term: u64) -> MessageBody {
    MessageBody::RequestVote {
        pre_vote: false,
        last_log_index,
        last_log_term,
        leadership_transfer: false,
    }
}

/// A vote answer.
pub fn vote_response(granted: bool) -> MessageBody {
    MessageBody::RequestVoteResponse {
        pre_vote: false,
        granted,
    }
}

/// An AppendEntries after `(prev_log_index, prev_log_term)`.
pub fn append(
    prev_log_index: u64,
    prev_log_term: u64,
    entries: Vec<Entry>,
    commit: u64,
) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index,
        prev_log_term,
        entries,
        commit,
    }
}

/// Takes a member's Ready and reports its entries as durable at once.
pub fn ready_and_persist(node: &mut RawNode) -> Ready {
    let ready = node.ready();
    if let Some((index, term)) = ready.last_entry() {
        node.on_persisted(index, term);
    }
    ready
}

/// `(to, kind)` of each message, for compact assertions.
pub fn kinds(messages: &[Message]) -> Vec<(NodeId, &'static str)> {
    messages
        .iter()
        .map(|message| (message.to, message.body.name()))
        .collect()
}

/// Installs a durable state on member `id` of `cluster` and restarts it from there.
pub fn install(cluster: &mut Cluster, id: NodeId, entries: Vec<Entry>, hard_state: HardState) {
    let store = cluster.stores.get_mut(&id).expect("member");
    store.entries = entries;
    store.hard_state = hard_state;
    cluster.restart(id);
}

/// What the network does with one message.
pub enum Route {
    /// Deliver it as it is.
    Deliver,
    /// Lose it.
    Drop,
    /// Deliver this message instead.
    Replace(Message),
}

/// Like [`Cluster::stabilize`], but every message passes through `route` first, and the
/// messages actually delivered are returned in order.
pub fn stabilize_routed(
    cluster: &mut Cluster,
    mut route: impl FnMut(&Message) -> Route,
) -> Vec<Message> {
    let mut delivered = Vec::new();
    for _ in 0..100_000 {
        let mut moved = false;
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            moved |= cluster.process(id);
        }
        while let Some(message) = cluster.network.pop_front() {
            moved = true;
            let message = match route(&message) {
                Route::Deliver => message,
                Route::Drop => continue,
                Route::Replace(other) => other,
            };
            if cluster.cut_links.contains(&(message.from, message.to))
                || cluster.stopped.contains(&message.from)
                || cluster.stopped.contains(&message.to)
            {
                continue;
            }
            delivered.push(message.clone());
            cluster.node_mut(message.to).step(message);
        }
        if !moved {
            return delivered;
        }
    }
    panic!("cluster did not stabilize");
}

/// [`Cluster::stabilize`] that also returns the messages delivered.
pub fn stabilize_traced(cluster: &mut Cluster) -> Vec<Message> {
    stabilize_routed(cluster, |_| Route::Deliver)
}

/// Ticks every running member once, then stabilizes, returning the messages delivered.
pub fn tick_traced(cluster: &mut Cluster) -> Vec<Message> {
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster.tick(id);
    }
    stabilize_traced(cluster)
}

/// Ticks the given members once each and stabilizes.
pub fn tick_members(cluster: &mut Cluster, ids: &[NodeId]) {
    for id in ids {
        cluster.tick(*id);
    }
    cluster.stabilize();
}

/// Delivers messages one at a time (processing every member's Ready in between) until
/// `done` holds; panics if the cluster goes quiet first.
pub fn step_until(cluster: &mut Cluster, mut done: impl FnMut(&Cluster) -> bool) {
    for _ in 0..100_000 {
        if done(cluster) {
            return;
        }
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        let mut moved = false;
        for id in ids {
            moved |= cluster.process(id);
            if done(cluster) {
                return;
            }
        }
        moved |= cluster.deliver_one();
        assert!(moved, "cluster went quiet before the condition held");
    }
    panic!("condition never held");
}

/// True if the message is an AppendEntries carrying at least one entry.
pub fn carries_entries(message: &Message) -> bool {
    matches!(&message.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
}
