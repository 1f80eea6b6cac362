//! etcd v3 semantics, scenario by scenario (reference §2).

mod common;

use common::*;
use skiff_kv::*;

fn kv_fields(kv: &KeyValue) -> (i64, i64, i64) {
    (kv.create_revision, kv.mod_revision, kv.version)
}

#[test]
fn fresh_store_is_at_revision_one_and_first_put_makes_two() {
    let mut h = Harness::new();
    assert_eq!(h.store.current_revision(), 1);
    assert_eq!(h.store.compact_revision(), -1);
    assert_eq!(h.put("foo", "bar"), 2);
    let kv = h.get("foo").unwrap();
    assert_eq!(kv_fields(&kv), (2, 2, 1));
    assert_eq!(kv.value, b("bar"));
    assert_eq!(kv.lease, 0);
}

#[test]
fn versions_tombstones_and_recreation() {
    let mut h = Harness::new();
    h.put("k", "1");
    h.put("k", "2");
    assert_eq!(
        h.put("k", "2"),
        4,
        "a put of the same value still makes a revision"
    );
    assert_eq!(kv_fields(&h.get("k").unwrap()), (2, 4, 3));
    let (revision, body) = h.ok(Operation::DeleteRange(delete("k", "")));
    assert_eq!(revision, 5);
    assert_eq!(
        body,
        ResponseBody::DeleteRange(DeleteRangeResponse {
            deleted: 1,
            prev_kvs: vec![]
        })
    );
    assert!(h.get("k").is_none());
    h.put("k", "again");
    assert_eq!(
        kv_fields(&h.get("k").unwrap()),
        (6, 6, 1),
        "re-created: new create revision, version 1"
    );
    // The old generation is still readable at its revisions.
    let old = h
        .store
        .range(&RangeRequest {
            revision: 4,
            ..range("k", "")
        })
        .unwrap();
    assert_eq!(kv_fields(&old.kvs[0]), (2, 4, 3));
    assert!(h
        .store
        .range(&RangeRequest {
            revision: 5,
            ..range("k", "")
        })
        .unwrap()
        .kvs
        .is_empty());
}

#[test]
fn requests_that_change_nothing_do_not_make_a_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let (revision, body) = h.ok(Operation::DeleteRange(delete("zzz", "")));
    assert_eq!(revision, 2);
    assert_eq!(
        body,
        ResponseBody::DeleteRange(DeleteRangeResponse::default())
    );
    let (revision, response) = h.txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Range(range("a", ""))],
        failure: vec![],
    });
    assert_eq!(revision, 2);
    assert!(response.succeeded);
    let applied = h.apply(Operation::Range(range("a", "")));
    assert_eq!(applied.response.revision, 2);
    assert!(applied.events.is_empty());
}

#[test]
fn a_txn_makes_one_revision_with_ordered_sub_revisions() {
    let mut h = Harness::new();
    h.put("z", "0");
    let applied = h.apply(Operation::Txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(put("a", "1")),
            RequestOp::Put(put("b", "2")),
            RequestOp::Range(range("a", "c")),
            RequestOp::DeleteRange(delete("z", "")),
        ],
        failure: vec![],
    }));
    assert_eq!(applied.response.revision, 3);
    let events: Vec<_> = applied
        .events
        .iter()
        .map(|event| (event.kind, event.kv.key.clone(), event.kv.mod_revision))
        .collect();
    assert_eq!(
        events,
        vec![
            (EventType::Put, b("a"), 3),
            (EventType::Put, b("b"), 3),
            (EventType::Delete, b("z"), 3)
        ]
    );
    let ResponseBody::Txn(txn) = applied.response.result.unwrap() else {
        panic!()
    };
    let ResponseOp::Range(read) = &txn.responses[2] else {
        panic!()
    };
    assert_eq!(
        read.count, 2,
        "a read inside a txn sees the txn's earlier writes"
    );
    assert!(h.get("z").is_none());
}

#[test]
fn range_end_forms() {
    let mut h = Harness::new();
    for key in ["a", "ab", "abc", "b", "c"] {
        h.put(key, "v");
    }
    assert_eq!(h.keys(&range("ab", "")), ["ab"]);
    assert_eq!(h.keys(&range("ab", "\0")), ["ab", "abc", "b", "c"]);
    assert_eq!(h.keys(&range("a", "b")), ["a", "ab", "abc"], "prefix a");
    assert_eq!(h.keys(&range("\0", "\0")), ["a", "ab", "abc", "b", "c"]);
    assert!(
        h.keys(&range("c", "a")).is_empty(),
        "an end before the key is an empty range"
    );
    assert!(h.keys(&range("zz", "")).is_empty());
    assert_eq!(h.store.range(&range("", "")), Err(KvError::KeyNotProvided));
}

