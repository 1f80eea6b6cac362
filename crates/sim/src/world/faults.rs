//! The fault schedule drawn from the seed, how each fault is applied, healing, and the
//! liveness check after it.

use super::*;
use skiff_raft::{MembershipChange, MembershipStep};

impl World {
    pub(super) fn schedule_faults(&mut self) {
        let fault_micros = self.options.fault_ms * MICROS_PER_MILLI;
        // Half the seeds get a dense schedule: leadership churns and faults overlap, which
        // is where the rare interleavings (Figure 8 among them) live.
        let count = if self.rng.chance(1, 2) {
            self.rng.range(4, 16)
        } else {
            self.rng.range(20, 80)
        };
        for _ in 0..count {
            let at = self.rng.range(
                200 * MICROS_PER_MILLI,
                fault_micros.max(201 * MICROS_PER_MILLI),
            );
            let fault = match self.rng.range(0, 9) {
                0 => Fault::Partition(Partition::Split),
                1 => Fault::Partition(Partition::OneWay),
                2 => Fault::Partition(Partition::LeaderIsolated),
                3 => Fault::Partition(Partition::Bridge),
                4 => Fault::Crash {
                    leader: self.rng.chance(1, 2),
                    down_ms: self.rng.range(0, 2_000),
                },
                5 => {
                    let node = self.rng.range(1, self.nodes.len() as u64 + 1);
                    Fault::SlowDisk {
                        node,
                        until_micros: at + self.rng.range(100, 1_500) * MICROS_PER_MILLI,
                    }
                }
                6 => Fault::Transfer,
                7 => Fault::MessageChaos {
                    drop_percent: self.rng.range(0, 30),
                    duplicate_percent: self.rng.range(0, 10),
                },
                _ => Fault::HealPartition,
            };
            self.sequence += 1;
            self.queue.insert((at, self.sequence), Event::Fault(fault));
        }
        if self.churn {
            // Membership changes on top of the other faults, spread over the fault window.
            for _ in 0..self.rng.range(6, 24) {
                let at = self.rng.range(
                    100 * MICROS_PER_MILLI,
                    fault_micros.max(101 * MICROS_PER_MILLI),
                );
                self.sequence += 1;
                self.queue
                    .insert((at, self.sequence), Event::Fault(Fault::Churn));
            }
        }
        self.sequence += 1;
        self.queue
            .insert((fault_micros, self.sequence), Event::Heal);
        self.sequence += 1;
        let check_at = fault_micros + self.options.heal_ms * MICROS_PER_MILLI;
        self.queue
            .insert((check_at, self.sequence), Event::LivenessCheck);
        self.sequence += 1;
        let mark_at = fault_micros + self.options.heal_ms * MICROS_PER_MILLI / 2;
        self.queue
            .insert((mark_at, self.sequence), Event::CatchUpMark);
    }

