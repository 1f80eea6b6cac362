//! skiff-sim: a deterministic simulator of skiff-raft clusters.
//!
//! One seed drives a whole run: cluster size, configuration, clock skew, network delays
//! (with a long tail), drops, duplicates and reordering, partitions (split, one-way, leader
//! isolated, bridge), crashes that lose unsynced writes (and may tear the last one), slow
//! disks, leadership transfers and client load. Invariants are checked after every event;
//! after the faults heal the cluster must recover within a bound; the client history must
//! be linearizable.
#![deny(missing_docs)]

pub mod command;
pub mod history;
pub mod world;

use std::panic::{self, AssertUnwindSafe};

pub use world::{Options, RunStats, Violation, World};

/// The result of one seed.
#[derive(Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// The first broken invariant, if any (a panic in the core counts as one).
    pub violation: Option<Violation>,
    /// Figures of the run.
    pub stats: RunStats,
    /// The last lines of the trace.
    pub trace_tail: Vec<String>,
}

/// Runs one seed, turning a panic (a core assertion) into a violation.
pub fn run_seed(options: Options) -> SeedReport {
    let seed = options.seed;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut world = World::new(options);
        let violation = world.run();
        (violation, world.stats(), world.trace_tail())
    }));
    match outcome {
        Ok((violation, stats, trace_tail)) => SeedReport {
            seed,
            violation,
            stats,
            trace_tail,
        },
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            SeedReport {
                seed,
                violation: Some(Violation {
                    invariant: "panic (a core assertion or a simulator bug)".into(),
                    detail: message,
                    at_micros: 0,
                }),
                stats: RunStats::default(),
                trace_tail: Vec::new(),
            }
        }
    }
}