#[test]
fn limit_more_count_keys_only_count_only() {
    let mut h = Harness::new();
    for key in ["a", "b", "c", "d"] {
        h.put(key, "value");
    }
    let response = h
        .store
        .range(&RangeRequest {
            limit: 2,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(response.kvs.len(), 2);
    assert!(response.more);
    assert_eq!(
        response.count, 4,
        "count is the total, not the number returned"
    );
    let response = h
        .store
        .range(&RangeRequest {
            limit: 4,
            ..range("a", "\0")
        })
        .unwrap();
    assert!(!response.more);
    let response = h
        .store
        .range(&RangeRequest {
            count_only: true,
            ..range("a", "\0")
        })
        .unwrap();
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 4);
    let response = h
        .store
        .range(&RangeRequest {
            keys_only: true,
            ..range("a", "c")
        })
        .unwrap();
    assert_eq!(response.kvs.len(), 2);
    assert!(response
        .kvs
        .iter()
        .all(|kv| kv.value.is_empty() && kv.version == 1));
}

#[test]
fn sort_orders_and_targets() {
    let mut h = Harness::new();
    h.put("a", "3"); // rev 2
    h.put("b", "1"); // rev 3
    h.put("c", "2"); // rev 4
    h.put("a", "3"); // rev 5, version 2
    let sorted = |h: &Harness, sort_order, sort_target| {
        h.keys(&RangeRequest {
            sort_order,
            sort_target,
            ..range("a", "\0")
        })
    };
    assert_eq!(
        sorted(&h, SortOrder::None, SortTarget::Key),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted(&h, SortOrder::Descend, SortTarget::Key),
        ["c", "b", "a"]
    );
    assert_eq!(
        sorted(&h, SortOrder::Ascend, SortTarget::Value),
        ["b", "c", "a"]
    );
    assert_eq!(
        sorted(&h, SortOrder::None, SortTarget::Value),
        ["b", "c", "a"],
        "NONE with a non-key target ascends"
    );
    assert_eq!(
        sorted(&h, SortOrder::Descend, SortTarget::Mod),
        ["a", "c", "b"]
    );
    assert_eq!(
        sorted(&h, SortOrder::Ascend, SortTarget::Create),
        ["a", "b", "c"]
    );
    assert_eq!(
        sorted(&h, SortOrder::Descend, SortTarget::Version),
        ["a", "b", "c"]
    );
    // A keys-only answer is still sorted by the values it leaves out.
    let keys_only = h
        .store
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            keys_only: true,
            ..range("a", "\0")
        })
        .unwrap();
    let keys: Vec<_> = keys_only.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b("a"), b("c"), b("b")]);
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    // Sorting happens before the limit.
    let response = h
        .store
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            limit: 1,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(response.kvs[0].key, b("c"));
    assert!(response.more);
    assert_eq!(response.count, 3);
}

#[test]
fn min_and_max_revision_filters() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("c", "1"); // 4
    h.put("a", "2"); // 5
    assert_eq!(
        h.keys(&RangeRequest {
            min_mod_revision: 4,
            ..range("a", "\0")
        }),
        ["a", "c"]
    );
    assert_eq!(
        h.keys(&RangeRequest {
            max_mod_revision: 3,
            ..range("a", "\0")
        }),
        ["b"]
    );
    assert_eq!(
        h.keys(&RangeRequest {
            min_create_revision: 3,
            ..range("a", "\0")
        }),
        ["b", "c"]
    );
    assert_eq!(
        h.keys(&RangeRequest {
            max_create_revision: 2,
            ..range("a", "\0")
        }),
        ["a"]
    );
    let response = h
        .store
        .range(&RangeRequest {
            min_mod_revision: 4,
            limit: 1,
            ..range("a", "\0")
        })
        .unwrap();
    assert_eq!(
        (response.kvs.len(), response.more, response.count),
        (1, true, 3)
    );
}

#[test]
fn historical_reads_and_revision_errors() {
    let mut h = Harness::new();
    h.put("k", "v1"); // 2
    h.put("k", "v2"); // 3
    h.put("k", "v3"); // 4
    let at = |h: &Harness, revision| {
        h.store.range(&RangeRequest {
            revision,
            ..range("k", "")
        })
    };
    assert_eq!(at(&h, 3).unwrap().kvs[0].value, b("v2"));
    assert!(at(&h, 1).unwrap().kvs.is_empty());
    assert_eq!(at(&h, 5), Err(KvError::FutureRevision));
    assert_eq!(at(&h, 0).unwrap().kvs[0].value, b("v3"));
    let (revision, body) = h.ok(Operation::Compact(CompactionRequest {
        revision: 3,
        physical: false,
    }));
    assert_eq!(
        (revision, body),
        (4, ResponseBody::Compact),
        "compaction makes no revision"
    );
    assert_eq!(at(&h, 2), Err(KvError::Compacted));
    assert_eq!(
        at(&h, 3).unwrap().kvs[0].value,
        b("v2"),
        "reading at the compact revision is allowed"
    );
    assert_eq!(at(&h, 4).unwrap().kvs[0].value, b("v3"));
    // Via the log, the header revision is the current one even for a historical read.
    let applied = h.apply(Operation::Range(RangeRequest {
        revision: 3,
        ..range("k", "")
    }));
    assert_eq!(applied.response.revision, 4);
    assert_eq!(
        h.err(Operation::Range(RangeRequest {
            revision: 2,
            ..range("k", "")
        })),
        KvError::Compacted
    );
}

