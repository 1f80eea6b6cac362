//! Client histories recorded by the simulator and their linearizability check.

use skiff_check::{check_kv_by_key, Budget, KvInput, KvOutput, Operation, Verdict};

use crate::command::{Op, Output};

/// How an operation ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The client got an answer at `at` (simulated microseconds).
    Returned {
        /// The answer.
        output: Output,
        /// When it arrived.
        at: u64,
    },
    /// The client gave up: the operation may or may not have taken effect.
    Unknown,
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct HistoryOp {
    /// Issuing client.
    pub client: usize,
    /// The operation.
    pub op: Op,
    /// When the client first sent it (simulated microseconds).
    pub invoke: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Search steps allowed per history: deterministic, so a seed always gets the same verdict.
const CHECK_STEPS: u64 = 20_000_000;

fn to_operation(op: &HistoryOp) -> Operation<KvInput, KvOutput> {
    let input = match &op.op {
        Op::Get { key } => KvInput::Get { key: key.clone() },
        Op::Put { key, value } => KvInput::Put {
            key: key.clone(),
            value: value.clone(),
        },
        Op::Cas { key, from, to } => KvInput::Cas {
            key: key.clone(),
            from: from.clone(),
            to: to.clone(),
        },
    };
    let (output, ret) = match &op.outcome {
        Outcome::Returned { output, at } => {
            let output = match output {
                Output::Value(value) => KvOutput::Value(value.clone()),
                Output::Written => KvOutput::Ok,
                Output::Swapped(swapped) => KvOutput::CasResult(*swapped),
            };
            (Some(output), Some(*at))
        }
        Outcome::Unknown => (None, None),
    };
    Operation {
        client: op.client as u64,
        input,
        output,
        invoke: op.invoke,
        ret,
    }
}

/// What the check concluded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// Every key is linearizable.
    Linearizable,
    /// The search budget ran out on these keys (and no key was found not linearizable):
    /// the history is neither proven right nor wrong.
    Inconclusive(Vec<String>),
}

/// Checks the history; an error names the key that is not linearizable.
pub fn check(history: &[HistoryOp]) -> Result<Checked, String> {
    let operations: Vec<_> = history.iter().map(to_operation).collect();
    let verdicts = check_kv_by_key(&operations, None, Budget::steps(CHECK_STEPS));
    let mut undecided = Vec::new();
    for (key, verdict) in verdicts {
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable => {
                let count = history.iter().filter(|op| op.op.key() == key).count();
                return Err(format!(
                    "key {key:?} ({count} operations) is not linearizable"
                ));
            }
            Verdict::Unknown => undecided.push(key),
        }
    }
    if undecided.is_empty() {
        Ok(Checked::Linearizable)
    } else {
        Ok(Checked::Inconclusive(undecided))
    }
}