    pub(super) fn apply_fault(&mut self, fault: Fault) {
        if self.healed {
            return;
        }
        self.stats.faults += 1;
        self.trace(format!("fault {fault:?}"));
        match fault {
            Fault::Partition(kind) => {
                // Partitions overlap; each one lasts for its own duration.
                let before = self.blocked.clone();
                match kind {
                    Partition::Split => self.split(None),
                    Partition::OneWay => {
                        for _ in 0..self.rng.range(1, 4) {
                            let (a, b) = (self.random_node(), self.random_node());
                            if a != b {
                                self.blocked.insert((a, b));
                            }
                        }
                    }
                    Partition::LeaderIsolated => {
                        if let Some(leader) = self.current_leader() {
                            self.cut_off(leader);
                        }
                    }
                    Partition::Bridge => {
                        let bridge = self.random_node();
                        self.split(Some(bridge));
                    }
                }
                self.trace(format!("blocked links {:?}", self.blocked));
                let links: Vec<(NodeId, NodeId)> =
                    self.blocked.difference(&before).copied().collect();
                let duration = self.rng.range(50, 1_500) * MICROS_PER_MILLI;
                self.schedule(duration, Event::Fault(Fault::Unblock { links }));
            }
            Fault::Unblock { links } => {
                for link in links {
                    self.blocked.remove(&link);
                }
            }
            Fault::HealPartition => self.blocked.clear(),
            Fault::Isolate {
                node,
                duration_micros,
            } => {
                self.cut_off(node);
                self.schedule(duration_micros, Event::Fault(Fault::Rejoin { node }));
            }
            Fault::CrashNode { node, down_ms } => {
                if self.nodes[&node].raw.is_some() {
                    self.crash(node);
                    self.schedule(down_ms * MICROS_PER_MILLI, Event::Restart { node });
                }
            }
            Fault::RollingIsolate { node } => {
                if let Some(previous) = self.rolling_victim.take() {
                    self.blocked
                        .retain(|(from, to)| *from != previous && *to != previous);
                }
                self.cut_off(node);
                self.rolling_victim = Some(node);
            }
            Fault::Rejoin { node } => {
                self.blocked
                    .retain(|(from, to)| *from != node && *to != node);
            }
            Fault::Crash { leader, down_ms } => {
                let target = if leader {
                    self.current_leader()
                } else {
                    Some(self.random_node())
                };
                if let Some(node) = target {
                    if self.nodes[&node].raw.is_some() {
                        self.crash(node);
                        self.schedule(down_ms * MICROS_PER_MILLI, Event::Restart { node });
                    }
                }
            }
            Fault::SlowDisk { node, until_micros } => {
                self.nodes.get_mut(&node).expect("member").disk_slow_until = until_micros;
            }
            Fault::Transfer => {
                if let Some(leader) = self.current_leader() {
                    let target = self.random_node();
                    let node = self.nodes.get_mut(&leader).expect("member");
                    let result = node.raw.as_mut().expect("up").transfer_leader(target);
                    self.trace(format!("transfer {leader} -> {target}: {result:?}"));
                    self.process(leader);
                }
            }
            Fault::MessageChaos {
                drop_percent,
                duplicate_percent,
            } => {
                self.drop_percent = drop_percent;
                self.duplicate_percent = duplicate_percent;
            }
            Fault::Churn => self.churn_membership(),
        }
    }

