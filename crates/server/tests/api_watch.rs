//! The Watch service: one bidirectional stream, many watchers.

mod common;

use std::time::Duration;

use common::{b, TestServer};
use skiff_etcd_proto::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, CompactionRequest,
    DeleteRangeRequest, PutRequest, WatchCancelRequest, WatchCreateRequest, WatchProgressRequest,
    WatchRequest, WatchResponse,
};
use skiff_etcd_proto::mvccpb::event::EventType;
use skiff_kv::KvConfig;
use skiff_server::ApiLimits;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// One open watch stream.
struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(server: &TestServer) -> Stream {
        let (requests, receiver) = mpsc::channel(16);
        let responses = server
            .watch()
            .watch(ReceiverStream::new(receiver))
            .await
            .unwrap()
            .into_inner();
        Stream {
            requests,
            responses,
        }
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .unwrap();
    }

    async fn create(&mut self, create: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(create)).await;
        let created = self.next().await;
        assert!(created.created, "{created:?}");
        created
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a watch response in time")
            .expect("no stream error")
            .expect("stream still open")
    }

    async fn nothing_within(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.responses.message()).await {
            panic!("unexpected response: {message:?}");
        }
    }
}

fn watch_key(key: &str) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key),
        ..Default::default()
    }
}

fn watch_prefix(key: &str) -> WatchCreateRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchCreateRequest {
        key: b(key),
        range_end: end.into(),
        ..Default::default()
    }
}

