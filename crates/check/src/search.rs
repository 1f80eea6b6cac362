//! The just-in-time linearization search (Wing & Gong, with Lowe's memoization).
//!
//! The history becomes a doubly linked list of events sorted by time: a call event per operation,
//! and a return event per operation whose output is known. The search keeps a cursor into that
//! list, a model state and the set of operations linearized so far:
//!
//! - At a call event, try to linearize the operation now: step the model. If the step is allowed
//!   and the resulting (linearized set, state) pair was never seen, commit to it: push a frame,
//!   unlink the call and its return from the list, and restart the cursor at the head (the newly
//!   possible orders start with the earliest pending calls). Otherwise move the cursor on.
//! - At a return event, the operation it closes had to be linearized before this instant and was
//!   not: undo the latest choice and try its next alternative, or move past its call.
//!
//! The search succeeds when every operation with a known output is linearized. Operations with an
//! unknown output have no return event, so nothing ever forces them in; they are linearized only
//! when that helps explain a later output, which is exactly "may take effect at any instant after
//! the invoke, or never".
//!
//! Memoization is what makes real histories tractable: a configuration reached by a different
//! order of the same operations behaves identically afterwards, so it is explored once.

use std::time::{Duration, Instant};

use crate::memo::{ConfigurationSet, StateInterner};
use crate::model::{Model, Operation, Verdict};

/// A limit on how long one check may search before answering [`Verdict::Unknown`].
///
/// Pathological histories (many concurrent writes of equal values, long unknown-outcome
/// operations) make the search exponential; the budget turns a hang into an honest "don't know".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most search steps for one check (shared by every key of a multi-key history).
    ///
    /// A step is one visit to an event; each memoized configuration costs at least one step, so
    /// this also bounds memory. Deterministic: the same history always gets the same verdict.
    pub max_steps: u64,
    /// Most wall-clock time for one check, or `None` for no limit.
    ///
    /// Not deterministic: leave it `None` in the simulator, where runs must replay exactly.
    pub time_limit: Option<Duration>,
}

impl Budget {
    /// The default step limit. Every reference history (see the crate's tests) needs under
    /// half a million steps; ten million keep the worst case to seconds and the memo to a few
    /// hundred megabytes (plus the distinct model states met).
    pub const DEFAULT_MAX_STEPS: u64 = 10_000_000;

    /// A budget of `max_steps` steps and no time limit.
    pub fn steps(max_steps: u64) -> Budget {
        Budget {
            max_steps,
            time_limit: None,
        }
    }

    /// No step limit and no time limit: the check may run forever.
    pub fn unlimited() -> Budget {
        Budget::steps(u64::MAX)
    }

    /// This budget, also stopping after `time_limit` of wall-clock time.
    pub fn with_time_limit(self, time_limit: Duration) -> Budget {
        Budget {
            time_limit: Some(time_limit),
            ..self
        }
    }
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::steps(Budget::DEFAULT_MAX_STEPS)
    }
}

/// Counts the steps of one check against its [`Budget`].
#[derive(Debug)]
pub(crate) struct Meter {
    steps_left: u64,
    steps_taken: u64,
    deadline: Option<Instant>,
}

impl Meter {
    /// How many steps pass between two reads of the clock (a power of two).
    const CLOCK_INTERVAL_STEPS: u64 = 4096;

    pub(crate) fn new(budget: Budget) -> Meter {
        Meter {
            steps_left: budget.max_steps,
            steps_taken: 0,
            deadline: budget.time_limit.map(|limit| Instant::now() + limit),
        }
    }

    /// Spend one step; false once the budget is exhausted.
    fn tick(&mut self) -> bool {
        if self.steps_left == 0 {
            return false;
        }
        self.steps_left -= 1;
        self.steps_taken += 1;
        if let Some(deadline) = self.deadline {
            if self.steps_taken & (Self::CLOCK_INTERVAL_STEPS - 1) == 0
                && Instant::now() >= deadline
            {
                self.steps_left = 0;
                return false;
            }
        }
        true
    }
}

