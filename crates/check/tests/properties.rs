//! Properties: histories produced by a real sequential execution are always accepted, a
//! corrupted read is caught, and on small histories the search agrees with brute force.

use proptest::prelude::*;
use skiff_check::{
    check_kv, check_operations, Budget, KvInput, KvModel, KvOutput, Model, Operation, Verdict,
};

type KvOperation = Operation<KvInput, KvOutput>;

/// The recipe for one operation of a generated execution.
#[derive(Clone, Debug)]
struct Step {
    kind: u8,
    key: u8,
    value: u8,
    /// How long before its linearization point the operation was invoked.
    lead: u64,
    /// How long after its linearization point it returned.
    lag: u64,
    /// 0..=5: known; 6: outcome unknown and applied; 7: outcome unknown and never applied.
    fate: u8,
}

fn step_strategy(keys: u8) -> impl Strategy<Value = Step> {
    (0u8..4, 0..keys, 0u8..4, 0u64..40, 0u64..40, 0u8..8).prop_map(
        |(kind, key, value, lead, lag, fate)| Step {
            kind,
            key,
            value,
            lead,
            lag,
            fate,
        },
    )
}

/// Run the steps one after another against real registers (the linearization point of step `i`
/// is `10 * (i + 1) + 40`), then give each operation an interval around its point. Some outcomes
/// are made unknown, whether or not the operation was applied.
fn execute(steps: &[Step], initial: Option<&str>) -> Vec<KvOperation> {
    let model = KvModel {
        initial: initial.map(Into::into),
    };
    let mut registers = std::collections::BTreeMap::new();
    let mut operations = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        let key = format!("k{}", step.key);
        let state: Option<String> = registers.get(&key).cloned().unwrap_or_else(|| model.init());
        let value = format!("v{}.{}", step.value, index);
        let current_value = state.clone();
        let input = match step.kind {
            0 => KvInput::Get { key: key.clone() },
            1 => KvInput::Put {
                key: key.clone(),
                value,
            },
            2 => KvInput::Append {
                key: key.clone(),
                value,
            },
            // Expect the current value half the time, so both outcomes occur.
            _ => KvInput::Cas {
                key: key.clone(),
                from: if step.value & 1 == 0 {
                    current_value
                } else {
                    Some("other".into())
                },
                to: value,
            },
        };
        let output = match &input {
            KvInput::Get { .. } => KvOutput::Value(state.clone()),
            KvInput::Put { .. } | KvInput::Append { .. } => KvOutput::Ok,
            KvInput::Cas { from, .. } => KvOutput::CasResult(*from == state),
        };
        let applied = step.fate != 7;
        if applied {
            let next = model
                .step(&state, &input, &output)
                .expect("the real output is always allowed");
            registers.insert(key, next);
        }
        let point = 10 * (index as u64 + 1) + 40;
        let known = step.fate <= 5;
        operations.push(Operation {
            client: index as u64,
            input,
            output: known.then_some(output),
            invoke: point - step.lead,
            ret: if known {
                Some(point + step.lag)
            } else if step.fate == 6 {
                // A timeout seen by the client after the operation was applied.
                Some(point + step.lag)
            } else {
                None
            },
        });
    }
    operations
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn real_executions_are_linearizable(steps in prop::collection::vec(step_strategy(3), 0..60)) {
        let operations = execute(&steps, Some(""));
        prop_assert_eq!(
            check_kv(&operations, Some(String::new()), Budget::default()),
            Verdict::Linearizable
        );
    }

    #[test]
    fn real_single_register_executions_are_linearizable(
        steps in prop::collection::vec(step_strategy(1), 0..40)
    ) {
        let operations = execute(&steps, None);
        prop_assert_eq!(
            check_operations(&KvModel::default(), &operations, Budget::default()),
            Verdict::Linearizable
        );
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        steps in prop::collection::vec(step_strategy(2), 1..40),
        which in any::<prop::sample::Index>(),
    ) {
        let mut operations = execute(&steps, Some(""));
        let reads: Vec<usize> = operations
            .iter()
            .enumerate()
            .filter(|(_, operation)| {
                matches!(operation.input, KvInput::Get { .. }) && operation.output.is_some()
            })
            .map(|(index, _)| index)
            .collect();
        prop_assume!(!reads.is_empty());
        operations[reads[which.index(reads.len())]].output =
            Some(KvOutput::Value(Some("never written".into())));
        prop_assert_eq!(
            check_kv(&operations, Some(String::new()), Budget::default()),
            Verdict::NotLinearizable
        );
    }

    #[test]
    fn search_agrees_with_brute_force(operations in small_history()) {
        let expected = brute_force(&KvModel::default(), &operations);
        prop_assert_eq!(
            check_operations(&KvModel::default(), &operations, Budget::unlimited()),
            expected
        );
        // check_kv also prunes unknown writes it proves irrelevant: same answer.
        prop_assert_eq!(check_kv(&operations, None, Budget::unlimited()), expected);
    }
}

