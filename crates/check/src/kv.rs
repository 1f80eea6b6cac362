//! A key-value store of string registers: the model behind both the simulator's client load and the
//! reference histories.
//!
//! Keys never interact, so a history is split per key and each key is checked as its own register.
//! That is what keeps the search small: its cost grows with the concurrency inside one key, not
//! with the length of the whole history.

use std::collections::BTreeMap;

use crate::model::{Model, Operation, Verdict};
use crate::search::{check_metered, Budget, Meter};

/// A client request to the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Read a key.
    Get {
        /// The key read.
        key: String,
    },
    /// Overwrite a key.
    Put {
        /// The key written.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to a key's value (an absent key counts as the empty string).
    Append {
        /// The key written.
        key: String,
        /// The suffix appended.
        value: String,
    },
    /// Set a key to `to` if and only if its value is `from` (`None`: the key is absent).
    Cas {
        /// The key compared and written.
        key: String,
        /// The expected current value.
        from: Option<String>,
        /// The new value on success.
        to: String,
    },
}

impl KvInput {
    /// The key the request touches.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Get { key }
            | KvInput::Put { key, .. }
            | KvInput::Append { key, .. }
            | KvInput::Cas { key, .. } => key,
        }
    }
}

/// The store's answer to a [`KvInput`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The value read by a get (`None`: the key is absent).
    Value(Option<String>),
    /// A put or append was applied.
    Ok,
    /// Whether a compare-and-set matched and was applied.
    CasResult(bool),
}

/// One key's register. Its state is the key's value (`None`: absent).
///
/// Meant for histories already split per key (as [`check_kv`] does); it ignores the key names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvModel {
    /// The value every key has before the first operation.
    pub initial: Option<String>,
}

impl Model for KvModel {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<String> {
        self.initial.clone()
    }

    /// An output of the wrong kind for the input (a put answered with a value) is impossible.
    fn step(
        &self,
        state: &Option<String>,
        input: &KvInput,
        output: &KvOutput,
    ) -> Option<Option<String>> {
        match (input, output) {
            (KvInput::Get { .. }, KvOutput::Value(read)) => (read == state).then(|| state.clone()),
            (KvInput::Put { value, .. }, KvOutput::Ok) => Some(Some(value.clone())),
            (KvInput::Append { value, .. }, KvOutput::Ok) => Some(Some(appended(state, value))),
            (KvInput::Cas { from, to, .. }, KvOutput::CasResult(true)) => {
                (from == state).then(|| Some(to.clone()))
            }
            (KvInput::Cas { from, .. }, KvOutput::CasResult(false)) => {
                (from != state).then(|| state.clone())
            }
            _ => None,
        }
    }

    fn step_unknown(&self, state: &Option<String>, input: &KvInput) -> Vec<Option<String>> {
        match input {
            KvInput::Get { .. } => Vec::new(),
            KvInput::Put { value, .. } => vec![Some(value.clone())],
            KvInput::Append { value, .. } => vec![Some(appended(state, value))],
            KvInput::Cas { from, to, .. } if from == state => vec![Some(to.clone())],
            KvInput::Cas { .. } => Vec::new(),
        }
    }
}

fn appended(state: &Option<String>, suffix: &str) -> String {
    let mut value = state.clone().unwrap_or_default();
    value.push_str(suffix);
    value
}

/// Check a key-value history: split per key, check each key as an independent register.
///
/// `initial` is every key's value before the history starts (`None`: absent). The verdict is
/// [`Verdict::NotLinearizable`] if any key is, else [`Verdict::Unknown`] if the budget (shared by
/// all keys) ran out on some key, else [`Verdict::Linearizable`]. Keys are checked smallest first
/// and the check stops at the first non-linearizable key.
pub fn check_kv(
    operations: &[Operation<KvInput, KvOutput>],
    initial: Option<String>,
    budget: Budget,
) -> Verdict {
    let model = KvModel { initial };
    let mut meter = Meter::new(budget);
    let mut verdict = Verdict::Linearizable;
    for (_, key_operations) in partition_by_key(operations) {
        verdict = verdict.and(check_metered(&model, &key_operations, &mut meter));
        if verdict == Verdict::NotLinearizable {
            break;
        }
    }
    verdict
}

