//! An in-process cluster for tests and benchmarks: members exchange messages through a
//! FIFO queue, storage is perfect and instant, and faults are explicit (isolate a member,
//! cut a link, drop messages, restart from the persisted state). Deterministic.
//!
//! This is the harness for the scenario tests that follow the Raft paper; the simulator
//! (`skiff-sim`) is the place for randomized faults.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::config::Config;
use crate::error::RaftError;
use crate::log::EntrySource;
use crate::membership::{MembershipChange, MembershipStep};
use crate::message::{Message, MessageBody};
use crate::node::{InitialState, RawNode, ReadState, Ready, Role};
use crate::types::{Entry, EntryKind, HardState, Membership, NodeId, SnapshotMeta};

/// What a member has made durable.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    /// Last persisted hard state.
    pub hard_state: HardState,
    /// Persisted entries after the snapshot (from index 1 without one).
    pub entries: Vec<Entry>,
    /// The latest snapshot taken or installed (the testkit keeps no state machine data).
    pub snapshot: Option<SnapshotMeta>,
}

impl MemoryStore {
    fn snapshot_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |meta| meta.index)
    }

    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.entries
            .truncate((first.index - 1 - self.snapshot_index()) as usize);
        self.entries.extend_from_slice(entries);
    }
}

/// A member's durable entries as an [`EntrySource`]: a copy of its [`MemoryStore`]'s,
/// refreshed whenever the store changes, and a count of the entries read.
#[derive(Debug, Default)]
pub struct StoreSource {
    /// Index of the entry before `entries[0]` and the entries.
    held: Mutex<(u64, Vec<Entry>)>,
    /// Entries handed out so far.
    pub reads: AtomicU64,
}

impl StoreSource {
    fn refresh(&self, store: &MemoryStore) {
        *self.held.lock().expect("source lock") = (store.snapshot_index(), store.entries.clone());
    }
}

impl EntrySource for StoreSource {
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        let held = self.held.lock().expect("source lock");
        let (before, entries) = &*held;
        if low <= *before || high > before + entries.len() as u64 + 1 {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in &entries[(low - before - 1) as usize..(high - before - 1) as usize] {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        self.reads.fetch_add(out.len() as u64, Ordering::Relaxed);
        Some(out)
    }
}

/// A cluster of [`RawNode`]s joined by an in-memory network.
pub struct Cluster {
    /// The members.
    pub nodes: BTreeMap<NodeId, RawNode>,
    /// Durable state of each member.
    pub stores: BTreeMap<NodeId, MemoryStore>,
    /// Applied application entries (no-ops and configuration entries excluded) of each
    /// member, in order.
    pub applied: BTreeMap<NodeId, Vec<Entry>>,
    /// Read states each member received.
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    /// Messages sent and not yet delivered.
    pub network: VecDeque<Message>,
    /// Directed links that drop everything.
    pub cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Members whose messages are never handed out (they are down).
    pub stopped: BTreeSet<NodeId>,
    /// Members that release applied entries (see [`Cluster::release_entries`]): their
    /// sources and how many applied entries they keep.
    pub sources: BTreeMap<NodeId, (Arc<StoreSource>, u64)>,
    configs: BTreeMap<NodeId, Config>,
    membership: Membership,
}

impl Cluster {
    /// A cluster of members `1..=size`, each configured by `configure` from the default.
    pub fn new(size: u64, configure: impl Fn(Config) -> Config) -> Cluster {
        let membership = Membership::new(1..=size);
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            stores: BTreeMap::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            network: VecDeque::new(),
            cut_links: BTreeSet::new(),
            stopped: BTreeSet::new(),
            sources: BTreeMap::new(),
            configs: BTreeMap::new(),
            membership,
        };
        for id in 1..=size {
            let config = configure(Config::new(id));
            cluster.configs.insert(id, config);
            cluster.stores.insert(id, MemoryStore::default());
            cluster.start(id);
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let store = &self.stores[&id];
        let initial = InitialState {
            hard_state: store.hard_state,
            snapshot: store.snapshot.clone(),
            entries: store.entries.clone(),
            membership: self.membership.clone(),
            applied: store.snapshot_index(),
        };
        let mut node = RawNode::new(self.configs[&id].clone(), initial).expect("valid config");
        if let Some((source, keep)) = self.sources.get(&id) {
            source.refresh(store);
            node.release_applied_entries(source.clone(), *keep);
        }
        self.nodes.insert(id, node);
        self.applied.insert(id, Vec::new());
        self.stopped.remove(&id);
    }

