//! The safety invariants checked while a seed runs and at its end (see
//! docs/ARCHITECTURE.md for the list), and the durable-log facts they rely on.

use super::*;

impl SimNode {
    /// The entry at `index` in this member's log: held by its core, or released by it and
    /// read from its disk here (not through its `LogSource`, so that the run's read-back
    /// count is the core's own). `None` if down, compacted or beyond the log.
    pub(super) fn log_entry(&self, index: u64) -> Option<Entry> {
        let raw = self.raw.as_ref()?;
        if let Some(entry) = raw.entry(index) {
            return Some(entry.clone());
        }
        raw.term_of(index)?;
        let storage = self.storage.as_ref()?;
        lock(storage).entries(index, index + 1, 0).ok()?.pop()
    }
}

impl World {
    pub(super) fn check_node(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let Some(raw) = node.raw.as_ref() else {
            return;
        };
        let status = raw.status();
        if status.commit < node.last_commit {
            let detail = format!(
                "n{id} commit went from {} to {}",
                node.last_commit, status.commit
            );
            self.violate("commit monotonic", detail);
            return;
        }
        let mut problem = None;
        let mut new_committed = Vec::new();
        // Entries this member has compacted were checked when it applied them.
        let from = node.checked_commit.max(status.first_index - 1);
        for index in from + 1..=status.commit {
            let entry = node.log_entry(index).expect("committed entry is held");
            let hash = entry_hash(&entry);
            match self.committed.get(index as usize - 1) {
                Some((term, known)) if *term == entry.term && *known == hash => {}
                Some((term, _)) => {
                    problem = Some(format!(
                        "n{id} committed entry {index} of term {} but the cluster committed term {term}",
                        entry.term
                    ));
                    break;
                }
                None => {
                    assert_eq!(
                        self.committed.len() + new_committed.len(),
                        index as usize - 1
                    );
                    new_committed.push((entry.term, hash));
                }
            }
        }
        if let Some(detail) = problem {
            self.violate("state machine safety (commit)", detail);
            return;
        }
        let advanced = !new_committed.is_empty();
        self.commit_terms
            .extend(std::iter::repeat_n(status.term, new_committed.len()));
        self.committed.extend(new_committed);
        if advanced {
            if let Some(detail) = self.electable_without_committed() {
                self.violate("committed entry not protected", detail);
                return;
            }
        }
        if status.role == Role::Leader && status.membership_index > status.commit {
            // One membership change at a time: a leader's log holds at most one
            // configuration entry that is not committed.
            let earlier = (status.commit + 1..status.membership_index).find(|index| {
                node.log_entry(*index)
                    .is_some_and(|entry| entry.kind == EntryKind::ConfigChange)
            });
            if let Some(earlier) = earlier {
                let detail = format!(
                    "leader n{id} holds uncommitted configuration entries {earlier} and {} (commit {})",
                    status.membership_index, status.commit
                );
                self.violate("one membership change at a time", detail);
                return;
            }
        }
        let node = self.nodes.get_mut(&id).expect("member");
        node.last_commit = status.commit;
        node.checked_commit = status.commit;
        if status.role == Role::Leader {
            if let Some(other) = self.leaders_by_term.get(&status.term) {
                if *other != id {
                    let detail = format!("n{other} and n{id} both lead term {}", status.term);
                    self.violate("election safety", detail);
                }
            }
        }
    }

    /// Raft's safety argument, checked directly on what is durable (as if every member
    /// crashed and restarted now): no member whose disk lacks the newest committed entry can
    /// collect a quorum — of the configuration its own disk puts in force (both halves if
    /// joint) — of members whose logs are not more up to date than its own. Returns the
    /// member that could.
    pub(super) fn electable_without_committed(&self) -> Option<String> {
        let index = self.committed.len() as u64;
        let (term, _) = *self.committed.last()?;
        // Down members count too: they restart from their disks.
        let logs: Vec<(NodeId, u64, u64, bool, &Membership)> = self
            .nodes
            .values()
            .map(|node| {
                let (last_index, last_term) = node.durable.last();
                (
                    node.id,
                    last_term,
                    last_index,
                    node.durable.holds(index, term),
                    node.durable.membership(),
                )
            })
            .collect();
        for (candidate, last_term, last_index, holds, membership) in &logs {
            if *holds || !membership.is_voter(*candidate) {
                continue;
            }
            // Members whose log is not more up to date than the candidate's would vote for it.
            let voters: Vec<NodeId> = logs
                .iter()
                .filter(|(_, voter_term, voter_index, ..)| {
                    (*last_term, *last_index) >= (*voter_term, *voter_index)
                })
                .map(|(voter, ..)| *voter)
                .collect();
            if skiff_raft::quorum::is_quorum(membership, |id| voters.contains(&id)) {
                return Some(format!(
                    "entry {index} (term {term}) is committed, yet n{candidate} (durable last entry {last_index}, term {last_term}, configuration {membership:?}) lacks it and could be elected by {voters:?}"
                ));
            }
        }
        None
    }

