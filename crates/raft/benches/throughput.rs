//! Throughput of the consensus core alone: three members in one thread, instant
//! persistence, messages handed straight to their recipient. Measures how many proposals
//! per second the leader gets committed and applied with 1, 64 and 256 proposals in flight
//! (proposed on the leader and not yet applied there).
//!
//! Run with `cargo bench -p skiff-raft --bench throughput`. Optional arguments:
//! `--seconds S` (per window, default 2) and `--windows 1,64,256`.
//!
//! This is a figure to compare runs with, not a test: it asserts nothing about speed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_raft::{Config, EntryKind, InitialState, Membership, Message, RawNode, Role};

const MEMBERS: u64 = 3;
const LEADER: usize = 0;
const PAYLOAD_BYTES: usize = 256;
/// Compact every member's log once this many entries are applied everywhere, so a long run
/// keeps a bounded log in memory.
const COMPACT_EVERY_ENTRIES: u64 = 16_384;

/// Three members driven by hand: every Ready is persisted at once and its messages are
/// delivered directly.
struct Driver {
    nodes: Vec<RawNode>,
    /// Applied index of each member.
    applied: Vec<u64>,
    /// Application entries the leader has applied.
    leader_applied_proposals: u64,
    compacted: u64,
    outbox: Vec<Message>,
    delivering: Vec<Message>,
}

impl Driver {
    fn new() -> Driver {
        let membership = Membership::new(1..=MEMBERS);
        let nodes = (1..=MEMBERS)
            .map(|id| {
                let initial = InitialState {
                    membership: membership.clone(),
                    ..InitialState::default()
                };
                RawNode::new(Config::new(id), initial).expect("valid config")
            })
            .collect();
        Driver {
            nodes,
            applied: vec![0; MEMBERS as usize],
            leader_applied_proposals: 0,
            compacted: 0,
            outbox: Vec::new(),
            delivering: Vec::new(),
        }
    }

    /// Takes and carries out member `at`'s Ready; false if it had none.
    fn handle_ready(&mut self, at: usize) -> bool {
        let node = &mut self.nodes[at];
        if !node.has_ready() {
            return false;
        }
        let mut ready = node.ready();
        if let Some((index, term)) = ready.last_entry() {
            node.on_persisted(index, term);
        }
        self.outbox.append(&mut ready.messages);
        self.outbox.append(&mut ready.messages_after_persist);
        if let Some(last) = ready.committed_entries.last() {
            let last_index = last.index;
            if at == LEADER {
                self.leader_applied_proposals += ready
                    .committed_entries
                    .iter()
                    .filter(|entry| entry.kind == EntryKind::Normal)
                    .count() as u64;
            }
            node.on_applied(last_index);
            self.applied[at] = last_index;
        }
        true
    }

    /// Delivers every queued message; false if there was none.
    fn deliver(&mut self) -> bool {
        std::mem::swap(&mut self.outbox, &mut self.delivering);
        let moved = !self.delivering.is_empty();
        for message in self.delivering.drain(..) {
            let to = (message.to - 1) as usize;
            self.nodes[to].step(message);
        }
        moved
    }

    fn handle_followers(&mut self) {
        for at in 0..self.nodes.len() {
            if at != LEADER {
                self.handle_ready(at);
            }
        }
    }

    fn settle(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            for at in 0..self.nodes.len() {
                moved |= self.handle_ready(at);
            }
            moved |= self.deliver();
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn maybe_compact(&mut self) {
        let floor = *self.applied.iter().min().expect("members");
        if floor >= self.compacted + COMPACT_EVERY_ENTRIES {
            for node in &mut self.nodes {
                node.compact(floor);
            }
            self.compacted = floor;
        }
    }
}

/// Runs one window for `run`; returns (proposals applied on the leader, elapsed).
fn run_window(window: u64, run: Duration) -> (u64, Duration) {
    let mut driver = Driver::new();
    driver.nodes[LEADER].campaign();
    driver.settle();
    assert_eq!(driver.nodes[LEADER].status().role, Role::Leader);

    let mut payload = vec![0u8; PAYLOAD_BYTES];
    let mut proposed = 0u64;
    let mut rounds = 0u64;
    let start = Instant::now();
    loop {
        // Apply what committed, refill the window, send: one leader turn.
        driver.handle_ready(LEADER);
        while proposed - driver.leader_applied_proposals < window {
            payload[..8].copy_from_slice(&proposed.to_le_bytes());
            driver.nodes[LEADER]
                .propose(Bytes::copy_from_slice(&payload))
                .expect("leader accepts");
            proposed += 1;
        }
        driver.handle_ready(LEADER);
        driver.deliver();
        // Followers persist and acknowledge; the leader commits as the answers arrive.
        driver.handle_followers();
        driver.deliver();
        driver.maybe_compact();
        // Read the clock every 64 rounds only.
        rounds += 1;
        if rounds & 63 == 0 && start.elapsed() >= run {
            break;
        }
    }
    let elapsed = start.elapsed();
    let applied = driver.leader_applied_proposals;
    // Sanity: once the pipeline drains, every member applied the same log.
    driver.settle();
    assert_eq!(driver.leader_applied_proposals, proposed);
    assert!(driver
        .applied
        .iter()
        .all(|index| *index == driver.applied[LEADER]));
    (applied, elapsed)
}

fn main() {
    let mut seconds = 2.0f64;
    let mut windows = vec![1u64, 64, 256];
    let mut arguments = std::env::args().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.as_str() {
            "--seconds" => {
                seconds = arguments
                    .next()
                    .and_then(|value| value.parse().ok())
                    .expect("--seconds takes a number");
            }
            "--windows" => {
                windows = arguments
                    .next()
                    .map(|value| {
                        value
                            .split(',')
                            .map(|window| window.parse().expect("window"))
                            .collect()
                    })
                    .expect("--windows takes a list");
            }
            // `cargo bench` passes `--bench`; ignore it and any filter.
            _ => {}
        }
    }
    let run = Duration::from_secs_f64(seconds);
    println!(
        "skiff-raft core throughput: {MEMBERS} members, {PAYLOAD_BYTES}-byte payloads, \
         instant persistence, in-thread delivery, {seconds} s per window"
    );
    for window in windows {
        let (applied, elapsed) = run_window(window, run);
        let rate = applied as f64 / elapsed.as_secs_f64();
        println!("inflight={window} proposals/s={rate:.0}");
    }
}