/// Arbitrary single-register histories of up to 7 operations, with arbitrary intervals and
/// outputs (about a third are linearizable). Half of them use only gets and puts, and writes may
/// use a value `c` that reads and compare-and-sets never expect, so that `check_kv`'s pruning of
/// irrelevant unknown writes gets exercised.
fn small_history() -> impl Strategy<Value = Vec<KvOperation>> {
    let operation = (0u8..4, 0u8..3, 0u8..4, 0u64..20, 0u64..12, 0u8..5);
    (any::<bool>(), prop::collection::vec(operation, 0..8)).prop_map(|(plain, recipes)| {
        recipes
            .into_iter()
            .map(|(kind, first, second, invoke, duration, fate)| {
                let kind = if plain { kind % 2 } else { kind };
                small_operation(kind, first, second, invoke, duration, fate)
            })
            .collect()
    })
}

fn small_operation(
    kind: u8,
    first: u8,
    second: u8,
    invoke: u64,
    duration: u64,
    fate: u8,
) -> KvOperation {
    let value = |choice: u8| ["a", "b", "c"].get(choice as usize).map(|v| v.to_string());
    let key = "x".to_owned();
    let (input, output) = match kind {
        0 => (KvInput::Get { key }, KvOutput::Value(value(first))),
        1 => (
            KvInput::Put {
                key,
                value: value(second).unwrap_or_else(|| "a".into()),
            },
            KvOutput::Ok,
        ),
        2 => (
            KvInput::Append {
                key,
                value: value(first).unwrap_or_else(|| "b".into()),
            },
            KvOutput::Ok,
        ),
        _ => (
            KvInput::Cas {
                key,
                from: value(first),
                to: value(second).unwrap_or_else(|| "a".into()),
            },
            KvOutput::CasResult(fate & 1 == 0),
        ),
    };
    // 0: unknown outcome, returned; 1: unknown outcome, never returned; 2..=4: known.
    let known = fate >= 2;
    Operation {
        client: 0,
        input,
        output: known.then_some(output),
        invoke,
        ret: (fate != 1).then_some(invoke + duration),
    }
}

/// Try every order that respects real time (an operation that returned before another was
/// invoked comes first), where unknown outcomes may be applied or left out.
fn brute_force<M: Model>(model: &M, operations: &[Operation<M::Input, M::Output>]) -> Verdict {
    fn extend<M: Model>(
        model: &M,
        operations: &[Operation<M::Input, M::Output>],
        placed: &mut Vec<bool>,
        state: &M::State,
    ) -> bool {
        let all_known_placed = operations
            .iter()
            .zip(placed.iter())
            .all(|(operation, &is_placed)| is_placed || !operation.is_known());
        if all_known_placed {
            return true;
        }
        for (index, operation) in operations.iter().enumerate() {
            if placed[index] {
                continue;
            }
            let must_wait = operations.iter().enumerate().any(|(other, earlier)| {
                !placed[other]
                    && earlier.is_known()
                    && earlier.ret.unwrap_or(u64::MAX) < operation.invoke
            });
            if must_wait {
                continue;
            }
            let next_states = match &operation.output {
                Some(output) => model
                    .step(state, &operation.input, output)
                    .into_iter()
                    .collect(),
                None => model.step_unknown(state, &operation.input),
            };
            for next_state in next_states {
                placed[index] = true;
                let found = extend(model, operations, placed, &next_state);
                placed[index] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    let mut placed = vec![false; operations.len()];
    if extend(model, operations, &mut placed, &model.init()) {
        Verdict::Linearizable
    } else {
        Verdict::NotLinearizable
    }
}