/// Check one history against `model`.
///
/// The whole history is searched as one: split independent objects (keys) first, as
/// [`crate::check_kv`] does, or the search may be needlessly exponential.
///
/// # Panics
///
/// If an operation with a known return time returns before it was invoked: that is a bug in
/// whatever recorded the history, not a property of the system under test.
pub fn check_operations<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    budget: Budget,
) -> Verdict {
    let mut meter = Meter::new(budget);
    check_metered(model, operations, &mut meter)
}

/// [`check_operations`] drawing on a meter shared with other parts of the same check.
pub(crate) fn check_metered<M: Model>(
    model: &M,
    operations: &[Operation<M::Input, M::Output>],
    meter: &mut Meter,
) -> Verdict {
    for operation in operations {
        if let Some(ret) = operation.ret {
            assert!(
                ret >= operation.invoke,
                "operation returns at {ret} before its invoke at {}: {operation:?}",
                operation.invoke
            );
        }
    }
    let mut search = Search::new(model, operations);
    search.run(meter)
}

/// Marks the head and tail sentinels and absent links.
const NO_NODE: usize = usize::MAX;
/// The head sentinel of the event list.
const HEAD: usize = 0;

/// The event list, as parallel vectors indexed by node; node 0 is the head sentinel and the last
/// node the tail sentinel.
#[derive(Debug)]
struct EventList {
    next: Vec<usize>,
    previous: Vec<usize>,
    /// The operation an event belongs to (`NO_NODE` for the sentinels).
    operation: Vec<usize>,
    /// For a call event, its return event (`NO_NODE` if it has none); for a return, `NO_NODE`.
    return_of_call: Vec<usize>,
    /// For a call event, its operation's bit in the linearized set: the operations numbered in
    /// invoke order, so the set is a dense prefix of ones plus a short window (see `memo`).
    bit_of_call: Vec<usize>,
    is_call: Vec<bool>,
}

impl EventList {
    /// Build the list: every call, and a return for every operation whose output is known,
    /// sorted by time with calls first among equal times (touching intervals are concurrent).
    fn new<I, O>(operations: &[Operation<I, O>]) -> EventList {
        // (time, 0 for call / 1 for return, operation index)
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(operations.len() * 2);
        for (index, operation) in operations.iter().enumerate() {
            events.push((operation.invoke, 0, index));
            if operation.is_known() {
                events.push((operation.ret.unwrap_or(u64::MAX), 1, index));
            }
        }
        events.sort_unstable();

        let node_count = events.len() + 2;
        let tail = node_count - 1;
        let mut list = EventList {
            next: (1..=node_count).collect(),
            previous: (0..node_count).map(|node| node.wrapping_sub(1)).collect(),
            operation: vec![NO_NODE; node_count],
            return_of_call: vec![NO_NODE; node_count],
            bit_of_call: vec![NO_NODE; node_count],
            is_call: vec![false; node_count],
        };
        list.next[tail] = NO_NODE;
        list.previous[HEAD] = NO_NODE;

        let mut call_node_of_operation = vec![NO_NODE; operations.len()];
        let mut calls_seen = 0;
        for (position, &(_, kind, index)) in events.iter().enumerate() {
            let node = position + 1;
            list.operation[node] = index;
            if kind == 0 {
                list.is_call[node] = true;
                list.bit_of_call[node] = calls_seen;
                calls_seen += 1;
                call_node_of_operation[index] = node;
            } else {
                let call_node = call_node_of_operation[index];
                debug_assert_ne!(call_node, NO_NODE, "a return sorts after its call");
                list.return_of_call[call_node] = node;
            }
        }
        list
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    /// Put back a node unlinked earlier; nodes must be put back in the reverse order of removal.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }

    /// Remove a call and its return: the operation is linearized.
    fn lift(&mut self, call_node: usize) {
        self.unlink(call_node);
        let return_node = self.return_of_call[call_node];
        if return_node != NO_NODE {
            self.unlink(return_node);
        }
    }

    /// Undo [`EventList::lift`].
    fn unlift(&mut self, call_node: usize) {
        let return_node = self.return_of_call[call_node];
        if return_node != NO_NODE {
            self.relink(return_node);
        }
        self.relink(call_node);
    }
}

/// A fixed-size set of operation indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(size: usize) -> Bitset {
        Bitset(vec![0; size.div_ceil(64)])
    }

    fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }
}

