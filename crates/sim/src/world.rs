//! One simulated run: a cluster of skiff-raft members, a faulty network, faulty disks,
//! clients, and a fault schedule, all driven by one seed on one thread with simulated time.
//!
//! Time is in microseconds. Every event goes through one ordered queue keyed by
//! `(time, sequence)`, so a seed always replays the same way; the trace hash proves it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use skiff_raft::{
    decode_membership, Config, Entry, EntryKind, EntrySource, HardState, InitialState, Membership,
    Message, MessageBody, NodeId, PlantedBug, RaftError, RawNode, ReadMode, Rng, Role,
    SnapshotMeta,
};
use skiff_storage::{
    CrashOptions, SimulatedFileSystem, SimulatedStorage, Storage, StorageConfig, StorageError,
};

use crate::command::{Applied, Command, KvState, Op, Output};
use crate::history::{HistoryOp, Outcome};

mod checks;
mod faults;

use checks::{entry_hash, recovery_problem, DurableLog};

const MICROS_PER_MILLI: u64 = 1_000;

/// What one run looks like. Everything else is drawn from the seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Cluster size (3, 5 or 7); 0 draws it from the seed.
    pub nodes: usize,
    /// Simulated time with faults, in milliseconds.
    pub fault_ms: u64,
    /// Simulated time after healing, within which the cluster must recover, in milliseconds.
    pub heal_ms: u64,
    /// Print every event.
    pub trace: bool,
    /// Plant a known bug (tests of the simulator itself).
    pub planted_bug: PlantedBug,
    /// Membership churn (spare members added as learners and promoted, members removed,
    /// the leader included, joint changes): `None` draws it from the seed (half the seeds).
    pub churn: Option<bool>,
}

impl Options {
    /// Defaults for `seed`.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            nodes: 0,
            fault_ms: 6_000,
            heal_ms: 4_000,
            trace: false,
            planted_bug: PlantedBug::None,
            churn: None,
        }
    }
}

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which invariant.
    pub invariant: String,
    /// Details.
    pub detail: String,
    /// Simulated time in microseconds.
    pub at_micros: u64,
}

/// Figures of a finished run.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Events processed.
    pub events: u64,
    /// Client operations completed with a known result.
    pub operations_ok: u64,
    /// Client operations whose outcome stayed unknown.
    pub operations_unknown: u64,
    /// Faults injected.
    pub faults: u64,
    /// Crashes among them.
    pub crashes: u64,
    /// Messages dropped by faults.
    pub messages_dropped: u64,
    /// Leader elections observed.
    pub elections: u64,
    /// Hash of the whole trace.
    pub trace_hash: u64,
    /// 1 if the linearizability checker ran out of budget on this run's history.
    pub linearizability_inconclusive: u64,
    /// 1 if the seed ran with membership churn.
    pub churn: u64,
    /// Membership changes accepted by a leader.
    pub membership_changes: u64,
    /// Entries members' cores read back from their logs after releasing them (to send, or
    /// for the checks).
    pub entries_read_back: u64,
}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    Deliver(Message),
    DiskDone {
        node: NodeId,
        incarnation: u64,
    },
    Request {
        node: NodeId,
        request: Request,
    },
    Response {
        client: usize,
        seq: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    ClientSend {
        client: usize,
        seq: u64,
    },
    ClientNext {
        client: usize,
    },
    Fault(Fault),
    Restart {
        node: NodeId,
    },
    Heal,
    LivenessCheck,
    /// Records what every member must have applied by the liveness check.
    CatchUpMark,
}

