//! Seeded random schedules over the testkit cluster: messages delivered out of order,
//! duplicated and lost, partitions, crashes and restarts, proposals and reads. After every
//! step the safety properties of Raft are checked. This is a small cousin of the simulator
//! (skiff-sim), kept here so that the core's own tests exercise interleavings that the
//! hand-written scenarios do not.
//!
//! Clocks tick in lockstep, which is the assumption lease reads rest on.
//!
//! A failure names its seed; replay it with
//! `SKIFF_SCHEDULE_SEEDS=SEED..SEED+1 cargo test -p skiff-raft --test random_schedules`.
//! With the planted bug `CommitByReplicaCount` the checker fires within the first few
//! thousand seeds; the default 60 seeds are a smoke test, the simulator is the deep search.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use skiff_raft::testkit::Cluster;
use skiff_raft::{Config, NodeId, ReadMode, Rng, Role};

const STEPS: usize = 3_000;

/// Safety bookkeeping across the whole run.
#[derive(Default)]
struct Checker {
    /// The leader of each term ever seen.
    leaders: BTreeMap<u64, NodeId>,
    /// Every index ever known committed somewhere, with the term and data it had.
    committed: BTreeMap<u64, (u64, Bytes)>,
    /// Per member: committed indexes already checked.
    checked_to: BTreeMap<NodeId, u64>,
    /// Per member: read states already checked.
    reads_checked: BTreeMap<NodeId, usize>,
    /// (member, context) -> highest commit index known anywhere when the read began.
    read_floor: BTreeMap<(NodeId, u64), u64>,
    /// Highest commit index ever known anywhere.
    max_commit: u64,
}

impl Checker {
    fn check(&mut self, cluster: &Cluster, seed: u64, step: usize) {
        let context = |what: &str| format!("seed {seed} step {step}: {what}");
        for (id, node) in &cluster.nodes {
            if cluster.stopped.contains(id) {
                continue;
            }
            let status = node.status();
            if status.role == Role::Leader {
                let first = *self.leaders.entry(status.term).or_insert(*id);
                assert_eq!(first, *id, "{}", context("two leaders in one term"));
            }
            let from = self.checked_to.get(id).copied().unwrap_or(0);
            for index in from + 1..=status.commit {
                let entry = node.entry(index).expect("committed entries are held");
                let seen = self
                    .committed
                    .entry(index)
                    .or_insert_with(|| (entry.term, entry.data.clone()));
                assert_eq!(
                    (seen.0, &seen.1),
                    (entry.term, &entry.data),
                    "{}",
                    context(&format!("member {id} committed a different entry {index}"))
                );
            }
            self.checked_to.insert(*id, status.commit.max(from));
            self.max_commit = self.max_commit.max(status.commit);
        }
        for (id, applied) in &cluster.applied {
            for entry in applied {
                let (term, data) = &self.committed[&entry.index];
                assert_eq!(
                    (*term, data),
                    (entry.term, &entry.data),
                    "{}",
                    context(&format!("member {id} applied a different entry"))
                );
            }
        }
        for (id, reads) in &cluster.read_states {
            let from = self.reads_checked.get(id).copied().unwrap_or(0);
            for read in &reads[from..] {
                if let Some(index) = read.index {
                    let floor = self.read_floor[&(*id, read.context)];
                    assert!(
                        index >= floor,
                        "{}",
                        context(&format!(
                            "member {id} read {} at index {index}, but {floor} was committed \
                             before the read began",
                            read.context
                        ))
                    );
                }
            }
            self.reads_checked.insert(*id, reads.len());
        }
    }
}

fn deliver_random(cluster: &mut Cluster, rng: &mut Rng, duplicate: bool) {
    if cluster.network.is_empty() {
        return;
    }
    let at = rng.range(0, cluster.network.len() as u64) as usize;
    let message = if duplicate {
        cluster.network[at].clone()
    } else {
        cluster.network.remove(at).expect("in range")
    };
    if cluster.cut_links.contains(&(message.from, message.to))
        || cluster.stopped.contains(&message.from)
        || cluster.stopped.contains(&message.to)
    {
        return;
    }
    cluster.node_mut(message.to).step(message);
}

/// Seeds to run: 0..60, or the range in `SKIFF_SCHEDULE_SEEDS` (`N` for 0..N, or `A..B`)
/// for long runs and for replaying a failing seed.
fn seeds() -> std::ops::Range<u64> {
    let Ok(value) = std::env::var("SKIFF_SCHEDULE_SEEDS") else {
        return 0..60;
    };
    let parse = |text: &str| {
        text.parse::<u64>()
            .expect("SKIFF_SCHEDULE_SEEDS: N or A..B")
    };
    match value.split_once("..") {
        Some((first, end)) => parse(first)..parse(end),
        None => 0..parse(&value),
    }
}