    pub(super) fn final_checks(&mut self) {
        // Log matching: any two members whose logs hold an entry with the same index and
        // term hold identical logs up to it (over the range both still hold).
        let logs: Vec<(NodeId, EntryDigests)> = self
            .nodes
            .values()
            .filter_map(|node| {
                let raw = node.raw.as_ref()?;
                let status = raw.status();
                Some((
                    node.id,
                    (status.first_index..=status.last_index)
                        .map(|index| {
                            let entry = node.log_entry(index).expect("held");
                            (index, (entry.term, entry_hash(&entry)))
                        })
                        .collect(),
                ))
            })
            .collect();
        for (position, (a, log_a)) in logs.iter().enumerate() {
            for (b, log_b) in &logs[position + 1..] {
                let common: Vec<u64> = log_a
                    .keys()
                    .filter(|index| log_b.contains_key(index))
                    .copied()
                    .collect();
                let last_match = common
                    .iter()
                    .rev()
                    .find(|index| log_a[index].0 == log_b[index].0);
                if let Some(last_match) = last_match {
                    let differs = common
                        .iter()
                        .take_while(|index| *index <= last_match)
                        .any(|index| log_a[index] != log_b[index]);
                    if differs {
                        let detail = format!(
                            "n{a} and n{b} agree on entry {last_match} but differ before it"
                        );
                        self.violate("log matching", detail);
                        return;
                    }
                }
            }
        }
        // No acknowledged write lost: each is committed at the index it was acknowledged at.
        for (index, (client, seq)) in self.acknowledged.clone() {
            let Some(leader) = self.current_leader() else {
                break;
            };
            let node = &self.nodes[&leader];
            let raw = node.raw.as_ref().expect("up");
            if index < raw.status().first_index {
                continue; // inside the leader's snapshot, which holds only committed state
            }
            let command = node
                .log_entry(index)
                .and_then(|entry| Command::decode(&entry.data));
            match command {
                Some(command) if command.client == client as u64 && command.seq == seq => {}
                other => {
                    let detail = format!(
                        "write {client}:{seq} acknowledged at index {index}; the leader n{leader} holds {other:?}"
                    );
                    self.violate("acknowledged write lost", detail);
                    return;
                }
            }
        }
        // Operations still in flight at the end may or may not have taken effect.
        for client in 0..self.clients.len() {
            if let Some(op) = self.clients[client].current.take() {
                self.record_unknown(client, op);
            }
        }
        // Linearizability of the whole client history.
        match crate::history::check(&self.history) {
            Ok(crate::history::Checked::Linearizable) => {}
            Ok(crate::history::Checked::Inconclusive(keys)) => {
                // Not a violation, and not a pass either: counted and reported.
                self.stats.linearizability_inconclusive += 1;
                self.trace(format!(
                    "linearizability check inconclusive (search budget exhausted) on keys {keys:?}"
                ));
            }
            Err(detail) => self.violate("linearizability", detail),
        }
    }
}

/// What a recovered store lost that it had promised to keep, if anything.
pub(super) fn recovery_problem(node: &SimNode, hard_state: &HardState) -> Option<String> {
    let synced = node.synced_hard_state;
    if hard_state.term < synced.term
        || (hard_state.term == synced.term
            && synced.vote.is_some()
            && hard_state.vote != synced.vote)
    {
        return Some(format!(
            "recovered hard state {hard_state:?} is older than the synced {synced:?}"
        ));
    }
    // Lost entries are not checked here: the storage crate's crash tests do that, and here
    // their consequences (a lost acknowledged entry) break the Raft invariants.
    None
}

/// The synced part of a member's log, as (index, term) facts, and the configuration it
/// puts in force.
#[derive(Clone, Debug, Default)]
pub(super) struct DurableLog {
    snapshot_index: u64,
    snapshot_term: u64,
    /// Terms of the entries after the snapshot.
    terms: Vec<u64>,
    /// The configuration of the snapshot (or of the bootstrap).
    base: Membership,
    /// Configuration entries after the snapshot, by index.
    configs: BTreeMap<u64, Membership>,
}

impl DurableLog {
    pub(super) fn from_recovered(
        snapshot: Option<&SnapshotMeta>,
        entries: &[Entry],
        bootstrap: &Membership,
    ) -> DurableLog {
        let mut log = DurableLog {
            base: bootstrap.clone(),
            ..DurableLog::default()
        };
        let mut after = entries;
        if let Some(meta) = snapshot {
            log.install(meta);
            // The store may keep a tail behind its snapshot; the core drops it at start.
            let behind = entries.iter().take_while(|e| e.index <= meta.index).count();
            after = &entries[behind..];
        }
        log.append(after);
        log
    }

    pub(super) fn install(&mut self, meta: &SnapshotMeta) {
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.terms.clear();
        self.base = meta.membership.clone();
        self.configs.clear();
    }

    pub(super) fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let keep = first.index.saturating_sub(self.snapshot_index + 1) as usize;
        self.terms.truncate(keep);
        self.terms.extend(entries.iter().map(|entry| entry.term));
        self.configs.split_off(&first.index);
        for entry in entries {
            if entry.kind == EntryKind::ConfigChange && entry.index > self.snapshot_index {
                if let Ok(membership) = decode_membership(&entry.data) {
                    self.configs.insert(entry.index, membership);
                }
            }
        }
    }

    /// The configuration a member restarting from this disk would be in.
    pub(super) fn membership(&self) -> &Membership {
        self.configs.values().next_back().unwrap_or(&self.base)
    }

    /// (last index, last term).
    pub(super) fn last(&self) -> (u64, u64) {
        let last_index = self.snapshot_index + self.terms.len() as u64;
        (
            last_index,
            *self.terms.last().unwrap_or(&self.snapshot_term),
        )
    }

    /// True if the durable log holds entry `(index, term)` (a snapshot holds only
    /// committed entries, so anything it covers counts as held).
    pub(super) fn holds(&self, index: u64, term: u64) -> bool {
        index <= self.snapshot_index
            || self.terms.get((index - self.snapshot_index - 1) as usize) == Some(&term)
    }
}

pub(super) fn entry_hash(entry: &Entry) -> u64 {
    let mut hash = Fnv::new();
    hash.write_u64(entry.term);
    hash.write_u64(entry.index);
    hash.write_u64(entry.kind.code() as u64);
    hash.write(&entry.data);
    hash.finish()
}