#[test]
fn compaction_keeps_the_newest_version_at_or_below() {
    let mut h = Harness::new();
    h.put("keep", "old"); // 2
    h.put("keep", "new"); // 3
    h.put("gone", "x"); // 4
    h.ok(Operation::DeleteRange(delete("gone", ""))); // 5
    h.put("later", "y"); // 6
    let hash_before = h.store.hash_kv(6).unwrap();
    let size_before = h.store.approximate_size_bytes();
    assert!(size_before > 0);
    h.ok(Operation::Compact(CompactionRequest {
        revision: 5,
        physical: true,
    }));
    assert_eq!(
        h.store
            .range(&RangeRequest {
                revision: 5,
                ..range("keep", "")
            })
            .unwrap()
            .kvs[0]
            .value,
        b("new")
    );
    assert!(h
        .store
        .range(&RangeRequest {
            revision: 5,
            ..range("gone", "")
        })
        .unwrap()
        .kvs
        .is_empty());
    assert_eq!(h.keys(&range("\0", "\0")), ["keep", "later"]);
    assert!(
        h.store.approximate_size_bytes() < size_before,
        "compaction frees space"
    );
    assert_ne!(h.store.hash_kv(6).unwrap(), hash_before);
    assert_eq!(h.store.hash_kv(6).unwrap().compact_revision, 5);
    assert_eq!(
        h.err(Operation::Compact(CompactionRequest {
            revision: 5,
            physical: false
        })),
        KvError::Compacted
    );
    assert_eq!(
        h.err(Operation::Compact(CompactionRequest {
            revision: 4,
            physical: false
        })),
        KvError::Compacted
    );
    assert_eq!(
        h.err(Operation::Compact(CompactionRequest {
            revision: 7,
            physical: false
        })),
        KvError::FutureRevision
    );
    h.ok(Operation::Compact(CompactionRequest {
        revision: 6,
        physical: false,
    }));
    assert_eq!(h.store.hash_kv(5), Err(KvError::Compacted));
    assert_eq!(h.store.hash_kv(7), Err(KvError::FutureRevision));
}

#[test]
fn put_errors_and_ignore_flags() {
    let mut h = Harness::new();
    assert_eq!(h.err(Operation::Put(put("", "v"))), KvError::KeyNotProvided);
    let ignore_value = PutRequest {
        ignore_value: true,
        ..put("k", "")
    };
    let ignore_lease = PutRequest {
        ignore_lease: true,
        ..put("k", "v2")
    };
    assert_eq!(
        h.err(Operation::Put(PutRequest {
            ignore_value: true,
            ..put("k", "v")
        })),
        KvError::ValueProvided
    );
    assert_eq!(
        h.err(Operation::Put(PutRequest {
            ignore_lease: true,
            lease: 5,
            ..put("k", "v")
        })),
        KvError::LeaseProvided
    );
    assert_eq!(
        h.err(Operation::Put(ignore_value.clone())),
        KvError::KeyNotFound
    );
    assert_eq!(
        h.err(Operation::Put(ignore_lease.clone())),
        KvError::KeyNotFound
    );
    assert_eq!(
        h.err(Operation::Put(PutRequest {
            lease: 99,
            ..put("k", "v")
        })),
        KvError::LeaseNotFound
    );
    h.grant(7, 60, 0);
    h.put_lease("k", "v1", 7);
    h.ok(Operation::Put(ignore_value));
    let kv = h.get("k").unwrap();
    assert_eq!(
        (kv.value.clone(), kv.lease, kv.version),
        (b("v1"), 0, 2),
        "ignore_value keeps the value, not the lease"
    );
    h.put_lease("k", "v1", 7);
    h.ok(Operation::Put(ignore_lease));
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.clone(), kv.lease), (b("v2"), 7));
    let error_strings = [
        (KvError::KeyNotProvided, "etcdserver: key is not provided"),
        (KvError::KeyNotFound, "etcdserver: key not found"),
        (KvError::ValueProvided, "etcdserver: value is provided"),
        (KvError::LeaseProvided, "etcdserver: lease is provided"),
        (
            KvError::LeaseNotFound,
            "etcdserver: requested lease not found",
        ),
        (KvError::LeaseExists, "etcdserver: lease already exists"),
        (KvError::LeaseTtlTooLarge, "etcdserver: too large lease TTL"),
        (
            KvError::TooManyOps,
            "etcdserver: too many operations in txn request",
        ),
        (
            KvError::DuplicateKey,
            "etcdserver: duplicate key given in txn request",
        ),
        (KvError::RequestTooLarge, "etcdserver: request is too large"),
        (
            KvError::Compacted,
            "etcdserver: mvcc: required revision has been compacted",
        ),
        (
            KvError::FutureRevision,
            "etcdserver: mvcc: required revision is a future revision",
        ),
    ];
    for (error, text) in error_strings {
        assert_eq!(error.to_string(), text);
    }
    assert_eq!(KvError::Compacted.grpc_code(), GrpcCode::OutOfRange);
    assert_eq!(KvError::LeaseNotFound.grpc_code(), GrpcCode::NotFound);
    assert_eq!(
        KvError::LeaseExists.grpc_code(),
        GrpcCode::FailedPrecondition
    );
    assert_eq!(KvError::DuplicateKey.grpc_code(), GrpcCode::InvalidArgument);
    assert_eq!(
        h.store.check_request_size(1536 * 1024 + 1),
        Err(KvError::RequestTooLarge)
    );
}

#[test]
fn prev_kv_of_put_and_delete() {
    let mut h = Harness::new();
    let (_, body) = h.ok(Operation::Put(PutRequest {
        prev_kv: true,
        ..put("a", "1")
    }));
    assert_eq!(body, ResponseBody::Put(PutResponse { prev_kv: None }));
    let (_, body) = h.ok(Operation::Put(PutRequest {
        prev_kv: true,
        ..put("a", "2")
    }));
    let ResponseBody::Put(PutResponse {
        prev_kv: Some(previous),
    }) = body
    else {
        panic!()
    };
    assert_eq!((previous.value, previous.mod_revision), (b("1"), 2));
    h.put("b", "3");
    let (revision, body) = h.ok(Operation::DeleteRange(DeleteRangeRequest {
        prev_kv: true,
        ..delete("a", "c")
    }));
    assert_eq!(revision, 5);
    let ResponseBody::DeleteRange(response) = body else {
        panic!()
    };
    assert_eq!(response.deleted, 2);
    let values: Vec<_> = response
        .prev_kvs
        .iter()
        .map(|kv| kv.value.clone())
        .collect();
    assert_eq!(values, [b("2"), b("3")]);
}

