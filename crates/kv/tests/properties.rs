//! Property tests: encoding round trips, decoder fuzzing, snapshot/restore equivalence, and a model
//! check of the latest key space.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use skiff_kv::*;

fn key() -> impl Strategy<Value = Bytes> {
    // Short keys and keys longer than the store keeps inline (22 bytes), interleaved.
    prop::sample::select(vec![
        "a",
        "b",
        "c",
        "d",
        "p/1",
        "p/2",
        "p/2/a-key-longer-than-inline",
        "p/3",
        "p/3/another-key-longer-than-inline",
    ])
    .prop_map(|key| Bytes::from_static(key.as_bytes()))
}

fn range_end() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["", "", "", "\0", "c", "p0", "z"])
        .prop_map(|end| Bytes::from_static(end.as_bytes()))
}

fn value() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from)
}

fn lease_id() -> impl Strategy<Value = i64> {
    prop_oneof![3 => Just(0i64), 1 => 1i64..4]
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    (
        (key(), range_end(), 0i64..4, -1i64..12),
        (
            prop::sample::select(vec![SortOrder::None, SortOrder::Ascend, SortOrder::Descend]),
            prop::sample::select(vec![
                SortTarget::Key,
                SortTarget::Version,
                SortTarget::Create,
                SortTarget::Mod,
                SortTarget::Value,
            ]),
        ),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (0i64..6, 0i64..6, 0i64..6, 0i64..6),
    )
        .prop_map(
            |((key, range_end, limit, revision), (sort_order, sort_target), flags, filters)| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order,
                    sort_target,
                    serializable: flags.0,
                    keys_only: flags.1,
                    count_only: flags.2,
                    min_mod_revision: filters.0,
                    max_mod_revision: filters.1,
                    min_create_revision: filters.2,
                    max_create_revision: filters.3,
                }
            },
        )
}

fn put_request() -> impl Strategy<Value = PutRequest> {
    put_of(key(), lease_id(), 0.1)
}

/// Puts of `keys` on `leases`, each ignore flag set with probability `ignore`.
fn put_of(
    keys: impl Strategy<Value = Bytes>,
    leases: impl Strategy<Value = i64>,
    ignore: f64,
) -> impl Strategy<Value = PutRequest> {
    (
        keys,
        value(),
        leases,
        any::<bool>(),
        prop::bool::weighted(ignore),
        prop::bool::weighted(ignore),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value: if ignore_value { Bytes::new() } else { value },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        (0i64..4).prop_map(CompareTarget::Version),
        (0i64..10).prop_map(CompareTarget::Create),
        (0i64..10).prop_map(CompareTarget::Mod),
        value().prop_map(CompareTarget::Value),
        (0i64..4).prop_map(CompareTarget::Lease),
    ];
    let result = prop::sample::select(vec![
        CompareResult::Equal,
        CompareResult::Greater,
        CompareResult::Less,
        CompareResult::NotEqual,
    ]);
    (result, target, key(), range_end()).prop_map(|(result, target, key, range_end)| Compare {
        result,
        target,
        key,
        range_end,
    })
}

fn request_op() -> impl Strategy<Value = RequestOp> {
    let leaf = prop_oneof![
        range_request().prop_map(RequestOp::Range),
        put_request().prop_map(RequestOp::Put),
        delete_request().prop_map(RequestOp::DeleteRange),
    ];
    leaf.prop_recursive(3, 12, 3, |inner| {
        (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(inner.clone(), 0..3),
            prop::collection::vec(inner, 0..3),
        )
            .prop_map(|(compare, success, failure)| {
                RequestOp::Txn(TxnRequest {
                    compare,
                    success,
                    failure,
                })
            })
    })
}