/// Like [`check_kv`], but checks every key and reports each key's verdict.
///
/// Useful to say which key broke; combine the values with [`Verdict::and`] for the whole history.
pub fn check_kv_by_key(
    operations: &[Operation<KvInput, KvOutput>],
    initial: Option<String>,
    budget: Budget,
) -> BTreeMap<String, Verdict> {
    let model = KvModel { initial };
    let mut meter = Meter::new(budget);
    partition_by_key(operations)
        .into_iter()
        .map(|(key, key_operations)| {
            let verdict = check_metered(&model, &key_operations, &mut meter);
            (key.to_owned(), verdict)
        })
        .collect()
}

/// Group operations per key, dropping unknown-outcome operations that cannot matter (see
/// [`is_irrelevant_unknown`]). Groups come smallest first (then by key), so a shared budget
/// decides the cheap keys first.
fn partition_by_key(
    operations: &[Operation<KvInput, KvOutput>],
) -> Vec<(&str, Vec<Operation<KvInput, KvOutput>>)> {
    let mut by_key: BTreeMap<&str, Vec<&Operation<KvInput, KvOutput>>> = BTreeMap::new();
    for operation in operations {
        by_key
            .entry(operation.input.key())
            .or_default()
            .push(operation);
    }
    let mut groups: Vec<_> = by_key
        .into_iter()
        .map(|(key, key_operations)| {
            let observations = Observations::of(&key_operations);
            let relevant: Vec<Operation<KvInput, KvOutput>> = key_operations
                .into_iter()
                .filter(|operation| !is_irrelevant_unknown(operation, &observations))
                .cloned()
                .collect();
            (key, relevant)
        })
        .collect();
    groups.sort_by_key(|(key, key_operations)| (key_operations.len(), *key));
    groups
}

/// What the operations on one key can observe about the values written to it.
#[derive(Debug, Default)]
struct Observations<'a> {
    /// Values returned by reads or expected by compare-and-sets.
    observed_values: std::collections::BTreeSet<&'a str>,
    /// Whether a later state can depend on an earlier value in other ways: appends build on the
    /// current value, and a failed compare-and-set is explained by any value but one.
    value_dependent: bool,
}

impl<'a> Observations<'a> {
    fn of(operations: &[&'a Operation<KvInput, KvOutput>]) -> Observations<'a> {
        let mut observations = Observations::default();
        for operation in operations {
            match (&operation.input, &operation.output) {
                (KvInput::Get { .. }, Some(KvOutput::Value(Some(read)))) => {
                    observations.observed_values.insert(read);
                }
                (KvInput::Append { .. }, _)
                | (KvInput::Cas { .. }, Some(KvOutput::CasResult(false))) => {
                    observations.value_dependent = true;
                }
                _ => {}
            }
            if let KvInput::Cas {
                from: Some(from), ..
            } = &operation.input
            {
                observations.observed_values.insert(from);
            }
        }
        observations
    }
}

/// True for an operation of unknown outcome that the search may leave out without changing the
/// verdict: a read (it constrains nothing), or a write of a value nothing can observe.
///
/// Why the write is safe to drop: in any valid order that includes it, the ops between it and
/// the next write see its value; a read would return it and a compare-and-set would expect it,
/// and there are none; appends and failed compare-and-sets (which could depend on it in other
/// ways) are absent from the key. The next state-changing operation is then a put, which
/// overwrites it, so removing the write leaves every output explained. Pruning matters: every
/// unknown write left in can be linearized at any later point, which multiplies the search.
fn is_irrelevant_unknown(
    operation: &Operation<KvInput, KvOutput>,
    observations: &Observations<'_>,
) -> bool {
    if operation.output.is_some() {
        return false;
    }
    match &operation.input {
        KvInput::Get { .. } => true,
        KvInput::Put { value: written, .. } | KvInput::Cas { to: written, .. } => {
            !observations.value_dependent
                && !observations.observed_values.contains(written.as_str())
        }
        KvInput::Append { .. } => false,
    }
}