    /// Starts a spare member `id` that is not in the cluster's configuration (it learns its
    /// configuration from the log once a leader adds it).
    pub fn add_spare(&mut self, config: Config) {
        let id = config.id;
        self.configs.insert(id, config);
        self.stores.insert(id, MemoryStore::default());
        self.start(id);
    }

    /// Proposes a membership change made of `steps` on member `id`.
    pub fn propose_membership(
        &mut self,
        id: NodeId,
        steps: impl IntoIterator<Item = MembershipStep>,
    ) -> Result<(u64, u64), RaftError> {
        self.node_mut(id)
            .propose_membership(MembershipChange::new(steps))
    }

    /// From now on (restarts included), member `id` keeps only `keep` applied entries in
    /// memory and reads older ones back from its store (see
    /// [`RawNode::release_applied_entries`]).
    pub fn release_entries(&mut self, id: NodeId, keep: u64) {
        let source = Arc::new(StoreSource::default());
        source.refresh(&self.stores[&id]);
        self.sources.insert(id, (source.clone(), keep));
        self.node_mut(id).release_applied_entries(source, keep);
    }

    /// Entries member `id` has read back from its store since it began releasing them.
    pub fn entries_read_back(&self, id: NodeId) -> u64 {
        self.sources
            .get(&id)
            .map_or(0, |(source, _)| source.reads.load(Ordering::Relaxed))
    }

    /// Member `id` takes a snapshot at `index` (applied) and compacts its log and store.
    pub fn compact(&mut self, id: NodeId, index: u64) {
        let node = self.nodes.get_mut(&id).expect("member");
        node.compact(index);
        let meta = node.snapshot_meta().cloned().expect("just compacted");
        let store = self.stores.get_mut(&id).expect("member");
        let drop = (meta.index - store.snapshot_index()) as usize;
        store.entries.drain(..drop.min(store.entries.len()));
        store.snapshot = Some(meta);
        if let Some((source, _)) = self.sources.get(&id) {
            source.refresh(store);
        }
    }

    /// The member `id`.
    pub fn node(&self, id: NodeId) -> &RawNode {
        &self.nodes[&id]
    }

    /// Mutable access to member `id`.
    pub fn node_mut(&mut self, id: NodeId) -> &mut RawNode {
        self.nodes.get_mut(&id).expect("member")
    }

    /// Takes and carries out member `id`'s Ready, if any: persist instantly, queue
    /// messages, apply. Returns true if there was one.
    pub fn process(&mut self, id: NodeId) -> bool {
        self.process_ready(id).is_some()
    }

    /// Like [`Cluster::process`], and returns a copy of the Ready that was carried out so
    /// that a test can assert exactly what the member asked for.
    pub fn process_ready(&mut self, id: NodeId) -> Option<Ready> {
        if self.stopped.contains(&id) || !self.nodes[&id].has_ready() {
            return None;
        }
        let node = self.nodes.get_mut(&id).expect("member");
        let ready = node.ready();
        let copy = ready.clone();
        let store = self.stores.get_mut(&id).expect("member");
        if let Some((meta, _)) = &ready.snapshot {
            store.snapshot = Some(meta.clone());
            store.entries.clear();
        }
        if let Some(hard_state) = ready.hard_state {
            store.hard_state = hard_state;
        }
        store.append(&ready.entries);
        if let Some((source, _)) = self.sources.get(&id) {
            if ready.snapshot.is_some() || !ready.entries.is_empty() {
                source.refresh(store);
            }
        }
        if let Some((index, term)) = ready.last_entry() {
            node.on_persisted(index, term);
        }
        self.network.extend(ready.messages);
        self.network.extend(ready.messages_after_persist);
        if let Some(last) = ready.committed_entries.last() {
            let last_index = last.index;
            let applied = self.applied.get_mut(&id).expect("member");
            applied.extend(
                ready
                    .committed_entries
                    .into_iter()
                    .filter(|entry| entry.kind == EntryKind::Normal),
            );
            node.on_applied(last_index);
        }
        self.read_states
            .entry(id)
            .or_default()
            .extend(ready.read_states);
        Some(copy)
    }

