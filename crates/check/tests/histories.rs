//! Hand-made histories whose verdict can be worked out on paper.

use skiff_check::{
    check_kv, check_kv_by_key, check_operations, Budget, KvInput, KvModel, KvOutput, Model,
    Operation, Verdict,
};

type KvOperation = Operation<KvInput, KvOutput>;

fn get(key: &str, read: Option<&str>, invoke: u64, ret: u64) -> KvOperation {
    Operation {
        client: 0,
        input: KvInput::Get { key: key.into() },
        output: Some(KvOutput::Value(read.map(Into::into))),
        invoke,
        ret: Some(ret),
    }
}

fn put(key: &str, value: &str, invoke: u64, ret: u64) -> KvOperation {
    Operation {
        client: 0,
        input: KvInput::Put {
            key: key.into(),
            value: value.into(),
        },
        output: Some(KvOutput::Ok),
        invoke,
        ret: Some(ret),
    }
}

fn append(key: &str, value: &str, invoke: u64, ret: u64) -> KvOperation {
    Operation {
        client: 0,
        input: KvInput::Append {
            key: key.into(),
            value: value.into(),
        },
        output: Some(KvOutput::Ok),
        invoke,
        ret: Some(ret),
    }
}

fn cas(
    key: &str,
    from: Option<&str>,
    to: &str,
    succeeded: bool,
    invoke: u64,
    ret: u64,
) -> KvOperation {
    Operation {
        client: 0,
        input: KvInput::Cas {
            key: key.into(),
            from: from.map(Into::into),
            to: to.into(),
        },
        output: Some(KvOutput::CasResult(succeeded)),
        invoke,
        ret: Some(ret),
    }
}

/// The same operation with its outcome unknown and no return.
fn unknown(operation: KvOperation) -> KvOperation {
    Operation {
        output: None,
        ret: None,
        ..operation
    }
}

/// Check as a register that starts absent.
fn verdict(operations: &[KvOperation]) -> Verdict {
    check_kv(operations, None, Budget::default())
}

#[test]
fn empty_history_is_linearizable() {
    assert_eq!(verdict(&[]), Verdict::Linearizable);
}

