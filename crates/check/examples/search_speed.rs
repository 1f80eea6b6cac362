//! Prints how fast the search explores configurations on histories built to be expensive:
//! many concurrent writes followed by a read of a value nobody wrote, so every subset (and, for
//! appends, every order) of the writes must be ruled out before the answer is "no".
//!
//! Then a long single-key history from a real sequential execution, with overlapping intervals
//! and a few unknown outcomes, to show how the cost grows with length.
//!
//! `cargo run --release -p skiff-check --example search_speed`

use std::time::Instant;

use skiff_check::{check_kv, Budget, KvInput, KvOutput, Operation};

fn history(writes: u64, append: bool) -> Vec<Operation<KvInput, KvOutput>> {
    let key = || "x".to_owned();
    let mut history: Vec<Operation<KvInput, KvOutput>> = (0..writes)
        .map(|index| {
            let value = format!("value-{index:04};");
            Operation {
                client: index,
                input: if append {
                    KvInput::Append { key: key(), value }
                } else {
                    KvInput::Put { key: key(), value }
                },
                output: Some(KvOutput::Ok),
                invoke: 0,
                ret: Some(100),
            }
        })
        .collect();
    history.push(Operation {
        client: writes,
        input: KvInput::Get { key: key() },
        output: Some(KvOutput::Value(Some("never".into()))),
        invoke: 200,
        ret: Some(210),
    });
    history
}

/// A small deterministic generator (xorshift64*), so the example needs no dependency.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

/// `length` operations on one register, applied in order at times 10, 20, ...; each interval
/// stretches up to `spread` ticks either side; one in fifty writes has an unknown outcome.
fn long_history(length: u64, spread: u64) -> Vec<Operation<KvInput, KvOutput>> {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let mut value: Option<String> = None;
    (0..length)
        .map(|index| {
            let point = 10 * (index + 1) + spread;
            let invoke = point - random.below(spread + 1);
            let ret = point + random.below(spread + 1);
            let key = "x".to_owned();
            if random.below(2) == 0 {
                return Operation {
                    client: index,
                    input: KvInput::Get { key },
                    output: Some(KvOutput::Value(value.clone())),
                    invoke,
                    ret: Some(ret),
                };
            }
            let written = format!("{index}");
            value = Some(written.clone());
            let known = random.below(50) != 0;
            Operation {
                client: index,
                input: KvInput::Put {
                    key,
                    value: written,
                },
                output: known.then_some(KvOutput::Ok),
                invoke,
                ret: known.then_some(ret),
            }
        })
        .collect()
}

fn main() {
    let cases = [(8, true), (9, true), (16, false), (18, false), (20, false)];
    for (writes, append) in cases {
        let operations = history(writes, append);
        let started = Instant::now();
        let verdict = check_kv(&operations, None, Budget::default());
        let kind = if append { "appends" } else { "puts" };
        println!(
            "{writes} concurrent {kind}, impossible read: {verdict} in {:?}",
            started.elapsed()
        );
    }
    for (length, spread, corrupt) in [
        (10_000, 30, false),
        (100_000, 30, false),
        (20_000, 60, false),
        (10_000, 30, true),
        (20_000, 60, true),
    ] {
        let mut operations = long_history(length, spread);
        if corrupt {
            // A read of a value nobody wrote, at the very end: the whole history is searched.
            let end = 10 * (length + 10) + spread;
            operations.push(Operation {
                client: length,
                input: KvInput::Get { key: "x".into() },
                output: Some(KvOutput::Value(Some("never".into()))),
                invoke: end,
                ret: Some(end + 1),
            });
        }
        let started = Instant::now();
        let verdict = check_kv(&operations, None, Budget::default());
        println!(
            "{length} operations on one key, intervals up to ±{spread} ticks (±{} operations){}: \
             {verdict} in {:?}",
            spread / 10,
            if corrupt {
                " + impossible last read"
            } else {
                ""
            },
            started.elapsed()
        );
    }
}