#[test]
fn txn_compares_every_target_and_result() {
    let mut h = Harness::new();
    h.grant(5, 60, 0);
    h.put("k", "m"); // 2
    h.put_lease("k", "m", 5); // 3, version 2, lease 5
    let holds = |h: &mut Harness, compare: Compare| {
        h.txn(TxnRequest {
            compare: vec![compare],
            success: vec![],
            failure: vec![],
        })
        .1
        .succeeded
    };
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Equal, Version(2), true),
        (Greater, Version(1), true),
        (Less, Version(2), false),
        (NotEqual, Version(2), false),
        (Equal, Create(2), true),
        (Less, Create(3), true),
        (Equal, Mod(3), true),
        (Greater, Mod(3), false),
        (Equal, Value(b("m")), true),
        (Greater, Value(b("l")), true),
        (Less, Value(b("n")), true),
        (NotEqual, Value(b("m")), false),
        (Equal, Lease(5), true),
        (NotEqual, Lease(0), true),
    ];
    for (result, target, expected) in cases {
        assert_eq!(
            holds(&mut h, compare("k", result, target.clone())),
            expected,
            "{result:?} {target:?}"
        );
    }
    // A missing key: VALUE compares are false, numeric ones compare against 0.
    assert!(holds(&mut h, compare("missing", Equal, Create(0))));
    assert!(holds(&mut h, compare("missing", Equal, Version(0))));
    assert!(!holds(&mut h, compare("missing", Equal, Value(b("")))));
    assert!(!holds(&mut h, compare("missing", NotEqual, Value(b("x")))));
    // A range compare must hold for every key in the range.
    h.put("p/1", "a");
    h.put("p/2", "b");
    let over_prefix = |target, result| Compare {
        range_end: b("p0"),
        ..compare("p/", result, target)
    };
    assert!(holds(&mut h, over_prefix(Version(1), Equal)));
    assert!(!holds(&mut h, over_prefix(Value(b("a")), Equal)));
    assert!(holds(&mut h, over_prefix(Value(b("c")), Less)));
    // A compare with an empty key is refused.
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: vec![compare("", Equal, Version(0))],
            ..TxnRequest::default()
        })),
        KvError::KeyNotProvided
    );
}

#[test]
fn txn_branches_and_nested_txns() {
    let mut h = Harness::new();
    h.put("x", "1"); // 2
    let inner = |succeeding: bool| TxnRequest {
        compare: vec![compare(
            "x",
            CompareResult::Equal,
            CompareTarget::Value(b(if succeeding { "1" } else { "0" })),
        )],
        success: vec![RequestOp::Put(put("inner-success", "s"))],
        failure: vec![
            RequestOp::Put(put("inner-failure", "f")),
            RequestOp::Range(range("x", "")),
        ],
    };
    let outer = TxnRequest {
        compare: vec![compare(
            "x",
            CompareResult::Equal,
            CompareTarget::Version(1),
        )],
        success: vec![
            RequestOp::Put(put("outer", "o")),
            RequestOp::Txn(inner(false)),
            RequestOp::Txn(inner(true)),
        ],
        failure: vec![RequestOp::DeleteRange(delete("x", ""))],
    };
    // The two nested txns write the same keys, but each branch checks against the outer ops only,
    // and the nested ones conflict with each other: a duplicate.
    assert_eq!(h.err(Operation::Txn(outer.clone())), KvError::DuplicateKey);
    let outer = TxnRequest {
        success: vec![
            RequestOp::Put(put("outer", "o")),
            RequestOp::Txn(inner(false)),
        ],
        ..outer
    };
    let (revision, response) = h.txn(outer.clone());
    assert_eq!(revision, 3);
    assert!(response.succeeded);
    assert_eq!(response.responses.len(), 2);
    let ResponseOp::Txn(nested) = &response.responses[1] else {
        panic!()
    };
    assert!(!nested.succeeded);
    assert_eq!(nested.responses.len(), 2);
    assert_eq!(h.get("inner-failure").unwrap().mod_revision, 3);
    assert!(h.get("inner-success").is_none());
    // Now x has version 1 still, but the outer compare on version fails after a second put.
    h.put("x", "1"); // 4
    let (revision, response) = h.txn(outer);
    assert!(!response.succeeded);
    assert_eq!(revision, 5);
    assert!(h.get("x").is_none());
}

#[test]
fn duplicate_keys_in_a_txn() {
    let mut h = Harness::new();
    let txn = |success: Vec<RequestOp>| {
        Operation::Txn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        })
    };
    let p = |key: &str| RequestOp::Put(put(key, "v"));
    let d = |key: &str, end: &str| RequestOp::DeleteRange(delete(key, end));
    let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    };
    assert_eq!(h.err(txn(vec![p("a"), p("a")])), KvError::DuplicateKey);
    assert_eq!(h.err(txn(vec![d("a", "c"), p("b")])), KvError::DuplicateKey);
    assert_eq!(
        h.err(txn(vec![p("b"), d("a", "\0")])),
        KvError::DuplicateKey
    );
    assert_eq!(
        h.err(txn(vec![p("a"), nested(vec![p("a")], vec![])])),
        KvError::DuplicateKey
    );
    assert_eq!(
        h.err(txn(vec![p("a"), nested(vec![], vec![d("a", "")])])),
        KvError::DuplicateKey
    );
    assert_eq!(
        h.err(txn(vec![nested(vec![p("a")], vec![]), p("a")])),
        KvError::DuplicateKey
    );
    // The failure branch is checked too, even though it will not run.
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: vec![p("a"), p("a")]
        })),
        KvError::DuplicateKey
    );
    // Allowed: overlapping deletes, the same key in both branches, distinct keys.
    h.ok(txn(vec![d("a", "c"), d("b", "d")]));
    h.ok(txn(vec![nested(vec![p("a")], vec![p("a")]), p("b")]));
    h.ok(Operation::Txn(TxnRequest {
        compare: vec![],
        success: vec![p("a")],
        failure: vec![p("a")],
    }));
}