fn txn_request() -> impl Strategy<Value = TxnRequest> {
    (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(request_op(), 0..4),
        prop::collection::vec(request_op(), 0..4),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        2 => range_request().prop_map(Operation::Range),
        8 => put_request().prop_map(Operation::Put),
        2 => delete_request().prop_map(Operation::DeleteRange),
        3 => txn_request().prop_map(Operation::Txn),
        1 => (0i64..12, any::<bool>()).prop_map(|(revision, physical)| Operation::Compact(CompactionRequest { revision, physical })),
        2 => (lease_id(), -1i64..5, 0i64..20_000).prop_map(|(id, ttl_seconds, now_ms)| Operation::LeaseGrant { id, ttl_seconds, now_ms }),
        1 => lease_id().prop_map(|id| Operation::LeaseRevoke { id }),
        1 => (lease_id(), 0i64..20_000).prop_map(|(id, now_ms)| Operation::LeaseKeepAlive { id, now_ms }),
        1 => (0i64..30_000, 0u32..3).prop_map(|(now_ms, max_leases)| Operation::ExpireLeases { now_ms, max_leases }),
        1 => (0i64..20_000).prop_map(|now_ms| Operation::LeasePromote { now_ms }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    let request_id = prop_oneof![
        2 => Just(None),
        1 => (1u64..4, 1u64..6).prop_map(|(client_id, sequence)| Some(RequestId { client_id, sequence })),
    ];
    (request_id, operation()).prop_map(|(request_id, operation)| Command {
        request_id,
        operation,
    })
}

/// Commands crowded onto two keys and three leases, so that puts often replace a version
/// with a lease (`ignore_lease`, `ignore_value`, `prev_kv` on it) and revocations delete keys.
fn crowded_command() -> impl Strategy<Value = Command> {
    let key =
        prop::sample::select(vec!["a", "b"]).prop_map(|key| Bytes::from_static(key.as_bytes()));
    let put = put_of(key.clone(), 0i64..4, 0.3);
    let delete = (key, any::<bool>()).prop_map(|(key, prev_kv)| DeleteRangeRequest {
        key,
        prev_kv,
        ..DeleteRangeRequest::default()
    });
    let operation = prop_oneof![
        6 => put.prop_map(Operation::Put),
        1 => delete.prop_map(Operation::DeleteRange),
        2 => (1i64..4, 1i64..5).prop_map(|(id, ttl_seconds)| Operation::LeaseGrant { id, ttl_seconds, now_ms: 0 }),
        1 => (1i64..4).prop_map(|id| Operation::LeaseRevoke { id }),
        1 => (0i64..10_000).prop_map(|now_ms| Operation::ExpireLeases { now_ms, max_leases: 2 }),
    ];
    operation.prop_map(|operation| Command {
        request_id: None,
        operation,
    })
}

fn config() -> KvConfig {
    KvConfig {
        max_sessions: 2,
        max_txn_ops: 5,
        ..KvConfig::default()
    }
}

fn snapshot_bytes(store: &Store) -> Vec<u8> {
    let mut bytes = Vec::new();
    store.snapshot(&mut bytes).unwrap();
    bytes
}

/// Everything a client could observe of a store, to compare two stores.
#[allow(clippy::type_complexity)]
fn observe(
    store: &Store,
) -> (
    i64,
    i64,
    u64,
    HashKvResponse,
    RangeResponse,
    Vec<i64>,
    Vec<i64>,
    WatchEvents,
) {
    store.check_invariants();
    let all = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..RangeRequest::default()
    };
    (
        store.current_revision(),
        store.compact_revision(),
        store.applied_index(),
        store.hash_kv(0).unwrap(),
        store.range(&all).unwrap(),
        store.lease_leases(),
        store.expired_leases(i64::MAX, usize::MAX),
        store.events_since(b"", b"\0", store.compact_revision().max(1), 0),
    )
}

proptest! {
    #[test]
    fn command_encoding_round_trips(command in command()) {
        let bytes = command.encode();
        prop_assert_eq!(bytes[0], COMMAND_FORMAT_VERSION);
        prop_assert_eq!(Command::decode(&bytes).unwrap(), command.clone());
        // Exact capacity: nothing of the encoding's growth is kept in the log entry.
        prop_assert_eq!(bytes.capacity(), bytes.len());
        let shared = bytes::Bytes::from(bytes);
        prop_assert_eq!(Command::decode_shared(&shared).unwrap(), command);
        for cut in [0, 1, shared.len() / 2, shared.len() - 1] {
            prop_assert!(Command::decode_shared(&shared.slice(..cut)).is_err());
        }
    }

    #[test]
    fn extreme_integers_round_trip(
        client_id in any::<u64>(),
        sequence in any::<u64>(),
        id in any::<i64>(),
        ttl_seconds in any::<i64>(),
        now_ms in any::<i64>(),
    ) {
        let command = Command {
            request_id: Some(RequestId { client_id, sequence }),
            operation: Operation::LeaseGrant { id, ttl_seconds, now_ms },
        };
        prop_assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        for value in [i64::MIN, i64::MAX, -1, 0] {
            let command = Command::new(Operation::LeaseKeepAlive { id: value, now_ms: value });
            prop_assert_eq!(Command::decode(&command.encode()).unwrap(), command);
        }
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Command::decode(&bytes);
        let _ = Response::decode(&bytes);
        let _ = Store::restore(&bytes[..], KvConfig::default());
    }

    #[test]
    fn decoding_mutated_commands_never_panics(
        command in command(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = command.encode();
        for (index, byte) in flips {
            let at = index.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = Command::decode(&bytes);
        let end = cut.index(bytes.len() + 1);
        let _ = Command::decode(&bytes[..end]);
    }

    /// Apply a random history, snapshot at a random point, restore, and apply the rest to both:
    /// every response, event and observation is the same, and so are the snapshot bytes.
    #[test]
    fn snapshot_restore_is_equivalent(commands in prop::collection::vec(command(), 1..60), split in any::<prop::sample::Index>()) {
        let split = split.index(commands.len());
        let mut original = Store::new(config()).unwrap();
        for (index, command) in commands[..split].iter().enumerate() {
            original.apply(index as u64 + 1, command);
            original.check_invariants();
        }
        let bytes = snapshot_bytes(&original);
        let mut restored = Store::restore(&bytes[..], config()).unwrap();
        prop_assert_eq!(observe(&restored), observe(&original));
        prop_assert_eq!(snapshot_bytes(&restored), bytes);
        for (index, command) in commands.iter().enumerate().skip(split) {
            let index = index as u64 + 1;
            prop_assert_eq!(original.apply(index, command), restored.apply(index, command));
        }
        prop_assert_eq!(observe(&restored), observe(&original));
        prop_assert_eq!(snapshot_bytes(&restored), snapshot_bytes(&original));
    }

    /// Applying without building watch events (as members do) changes the store exactly as
    /// applying with them, and answers the same.
    #[test]
    fn applying_quietly_is_applying(commands in prop::collection::vec(prop_oneof![command(), crowded_command()], 1..60)) {
        let mut loud = Store::new(config()).unwrap();
        let mut quiet = Store::new(config()).unwrap();
        for (index, command) in commands.iter().enumerate() {
            let index = index as u64 + 1;
            prop_assert_eq!(loud.apply(index, command).response, quiet.apply_quietly(index, command));
        }
        prop_assert_eq!(observe(&quiet), observe(&loud));
        prop_assert_eq!(snapshot_bytes(&quiet), snapshot_bytes(&loud));
    }

    /// A store given a value log answers, observes, hashes and snapshots exactly as one that
    /// keeps its values in the log it started with: with the log set on an empty store or on
    /// one already holding values, through compactions that collect the log (its floor is 0),
    /// for a snapshot copy taken before a collection and written after it, and restored into
    /// a log.
    #[test]
    fn a_value_log_changes_nothing_observable(
        commands in prop::collection::vec(prop_oneof![command(), crowded_command()], 1..60),
        set_at in any::<prop::sample::Index>(),
        copy_at in any::<prop::sample::Index>(),
    ) {
        let (set_at, copy_at) = (set_at.index(commands.len()), copy_at.index(commands.len()));
        let mut plain = Store::new(config()).unwrap();
        let mut logged = Store::new(config()).unwrap();
        let mut copy = None;
        for (index, command) in commands.iter().enumerate() {
            if index == set_at {
                logged.set_value_log(Arc::new(VecValueLog::with_collect_floor(0)));
                logged.check_invariants();
            }
            if index == copy_at {
                copy = Some((logged.snapshot_copy(), snapshot_bytes(&plain)));
            }
            let index = index as u64 + 1;
            prop_assert_eq!(logged.apply(index, command), plain.apply(index, command));
        }
        logged.check_invariants();
        prop_assert_eq!(observe(&logged), observe(&plain));
        let bytes = snapshot_bytes(&plain);
        prop_assert_eq!(snapshot_bytes(&logged), bytes.clone());
        let (copy, at_copy) = copy.expect("a copy was taken");
        let mut written = Vec::new();
        copy.write(&mut written).unwrap();
        prop_assert_eq!(written, at_copy);
        let log: Arc<dyn ValueLog> = Arc::new(VecValueLog::default());
        let restored = Store::restore_with(&bytes[..], config(), Some(log)).unwrap();
        restored.check_invariants();
        prop_assert_eq!(observe(&restored), observe(&plain));
        prop_assert_eq!(snapshot_bytes(&restored), bytes);
    }

    /// A snapshot copy taken at a random point writes exactly the snapshot of that moment,
    /// however the store changes after it was taken.
    #[test]
    fn a_snapshot_copy_writes_the_snapshot_of_its_moment(commands in prop::collection::vec(command(), 1..60), split in any::<prop::sample::Index>()) {
        let split = split.index(commands.len());
        let mut store = Store::new(config()).unwrap();
        for (index, command) in commands[..split].iter().enumerate() {
            store.apply(index as u64 + 1, command);
        }
        let at_split = snapshot_bytes(&store);
        let copy = store.snapshot_copy();
        prop_assert_eq!(copy.applied_index(), store.applied_index());
        for (index, command) in commands.iter().enumerate().skip(split) {
            store.apply(index as u64 + 1, command);
        }
        let mut written = Vec::new();
        copy.write(&mut written).unwrap();
        prop_assert_eq!(written, at_split);
    }

    /// A HashKV copy taken at a random point hashes as the store did at that moment, at the
    /// current revision and at an earlier one, however the store changes after it was taken
    /// (compactions included).
    #[test]
    fn a_hash_copy_hashes_the_store_of_its_moment(commands in prop::collection::vec(command(), 1..60), split in any::<prop::sample::Index>(), back in 0i64..4) {
        let split = split.index(commands.len());
        let mut store = Store::new(config()).unwrap();
        for (index, command) in commands[..split].iter().enumerate() {
            store.apply(index as u64 + 1, command);
        }
        let earlier = (store.current_revision() - back).max(1);
        let mut copies = Vec::new();
        for revision in [0, earlier] {
            let at_split = store.hash_kv(revision);
            let copy = store.hash_kv_copy(revision);
            prop_assert_eq!(copy.as_ref().err(), at_split.as_ref().err());
            if let (Ok(copy), Ok(at_split)) = (copy, at_split) {
                prop_assert_eq!(copy.hash(), at_split.clone());
                copies.push((copy, at_split));
            }
        }
        for (index, command) in commands.iter().enumerate().skip(split) {
            store.apply(index as u64 + 1, command);
        }
        for (copy, at_split) in copies {
            prop_assert_eq!(copy.hash(), at_split);
        }
    }

    /// Any corruption of a snapshot is refused (the checksum covers every byte), never a panic.
    #[test]
    fn corrupt_snapshots_are_refused(
        commands in prop::collection::vec(command(), 0..30),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut store = Store::new(config()).unwrap();
        for (index, command) in commands.iter().enumerate() {
            store.apply(index as u64 + 1, command);
        }
        let bytes = snapshot_bytes(&store);
        let mut flipped = bytes.clone();
        let at = at.index(flipped.len());
        flipped[at] ^= xor;
        prop_assert!(Store::restore(&flipped[..], config()).is_err());
        let cut = cut.index(bytes.len());
        prop_assert!(Store::restore(&bytes[..cut], config()).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Store::restore(&longer[..], config()).is_err());
    }

    /// Every revision's key space matches a plain map driven by the same puts and deletes
    /// (versions count puts since creation), before and after a compaction at a random revision;
    /// and the events of each apply are what `events_since` returns later.
    #[test]
    fn every_revision_matches_a_model(
        commands in prop::collection::vec(
            prop_oneof![
                3 => (key(), value()).prop_map(|(key, value)| Operation::Put(PutRequest { key, value, ..PutRequest::default() })),
                1 => (key(), range_end()).prop_map(|(key, range_end)| Operation::DeleteRange(DeleteRangeRequest { key, range_end, prev_kv: false })),
            ],
            0..80,
        ),
        compact_at in any::<prop::sample::Index>(),
    ) {
        type Model = BTreeMap<Bytes, (Bytes, i64, i64)>;
        let mut store = Store::new(KvConfig::default()).unwrap();
        let mut model = Model::new();
        let mut history: BTreeMap<i64, Model> = BTreeMap::from([(1, Model::new())]);
        let mut all_events = Vec::new();
        for (index, operation) in commands.iter().enumerate() {
            let applied = store.apply(index as u64 + 1, &Command::new(operation.clone()));
            let revision = applied.response.revision;
            prop_assert!(applied.response.result.is_ok());
            match operation {
                Operation::Put(put) => {
                    let entry = model.entry(put.key.clone()).or_insert((Bytes::new(), revision, 0));
                    entry.0 = put.value.clone();
                    entry.2 += 1;
                }
                Operation::DeleteRange(delete) => {
                    let doomed: Vec<Bytes> = model.keys().filter(|key| {
                        match &delete.range_end[..] {
                            b"" => **key == delete.key,
                            b"\0" => **key >= delete.key,
                            end => **key >= delete.key && key[..] < *end,
                        }
                    }).cloned().collect();
                    for key in doomed {
                        model.remove(&key);
                    }
                }
                _ => unreachable!(),
            }
            history.insert(revision, model.clone());
            all_events.extend(applied.events);
        }
        let current = store.current_revision();
        prop_assert_eq!(history.len() as i64, current, "one model per revision");
        let read = |store: &Store, revision: i64| -> Result<Model, KvError> {
            let all = RangeRequest {
                key: Bytes::from_static(b"\0"),
                range_end: Bytes::from_static(b"\0"),
                revision,
                ..RangeRequest::default()
            };
            Ok(store.range(&all)?.kvs.into_iter().map(|kv| (kv.key, (kv.value, kv.create_revision, kv.version))).collect())
        };
        for (revision, expected) in &history {
            prop_assert_eq!(&read(&store, *revision).unwrap(), expected);
        }
        let WatchEvents::Events { events, .. } = store.events_since(b"\0", b"\0", 1, 1_000_000) else { panic!() };
        prop_assert_eq!(&events, &all_events);

        let compact_at = compact_at.index(current as usize) as i64 + 1;
        store.apply(commands.len() as u64 + 1, &Command::new(Operation::Compact(CompactionRequest { revision: compact_at, physical: false })));
        store.check_invariants();
        for (revision, expected) in &history {
            if *revision < compact_at {
                prop_assert_eq!(read(&store, *revision), Err(KvError::Compacted));
            } else {
                prop_assert_eq!(&read(&store, *revision).unwrap(), expected);
            }
        }
        prop_assert_eq!(store.events_since(b"\0", b"\0", compact_at - 1, 0), WatchEvents::Compacted { compact_revision: compact_at });
        let WatchEvents::Events { events, .. } = store.events_since(b"\0", b"\0", compact_at + 1, 1_000_000) else { panic!() };
        let expected: Vec<Event> = all_events.into_iter().filter(|event| event.kv.mod_revision > compact_at).collect();
        prop_assert_eq!(events, expected);
    }
}