#[derive(Clone, Debug)]
struct Request {
    client: usize,
    seq: u64,
    op: Op,
    read_mode: ClientRead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientRead {
    /// Reads go through the log like writes.
    Log,
    /// Reads use ReadIndex (or the lease) on whichever member receives them.
    ReadIndex,
}

#[derive(Clone, Debug)]
enum Reply {
    Done(Output, Option<u64>),
    NotLeader(Option<NodeId>),
    Retry,
}

#[derive(Clone, Debug)]
enum Fault {
    Partition(Partition),
    HealPartition,
    Crash {
        leader: bool,
        down_ms: u64,
    },
    SlowDisk {
        node: NodeId,
        until_micros: u64,
    },
    Transfer,
    /// Cut one member off (added to the current partition) until `Rejoin`.
    Isolate {
        node: NodeId,
        duration_micros: u64,
    },
    /// Crash one member, restarting it after `down_ms`.
    CrashNode {
        node: NodeId,
        down_ms: u64,
    },
    /// Cut `node` off and bring back the previous rolling victim.
    RollingIsolate {
        node: NodeId,
    },
    /// Restore links a partition cut.
    Unblock {
        links: Vec<(NodeId, NodeId)>,
    },
    /// Restore the links an `Isolate` cut.
    Rejoin {
        node: NodeId,
    },
    MessageChaos {
        drop_percent: u64,
        duplicate_percent: u64,
    },
    /// Propose a membership change on the current leader (drawn when applied, from its
    /// configuration).
    Churn,
}

#[derive(Clone, Debug)]
enum Partition {
    Split,
    OneWay,
    LeaderIsolated,
    Bridge,
}

struct DiskWrite {
    /// A snapshot received from the leader, installed before the entries.
    snapshot: Option<(SnapshotMeta, Bytes)>,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    after_persist: Vec<Message>,
    done_at: u64,
}

struct SimNode {
    id: NodeId,
    incarnation: u64,
    raw: Option<RawNode>,
    /// The member's disk: the real write-ahead log code on a simulated file system that
    /// loses, tears or garbles unsynced bytes on a crash.
    file_system: SimulatedFileSystem,
    /// Shared with the core, which reads released entries back from it (see `LogSource`).
    storage: Option<Arc<Mutex<SimulatedStorage>>>,
    /// The newest hard state a sync returned for; recovery must never go behind it.
    synced_hard_state: HardState,
    /// What the member's disk holds for sure: its snapshot (index, term) and the term of
    /// every synced entry after it. Kept across crashes, for the electability invariant.
    durable: DurableLog,
    disk: VecDeque<DiskWrite>,
    disk_slow_until: u64,
    kv: KvState,
    applied_index: u64,
    /// Index of the member's latest snapshot (its log is compacted up to here).
    snapshot_index: u64,
    tick_micros: u64,
    pending_commands: BTreeSet<(usize, u64)>,
    pending_reads: BTreeMap<u64, (usize, u64, String)>,
    waiting_reads: Vec<(u64, usize, u64, String)>,
    next_read_context: u64,
    last_commit: u64,
    checked_commit: u64,
    last_role: Role,
}

struct ClientOp {
    seq: u64,
    op: Op,
    read_mode: ClientRead,
    invoke: u64,
    attempts: u32,
}

struct Client {
    target: NodeId,
    seq: u64,
    current: Option<ClientOp>,
    completed: u64,
}

/// The simulated world of one seed.
pub struct World {
    options: Options,
    rng: Rng,
    now: u64,
    sequence: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: BTreeMap<NodeId, SimNode>,
    /// The configuration at bootstrap (members `1..=size`; spare members start outside it).
    membership: Membership,
    /// Membership churn is on for this seed.
    churn: bool,
    config: Config,
    clients: Vec<Client>,
    keys: Vec<String>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    drop_percent: u64,
    duplicate_percent: u64,
    healed: bool,
    heal_time: u64,
    /// Committed index every member must have applied by the liveness check.
    catch_up_target: u64,
    max_attempts: u32,
    log_read_percent: u64,
    isolate_new_leader_percent: u64,
    /// The rolling nemesis is on for this seed.
    rolling_leader_isolation: bool,
    /// The member the rolling nemesis cut off last.
    rolling_victim: Option<NodeId>,
    /// Take a snapshot and compact the log every this many applied entries (0: never).
    snapshot_every: u64,
    /// Entries kept in the log behind each snapshot (`compact_keeping`).
    catchup_entries: u64,
    /// Applied entries each member's core keeps in memory; older ones are released and read
    /// back from the member's log (`release_applied_entries`). `None`: nothing is released.
    kept_entries: Option<u64>,
    /// Entries read back through every `LogSource` of the run.
    entries_read_back: Arc<AtomicU64>,
    // checkers
    leaders_by_term: BTreeMap<u64, NodeId>,
    /// `(term, hash)` of every committed entry, by index (from 1).
    committed: Vec<(u64, u64)>,
    /// The term in which each entry of `committed` was first seen committed: the term of
    /// the member that first held it as committed (the leader that committed it).
    commit_terms: Vec<u64>,
    acknowledged: BTreeMap<u64, (usize, u64)>,
    history: Vec<HistoryOp>,
    violation: Option<Violation>,
    stats: RunStats,
    trace_tail: VecDeque<String>,
}

const TRACE_TAIL_LINES: usize = 60;

/// index -> (term, hash) of the entries a member holds.
type EntryDigests = BTreeMap<u64, (u64, u64)>;

/// FNV-1a, 64 bits: a stable hash (std's hasher is not guaranteed stable across releases).
pub struct Fnv(u64);

impl Fnv {
    /// A fresh hasher.
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    /// Feeds bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= *byte as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    /// Feeds a number.
    pub fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }
    /// The hash.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

impl World {
    /// Builds the world for `options.seed`.
    pub fn new(options: Options) -> World {
        let mut rng = Rng::new(options.seed);
        let size = match options.nodes {
            0 => [3, 5, 7][rng.range(0, 3) as usize],
            size => size,
        } as u64;
        let membership = Membership::new(1..=size);
        let drawn_churn = rng.chance(1, 2);
        let churn = options.churn.unwrap_or(drawn_churn);
        let spares = if churn { rng.range(1, 3) } else { 0 };
        let mut config = Config::new(1);
        config.election_ticks = 10;
        config.heartbeat_ticks = 1;
        // Pre-vote and check-quorum are options of the library: test without them too
        // (more disruptive elections, more divergent logs).
        config.pre_vote = rng.chance(2, 3);
        config.check_quorum = rng.chance(2, 3);
        config.read_mode = if config.check_quorum && rng.chance(1, 2) {
            ReadMode::LeaseBased
        } else {
            ReadMode::Safe
        };
        config.max_inflight_messages = [1, 1, 4, 64, 256][rng.range(0, 5) as usize];
        config.max_message_bytes = [150, 150, 1_000, 1 << 20][rng.range(0, 4) as usize];
        config.max_uncommitted_bytes = [600, 1 << 20][rng.range(0, 2) as usize];
        config.max_apply_bytes = [100, 1 << 20][rng.range(0, 2) as usize];
        config.planted_bug = options.planted_bug;
        let mut nodes = BTreeMap::new();
        for id in 1..=size + spares {
            // Clock skew: each member's tick runs up to 5% fast or slow.
            let tick_micros = 10_000 * (950 + rng.range(0, 101)) / 1_000;
            nodes.insert(
                id,
                SimNode {
                    id,
                    incarnation: 0,
                    raw: None,
                    file_system: SimulatedFileSystem::new(),
                    storage: None,
                    synced_hard_state: HardState::default(),
                    durable: DurableLog::default(),
                    disk: VecDeque::new(),
                    disk_slow_until: 0,
                    kv: KvState::default(),
                    applied_index: 0,
                    snapshot_index: 0,
                    tick_micros,
                    pending_commands: BTreeSet::new(),
                    pending_reads: BTreeMap::new(),
                    waiting_reads: Vec::new(),
                    next_read_context: 0,
                    last_commit: 0,
                    checked_commit: 0,
                    last_role: Role::Follower,
                },
            );
        }
        let client_count = rng.range(3, 7) as usize;
        let clients = (0..client_count)
            .map(|_| Client {
                target: rng.range(1, size + 1),
                seq: 0,
                current: None,
                completed: 0,
            })
            .collect();
        let keys = (0..rng.range(1, 4)).map(|key| format!("k{key}")).collect();
        let log_read_percent = [0, 50, 100][rng.range(0, 3) as usize];
        let max_attempts = rng.range(2, 6) as u32;
        let isolate_new_leader_percent = [20, 40, 70][rng.range(0, 3) as usize];
        let snapshot_every = [0, 0, 40, 300][rng.range(0, 4) as usize];
        let rolling_leader_isolation = rng.chance(1, 4);
        // From the seed, not the generator, so every other choice of a seed stays as it was.
        let catchup_entries = [0, 0, 5, 30][(options.seed.rotate_right(17) % 4) as usize];
        let kept_entries = [Some(0), Some(0), Some(3), Some(40), None]
            [(options.seed.rotate_right(29) % 5) as usize];
        let mut world = World {
            options,
            rng,
            now: 0,
            sequence: 0,
            queue: BTreeMap::new(),
            nodes,
            membership,
            churn,
            config,
            clients,
            keys,
            blocked: BTreeSet::new(),
            drop_percent: 0,
            duplicate_percent: 0,
            healed: false,
            heal_time: 0,
            catch_up_target: 0,
            max_attempts,
            log_read_percent,
            isolate_new_leader_percent,
            snapshot_every,
            catchup_entries,
            kept_entries,
            entries_read_back: Arc::default(),
            rolling_leader_isolation,
            rolling_victim: None,
            leaders_by_term: BTreeMap::new(),
            committed: Vec::new(),
            commit_terms: Vec::new(),
            acknowledged: BTreeMap::new(),
            history: Vec::new(),
            violation: None,
            stats: RunStats::default(),
            trace_tail: VecDeque::new(),
        };
        world.trace(format!(
            "setup nodes={size} spares={spares} churn={churn} clients={client_count} keys={} pre_vote={} check_quorum={} read_mode={:?} inflight={} message_bytes={} uncommitted={} log_reads={}% isolate_new_leaders={}% snapshot_every={} catchup_entries={} kept_entries={:?}",
            world.keys.len(),
            world.config.pre_vote,
            world.config.check_quorum,
            world.config.read_mode,
            world.config.max_inflight_messages,
            world.config.max_message_bytes,
            world.config.max_uncommitted_bytes,
            world.log_read_percent,
            world.isolate_new_leader_percent,
            world.snapshot_every,
            world.catchup_entries,
            world.kept_entries,
        ));
        world.stats.churn = churn as u64;
        let ids: Vec<NodeId> = world.nodes.keys().copied().collect();
        for id in ids {
            world.start_node(id);
        }
        for client in 0..world.clients.len() {
            let delay = world.rng.range(0, 50 * MICROS_PER_MILLI);
            world.schedule(delay, Event::ClientNext { client });
        }
        world.schedule_faults();
        world
    }