#[test]
fn too_many_operations() {
    let mut h = Harness::with_config(KvConfig {
        max_txn_ops: 4,
        ..KvConfig::default()
    });
    let ops = |count: usize| {
        (0..count)
            .map(|index| RequestOp::Put(put(&format!("k{index}"), "v")))
            .collect::<Vec<_>>()
    };
    h.ok(Operation::Txn(TxnRequest {
        compare: vec![],
        success: ops(4),
        failure: vec![],
    }));
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: vec![],
            success: ops(5),
            failure: vec![]
        })),
        KvError::TooManyOps
    );
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: vec![],
            success: vec![],
            failure: ops(5)
        })),
        KvError::TooManyOps
    );
    let compares = (0..5)
        .map(|_| compare("k", CompareResult::Equal, CompareTarget::Version(0)))
        .collect();
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: compares,
            ..TxnRequest::default()
        })),
        KvError::TooManyOps
    );
    // A nested txn's budget is what its parent left.
    let nested = RequestOp::Txn(TxnRequest {
        compare: vec![],
        success: ops(2),
        failure: vec![],
    });
    let mut success = vec![nested.clone()];
    success.extend((0..2).map(|index| RequestOp::Put(put(&format!("outer{index}"), "v"))));
    assert_eq!(
        h.err(Operation::Txn(TxnRequest {
            compare: vec![],
            success,
            failure: vec![]
        })),
        KvError::TooManyOps
    );
    h.ok(Operation::Txn(TxnRequest {
        compare: vec![],
        success: vec![nested],
        failure: vec![],
    }));
}

#[test]
fn a_failed_txn_changes_nothing() {
    let mut h = Harness::new();
    h.put("a", "1");
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(put("b", "2")),
            RequestOp::Put(PutRequest {
                lease: 42,
                ..put("c", "3")
            }),
        ],
        failure: vec![],
    };
    assert_eq!(h.err(Operation::Txn(txn)), KvError::LeaseNotFound);
    let txn = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(put("b", "2")),
            RequestOp::Range(RangeRequest {
                revision: 9,
                ..range("a", "")
            }),
        ],
        failure: vec![],
    };
    assert_eq!(h.err(Operation::Txn(txn)), KvError::FutureRevision);
    assert!(h.get("b").is_none());
}

#[test]
fn lease_grant_rules() {
    let mut h = Harness::new();
    assert_eq!(
        h.grant(1, 1, 0),
        LeaseGrantResponse { id: 1, ttl: 2 },
        "the TTL is raised to the minimum"
    );
    assert_eq!(h.grant(2, 30, 0).ttl, 30);
    assert_eq!(
        h.err(Operation::LeaseGrant {
            id: 1,
            ttl_seconds: 5,
            now_ms: 0
        }),
        KvError::LeaseExists
    );
    assert_eq!(
        h.err(Operation::LeaseGrant {
            id: 3,
            ttl_seconds: 9_000_000_001,
            now_ms: 0
        }),
        KvError::LeaseTtlTooLarge
    );
    assert_eq!(
        h.err(Operation::LeaseGrant {
            id: 0,
            ttl_seconds: 5,
            now_ms: 0
        }),
        KvError::LeaseNotFound
    );
    assert_eq!(h.store.lease_leases(), [1, 2]);
    let (revision, _) = h.ok(Operation::LeaseGrant {
        id: 4,
        ttl_seconds: 5,
        now_ms: 0,
    });
    assert_eq!(revision, 1, "leases are not key-space writes");
}

#[test]
fn revoke_deletes_attached_keys_at_one_revision() {
    let mut h = Harness::new();
    h.grant(10, 60, 0);
    h.put_lease("a", "1", 10); // 2
    h.put_lease("b", "2", 10); // 3
    h.put("c", "3"); // 4
    h.put_lease("moved", "x", 10); // 5
    h.put("moved", "y"); // 6: a put without a lease detaches the key
    h.ok(Operation::DeleteRange(delete("b", ""))); // 7
    h.put_lease("b", "again", 10); // 8
    let ttl = h.store.lease_time_to_live(10, true, 1_000);
    assert_eq!(ttl.keys, [b("a"), b("b")]);
    assert_eq!((ttl.ttl, ttl.granted_ttl), (59, 60));
    let applied = h.apply(Operation::LeaseRevoke { id: 10 });
    assert_eq!(
        applied.response,
        Response {
            revision: 9,
            result: Ok(ResponseBody::LeaseRevoke)
        }
    );
    let deleted: Vec<_> = applied
        .events
        .iter()
        .map(|event| (event.kind, event.kv.key.clone(), event.kv.mod_revision))
        .collect();
    assert_eq!(
        deleted,
        [
            (EventType::Delete, b("a"), 9),
            (EventType::Delete, b("b"), 9)
        ]
    );
    assert_eq!(h.keys(&range("\0", "\0")), ["c", "moved"]);
    assert_eq!(
        h.err(Operation::LeaseRevoke { id: 10 }),
        KvError::LeaseNotFound
    );
    assert_eq!(
        h.store.lease_time_to_live(10, true, 0),
        LeaseTimeToLiveResponse {
            id: 10,
            ttl: -1,
            granted_ttl: 0,
            keys: vec![]
        }
    );
    // Revoking a lease without keys makes no revision.
    h.grant(11, 60, 0);
    assert_eq!(h.ok(Operation::LeaseRevoke { id: 11 }).0, 9);
}