/// One linearization choice, kept so it can be undone.
#[derive(Debug)]
struct Frame {
    call_node: usize,
    state_before: u32,
    /// Which of the operation's possible next states was taken (always 0 for a known output).
    alternative: usize,
}

struct Search<'a, M: Model> {
    model: &'a M,
    operations: &'a [Operation<M::Input, M::Output>],
    events: EventList,
    /// Every model state met so far; the search handles their ids.
    states: StateInterner<M::State>,
    /// The current state's id.
    state: u32,
    linearized: Bitset,
    /// Operations with a known output not yet linearized; the search succeeds at zero.
    known_left: usize,
    stack: Vec<Frame>,
    /// Every (linearized set, state) configuration already entered.
    seen: ConfigurationSet,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, operations: &'a [Operation<M::Input, M::Output>]) -> Self {
        let mut states = StateInterner::new();
        let state = states.intern(model.init());
        let linearized = Bitset::new(operations.len());
        Search {
            model,
            operations,
            events: EventList::new(operations),
            states,
            state,
            seen: ConfigurationSet::new(linearized.0.len()),
            linearized,
            known_left: operations.iter().filter(|op| op.is_known()).count(),
            stack: Vec::new(),
        }
    }

    fn run(&mut self, meter: &mut Meter) -> Verdict {
        let mut cursor = self.events.next[HEAD];
        loop {
            if self.known_left == 0 {
                return Verdict::Linearizable;
            }
            if !meter.tick() {
                return Verdict::Unknown;
            }
            if self.events.is_call[cursor] {
                cursor = if self.try_linearize(cursor, 0) {
                    self.events.next[HEAD]
                } else {
                    self.events.next[cursor]
                };
                continue;
            }
            // A return whose operation is not linearized (or, impossibly while known operations
            // remain, the tail): the latest choice was wrong.
            debug_assert_ne!(self.events.operation[cursor], NO_NODE, "reached the tail");
            let Some(frame) = self.stack.pop() else {
                return Verdict::NotLinearizable;
            };
            let (call_node, alternative) = (frame.call_node, frame.alternative);
            self.undo(frame);
            cursor = if self.try_linearize(call_node, alternative + 1) {
                self.events.next[HEAD]
            } else {
                self.events.next[call_node]
            };
        }
    }

    /// Try to linearize the operation of `call_node` now, starting with its alternative number
    /// `first_alternative`. On success the choice is pushed and applied.
    fn try_linearize(&mut self, call_node: usize, first_alternative: usize) -> bool {
        let operation = &self.operations[self.events.operation[call_node]];
        let state = self.states.get(self.state);
        match &operation.output {
            Some(output) => {
                if first_alternative > 0 {
                    return false;
                }
                match self.model.step(state, &operation.input, output) {
                    Some(next_state) => {
                        let next_state = self.states.intern(next_state);
                        self.enter(call_node, next_state, 0)
                    }
                    None => false,
                }
            }
            None => {
                let candidates = self.model.step_unknown(state, &operation.input);
                for (alternative, next_state) in
                    candidates.into_iter().enumerate().skip(first_alternative)
                {
                    let next_state = self.states.intern(next_state);
                    if self.enter(call_node, next_state, alternative) {
                        return true;
                    }
                }
                false
            }
        }
    }

    /// Linearize the operation of `call_node`, leaving `next_state`, unless that configuration
    /// was already explored.
    fn enter(&mut self, call_node: usize, next_state: u32, alternative: usize) -> bool {
        let bit = self.events.bit_of_call[call_node];
        self.linearized.insert(bit);
        if !self.seen.insert(&self.linearized.0, next_state) {
            self.linearized.remove(bit);
            return false;
        }
        let state_before = std::mem::replace(&mut self.state, next_state);
        self.stack.push(Frame {
            call_node,
            state_before,
            alternative,
        });
        self.events.lift(call_node);
        if self.operations[self.events.operation[call_node]].is_known() {
            self.known_left -= 1;
        }
        true
    }

    fn undo(&mut self, frame: Frame) {
        let index = self.events.operation[frame.call_node];
        self.events.unlift(frame.call_node);
        self.linearized
            .remove(self.events.bit_of_call[frame.call_node]);
        self.state = frame.state_before;
        if self.operations[index].is_known() {
            self.known_left += 1;
        }
    }
}
