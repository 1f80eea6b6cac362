//! The KV service against a loopback server over one in-process store.

mod common;

use common::{b, TestServer, CLUSTER_ID, MEMBER_ID, TERM};
use skiff_etcd_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request as Op,
    response_op::Response as OpResponse,
    CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use tonic::Code;

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

fn get(key: &str) -> RangeRequest {
    RangeRequest {
        key: b(key),
        ..Default::default()
    }
}

fn prefix(key: &str) -> RangeRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    RangeRequest {
        key: b(key),
        range_end: end.into(),
        ..Default::default()
    }
}

fn keys(kvs: &[skiff_etcd_proto::mvccpb::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

fn assert_status(status: tonic::Status, code: Code, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test]
async fn put_then_get_with_etcd_revisions_and_header() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let response = kv.put(put("foo", "bar")).await.unwrap().into_inner();
    let header = response.header.unwrap();
    assert_eq!(header.revision, 2, "first put on an empty store");
    assert_eq!(header.cluster_id, CLUSTER_ID);
    assert_eq!(header.member_id, MEMBER_ID);
    assert_eq!(header.raft_term, TERM);
    assert!(response.prev_kv.is_none());

    let response = kv
        .put(PutRequest {
            prev_kv: true,
            ..put("foo", "baz")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.header.unwrap().revision, 3);
    assert_eq!(response.prev_kv.unwrap().value, b("bar"));

    let barriers = server.backend.barriers();
    let range = kv.range(get("foo")).await.unwrap().into_inner();
    assert_eq!(
        server.backend.barriers(),
        barriers + 1,
        "linearizable read waits on the barrier"
    );
    assert_eq!(range.count, 1);
    let kv0 = &range.kvs[0];
    assert_eq!(kv0.value, b("baz"));
    assert_eq!(
        (kv0.create_revision, kv0.mod_revision, kv0.version),
        (2, 3, 2)
    );
    assert_eq!(range.header.unwrap().revision, 3);

    let range = kv
        .range(RangeRequest {
            serializable: true,
            ..get("foo")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        server.backend.barriers(),
        barriers + 1,
        "serializable read skips it"
    );
    assert_eq!(range.kvs.len(), 1);

    let missing = kv.range(get("nope")).await.unwrap().into_inner();
    assert_eq!(missing.count, 0);
    assert!(missing.kvs.is_empty());
}

#[tokio::test]
async fn range_options() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    for (key, value) in [("a/1", "z"), ("a/2", "y"), ("a/3", "x"), ("b/1", "w")] {
        kv.put(put(key, value)).await.unwrap();
    }
    // Revisions 2..=5. Update a/1 at 6.
    kv.put(put("a/1", "v")).await.unwrap();

    let all = kv.range(prefix("a/")).await.unwrap().into_inner();
    assert_eq!(keys(&all.kvs), ["a/1", "a/2", "a/3"]);
    assert_eq!(all.count, 3);
    assert!(!all.more);

    let limited = kv
        .range(RangeRequest {
            limit: 2,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&limited.kvs), ["a/1", "a/2"]);
    assert!(limited.more);
    assert_eq!(
        limited.count, 3,
        "count is the total, not the number returned"
    );

    let from_key = kv
        .range(RangeRequest {
            key: b("a/3"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&from_key.kvs), ["a/3", "b/1"]);

    let everything = kv
        .range(RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everything.count, 4);

    let keys_only = kv
        .range(RangeRequest {
            keys_only: true,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(keys_only.kvs.len(), 3);

    let count_only = kv
        .range(RangeRequest {
            count_only: true,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(count_only.kvs.is_empty());
    assert_eq!(count_only.count, 3);

    let by_value_desc = kv
        .range(RangeRequest {
            sort_order: SortOrder::Descend as i32,
            sort_target: SortTarget::Value as i32,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&by_value_desc.kvs), ["a/2", "a/3", "a/1"]);

    let by_mod_default_order = kv
        .range(RangeRequest {
            sort_target: SortTarget::Mod as i32,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&by_mod_default_order.kvs), ["a/2", "a/3", "a/1"]);

    let historical = kv
        .range(RangeRequest {
            revision: 3,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&historical.kvs), ["a/1", "a/2"]);
    assert_eq!(historical.kvs[0].value, b("z"));
    assert_eq!(
        historical.header.unwrap().revision,
        6,
        "header carries the current revision even for an old read"
    );

    let min_mod = kv
        .range(RangeRequest {
            min_mod_revision: 4,
            ..prefix("a/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&min_mod.kvs), ["a/1", "a/3"]);

    let future = kv
        .range(RangeRequest {
            revision: 100,
            ..get("a/1")
        })
        .await
        .unwrap_err();
    assert_status(
        future,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );

    let bad_sort = kv
        .range(RangeRequest {
            sort_order: 9,
            ..get("a/1")
        })
        .await
        .unwrap_err();
    assert_eq!(bad_sort.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn delete_range_with_prev_kv() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    for key in ["k1", "k2", "k3"] {
        kv.put(put(key, "v")).await.unwrap();
    }
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b("k1"),
            range_end: b("k3"),
            prev_kv: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 2);
    assert_eq!(keys(&deleted.prev_kvs), ["k1", "k2"]);
    assert_eq!(deleted.header.unwrap().revision, 5);

    let nothing = kv
        .delete_range(DeleteRangeRequest {
            key: b("zzz"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nothing.deleted, 0);
    assert_eq!(
        nothing.header.unwrap().revision,
        5,
        "deleting nothing makes no revision"
    );
    let left = kv.range(prefix("k")).await.unwrap().into_inner();
    assert_eq!(keys(&left.kvs), ["k3"]);
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(put(key, value))),
    }
}

fn op_get(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestRange(get(key))),
    }
}

fn compare(key: &str, result: CompareResult, target: TargetUnion) -> Compare {
    let kind = match target {
        TargetUnion::Version(_) => CompareTarget::Version,
        TargetUnion::CreateRevision(_) => CompareTarget::Create,
        TargetUnion::ModRevision(_) => CompareTarget::Mod,
        TargetUnion::Value(_) => CompareTarget::Value,
        TargetUnion::Lease(_) => CompareTarget::Lease,
    };
    Compare {
        result: result as i32,
        target: kind as i32,
        key: b(key),
        range_end: Default::default(),
        target_union: Some(target),
    }
}

#[tokio::test]
async fn txn_with_compares_and_nested_ops() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    kv.put(put("x", "1")).await.unwrap(); // revision 2

    // create("new") = 0 and val("x") = "1": success branch with a nested txn.
    let nested = TxnRequest {
        compare: vec![compare(
            "x",
            CompareResult::Greater,
            TargetUnion::ModRevision(1),
        )],
        success: vec![op_put("n1", "a"), op_put("n2", "b")],
        failure: vec![op_put("never", "c")],
    };
    let txn = TxnRequest {
        compare: vec![
            compare("new", CompareResult::Equal, TargetUnion::CreateRevision(0)),
            compare("x", CompareResult::Equal, TargetUnion::Value(b("1"))),
        ],
        success: vec![
            op_put("new", "v"),
            op_get("x"),
            RequestOp {
                request: Some(Op::RequestTxn(nested)),
            },
        ],
        failure: vec![op_get("x")],
    };
    let response = kv.txn(txn.clone()).await.unwrap().into_inner();
    assert!(response.succeeded);
    assert_eq!(response.header.unwrap().revision, 3, "one revision per txn");
    assert_eq!(response.responses.len(), 3);
    match &response.responses[1].response {
        Some(OpResponse::ResponseRange(range)) => assert_eq!(range.kvs[0].value, b("1")),
        other => panic!("{other:?}"),
    }
    match &response.responses[2].response {
        Some(OpResponse::ResponseTxn(inner)) => {
            assert!(inner.succeeded);
            assert_eq!(inner.responses.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let n = kv.range(prefix("n")).await.unwrap().into_inner();
    assert_eq!(keys(&n.kvs), ["n1", "n2", "new"]);
    assert!(n.kvs.iter().all(|kv| kv.mod_revision == 3));

    // Now "new" exists: the same txn fails and runs the failure branch, making no revision.
    let response = kv.txn(txn).await.unwrap().into_inner();
    assert!(!response.succeeded);
    assert_eq!(response.header.unwrap().revision, 3);
    assert_eq!(response.responses.len(), 1);

    // A value compare on a missing key is false; a version compare on it compares to 0.
    let response = kv
        .txn(TxnRequest {
            compare: vec![compare(
                "missing",
                CompareResult::NotEqual,
                TargetUnion::Value(b("q")),
            )],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!response.succeeded);
    let response = kv
        .txn(TxnRequest {
            compare: vec![compare(
                "missing",
                CompareResult::Less,
                TargetUnion::Version(1),
            )],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.succeeded);
}

#[tokio::test]
async fn compaction_and_its_errors() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    for value in ["1", "2", "3", "4"] {
        kv.put(put("c", value)).await.unwrap(); // revisions 2..=5
    }
    let future = kv
        .compact(CompactionRequest {
            revision: 6,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_status(
        future,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    );
    let done = kv
        .compact(CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.header.unwrap().revision, 5);
    let again = kv
        .compact(CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .unwrap_err();
    assert_status(
        again,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let old = kv
        .range(RangeRequest {
            revision: 3,
            ..get("c")
        })
        .await
        .unwrap_err();
    assert_status(
        old,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    );
    let at_compaction = kv
        .range(RangeRequest {
            revision: 4,
            ..get("c")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        at_compaction.kvs[0].value,
        b("3"),
        "reading at the compact revision works"
    );
}

#[tokio::test]
async fn invalid_requests_get_etcd_errors_without_being_proposed() {
    let server = TestServer::start().await;
    let mut kv = server.kv();
    let before = server.backend.proposals();

    let empty = kv.put(put("", "v")).await.unwrap_err();
    assert_status(
        empty,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let empty = kv.range(get("")).await.unwrap_err();
    assert_status(
        empty,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    let empty = kv
        .delete_range(DeleteRangeRequest::default())
        .await
        .unwrap_err();
    assert_status(
        empty,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    );

    let value_provided = kv
        .put(PutRequest {
            ignore_value: true,
            ..put("k", "v")
        })
        .await
        .unwrap_err();
    assert_status(
        value_provided,
        Code::InvalidArgument,
        "etcdserver: value is provided",
    );

    let too_many = TxnRequest {
        success: (0..129).map(|i| op_put(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    let too_many = kv.txn(too_many).await.unwrap_err();
    assert_status(
        too_many,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );

    let duplicate = TxnRequest {
        success: vec![op_put("d", "1"), op_put("d", "2")],
        ..Default::default()
    };
    let duplicate = kv.txn(duplicate).await.unwrap_err();
    assert_status(
        duplicate,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );

    let big = PutRequest {
        key: b("big"),
        value: vec![b'x'; 1536 * 1024 + 10].into(),
        ..Default::default()
    };
    let too_large = kv.put(big).await.unwrap_err();
    assert_status(
        too_large,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    );

    assert_eq!(
        server.backend.proposals(),
        before,
        "refused requests are never proposed"
    );

    // Beyond the gRPC limit (max request bytes + 512 KiB) gRPC itself refuses the message.
    let huge = PutRequest {
        key: b("huge"),
        value: vec![b'x'; 2 * 1024 * 1024 + 100].into(),
        ..Default::default()
    };
    let refused = kv.put(huge).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("grpc: received message larger than max ("),
        "{refused:?}"
    );

    // A request just under the limit is fine.
    let fits = PutRequest {
        key: b("fits"),
        value: vec![b'x'; 1536 * 1024 - 100].into(),
        ..Default::default()
    };
    kv.put(fits).await.unwrap();

    let unknown_lease = kv
        .put(PutRequest {
            lease: 12345,
            ..put("k", "v")
        })
        .await
        .unwrap_err();
    assert_status(
        unknown_lease,
        Code::NotFound,
        "etcdserver: requested lease not found",
    );
    let missing = kv
        .put(PutRequest {
            ignore_value: true,
            ..put("nokey", "")
        })
        .await
        .unwrap_err();
    assert_status(missing, Code::InvalidArgument, "etcdserver: key not found");
}