#[test]
fn keep_alive_and_expiry_decided_by_leader_time() {
    let mut h = Harness::new();
    h.grant(1, 10, 0);
    h.grant(2, 10, 5_000);
    h.put_lease("one", "v", 1); // 2
    h.put_lease("two", "v", 2); // 3
    assert!(h.store.expired_leases(9_999, 10).is_empty());
    assert_eq!(h.store.expired_leases(10_000, 10), [1]);
    let keep_alive =
        |h: &mut Harness, id, now_ms| match h.ok(Operation::LeaseKeepAlive { id, now_ms }).1 {
            ResponseBody::LeaseKeepAlive(response) => response,
            other => panic!("{other:?}"),
        };
    assert_eq!(
        keep_alive(&mut h, 1, 9_000),
        LeaseKeepAliveResponse { id: 1, ttl: 10 }
    );
    assert_eq!(
        keep_alive(&mut h, 99, 9_000),
        LeaseKeepAliveResponse { id: 99, ttl: 0 },
        "unknown lease: TTL 0"
    );
    assert_eq!(h.store.expired_leases(15_000, 10), [2]);
    assert_eq!(h.store.lease_time_to_live(1, false, 15_000).ttl, 4);
    assert_eq!(
        keep_alive(&mut h, 2, 15_000).ttl,
        0,
        "an expired lease is not renewed"
    );
    let applied = h.apply(Operation::ExpireLeases {
        now_ms: 20_000,
        max_leases: 10,
    });
    assert_eq!(
        applied.response.result,
        Ok(ResponseBody::ExpireLeases {
            revoked: vec![2, 1]
        })
    );
    let revisions: Vec<_> = applied
        .events
        .iter()
        .map(|event| (event.kv.key.clone(), event.kv.mod_revision))
        .collect();
    assert_eq!(
        revisions,
        [(b("two"), 4), (b("one"), 5)],
        "each lease is revoked at its own revision"
    );
    assert!(h.store.lease_leases().is_empty());
    // Promotion renews every lease as of the new leader's time.
    h.grant(3, 10, 0);
    h.ok(Operation::LeasePromote { now_ms: 100_000 });
    assert!(h.store.expired_leases(109_999, 10).is_empty());
    assert_eq!(h.store.expired_leases(110_000, 10), [3]);
    // ExpireLeases is bounded and takes the earliest deadline first.
    h.grant(4, 10, 0);
    let (_, body) = h.ok(Operation::ExpireLeases {
        now_ms: 200_000,
        max_leases: 1,
    });
    assert_eq!(body, ResponseBody::ExpireLeases { revoked: vec![4] });
    assert_eq!(h.store.lease_leases(), [3]);
}

#[test]
fn watch_events_from_a_past_revision() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("a", "2"); // 4
    h.ok(Operation::DeleteRange(delete("a", ""))); // 5
    h.ok(Operation::Txn(TxnRequest {
        compare: vec![],
        success: vec![RequestOp::Put(put("a", "3")), RequestOp::Put(put("b", "2"))],
        failure: vec![],
    })); // 6
    let WatchEvents::Events {
        events,
        next_revision,
    } = h.store.events_since(b"a", b"", 3, 0)
    else {
        panic!()
    };
    assert_eq!(next_revision, 7);
    let summary: Vec<_> = events
        .iter()
        .map(|event| (event.kind, event.kv.mod_revision, event.kv.version))
        .collect();
    assert_eq!(
        summary,
        [
            (EventType::Put, 4, 2),
            (EventType::Delete, 5, 0),
            (EventType::Put, 6, 1)
        ]
    );
    assert_eq!(events[0].prev_kv.as_ref().unwrap().value, b("1"));
    let delete_event = &events[1];
    assert_eq!(
        delete_event.kv,
        KeyValue {
            key: b("a"),
            mod_revision: 5,
            ..KeyValue::default()
        }
    );
    assert_eq!(delete_event.prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(
        events[2].prev_kv, None,
        "re-created after a delete: no previous KV"
    );
    // The whole key space; the limit never splits a revision.
    let WatchEvents::Events {
        events,
        next_revision,
    } = h.store.events_since(b"", b"\0", 5, 1)
    else {
        panic!()
    };
    assert_eq!(events.len(), 1);
    assert_eq!(next_revision, 6);
    let WatchEvents::Events {
        events,
        next_revision,
    } = h.store.events_since(b"", b"\0", 6, 1)
    else {
        panic!()
    };
    assert_eq!(events.len(), 2, "both events of revision 6");
    assert_eq!(next_revision, 7);
    let WatchEvents::Events {
        events,
        next_revision,
    } = h.store.events_since(b"a", b"\0", 7, 0)
    else {
        panic!()
    };
    assert!(events.is_empty());
    assert_eq!(next_revision, 7);
    // The events of each apply equal what a watcher fetches later.
    let applied = h.apply(Operation::Put(put("c", "x")));
    let WatchEvents::Events { events, .. } = h.store.events_since(b"c", b"", 7, 0) else {
        panic!()
    };
    assert_eq!(applied.events, events);
    // After compaction, a start below the compact revision is refused.
    h.ok(Operation::Compact(CompactionRequest {
        revision: 5,
        physical: false,
    }));
    assert_eq!(
        h.store.events_since(b"a", b"", 4, 0),
        WatchEvents::Compacted {
            compact_revision: 5
        }
    );
    let WatchEvents::Events { events, .. } = h.store.events_since(b"a", b"", 5, 0) else {
        panic!()
    };
    assert_eq!(
        events.len(),
        1,
        "the tombstone at the compact revision is gone"
    );
}