    /// Proposes a membership change on the current leader, drawn from its configuration:
    /// add a spare (or removed) member as a learner or a voter, promote a learner, remove a
    /// learner or a voter (the leader included), or replace one or two voters at once
    /// (joint consensus). At least one voter always remains.
    fn churn_membership(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let membership = self.nodes[&leader]
            .raw
            .as_ref()
            .expect("up")
            .membership()
            .clone();
        let outsiders: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|id| !membership.contains(*id))
            .collect();
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let pick = |rng: &mut Rng, from: &[NodeId]| -> Option<NodeId> {
            (!from.is_empty()).then(|| from[rng.range(0, from.len() as u64) as usize])
        };
        let mut steps = None;
        for _ in 0..8 {
            if steps.is_some() {
                break;
            }
            steps = match self.rng.range(0, 7) {
                0 | 1 => {
                    pick(&mut self.rng, &outsiders).map(|id| vec![MembershipStep::AddLearner(id)])
                }
                2 => pick(&mut self.rng, &learners)
                    .map(|id| vec![MembershipStep::PromoteLearner(id)]),
                3 => pick(&mut self.rng, &outsiders).map(|id| vec![MembershipStep::AddVoter(id)]),
                4 if voters.len() > 1 => {
                    pick(&mut self.rng, &voters).map(|id| vec![MembershipStep::Remove(id)])
                }
                5 => pick(&mut self.rng, &learners).map(|id| vec![MembershipStep::Remove(id)]),
                _ => {
                    // Joint: replace up to two voters by outsiders or learners.
                    let mut incoming: Vec<MembershipStep> = Vec::new();
                    let mut candidates: Vec<(NodeId, bool)> = outsiders
                        .iter()
                        .map(|id| (*id, false))
                        .chain(learners.iter().map(|id| (*id, true)))
                        .collect();
                    for _ in 0..self.rng.range(1, 3) {
                        if candidates.is_empty() {
                            break;
                        }
                        let (id, learner) =
                            candidates.remove(self.rng.range(0, candidates.len() as u64) as usize);
                        incoming.push(if learner {
                            MembershipStep::PromoteLearner(id)
                        } else {
                            MembershipStep::AddVoter(id)
                        });
                    }
                    let mut outgoing = voters.clone();
                    let mut steps = Vec::new();
                    for _ in 0..self.rng.range(1, 3) {
                        if outgoing.len() <= 1 {
                            break;
                        }
                        let id = outgoing.remove(self.rng.range(0, outgoing.len() as u64) as usize);
                        steps.push(MembershipStep::Remove(id));
                    }
                    steps.extend(incoming);
                    (steps.len() > 1).then_some(steps)
                }
            };
        }
        let Some(steps) = steps else {
            self.trace(format!("churn: nothing to change in {membership:?}"));
            return;
        };
        let change = MembershipChange::new(steps);
        let raw = self
            .nodes
            .get_mut(&leader)
            .expect("member")
            .raw
            .as_mut()
            .expect("up");
        let result = raw.propose_membership(change.clone());
        self.trace(format!(
            "churn: n{leader} proposes {:?}: {result:?}",
            change.steps
        ));
        if result.is_ok() {
            self.stats.membership_changes += 1;
        }
        self.process(leader);
    }

    /// Cuts every link to and from `node` (on top of the current partition).
    pub(super) fn cut_off(&mut self, node: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != node {
                self.blocked.insert((node, other));
                self.blocked.insert((other, node));
            }
        }
    }

    /// Splits the members into two random sides; a `bridge` member keeps both.
    pub(super) fn split(&mut self, bridge: Option<NodeId>) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let side: BTreeSet<NodeId> = ids
            .iter()
            .copied()
            .filter(|_| self.rng.chance(1, 2))
            .collect();
        for a in &ids {
            for b in &ids {
                let bridged = bridge == Some(*a) || bridge == Some(*b);
                if !bridged && side.contains(a) != side.contains(b) {
                    self.blocked.insert((*a, *b));
                }
            }
        }
    }

    pub(super) fn heal(&mut self) {
        self.trace("heal: links restored, crashed members restarted, no message loss".into());
        self.healed = true;
        self.heal_time = self.now;
        self.blocked.clear();
        self.drop_percent = 0;
        self.duplicate_percent = 0;
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.raw.is_none())
            .map(|node| node.id)
            .collect();
        for node in down {
            self.start_node(node);
        }
        for node in self.nodes.values_mut() {
            node.disk_slow_until = 0;
        }
    }

    pub(super) fn liveness_check(&mut self) {
        let Some(leader) = self.current_leader() else {
            let detail = format!("no leader {} ms after healing", self.options.heal_ms);
            self.violate("liveness", detail);
            return;
        };
        let status = self.nodes[&leader].raw.as_ref().expect("up").status();
        if self.committed.len() < status.commit as usize
            || self.nodes[&leader]
                .raw
                .as_ref()
                .expect("up")
                .term_of(status.commit)
                != Some(status.term)
        {
            let detail = format!(
                "leader {leader} has not committed in its term {}",
                status.term
            );
            self.violate("liveness", detail);
            return;
        }
        // Every member of the leader's configuration catches up: what was committed halfway
        // through the recovery window is applied everywhere by its end. Removed members and
        // spares need not.
        let membership = self.nodes[&leader]
            .raw
            .as_ref()
            .expect("up")
            .membership()
            .clone();
        for node in self.nodes.values() {
            if membership.contains(node.id) && node.applied_index < self.catch_up_target {
                let detail = format!(
                    "n{} applied only {} of the {} entries committed {} ms after healing",
                    node.id,
                    node.applied_index,
                    self.catch_up_target,
                    self.options.heal_ms / 2
                );
                self.violate("liveness", detail);
                return;
            }
        }
        for (index, client) in self.clients.iter().enumerate() {
            if let Some(op) = &client.current {
                if op.invoke < self.heal_time {
                    let detail = format!(
                        "client {index} operation {} invoked at {}us still pending {} ms after healing",
                        op.seq, op.invoke, self.options.heal_ms
                    );
                    self.violate("liveness", detail);
                    return;
                }
            }
        }
    }
}