#[test]
fn sequential_write_then_read_is_linearizable() {
    let history = [
        get("x", None, 0, 5),
        put("x", "1", 10, 20),
        get("x", Some("1"), 30, 40),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn stale_read_is_not_linearizable() {
    let history = [
        put("x", "1", 0, 10),
        put("x", "2", 20, 30),
        get("x", Some("1"), 40, 50),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn read_of_a_never_written_value_is_not_linearizable() {
    let history = [put("x", "1", 0, 10), get("x", Some("7"), 20, 30)];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn concurrent_writes_may_be_ordered_either_way() {
    let writes = [put("x", "1", 0, 100), put("x", "2", 10, 90)];
    for last in ["1", "2"] {
        let mut history = writes.to_vec();
        history.push(get("x", Some(last), 110, 120));
        assert_eq!(
            verdict(&history),
            Verdict::Linearizable,
            "last write {last}"
        );
    }
    // But once both are over, the order is fixed: the value cannot flip back.
    let mut flipping = writes.to_vec();
    flipping.push(get("x", Some("1"), 110, 120));
    flipping.push(get("x", Some("2"), 130, 140));
    assert_eq!(verdict(&flipping), Verdict::NotLinearizable);
}

#[test]
fn reads_concurrent_with_a_write_may_see_old_then_new_but_not_new_then_old() {
    let write = put("x", "1", 0, 100);
    let old_then_new = [
        write.clone(),
        get("x", None, 10, 20),
        get("x", Some("1"), 30, 40),
    ];
    assert_eq!(verdict(&old_then_new), Verdict::Linearizable);
    let new_then_old = [write, get("x", Some("1"), 10, 20), get("x", None, 30, 40)];
    assert_eq!(verdict(&new_then_old), Verdict::NotLinearizable);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // The read returns at the instant the write is invoked: either may come first.
    let history = [get("x", Some("1"), 10, 20), put("x", "1", 20, 30)];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn unknown_write_may_take_effect_late() {
    let history = [
        put("x", "1", 0, 10),
        unknown(put("x", "2", 20, 0)),
        get("x", Some("1"), 30, 40),
        get("x", Some("2"), 50, 60),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);

    // Had the write returned at 25, the read at 30..40 would be stale.
    let mut returned = history.to_vec();
    returned[1] = put("x", "2", 20, 25);
    assert_eq!(verdict(&returned), Verdict::NotLinearizable);
}

#[test]
fn unknown_write_may_take_effect_after_its_client_gave_up() {
    // The client saw a timeout at 25 (unknown output, known return time); the write still lands.
    let mut timed_out = unknown(put("x", "2", 20, 0));
    timed_out.ret = Some(25);
    let history = [
        put("x", "1", 0, 10),
        timed_out,
        get("x", Some("1"), 30, 40),
        get("x", Some("2"), 50, 60),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn unknown_write_may_never_take_effect() {
    let history = [
        put("x", "1", 0, 10),
        unknown(put("x", "2", 20, 0)),
        get("x", Some("1"), 30, 40),
        get("x", Some("1"), 1000, 1010),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invoke() {
    let history = [
        put("x", "1", 0, 10),
        get("x", Some("2"), 20, 30),
        unknown(put("x", "2", 40, 0)),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn unknown_write_takes_effect_at_most_once() {
    let history = [
        unknown(append("x", "a", 0, 0)),
        get("x", Some("a"), 10, 20),
        put("x", "b", 30, 40),
        get("x", Some("a"), 50, 60),
    ];
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn unknown_write_may_explain_a_failed_cas() {
    // Only the unknown write of a value nobody reads explains the failure: it must not be
    // pruned as unobservable.
    let history = [
        put("x", "a", 0, 10),
        unknown(put("x", "z", 20, 0)),
        cas("x", Some("a"), "b", false, 30, 40),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
    let without = [history[0].clone(), history[2].clone()];
    assert_eq!(verdict(&without), Verdict::NotLinearizable);
}

#[test]
fn unknown_write_may_be_observed_through_an_append() {
    let history = [
        put("x", "a", 0, 10),
        unknown(put("x", "z", 20, 0)),
        append("x", "+", 30, 40),
        get("x", Some("z+"), 50, 60),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn many_unobserved_unknown_writes_do_not_blow_up_the_search() {
    // Each unknown write could land anywhere later; none is ever read, so none matters, and the
    // stale read at the end must be found without exploring their 2^40 subsets.
    let mut history = vec![put("x", "start", 0, 5)];
    for index in 0..40u64 {
        history.push(unknown(put("x", &format!("lost-{index}"), 10 + index, 0)));
        history.push(put(
            "x",
            &format!("v{index}"),
            100 + 20 * index,
            110 + 20 * index,
        ));
        history.push(get(
            "x",
            Some(&format!("v{index}")),
            115 + 20 * index,
            118 + 20 * index,
        ));
    }
    history.push(get("x", Some("v3"), 2000, 2010));
    assert_eq!(
        check_kv(&history, None, Budget::steps(1_000_000)),
        Verdict::NotLinearizable
    );
}

#[test]
fn history_of_only_unknown_operations_is_linearizable() {
    let history = [
        unknown(put("x", "1", 0, 0)),
        unknown(cas("x", Some("5"), "6", true, 1, 0)),
        unknown(get("x", None, 2, 0)),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);
}

#[test]
fn cas_succeeds_only_on_the_expected_value() {
    let succeeds = [
        cas("x", None, "a", true, 0, 10),
        cas("x", Some("a"), "b", true, 20, 30),
        get("x", Some("b"), 40, 50),
    ];
    assert_eq!(verdict(&succeeds), Verdict::Linearizable);

    let wrong_expectation = [put("x", "a", 0, 10), cas("x", Some("z"), "b", true, 20, 30)];
    assert_eq!(verdict(&wrong_expectation), Verdict::NotLinearizable);
}

#[test]
fn failed_cas_changes_nothing_and_needs_a_mismatch() {
    let mismatch = [
        put("x", "a", 0, 10),
        cas("x", Some("z"), "b", false, 20, 30),
        get("x", Some("a"), 40, 50),
    ];
    assert_eq!(verdict(&mismatch), Verdict::Linearizable);

    let matched_yet_failed = [
        put("x", "a", 0, 10),
        cas("x", Some("a"), "b", false, 20, 30),
    ];
    assert_eq!(verdict(&matched_yet_failed), Verdict::NotLinearizable);

    // A concurrent write can explain the failure.
    let explained = [
        put("x", "a", 0, 10),
        put("x", "c", 15, 40),
        cas("x", Some("a"), "b", false, 20, 30),
    ];
    assert_eq!(verdict(&explained), Verdict::Linearizable);
}

#[test]
fn unknown_cas_applies_only_when_its_expectation_holds() {
    let applied = [
        put("x", "a", 0, 10),
        unknown(cas("x", Some("a"), "b", true, 20, 0)),
        get("x", Some("b"), 30, 40),
    ];
    assert_eq!(verdict(&applied), Verdict::Linearizable);

    let impossible = [
        put("x", "z", 0, 10),
        unknown(cas("x", Some("a"), "b", true, 20, 0)),
        get("x", Some("b"), 30, 40),
    ];
    assert_eq!(verdict(&impossible), Verdict::NotLinearizable);
}

#[test]
fn append_concatenates_onto_the_initial_value() {
    let history = [
        append("x", "a", 0, 10),
        append("x", "b", 5, 15),
        get("x", Some("start-ba"), 20, 30),
    ];
    assert_eq!(
        check_kv(&history, Some("start-".into()), Budget::default()),
        Verdict::Linearizable
    );
    assert_eq!(
        check_kv(&history[..2], Some("start-".into()), Budget::default()),
        Verdict::Linearizable
    );
    let mut bad = history.to_vec();
    bad[2] = get("x", Some("start-b"), 20, 30);
    assert_eq!(
        check_kv(&bad, Some("start-".into()), Budget::default()),
        Verdict::NotLinearizable
    );
}

#[test]
fn initial_value_is_respected() {
    let history = [get("x", Some(""), 0, 10)];
    assert_eq!(
        check_kv(&history, Some(String::new()), Budget::default()),
        Verdict::Linearizable
    );
    assert_eq!(verdict(&history), Verdict::NotLinearizable);
}

#[test]
fn keys_are_checked_independently() {
    // Each key alone is fine; mixing them into one register would not be.
    let history = [
        put("x", "1", 0, 10),
        put("y", "2", 20, 30),
        get("x", Some("1"), 40, 50),
        get("y", Some("2"), 40, 50),
    ];
    assert_eq!(verdict(&history), Verdict::Linearizable);

    let mut broken = history.to_vec();
    broken.push(get("y", Some("1"), 60, 70));
    assert_eq!(verdict(&broken), Verdict::NotLinearizable);
    let by_key = check_kv_by_key(&broken, None, Budget::default());
    assert_eq!(by_key["x"], Verdict::Linearizable);
    assert_eq!(by_key["y"], Verdict::NotLinearizable);
}

#[test]
fn exhausted_budget_gives_unknown() {
    let history: Vec<KvOperation> = (0..10)
        .map(|index| put("x", &index.to_string(), 0, 100))
        .chain([get("x", Some("never"), 200, 210)])
        .collect();
    assert_eq!(
        check_kv(&history, None, Budget::steps(10)),
        Verdict::Unknown
    );
    assert_eq!(
        check_kv(&history, None, Budget::unlimited()),
        Verdict::NotLinearizable
    );
}

#[test]
fn time_limit_gives_unknown() {
    // 24 concurrent distinct writes then an impossible read: 2^24 subsets to rule out.
    let history: Vec<KvOperation> = (0..24)
        .map(|index| put("x", &index.to_string(), 0, 100))
        .chain([get("x", Some("never"), 200, 210)])
        .collect();
    let budget = Budget::unlimited().with_time_limit(std::time::Duration::from_millis(50));
    assert_eq!(check_kv(&history, None, budget), Verdict::Unknown);
}

#[test]
fn verdicts_combine_with_not_linearizable_winning() {
    use Verdict::*;
    assert_eq!(Linearizable.and(Linearizable), Linearizable);
    assert_eq!(Linearizable.and(Unknown), Unknown);
    assert_eq!(Unknown.and(NotLinearizable), NotLinearizable);
    assert_eq!(NotLinearizable.and(Linearizable), NotLinearizable);
}

/// A model other than the key-value one, through the generic entry point: a counter whose
/// increment returns the new value.
struct Counter;

impl Model for Counter {
    type State = u64;
    type Input = ();
    type Output = u64;

    fn init(&self) -> u64 {
        0
    }

    fn step(&self, state: &u64, _: &(), output: &u64) -> Option<u64> {
        (*output == state + 1).then_some(state + 1)
    }

    fn step_unknown(&self, state: &u64, _: &()) -> Vec<u64> {
        vec![state + 1]
    }
}

fn increment(returned: Option<u64>, invoke: u64, ret: Option<u64>) -> Operation<(), u64> {
    Operation {
        client: 0,
        input: (),
        output: returned,
        invoke,
        ret,
    }
}

#[test]
fn generic_model_through_check_operations() {
    let concurrent = [
        increment(Some(2), 0, Some(10)),
        increment(Some(1), 5, Some(15)),
        increment(Some(3), 20, Some(30)),
    ];
    assert_eq!(
        check_operations(&Counter, &concurrent, Budget::default()),
        Verdict::Linearizable
    );
    let out_of_order = [
        increment(Some(2), 0, Some(10)),
        increment(Some(1), 20, Some(30)),
    ];
    assert_eq!(
        check_operations(&Counter, &out_of_order, Budget::default()),
        Verdict::NotLinearizable
    );
    // A lost increment explains the gap.
    let gap = [increment(None, 0, None), increment(Some(2), 20, Some(30))];
    assert_eq!(
        check_operations(&Counter, &gap, Budget::default()),
        Verdict::Linearizable
    );
}

#[test]
fn kv_model_rejects_outputs_of_the_wrong_kind() {
    let model = KvModel::default();
    let input = KvInput::Put {
        key: "x".into(),
        value: "1".into(),
    };
    assert_eq!(model.step(&None, &input, &KvOutput::CasResult(true)), None);
}

#[test]
#[should_panic(expected = "before its invoke")]
fn return_before_invoke_is_a_bug_in_the_recorder() {
    check_kv(&[put("x", "1", 10, 5)], None, Budget::default());
}