#[test]
fn exactly_once_for_retried_commands() {
    let mut h = Harness::with_config(KvConfig {
        max_sessions: 2,
        ..KvConfig::default()
    });
    let request = |client_id, sequence| {
        Some(RequestId {
            client_id,
            sequence,
        })
    };
    let first = Command {
        request_id: request(1, 1),
        operation: Operation::Put(put("k", "v")),
    };
    let applied = h.command(&first);
    assert_eq!(applied.response.revision, 2);
    let retried = h.command(&first);
    assert_eq!(retried.response, applied.response);
    assert!(retried.events.is_empty());
    assert_eq!(
        h.store.current_revision(),
        2,
        "the retry was not applied again"
    );
    // Errors are remembered too.
    let failing = Command {
        request_id: request(1, 2),
        operation: Operation::LeaseRevoke { id: 5 },
    };
    assert_eq!(
        h.command(&failing).response.result,
        Err(KvError::LeaseNotFound)
    );
    h.grant(5, 60, 0);
    assert_eq!(
        h.command(&failing).response.result,
        Err(KvError::LeaseNotFound)
    );
    // An older sequence is refused without applying.
    assert_eq!(
        h.command(&first).response.result,
        Err(KvError::StaleRequest)
    );
    assert_eq!(h.store.current_revision(), 2);
    // The table is bounded: the least recently used client is forgotten.
    h.command(&Command {
        request_id: request(2, 1),
        operation: Operation::Put(put("k", "2")),
    });
    h.command(&Command {
        request_id: request(3, 1),
        operation: Operation::Put(put("k", "3")),
    });
    let revision = h.store.current_revision();
    assert_eq!(
        h.command(&first).response.revision,
        revision + 1,
        "client 1 was evicted, so its put applies again"
    );
}

#[test]
fn hash_kv_follows_the_history() {
    let mut one = Harness::new();
    let mut two = Harness::new();
    for h in [&mut one, &mut two] {
        h.put("a", "1");
        h.put("b", "2");
    }
    assert_eq!(one.store.hash_kv(0), two.store.hash_kv(0));
    let at_three = one.store.hash_kv(3).unwrap();
    one.put("a", "changed");
    assert_ne!(one.store.hash_kv(0), two.store.hash_kv(0));
    assert_eq!(
        one.store.hash_kv(3).unwrap(),
        at_three,
        "a hash at a past revision does not change"
    );
    two.put("a", "other");
    assert_ne!(one.store.hash_kv(0), two.store.hash_kv(0));
}

#[test]
fn config_validation() {
    assert!(KvConfig::default().validate().is_ok());
    assert!(KvConfig {
        max_txn_ops: 0,
        ..KvConfig::default()
    }
    .validate()
    .is_err());
    assert!(KvConfig {
        min_lease_ttl_seconds: 0,
        ..KvConfig::default()
    }
    .validate()
    .is_err());
    assert!(KvConfig {
        max_sessions: 0,
        ..KvConfig::default()
    }
    .validate()
    .is_err());
    assert!(KvConfig {
        max_txn_depth: 65,
        ..KvConfig::default()
    }
    .validate()
    .is_err());
    assert!(Store::new(KvConfig {
        max_watch_events_per_fetch: 0,
        ..KvConfig::default()
    })
    .is_err());
}

#[test]
fn a_put_moves_a_key_between_leases() {
    let mut h = Harness::new();
    h.grant(1, 60, 0);
    h.grant(2, 60, 0);
    h.put_lease("k", "v", 1);
    h.put_lease("k", "v", 2);
    assert!(h.store.lease_time_to_live(1, true, 0).keys.is_empty());
    assert_eq!(h.store.lease_time_to_live(2, true, 0).keys, [b("k")]);
    h.ok(Operation::DeleteRange(delete("k", "")));
    assert!(
        h.store.lease_time_to_live(2, true, 0).keys.is_empty(),
        "a delete detaches the key"
    );
    let revision = h.store.current_revision();
    h.ok(Operation::LeaseRevoke { id: 2 });
    assert_eq!(h.store.current_revision(), revision);
}

#[test]
fn nesting_is_bounded_in_decoding_and_validation() {
    let nest = |depth: usize| {
        let mut txn = TxnRequest::default();
        for _ in 0..depth {
            txn = TxnRequest {
                compare: vec![],
                success: vec![RequestOp::Txn(txn)],
                failure: vec![],
            };
        }
        Command::new(Operation::Txn(txn))
    };
    let shallow = nest(MAX_DECODE_DEPTH);
    assert_eq!(Command::decode(&shallow.encode()).unwrap(), shallow);
    assert!(Command::decode(&nest(MAX_DECODE_DEPTH + 1).encode()).is_err());
    let mut h = Harness::with_config(KvConfig {
        max_txn_depth: 3,
        ..KvConfig::default()
    });
    h.ok(nest(2).operation);
    assert_eq!(h.err(nest(3).operation), KvError::TooManyOps);
    assert_eq!(h.store.validate_command(&nest(3)), Err(KvError::TooManyOps));
}

