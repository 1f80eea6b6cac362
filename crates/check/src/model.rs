//! The sequential specification a history is checked against, and the history types.
//!
//! A [`Model`] is deliberately tiny: an initial state and a step relation. Everything about time and
//! concurrency lives in the history ([`Operation`]), so the same model serves the simulator, the
//! Jepsen logs and the key-value histories.

use std::fmt::Debug;
use std::hash::Hash;

/// A sequential object: the specification that concurrent operations must appear to follow.
///
/// States are hashed and compared to memoize the search, so keep them small (a register value,
/// not a whole database: split histories per key first).
pub trait Model {
    /// The object's state. Two equal states must behave identically for every later operation.
    type State: Clone + Eq + Hash + Debug;
    /// What a client asks for.
    type Input: Clone + Debug;
    /// What a client is told.
    type Output: Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// `Some(next)` if `input` applied at `state` may return `output`, leaving `next`;
    /// `None` if that output is impossible at that state.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: &Self::Output,
    ) -> Option<Self::State>;

    /// The states `input` may leave when applied at `state` and its output was never observed.
    ///
    /// The checker always also allows such an operation to have had no effect at all, so an
    /// operation that can only read (or that cannot succeed at `state`) may return an empty list.
    /// Returning `state` itself is allowed and harmless.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;
}

/// One client operation as observed from the outside.
///
/// Times are opaque, totally ordered ticks (line numbers, simulated nanoseconds, …); only their
/// order matters. Two events at the same tick are treated as concurrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued the operation. Informational: the checker does not use it.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// What was answered, or `None` when the outcome is unknown (timeout, crash, `:info`).
    ///
    /// An operation with an unknown output may take effect at any time after its invoke, or never,
    /// whatever `ret` says: a request that timed out on the client can still be applied later.
    pub output: Option<O>,
    /// When the operation was invoked.
    pub invoke: u64,
    /// When the answer arrived; `None` if it never did (treated as returning at +infinity).
    pub ret: Option<u64>,
}

impl<I, O> Operation<I, O> {
    /// True if the operation's output is known, so it must be linearized somewhere.
    pub fn is_known(&self) -> bool {
        self.output.is_some()
    }
}

/// The checker's answer for a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Some order of the operations, each inside its own interval, explains every output.
    Linearizable,
    /// No such order exists.
    NotLinearizable,
    /// The search budget ran out before an answer was found.
    Unknown,
}

impl Verdict {
    /// Combine the verdicts of independent parts (keys) of one history.
    ///
    /// A single non-linearizable part makes the whole history non-linearizable, even if other
    /// parts are undecided.
    pub fn and(self, other: Verdict) -> Verdict {
        match (self, other) {
            (Verdict::NotLinearizable, _) | (_, Verdict::NotLinearizable) => {
                Verdict::NotLinearizable
            }
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            (Verdict::Linearizable, Verdict::Linearizable) => Verdict::Linearizable,
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Verdict::Linearizable => "linearizable",
            Verdict::NotLinearizable => "not linearizable",
            Verdict::Unknown => "unknown (budget exhausted)",
        })
    }
}