fn run(seed: u64, size: u64, read_mode: ReadMode) {
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::new(size, |config| Config {
        random_seed: seed.wrapping_mul(1_000).wrapping_add(config.id),
        read_mode,
        // Odd seeds send one entry per message: more ways for entries to arrive apart.
        max_message_bytes: if seed % 2 == 1 {
            1
        } else {
            config.max_message_bytes
        },
        ..config
    });
    let mut checker = Checker::default();
    let mut next_value = 0u64;
    let mut next_context = 0u64;
    for step in 0..STEPS {
        // Members mostly carry out their Readies promptly; sometimes one lags a step.
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            if rng.chance(3, 4) {
                cluster.process(id);
            }
        }
        let member = rng.range(1, size + 1);
        match rng.range(0, 1000) {
            0..=549 => deliver_random(&mut cluster, &mut rng, false),
            550..=569 => deliver_random(&mut cluster, &mut rng, true),
            570..=599 => {
                if !cluster.network.is_empty() {
                    let at = rng.range(0, cluster.network.len() as u64) as usize;
                    cluster.network.remove(at);
                }
            }
            600..=749 => {
                // All clocks advance together.
                let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
                for id in ids {
                    cluster.tick(id);
                }
            }
            750..=879 => {
                if !cluster.stopped.contains(&member) {
                    next_value += 1;
                    let _ = cluster.propose(member, format!("v{next_value}").as_bytes());
                }
            }
            880..=959 => {
                if !cluster.stopped.contains(&member) {
                    next_context += 1;
                    checker
                        .read_floor
                        .insert((member, next_context), checker.max_commit);
                    let _ = cluster.node_mut(member).read_index(next_context);
                }
            }
            960..=964 => cluster.isolate(member),
            965..=969 => {
                let other = rng.range(1, size + 1);
                if other != member {
                    cluster.cut_links.insert((member, other));
                }
            }
            970..=984 => cluster.heal(),
            985..=989 => {
                if !cluster.stopped.contains(&member) {
                    cluster.stop(member);
                } else {
                    cluster.restart(member);
                    checker.checked_to.insert(member, 0);
                }
            }
            990..=992 => {
                // A crash in the middle of a Ready: its `messages` went out, its writes
                // never became durable, and nothing after them happened.
                if !cluster.stopped.contains(&member) {
                    let ready = cluster.node_mut(member).ready();
                    cluster.network.extend(ready.messages);
                    cluster.stop(member);
                    cluster.restart(member);
                    checker.checked_to.insert(member, 0);
                }
            }
            993..=996 => {
                let target = rng.range(1, size + 1);
                let _ = cluster.node_mut(member).transfer_leader(target);
            }
            _ => {
                cluster.process(member);
            }
        }
        checker.check(&cluster, seed, step);
    }
    // Liveness: once every fault heals, a leader emerges and commits.
    cluster.heal();
    let stopped: Vec<NodeId> = cluster.stopped.iter().copied().collect();
    for id in stopped {
        cluster.restart(id);
        checker.checked_to.insert(id, 0);
    }
    for _ in 0..200 {
        cluster.tick_all(1);
        if cluster.leader().is_some() {
            break;
        }
    }
    let leader = cluster
        .leader()
        .unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
    let mut committed = false;
    for _ in 0..50 {
        if cluster.propose(leader, b"final").is_ok() {
            committed = true;
            break;
        }
        cluster.tick_all(1);
    }
    assert!(committed, "seed {seed}: the leader refuses proposals");
    cluster.tick_all(5);
    checker.check(&cluster, seed, STEPS);
    let last = cluster.node(leader).status().last_index;
    for id in 1..=size {
        assert_eq!(
            cluster.node(id).status().commit,
            last,
            "seed {seed}: member {id} did not catch up"
        );
    }
}

#[test]
fn random_schedules_keep_raft_safe_with_safe_reads() {
    for seed in seeds() {
        run(seed, 3, ReadMode::Safe);
        run(seed, 5, ReadMode::Safe);
    }
}

#[test]
fn random_schedules_keep_raft_safe_with_lease_reads() {
    for seed in seeds() {
        run(seed, 3, ReadMode::LeaseBased);
        run(seed, 5, ReadMode::LeaseBased);
    }
}