async fn put(server: &TestServer, key: &str, value: &str) -> i64 {
    server
        .kv()
        .put(PutRequest {
            key: b(key),
            value: b(value),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

async fn delete(server: &TestServer, key: &str) -> i64 {
    server
        .kv()
        .delete_range(DeleteRangeRequest {
            key: b(key),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision
}

fn summary(response: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    response
        .events
        .iter()
        .map(|event| {
            let kv = event.kv.clone().unwrap();
            (
                EventType::try_from(event.r#type).unwrap(),
                String::from_utf8(kv.key.to_vec()).unwrap(),
                String::from_utf8(kv.value.to_vec()).unwrap(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test]
async fn watch_from_now_sees_only_new_events() {
    let server = TestServer::start().await;
    put(&server, "foo", "old").await; // 2
    let mut stream = Stream::open(&server).await;
    let created = stream.create(watch_key("foo")).await;
    assert_eq!(created.watch_id, 0, "watch IDs start at 0");
    assert_eq!(created.header.unwrap().revision, 2);
    put(&server, "other", "x").await; // 3
    put(&server, "foo", "new").await; // 4
    let response = stream.next().await;
    assert_eq!(response.watch_id, 0);
    assert_eq!(
        summary(&response),
        [(EventType::Put, "foo".into(), "new".into(), 4)]
    );
    assert!(response.header.unwrap().revision >= 4);
    delete(&server, "foo").await; // 5
    let response = stream.next().await;
    assert_eq!(
        summary(&response),
        [(EventType::Delete, "foo".into(), "".into(), 5)]
    );
    let tombstone = response.events[0].kv.clone().unwrap();
    assert_eq!((tombstone.create_revision, tombstone.version), (0, 0));

    // A second create gets the next ID.
    let second = stream.create(watch_key("bar")).await;
    assert_eq!(second.watch_id, 1);
}

#[tokio::test]
async fn watch_from_a_past_revision_with_prefix_and_prev_kv() {
    let server = TestServer::start().await;
    put(&server, "p/a", "1").await; // 2
    put(&server, "q", "1").await; // 3
    put(&server, "p/b", "1").await; // 4
    put(&server, "p/a", "2").await; // 5
    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            start_revision: 3,
            prev_kv: true,
            ..watch_prefix("p/")
        })
        .await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let response = stream.next().await;
        seen.extend(response.events);
    }
    assert_eq!(seen[0].kv.as_ref().unwrap().key, b("p/b"));
    assert!(seen[0].prev_kv.is_none(), "p/b was created");
    assert_eq!(seen[1].kv.as_ref().unwrap().mod_revision, 5);
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(seen[1].prev_kv.as_ref().unwrap().mod_revision, 2);

    // Without prev_kv, none is sent.
    let mut plain = Stream::open(&server).await;
    plain
        .create(WatchCreateRequest {
            start_revision: 5,
            ..watch_prefix("p/")
        })
        .await;
    let response = plain.next().await;
    assert_eq!(response.events.len(), 1);
    assert!(response.events[0].prev_kv.is_none());
}

#[tokio::test]
async fn filters_drop_puts_or_deletes() {
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    let no_put = stream
        .create(WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..watch_key("f")
        })
        .await
        .watch_id;
    let no_delete = stream
        .create(WatchCreateRequest {
            filters: vec![FilterType::Nodelete as i32],
            ..watch_key("f")
        })
        .await
        .watch_id;
    put(&server, "f", "1").await; // 2
    let deleted_at = delete(&server, "f").await; // 3
    let mut by_watcher = std::collections::BTreeMap::<i64, Vec<_>>::new();
    for _ in 0..2 {
        let response = stream.next().await;
        by_watcher
            .entry(response.watch_id)
            .or_default()
            .extend(summary(&response));
    }
    assert_eq!(
        by_watcher[&no_put],
        [(EventType::Delete, "f".into(), "".into(), deleted_at)]
    );
    assert_eq!(
        by_watcher[&no_delete],
        [(EventType::Put, "f".into(), "1".into(), 2)]
    );
}

#[tokio::test]
async fn cancel_stops_events() {
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    let id = stream.create(watch_key("c")).await.watch_id;
    stream
        .send(RequestUnion::CancelRequest(WatchCancelRequest {
            watch_id: id,
        }))
        .await;
    let canceled = stream.next().await;
    assert!(canceled.canceled);
    assert_eq!(canceled.watch_id, id);
    put(&server, "c", "1").await;
    stream.nothing_within(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn compacted_start_cancels_with_compact_revision() {
    let server = TestServer::start().await;
    for value in ["1", "2", "3", "4"] {
        put(&server, "k", value).await; // 2..=5
    }
    server
        .kv()
        .compact(CompactionRequest {
            revision: 4,
            physical: false,
        })
        .await
        .unwrap();
    let mut stream = Stream::open(&server).await;
    let created = stream
        .create(WatchCreateRequest {
            start_revision: 2,
            ..watch_key("k")
        })
        .await;
    let canceled = stream.next().await;
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.watch_id, created.watch_id);
    assert_eq!(canceled.compact_revision, 4);
    assert!(canceled.events.is_empty());

    // Starting at exactly the compact revision works.
    let ok = stream
        .create(WatchCreateRequest {
            start_revision: 4,
            ..watch_key("k")
        })
        .await;
    let events = stream.next().await;
    assert_eq!(events.watch_id, ok.watch_id);
    assert_eq!(
        summary(&events),
        [
            (EventType::Put, "k".into(), "3".into(), 4),
            (EventType::Put, "k".into(), "4".into(), 5)
        ]
    );
}

#[tokio::test]
async fn future_start_revision_waits() {
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            start_revision: 4,
            ..watch_key("w")
        })
        .await;
    put(&server, "w", "at 2").await;
    put(&server, "w", "at 3").await;
    stream.nothing_within(Duration::from_millis(200)).await;
    put(&server, "w", "at 4").await;
    let response = stream.next().await;
    assert_eq!(
        summary(&response),
        [(EventType::Put, "w".into(), "at 4".into(), 4)]
    );
}

#[tokio::test]
async fn client_chosen_ids_and_duplicates() {
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    let chosen = stream
        .create(WatchCreateRequest {
            watch_id: 7,
            ..watch_key("a")
        })
        .await;
    assert_eq!(chosen.watch_id, 7);
    assert!(!chosen.canceled);
    stream
        .send(RequestUnion::CreateRequest(WatchCreateRequest {
            watch_id: 7,
            ..watch_key("b")
        }))
        .await;
    let refused = stream.next().await;
    assert!(refused.created && refused.canceled);
    assert_eq!(refused.watch_id, -1);
    assert_eq!(
        refused.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    put(&server, "a", "1").await;
    let response = stream.next().await;
    assert_eq!(response.watch_id, 7);
}

#[tokio::test]
async fn watchers_per_stream_are_bounded() {
    let limits = ApiLimits {
        max_watchers_per_stream: 2,
        ..ApiLimits::default()
    };
    let server = TestServer::start_with(KvConfig::default(), limits).await;
    let mut stream = Stream::open(&server).await;
    stream.create(watch_key("1")).await;
    stream.create(watch_key("2")).await;
    stream
        .send(RequestUnion::CreateRequest(watch_key("3")))
        .await;
    let refused = stream.next().await;
    assert!(refused.created && refused.canceled, "{refused:?}");
    assert_eq!(refused.watch_id, -1);
    assert!(refused.cancel_reason.contains("too many watchers"));
}

#[tokio::test]
async fn progress_request_answers_the_current_revision() {
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    stream.create(watch_key("quiet")).await;
    put(&server, "elsewhere", "1").await;
    let revision = put(&server, "elsewhere", "2").await;
    stream
        .send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.unwrap().revision, revision);
}

#[tokio::test]
async fn progress_notify_sends_periodic_empty_responses() {
    let limits = ApiLimits {
        progress_notify_interval: Duration::from_millis(100),
        ..ApiLimits::default()
    };
    let server = TestServer::start_with(KvConfig::default(), limits).await;
    let mut stream = Stream::open(&server).await;
    let id = stream
        .create(WatchCreateRequest {
            progress_notify: true,
            ..watch_key("n")
        })
        .await
        .watch_id;
    let revision = put(&server, "unrelated", "1").await;
    let notice = stream.next().await;
    assert_eq!(notice.watch_id, id);
    assert!(notice.events.is_empty() && !notice.created && !notice.canceled);
    assert_eq!(notice.compact_revision, 0);
    let first = notice.header.unwrap().revision;
    assert!(first == revision || first == revision - 1, "{first}");
    let again = stream.next().await;
    assert_eq!(again.header.unwrap().revision, revision);

    // A watcher without progress_notify gets nothing.
    let mut quiet = Stream::open(&server).await;
    quiet.create(watch_key("n")).await;
    quiet.nothing_within(Duration::from_millis(350)).await;
}

#[tokio::test]
async fn one_txn_is_one_response() {
    use skiff_etcd_proto::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
    let server = TestServer::start().await;
    let mut stream = Stream::open(&server).await;
    stream.create(watch_prefix("t/")).await;
    let success = (0..5)
        .map(|i| RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: b(&format!("t/{i}")),
                value: b("v"),
                ..Default::default()
            })),
        })
        .collect();
    server
        .kv()
        .txn(TxnRequest {
            success,
            ..Default::default()
        })
        .await
        .unwrap();
    let response = stream.next().await;
    assert_eq!(response.events.len(), 5, "a txn's events stay together");
    assert!(response
        .events
        .iter()
        .all(|event| event.kv.as_ref().unwrap().mod_revision == 2));
}

#[tokio::test]
async fn fragment_splits_large_responses() {
    let limits = ApiLimits {
        max_request_bytes: 1024,
        ..ApiLimits::default()
    };
    let server = TestServer::start_with(KvConfig::default(), limits).await;
    for i in 0..8 {
        put(&server, &format!("t/{i}"), &"v".repeat(300)).await; // 2..=9
    }
    let mut stream = Stream::open(&server).await;
    stream
        .create(WatchCreateRequest {
            start_revision: 2,
            ..watch_prefix("t/")
        })
        .await;
    let whole = stream.next().await;
    assert_eq!(whole.events.len(), 8, "catch-up comes in one response");
    assert!(!whole.fragment);

    stream
        .create(WatchCreateRequest {
            start_revision: 2,
            fragment: true,
            ..watch_prefix("t/")
        })
        .await;
    let mut parts: Vec<WatchResponse> = Vec::new();
    loop {
        let part = stream.next().await;
        let last = !part.fragment;
        parts.push(part);
        if last {
            break;
        }
    }
    assert!(parts.len() > 1, "large response was fragmented");
    assert_eq!(parts.iter().map(|part| part.events.len()).sum::<usize>(), 8);
    assert!(parts[..parts.len() - 1].iter().all(|part| part.fragment));
}

#[tokio::test]
async fn a_stream_requiring_a_leader_is_refused_without_one() {
    let server = TestServer::start().await;
    server.backend.set_leader(0);
    let (_requests, receiver) = mpsc::channel::<WatchRequest>(1);
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    request
        .metadata_mut()
        .insert("hasleader", "true".parse().unwrap());
    let refused = server.watch().watch(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "etcdserver: no leader");
    // Without the metadata the stream opens (a serializable watcher is fine without a leader).
    let mut stream = Stream::open(&server).await;
    stream.create(watch_key("x")).await;
}