    fn schedule(&mut self, delay: u64, event: Event) {
        self.sequence += 1;
        self.queue.insert((self.now + delay, self.sequence), event);
    }

    fn trace(&mut self, line: String) {
        let mut hash = Fnv::new();
        hash.write_u64(self.stats.trace_hash);
        hash.write_u64(self.now);
        hash.write(line.as_bytes());
        self.stats.trace_hash = hash.finish();
        let line = format!("{:>9.3}ms {line}", self.now as f64 / 1_000.0);
        if self.options.trace {
            println!("{line}");
        }
        if self.trace_tail.len() == TRACE_TAIL_LINES {
            self.trace_tail.pop_front();
        }
        self.trace_tail.push_back(line);
    }

    /// A line printed only with `--trace`; it does not enter the trace hash, so the hash is
    /// the same with and without `--trace`.
    fn trace_detail(&mut self, line: String) {
        if self.options.trace {
            println!("{:>9.3}ms {line}", self.now as f64 / 1_000.0);
        }
    }

    /// Folds an event that happens too often to format into the trace hash.
    fn hash_event(&mut self, values: &[u64]) {
        let mut hash = Fnv::new();
        hash.write_u64(self.stats.trace_hash);
        hash.write_u64(self.now);
        for value in values {
            hash.write_u64(*value);
        }
        self.stats.trace_hash = hash.finish();
    }

    fn violate(&mut self, invariant: &str, detail: String) {
        if self.violation.is_none() {
            self.trace(format!("VIOLATION {invariant}: {detail}"));
            self.violation = Some(Violation {
                invariant: invariant.to_string(),
                detail,
                at_micros: self.now,
            });
        }
    }

    /// The last lines of the trace.
    pub fn trace_tail(&self) -> Vec<String> {
        self.trace_tail.iter().cloned().collect()
    }

    // ----- fault schedule --------------------------------------------------------------

    fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|node| node.raw.as_ref().map(|raw| (node.id, raw.status())))
            .filter(|(_, status)| status.role == Role::Leader)
            .max_by_key(|(_, status)| status.term)
            .map(|(id, _)| id)
    }

    fn random_node(&mut self) -> NodeId {
        self.rng.range(1, self.nodes.len() as u64 + 1)
    }

    // ----- members ---------------------------------------------------------------------

    fn start_node(&mut self, id: NodeId) {
        let mut config = self.config.clone();
        config.id = id;
        let node = self.nodes.get_mut(&id).expect("member");
        node.incarnation += 1;
        config.random_seed = self.options.seed ^ (id << 32) ^ node.incarnation;
        let (storage, recovered) = match SimulatedStorage::open(
            node.file_system.clone(),
            StorageConfig::small_for_tests(),
        ) {
            Ok(opened) => opened,
            Err(error) => {
                self.violate("recovery", format!("n{id} cannot open its log: {error}"));
                return;
            }
        };
        if let Some(problem) = recovery_problem(node, &recovered.hard_state) {
            self.violate("durability", format!("n{id} {problem}"));
            return;
        }
        node.durable = DurableLog::from_recovered(
            recovered.snapshot.as_ref(),
            &recovered.entries,
            &self.membership,
        );
        let mut kv = KvState::default();
        let mut applied = 0;
        if let Some(meta) = &recovered.snapshot {
            match read_snapshot(&storage, meta) {
                Ok(state) => kv = state,
                Err(detail) => {
                    self.violate("snapshot", format!("n{id} {detail}"));
                    return;
                }
            }
            applied = meta.index;
        }
        let storage = Arc::new(Mutex::new(storage));
        node.storage = Some(storage.clone());
        let initial = InitialState {
            hard_state: recovered.hard_state,
            snapshot: recovered.snapshot,
            entries: recovered.entries,
            membership: self.membership.clone(),
            applied,
        };
        let mut raw = RawNode::new(config, initial).expect("valid config");
        if let Some(keep) = self.kept_entries {
            let source = LogSource {
                storage,
                read_back: self.entries_read_back.clone(),
            };
            raw.release_applied_entries(Arc::new(source), keep);
        }
        node.raw = Some(raw);
        node.kv = kv;
        node.applied_index = applied;
        node.snapshot_index = applied;
        node.last_commit = 0;
        node.checked_commit = applied;
        node.last_role = Role::Follower;
        let incarnation = node.incarnation;
        let tick = node.tick_micros;
        self.trace(format!("start n{id} incarnation {incarnation}"));
        let offset = self.rng.range(0, tick);
        self.schedule(
            offset,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
    }

    fn crash(&mut self, id: NodeId) {
        self.stats.crashes += 1;
        let crash_seed = self.rng.next_u64();
        let node = self.nodes.get_mut(&id).expect("member");
        node.raw = None;
        node.pending_commands.clear();
        node.pending_reads.clear();
        node.waiting_reads.clear();
        // Writes the member had issued but not synced reach the page cache; the crash then
        // keeps, drops, tears or garbles those unsynced bytes.
        let storage = node.storage.take().expect("up");
        let mut storage = lock(&storage);
        let unsynced = node.disk.len();
        for write in node.disk.drain(..) {
            if write_to(&mut storage, &write, true).is_err() {
                break;
            }
        }
        drop(storage);
        node.file_system.crash(crash_seed, CrashOptions::default());
        self.trace(format!("crash n{id} ({unsynced} unsynced writes)"));
    }

    fn disk_latency(&mut self, node: NodeId) -> u64 {
        let slow = self.nodes[&node].disk_slow_until > self.now;
        let base = self.rng.range(50, 400);
        if slow {
            base + self.rng.range(5_000, 50_000)
        } else if self.rng.chance(1, 100) {
            base + self.rng.range(1_000, 10_000)
        } else {
            base
        }
    }

    /// Takes and carries out every Ready of `id`, checking invariants as it goes.
    fn process(&mut self, id: NodeId) {
        for _ in 0..64 {
            let Some(raw) = self.nodes.get_mut(&id).and_then(|node| node.raw.as_mut()) else {
                return;
            };
            if !raw.has_ready() {
                break;
            }
            let ready = raw.ready();
            if let Some(soft) = ready.soft_state {
                self.trace(format!(
                    "n{id} {:?} term {} leader {:?}",
                    soft.role, soft.term, soft.leader
                ));
                if soft.role == Role::Leader {
                    self.on_leader(id, soft.term);
                }
                self.nodes.get_mut(&id).expect("member").last_role = soft.role;
            }
            if let Some((meta, data)) = &ready.snapshot {
                if let Err(detail) = self.install_snapshot(id, meta, data) {
                    self.violate("snapshot", detail);
                    return;
                }
            }
            let needs_disk =
                ready.hard_state.is_some() || !ready.entries.is_empty() || ready.snapshot.is_some();
            for message in ready.messages {
                self.send(message);
            }
            if needs_disk {
                let latency = self.disk_latency(id);
                let node = self.nodes.get_mut(&id).expect("member");
                let previous = node.disk.back().map_or(0, |write| write.done_at);
                let done_at = previous.max(self.now) + latency;
                node.disk.push_back(DiskWrite {
                    snapshot: ready.snapshot,
                    hard_state: ready.hard_state,
                    entries: ready.entries,
                    after_persist: ready.messages_after_persist,
                    done_at,
                });
                let incarnation = node.incarnation;
                self.schedule(
                    done_at - self.now,
                    Event::DiskDone {
                        node: id,
                        incarnation,
                    },
                );
            } else if let Some(pending) = self.nodes.get_mut(&id).expect("member").disk.back_mut() {
                // Nothing new to write, but an earlier write these messages rely on may
                // still be in flight: they leave when it is durable.
                pending.after_persist.extend(ready.messages_after_persist);
            } else {
                for message in ready.messages_after_persist {
                    self.send(message);
                }
            }
            self.apply(id, ready.committed_entries);
            self.maybe_snapshot(id);
            for read in ready.read_states {
                self.on_read_state(id, read.context, read.index);
            }
            self.release_reads(id);
        }
        self.check_node(id);
    }

    fn on_leader(&mut self, id: NodeId, term: u64) {
        self.stats.elections += 1;
        if !self.healed && self.rolling_leader_isolation {
            // Rolling nemesis (Jepsen style): every new leader is cut off soon after its
            // election, and the previous victim comes back at that moment. Successive
            // leaders then hold diverging uncommitted suffixes — the Figure 8 setting.
            let delay = self.rng.range(0, 3 * MICROS_PER_MILLI);
            self.schedule(delay, Event::Fault(Fault::RollingIsolate { node: id }));
        } else if !self.healed && self.rng.chance(self.isolate_new_leader_percent, 100) {
            // A nemesis that targets fresh leaders: cut this one off within a few
            // milliseconds, before or while it replicates its first entries.
            let delay = match self.rng.range(0, 4) {
                0 | 1 => self.rng.range(0, 300),
                2 => self.rng.range(0, 5 * MICROS_PER_MILLI),
                _ => self.rng.range(0, 30 * MICROS_PER_MILLI),
            };
            let duration_micros = self.rng.range(20, 1_000) * MICROS_PER_MILLI;
            let fault = if self.rng.chance(3, 4) {
                Fault::Isolate {
                    node: id,
                    duration_micros,
                }
            } else {
                Fault::CrashNode {
                    node: id,
                    down_ms: duration_micros / MICROS_PER_MILLI,
                }
            };
            self.schedule(delay, Event::Fault(fault));
        }
        if let Some(other) = self.leaders_by_term.insert(term, id) {
            if other != id {
                self.violate(
                    "election safety",
                    format!("n{other} and n{id} both lead term {term}"),
                );
                return;
            }
        }
        // Leader completeness: the new leader holds every entry committed in an earlier term.
        // (A leader of an older term may win after a newer one committed more: a vote
        // granted long ago can arrive late. It can commit nothing, since a quorum has moved
        // on to the newer term.)
        let raw = self.nodes[&id].raw.as_ref().expect("up");
        let compacted = raw.status().first_index - 1;
        for (offset, (entry_term, hash)) in self.committed.iter().enumerate() {
            let index = offset as u64 + 1;
            if self.commit_terms[offset] >= term {
                continue;
            }
            if index < compacted {
                continue; // covered by the snapshot, whose own entry is checked next
            }
            if index == compacted {
                if raw.term_of(index) != Some(*entry_term) {
                    let detail = format!(
                        "leader n{id} of term {term} has a snapshot at {index} of term {:?}, committed term {entry_term}",
                        raw.term_of(index)
                    );
                    self.violate("leader completeness", detail);
                    return;
                }
                continue;
            }
            match self.nodes[&id].log_entry(index) {
                Some(entry) if entry.term == *entry_term && entry_hash(&entry) == *hash => {}
                other => {
                    let detail = format!(
                        "leader n{id} of term {term} lacks committed entry {index} (term {entry_term}); has {:?}",
                        other.map(|entry| entry.term)
                    );
                    self.violate("leader completeness", detail);
                    return;
                }
            }
        }
    }

    /// Installs a snapshot received from the leader into the member's state machine (its
    /// disk write follows with the Ready's other writes).
    fn install_snapshot(
        &mut self,
        id: NodeId,
        meta: &SnapshotMeta,
        data: &Bytes,
    ) -> Result<(), String> {
        match self.committed.get(meta.index as usize - 1) {
            Some((term, _)) if *term == meta.term => {}
            other => {
                return Err(format!(
                "n{id} got a snapshot at {} of term {} but the cluster committed {other:?} there",
                meta.index, meta.term
            ))
            }
        }
        let kv =
            KvState::decode(data).ok_or_else(|| format!("n{id} got an undecodable snapshot"))?;
        self.trace(format!(
            "n{id} installs snapshot at {} (term {})",
            meta.index, meta.term
        ));
        let node = self.nodes.get_mut(&id).expect("member");
        node.kv = kv;
        node.applied_index = meta.index;
        node.snapshot_index = meta.index;
        node.checked_commit = node.checked_commit.max(meta.index);
        Ok(())
    }

    /// Takes a snapshot of the state machine and compacts the log, every `snapshot_every`
    /// applied entries.
    fn maybe_snapshot(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        if self.snapshot_every == 0
            || node.applied_index < node.snapshot_index + self.snapshot_every
            || !node.disk.is_empty()
        {
            return;
        }
        let Some(raw) = node.raw.as_mut() else {
            return;
        };
        let index = node.applied_index;
        let term = raw.term_of(index).expect("applied entry is held");
        let meta = SnapshotMeta {
            index,
            term,
            membership: raw
                .membership_at(index)
                .expect("the applied index is not compacted"),
        };
        let data = node.kv.encode();
        let mut storage = lock(node.storage.as_ref().expect("up"));
        let stored = storage.begin_snapshot(meta.clone()).and_then(|mut writer| {
            writer.write_all(&data).map_err(|error| {
                skiff_storage::StorageError::from_io("write", "snapshot", error)
            })?;
            storage.finish_snapshot(writer)
        });
        let keep = self.catchup_entries;
        let compacted = stored.and_then(|()| storage.compact(index.saturating_sub(keep)));
        drop(storage);
        if let Err(error) = compacted {
            self.violate("storage", format!("n{id} snapshot failed: {error}"));
            return;
        }
        raw.compact_keeping(index, keep);
        node.snapshot_index = index;
        self.trace(format!("n{id} snapshot at {index} (term {term})"));
    }

    fn apply(&mut self, id: NodeId, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|entry| entry.index) else {
            return;
        };
        for entry in entries {
            let node = self.nodes.get_mut(&id).expect("member");
            if entry.index != node.applied_index + 1 {
                let detail = format!("n{id} applied {} after {}", entry.index, node.applied_index);
                self.violate("apply order", detail);
                return;
            }
            node.applied_index = entry.index;
            // State machine safety: compare with what the cluster committed at this index.
            match self.committed.get(entry.index as usize - 1) {
                Some((term, hash)) if *term == entry.term && *hash == entry_hash(&entry) => {}
                Some((term, _)) => {
                    let detail = format!(
                        "n{id} applies entry {} of term {} where term {term} was committed",
                        entry.index, entry.term
                    );
                    self.violate("state machine safety", detail);
                    return;
                }
                None => {
                    if self.committed.len() as u64 + 1 == entry.index {
                        self.committed.push((entry.term, entry_hash(&entry)));
                        let term = node.raw.as_ref().map_or(0, |raw| raw.status().term);
                        self.commit_terms.push(term);
                    } else {
                        let detail = format!(
                            "n{id} applies entry {} beyond the known commit",
                            entry.index
                        );
                        self.violate("state machine safety", detail);
                        return;
                    }
                }
            }
            if entry.kind == EntryKind::ConfigChange {
                if let Err(error) = decode_membership(&entry.data) {
                    let detail = format!("n{id} configuration entry {}: {error}", entry.index);
                    self.violate("decode", detail);
                    return;
                }
            }
            if entry.kind != EntryKind::Normal {
                self.nodes
                    .get_mut(&id)
                    .expect("member")
                    .kv
                    .skip(entry.index);
                continue;
            }
            let Some(command) = Command::decode(&entry.data) else {
                self.violate(
                    "decode",
                    format!("n{id} entry {} is not a command", entry.index),
                );
                return;
            };
            if self.options.trace {
                let line = format!(
                    "n{id} apply {} {}:{} {:?}",
                    entry.index, command.client, command.seq, command.op
                );
                self.trace_detail(line);
            }
            let node = self.nodes.get_mut(&id).expect("member");
            let output = match node.kv.apply(entry.index, &command) {
                Ok(Applied::Executed(output)) => Some(output),
                Ok(Applied::Stale) => None,
                Err(detail) => {
                    self.violate("exactly once", format!("n{id}: {detail}"));
                    return;
                }
            };
            if let Some(output) = output {
                if node
                    .pending_commands
                    .remove(&(command.client as usize, command.seq))
                {
                    let reply = Reply::Done(output, Some(entry.index));
                    self.reply(command.client as usize, command.seq, reply);
                }
            }
        }
        let node = self.nodes.get_mut(&id).expect("member");
        node.raw.as_mut().expect("up").on_applied(last);
    }

    fn on_read_state(&mut self, id: NodeId, context: u64, index: Option<u64>) {
        let node = self.nodes.get_mut(&id).expect("member");
        let Some((client, seq, key)) = node.pending_reads.remove(&context) else {
            return;
        };
        match index {
            Some(index) => node.waiting_reads.push((index, client, seq, key)),
            None => self.reply(client, seq, Reply::Retry),
        }
    }

    fn release_reads(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("member");
        let applied = node.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = node
            .waiting_reads
            .drain(..)
            .partition(|(index, ..)| *index <= applied);
        node.waiting_reads = waiting;
        let answers: Vec<(usize, u64, Option<String>)> = ready
            .into_iter()
            .map(|(_, client, seq, key)| (client, seq, node.kv.get(&key)))
            .collect();
        for (client, seq, value) in answers {
            self.reply(client, seq, Reply::Done(Output::Value(value), None));
        }
    }

    fn reply(&mut self, client: usize, seq: u64, reply: Reply) {
        let delay = self.rng.range(100, 1_000);
        self.schedule(delay, Event::Response { client, seq, reply });
    }

    // ----- network ---------------------------------------------------------------------

    fn send(&mut self, mut message: Message) {
        if let MessageBody::InstallSnapshot { meta, data } = &mut message.body {
            // The core leaves the payload to the application: attach the stored snapshot.
            let sender = &self.nodes[&message.from];
            let stored = sender
                .storage
                .as_ref()
                .ok_or_else(|| "sender is down".to_string())
                .and_then(|storage| read_snapshot_bytes(&lock(storage), meta));
            match stored {
                Ok(bytes) => *data = bytes,
                Err(detail) => {
                    let detail = format!("n{} cannot send its snapshot: {detail}", message.from);
                    self.violate("snapshot", detail);
                    return;
                }
            }
        }
        if self.blocked.contains(&(message.from, message.to))
            || (self.drop_percent > 0 && self.rng.chance(self.drop_percent, 100))
        {
            self.stats.messages_dropped += 1;
            return;
        }
        let copies = if self.duplicate_percent > 0 && self.rng.chance(self.duplicate_percent, 100) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.network_delay();
            self.schedule(delay, Event::Deliver(message.clone()));
        }
    }

    /// Loopback-like latency with a long tail.
    fn network_delay(&mut self) -> u64 {
        let base = self.rng.range(100, 1_000);
        let roll = self.rng.range(0, 1_000);
        if roll < 10 {
            base + self.rng.range(50_000, 400_000)
        } else if roll < 60 {
            base + self.rng.range(2_000, 40_000)
        } else {
            base
        }
    }

    // ----- clients ---------------------------------------------------------------------

    fn next_operation(&mut self, client: usize) {
        let key = self.keys[self.rng.range(0, self.keys.len() as u64) as usize].clone();
        let seq = self.clients[client].seq + 1;
        self.clients[client].seq = seq;
        let value = format!("c{client}s{seq}");
        let op = match self.rng.range(0, 10) {
            0..=3 => Op::Get { key },
            4..=6 => Op::Put { key, value },
            _ => {
                // Expect a value this key may hold: absent, or a recent value of any client.
                let from = if self.rng.chance(1, 4) {
                    None
                } else {
                    let other = self.rng.range(0, self.clients.len() as u64) as usize;
                    let back = self.rng.range(0, 3);
                    let other_seq = self.clients[other].seq.saturating_sub(back).max(1);
                    Some(format!("c{other}s{other_seq}"))
                };
                Op::Cas {
                    key,
                    from,
                    to: value,
                }
            }
        };
        let read_mode = if self.rng.chance(self.log_read_percent, 100) {
            ClientRead::Log
        } else {
            ClientRead::ReadIndex
        };
        self.clients[client].current = Some(ClientOp {
            seq,
            op,
            read_mode,
            invoke: self.now,
            attempts: 0,
        });
        self.client_send(client, seq);
    }

    fn client_send(&mut self, client: usize, seq: u64) {
        let Some(op) = self.clients[client].current.as_mut() else {
            return;
        };
        if op.seq != seq {
            return;
        }
        op.attempts += 1;
        let attempt = op.attempts;
        let request = Request {
            client,
            seq,
            op: op.op.clone(),
            read_mode: op.read_mode,
        };
        let node = self.clients[client].target;
        let delay = self.rng.range(100, 1_000);
        self.schedule(delay, Event::Request { node, request });
        self.schedule(
            300 * MICROS_PER_MILLI,
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            },
        );
    }

    fn on_request(&mut self, id: NodeId, request: Request) {
        let node = self.nodes.get_mut(&id).expect("member");
        let Some(raw) = node.raw.as_mut() else {
            return; // down: the client times out
        };
        let Request {
            client,
            seq,
            op,
            read_mode,
        } = request;
        let result = match (&op, read_mode) {
            (Op::Get { key }, ClientRead::ReadIndex) => {
                node.next_read_context += 1;
                let context = node.next_read_context;
                let result = raw.read_index(context);
                if result.is_ok() {
                    node.pending_reads
                        .insert(context, (client, seq, key.clone()));
                }
                result
            }
            _ => {
                let command = Command {
                    client: client as u64,
                    seq,
                    op,
                };
                let result = raw.propose(command.encode()).map(|_| ());
                if result.is_ok() {
                    node.pending_commands.insert((client, seq));
                }
                result
            }
        };
        if self.options.trace {
            self.trace_detail(format!("n{id} request {client}:{seq} -> {result:?}"));
        }
        match result {
            Ok(()) => self.process(id),
            Err(RaftError::NotLeader { leader }) => {
                self.reply(client, seq, Reply::NotLeader(leader))
            }
            Err(_) => self.reply(client, seq, Reply::Retry),
        }
    }

    fn on_response(&mut self, client: usize, seq: u64, reply: Reply) {
        let Some(op) = self.clients[client].current.as_ref() else {
            return;
        };
        if op.seq != seq {
            return;
        }
        match reply {
            Reply::Done(output, index) => {
                let op = self.clients[client].current.take().expect("checked");
                self.trace(format!(
                    "client {client} op {seq} {:?} -> {output:?}",
                    op.op
                ));
                if op.op.is_write() {
                    if let Some(index) = index {
                        self.acknowledged.insert(index, (client, seq));
                    }
                }
                self.history.push(HistoryOp {
                    client,
                    op: op.op,
                    invoke: op.invoke,
                    outcome: Outcome::Returned {
                        output,
                        at: self.now,
                    },
                });
                self.stats.operations_ok += 1;
                self.clients[client].completed += 1;
                let think = self.rng.range(0, 20 * MICROS_PER_MILLI);
                self.schedule(think, Event::ClientNext { client });
            }
            Reply::NotLeader(hint) => {
                let target = match hint {
                    Some(leader) => leader,
                    None => self.random_node(),
                };
                self.clients[client].target = target;
                let delay = if hint.is_some() {
                    1_000
                } else {
                    20 * MICROS_PER_MILLI
                };
                self.schedule(delay, Event::ClientSend { client, seq });
            }
            Reply::Retry => {
                let delay = self.rng.range(5, 30) * MICROS_PER_MILLI;
                self.schedule(delay, Event::ClientSend { client, seq });
            }
        }
    }

    /// Records an operation whose outcome the client never learned: a write may or may not
    /// take effect, at any time from its invoke on; a read constrains nothing and is dropped.
    fn record_unknown(&mut self, client: usize, op: ClientOp) {
        if op.op.is_write() {
            self.history.push(HistoryOp {
                client,
                op: op.op,
                invoke: op.invoke,
                outcome: Outcome::Unknown,
            });
            self.stats.operations_unknown += 1;
        }
    }

    fn on_client_timeout(&mut self, client: usize, seq: u64, attempt: u32) {
        let Some(op) = self.clients[client].current.as_ref() else {
            return;
        };
        if op.seq != seq || op.attempts != attempt {
            return;
        }
        if op.attempts >= self.max_attempts && !self.healed {
            let op = self.clients[client].current.take().expect("checked");
            self.trace(format!("client {client} gives up op {seq} {:?}", op.op));
            self.record_unknown(client, op);
            self.schedule(0, Event::ClientNext { client });
            return;
        }
        self.clients[client].target = self.random_node();
        self.client_send(client, seq);
    }

    // ----- main loop -------------------------------------------------------------------

    /// Runs the whole schedule. Returns the first violation, if any.
    pub fn run(&mut self) -> Option<Violation> {
        let end = (self.options.fault_ms + self.options.heal_ms) * MICROS_PER_MILLI;
        while let Some(((time, _), event)) = self.queue.pop_first() {
            if time > end {
                break;
            }
            self.now = time;
            self.stats.events += 1;
            self.handle(event);
            if self.violation.is_some() {
                break;
            }
        }
        if self.violation.is_none() {
            self.final_checks();
        }
        self.violation.clone()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { node, incarnation } => {
                let sim_node = self.nodes.get_mut(&node).expect("member");
                if sim_node.incarnation != incarnation || sim_node.raw.is_none() {
                    return;
                }
                sim_node.raw.as_mut().expect("up").tick();
                let interval = sim_node.tick_micros;
                self.schedule(interval, Event::Tick { node, incarnation });
                self.process(node);
            }
            Event::Deliver(message) => {
                let to = message.to;
                if self.blocked.contains(&(message.from, to)) {
                    // The link was cut while the message was in flight.
                    self.stats.messages_dropped += 1;
                    return;
                }
                self.hash_event(&[
                    message.from,
                    to,
                    message.term,
                    message.body.name().len() as u64,
                ]);
                if self.options.trace {
                    self.trace_detail(format!(
                        "deliver n{}->n{} t{} {}",
                        message.from,
                        to,
                        message.term,
                        debug_body(&message.body)
                    ));
                }
                let Some(raw) = self.nodes.get_mut(&to).and_then(|node| node.raw.as_mut()) else {
                    return;
                };
                raw.step(message);
                self.process(to);
            }
            Event::DiskDone { node, incarnation } => self.disk_done(node, incarnation),
            Event::Request { node, request } => self.on_request(node, request),
            Event::Response { client, seq, reply } => self.on_response(client, seq, reply),
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => self.on_client_timeout(client, seq, attempt),
            Event::ClientSend { client, seq } => self.client_send(client, seq),
            Event::ClientNext { client } => {
                if self.clients[client].current.is_none() {
                    self.next_operation(client);
                }
            }
            Event::Fault(fault) => self.apply_fault(fault),
            Event::Restart { node } => {
                if self.nodes[&node].raw.is_none() {
                    self.start_node(node);
                }
            }
            Event::Heal => self.heal(),
            Event::LivenessCheck => self.liveness_check(),
            Event::CatchUpMark => self.catch_up_target = self.committed.len() as u64,
        }
    }

    fn disk_done(&mut self, id: NodeId, incarnation: u64) {
        let node = self.nodes.get_mut(&id).expect("member");
        if node.incarnation != incarnation || node.raw.is_none() {
            return;
        }
        let Some(write) = node.disk.front() else {
            return;
        };
        if write.done_at > self.now {
            return;
        }
        let write = node.disk.pop_front().expect("checked");
        if let Some(hard_state) = write.hard_state {
            if hard_state.term < node.synced_hard_state.term {
                let detail = format!(
                    "n{id} persisted term {} after {}",
                    hard_state.term, node.synced_hard_state.term
                );
                self.violate("durable term monotonic", detail);
                return;
            }
        }
        let mut storage = lock(node.storage.as_ref().expect("up"));
        let synced = write_to(&mut storage, &write, false).and_then(|()| storage.sync());
        drop(storage);
        if let Err(error) = synced {
            self.violate("storage", format!("n{id} write failed: {error}"));
            return;
        }
        if let Some(hard_state) = write.hard_state {
            node.synced_hard_state = hard_state;
        }
        if let Some((meta, _)) = &write.snapshot {
            node.durable.install(meta);
        }
        node.durable.append(&write.entries);
        let raw = node.raw.as_mut().expect("up");
        if let Some(last) = write.entries.last() {
            raw.on_persisted(last.index, last.term);
        }
        for message in write.after_persist {
            self.send(message);
        }
        self.process(id);
    }

    /// Figures of the run so far.
    pub fn stats(&self) -> RunStats {
        RunStats {
            entries_read_back: self.entries_read_back.load(Ordering::Relaxed),
            ..self.stats.clone()
        }
    }
}