#[test]
fn a_range_inside_a_txn_may_read_the_past() {
    let mut h = Harness::new();
    h.put("k", "old"); // 2
    let (revision, response) = h.txn(TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(put("k", "new")),
            RequestOp::Range(RangeRequest {
                revision: 2,
                ..range("k", "")
            }),
            RequestOp::Range(range("k", "")),
        ],
        failure: vec![],
    });
    assert_eq!(revision, 3);
    let values: Vec<_> = response.responses[1..]
        .iter()
        .map(|op| match op {
            ResponseOp::Range(read) => read.kvs[0].value.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, [b("old"), b("new")]);
}

#[test]
fn snapshot_io_errors_are_reported() {
    struct Failing;
    impl std::io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Harness::new();
    h.put("a", "1");
    assert!(matches!(
        h.store.snapshot(Failing),
        Err(SnapshotError::Io(_))
    ));
    assert!(matches!(
        Store::restore(&b"not a snapshot"[..], KvConfig::default()),
        Err(SnapshotError::Corrupt(_))
    ));
    let mut bytes = Vec::new();
    h.store.snapshot(&mut bytes).unwrap();
    let restored = Store::restore(&bytes[..], KvConfig::default()).unwrap();
    assert_eq!(restored.hash_kv(0), h.store.hash_kv(0));
    assert_eq!(restored.applied_index(), 1);
    let invalid = KvConfig {
        max_sessions: 0,
        ..KvConfig::default()
    };
    assert!(Store::restore(&bytes[..], invalid).is_err());
}

/// A key with hundreds of versions (its history spans many storage chunks): reads at every
/// revision, watch events with their previous values, and compactions in the middle of the
/// history all see exactly the versions written.
#[test]
fn long_histories_read_watch_and_compact_correctly() {
    let mut h = Harness::new();
    let mut revisions = Vec::new();
    for n in 0..300 {
        revisions.push(h.put("k", &format!("v{n}")));
        if n % 7 == 0 {
            h.put("other", &format!("o{n}"));
        }
    }
    let value_at = |h: &Harness, revision: i64| -> Option<bytes::Bytes> {
        h.store
            .range(&RangeRequest {
                revision,
                ..range("k", "")
            })
            .unwrap()
            .kvs
            .first()
            .map(|kv| kv.value.clone())
    };
    for (n, revision) in revisions.iter().enumerate() {
        assert_eq!(value_at(&h, *revision), Some(b(&format!("v{n}"))));
    }
    let from = revisions[150];
    let WatchEvents::Events { events, .. } = h.store.events_since(b"k", b"", from, 1000) else {
        panic!("not compacted yet");
    };
    assert_eq!(events.len(), 150);
    for (offset, event) in events.iter().enumerate() {
        let n = 150 + offset;
        assert_eq!(event.kv.value, b(&format!("v{n}")));
        assert_eq!(event.kv.version, n as i64 + 1);
        assert_eq!(
            event.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b(&format!("v{}", n - 1)))
        );
    }
    for cut in [70, 71, 199] {
        h.ok(Operation::Compact(CompactionRequest {
            revision: revisions[cut],
            physical: true,
        }));
        for (n, revision) in revisions.iter().enumerate().skip(cut) {
            assert_eq!(value_at(&h, *revision), Some(b(&format!("v{n}"))));
        }
        assert_eq!(
            h.store
                .range(&RangeRequest {
                    revision: revisions[cut] - 1,
                    ..range("k", "")
                })
                .unwrap_err(),
            KvError::Compacted
        );
        h.put("k", "after");
        assert_eq!(h.get("k").unwrap().value, b("after"));
        h.store.check_invariants();
    }
}

/// Versions keep their values in the store's value log; a compaction that leaves more dead
/// bytes than live ones (and at least the log's floor) moves the live values to a fresh log,
/// and every read still sees them.
#[test]
fn a_value_log_is_collected_when_mostly_dead() {
    let mut h = Harness::new();
    h.put("first", "before the log"); // 2, moved into the new log
    h.store
        .set_value_log(std::sync::Arc::new(VecValueLog::with_collect_floor(200)));
    assert_eq!(h.store.value_log_usage(), (14, 14));
    let value = |n: usize| format!("{n:0>100}");
    for n in 0..10 {
        h.put("k", &value(n)); // 3..=12
    }
    assert_eq!(h.store.value_log_usage(), (1014, 1014));
    // Dead 400 bytes against 614 live: not collected.
    h.ok(Operation::Compact(CompactionRequest {
        revision: 7,
        physical: false,
    }));
    assert_eq!(h.store.value_log_usage(), (614, 1014));
    // Dead 900 against 114 live: collected into a fresh log of the live values.
    h.ok(Operation::Compact(CompactionRequest {
        revision: 12,
        physical: false,
    }));
    assert_eq!(h.store.value_log_usage(), (114, 114));
    h.store.check_invariants();
    let all = h.store.range(&range("\0", "\0")).unwrap();
    let values: Vec<_> = all.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, vec![b("before the log"), b(&value(9))]);
    // New values go to the fresh log after the live ones.
    h.put("k", "next");
    assert_eq!(h.store.value_log_usage(), (118, 118));
    assert_eq!(
        h.store.range(&range("k", "")).unwrap().kvs[0].value,
        b("next")
    );
}