    /// Delivers one queued message (dropping it if its link is cut). Returns false if none.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.network.pop_front() else {
            return false;
        };
        if self.cut_links.contains(&(message.from, message.to))
            || self.stopped.contains(&message.to)
            || self.stopped.contains(&message.from)
        {
            return true;
        }
        if let Some(node) = self.nodes.get_mut(&message.to) {
            node.step(message);
        }
        true
    }

    /// Processes Readies and delivers messages until nothing moves (bounded).
    pub fn stabilize(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                moved |= self.process(id);
            }
            while self.deliver_one() {
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not stabilize");
    }

    /// Ticks member `id` once.
    pub fn tick(&mut self, id: NodeId) {
        if !self.stopped.contains(&id) {
            self.node_mut(id).tick();
        }
    }

    /// Ticks every running member `ticks` times, stabilizing after each round.
    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.tick(id);
            }
            self.stabilize();
        }
    }

    /// Makes `id` campaign and lets the cluster settle; panics unless it becomes leader.
    pub fn elect(&mut self, id: NodeId) {
        self.node_mut(id).campaign();
        self.stabilize();
        assert_eq!(
            self.node(id).status().role,
            Role::Leader,
            "{id} was not elected"
        );
    }

    /// The running member that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(id, node)| !self.stopped.contains(id) && node.status().role == Role::Leader)
            .max_by_key(|(_, node)| node.status().term)
            .map(|(id, _)| *id)
    }

    /// Proposes `data` on member `id`.
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<(u64, u64), RaftError> {
        self.node_mut(id).propose(Bytes::copy_from_slice(data))
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cut_links.insert((id, other));
                self.cut_links.insert((other, id));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut_links.clear();
    }

    /// Stops `id` (it loses everything not persisted).
    pub fn stop(&mut self, id: NodeId) {
        self.stopped.insert(id);
    }

    /// Restarts `id` from its persisted state.
    pub fn restart(&mut self, id: NodeId) {
        self.start(id);
    }

    /// Drops queued messages matching `predicate`.
    pub fn drop_messages(&mut self, predicate: impl Fn(&Message) -> bool) {
        self.network.retain(|message| !predicate(message));
    }

    /// Payloads applied by member `id`.
    pub fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.applied[&id]
            .iter()
            .map(|entry| entry.data.to_vec())
            .collect()
    }

    /// Names of the queued messages, for assertions: `(from, to, name)`.
    pub fn queued(&self) -> Vec<(NodeId, NodeId, &'static str)> {
        self.network
            .iter()
            .map(|message| (message.from, message.to, message.body.name()))
            .collect()
    }

    /// The snapshot index of the last queued InstallSnapshot, if one is queued.
    pub fn queued_snapshot(&self) -> Option<u64> {
        self.network
            .iter()
            .filter_map(|message| match &message.body {
                MessageBody::InstallSnapshot { meta, .. } => Some(meta.index),
                _ => None,
            })
            .last()
    }

    /// True if any queued message matches.
    pub fn any_queued(&self, predicate: impl Fn(&Message) -> bool) -> bool {
        self.network.iter().any(predicate)
    }

    /// Injects a message into the network.
    pub fn send(&mut self, message: Message) {
        self.network.push_back(message);
    }

    /// Helper for tests: a message body's name.
    pub fn name(body: &MessageBody) -> &'static str {
        body.name()
    }
}