/// A member's own log as its core's [`EntrySource`]: what the core released, it reads back
/// from the simulated disk, through the same code as a server's log.
struct LogSource {
    storage: Arc<Mutex<SimulatedStorage>>,
    read_back: Arc<AtomicU64>,
}

impl EntrySource for LogSource {
    fn entries(&self, low: u64, high: u64, max_bytes: u64) -> Option<Vec<Entry>> {
        match lock(&self.storage).entries(low, high, max_bytes) {
            Ok(entries) => {
                self.read_back
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                Some(entries)
            }
            Err(StorageError::Compacted { .. }) => None,
            // The core asks only for entries it persisted and has not compacted.
            Err(error) => panic!("reading entries {low}..{high} back failed: {error}"),
        }
    }
}

fn lock(storage: &Mutex<SimulatedStorage>) -> MutexGuard<'_, SimulatedStorage> {
    storage.lock().expect("storage lock")
}

/// Hands one Ready's writes to the store (buffered until the next sync). A snapshot is
/// installed the way the store requires: drop the old log durably, publish, compact.
/// `crashing`: the member is going down, so only plain buffered writes reach the disk.
fn write_to(
    storage: &mut SimulatedStorage,
    write: &DiskWrite,
    crashing: bool,
) -> skiff_storage::Result<()> {
    if let Some((meta, data)) = &write.snapshot {
        if crashing {
            return Err(skiff_storage::StorageError::InvalidRequest(
                "crash before the snapshot was installed".into(),
            ));
        }
        if storage.last_index() >= storage.first_index() {
            storage.truncate(storage.first_index())?;
        }
        storage.sync()?;
        let mut writer = storage.begin_snapshot(meta.clone())?;
        writer
            .write_all(data)
            .map_err(|error| skiff_storage::StorageError::from_io("write", "snapshot", error))?;
        storage.finish_snapshot(writer)?;
        storage.compact(meta.index)?;
    }
    if !write.entries.is_empty() {
        storage.append(&write.entries)?;
    }
    if let Some(hard_state) = write.hard_state {
        storage.set_hard_state(hard_state)?;
    }
    Ok(())
}

fn debug_body(body: &skiff_raft::MessageBody) -> String {
    match body {
        skiff_raft::MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => format!(
            "AppendEntries prev=({prev_log_index},{prev_log_term}) entries={} commit={commit}",
            entries.len()
        ),
        other => format!("{other:?}"),
    }
}

/// The bytes of the member's stored snapshot, which must be the one `meta` describes.
fn read_snapshot_bytes(storage: &SimulatedStorage, meta: &SnapshotMeta) -> Result<Bytes, String> {
    let Some((stored, mut reader)) = storage.open_snapshot().map_err(|error| error.to_string())?
    else {
        return Err("no snapshot stored".into());
    };
    if stored.index != meta.index || stored.term != meta.term {
        return Err(format!("stored snapshot {stored:?} is not {meta:?}"));
    }
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|error| format!("reading the snapshot: {error}"))?;
    Ok(Bytes::from(bytes))
}

/// The state machine stored in the member's snapshot.
fn read_snapshot(storage: &SimulatedStorage, meta: &SnapshotMeta) -> Result<KvState, String> {
    let bytes = read_snapshot_bytes(storage, meta)?;
    KvState::decode(&bytes).ok_or_else(|| "stored snapshot does not decode".to_string())
}
