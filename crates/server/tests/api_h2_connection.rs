//! HTTP/2 connections of the client port (`client_server/direct_h2.rs`): answers larger than
//! the client's flow-control window, streamed answers through the bridge to the router, a
//! client resetting a stream, many calls at once on one connection.

mod common;

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use common::{b, frame, grpc_request, TestServer};
use h2::client::SendRequest;
use skiff_etcd_proto::etcdserverpb::{
    watch_request::RequestUnion, PutRequest, PutResponse, RangeRequest, RangeResponse,
    SnapshotRequest, WatchCreateRequest, WatchRequest, WatchResponse,
};
use skiff_etcd_proto::prost::Message;
use skiff_kv::KvConfig;
use skiff_server::ApiLimits;
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(30);

/// A raw HTTP/2 connection with h2's client defaults (64 KiB windows).
async fn connect(server: &TestServer) -> SendRequest<Bytes> {
    connect_with(server, 65_535).await
}

/// A raw HTTP/2 connection with 64 KiB stream windows and a connection window of
/// `connection_window` bytes (so that a stream the test does not read yet, or many small
/// answers buffered at once, do not stall or trip the client).
async fn connect_with(server: &TestServer, connection_window: u32) -> SendRequest<Bytes> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_connection_window_size(connection_window)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await.unwrap()
}

/// One unary call on `client`: the answer's single message, after checking `grpc-status: 0`.
async fn unary<M: Message + Default>(
    server: &TestServer,
    client: &mut SendRequest<Bytes>,
    path: &str,
    message: &impl Message,
) -> M {
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut stream) = client
        .send_request(grpc_request(server, path), false)
        .unwrap();
    stream.send_data(frame(message), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0", "{trailers:?}");
    let mut messages = split(&mut data);
    assert_eq!(messages.len(), 1);
    assert!(data.is_empty());
    M::decode(messages.remove(0)).unwrap()
}

/// Takes the whole gRPC messages at the front of `data`.
fn split(data: &mut BytesMut) -> Vec<Bytes> {
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let length = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        if data.len() < 5 + length {
            break;
        }
        data.advance(5);
        messages.push(data.split_to(length).freeze());
    }
    messages
}

/// Puts `count` values of `bytes` bytes each, under `prefix`.
async fn fill(server: &TestServer, prefix: &str, count: usize, bytes: usize) {
    let mut kv = server.kv();
    for index in 0..count {
        kv.put(PutRequest {
            key: b(&format!("{prefix}{index:04}")),
            value: Bytes::from(vec![b'x' + (index % 3) as u8; bytes]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_range_answer_larger_than_the_window_arrives_whole() {
    let server = TestServer::start().await;
    fill(&server, "big/", 6, 1 << 20).await;
    let request = RangeRequest {
        key: b("big/"),
        range_end: b("big0"),
        ..Default::default()
    };
    // h2's default client window is 64 KiB: the 6 MiB answer goes out as the client reads it.
    let mut client = connect(&server).await;
    let answer: RangeResponse = tokio::time::timeout(
        LIMIT,
        unary(&server, &mut client, "/etcdserverpb.KV/Range", &request),
    )
    .await
    .unwrap();
    assert_eq!(answer.kvs.len(), 6);
    for (index, kv) in answer.kvs.iter().enumerate() {
        assert_eq!(kv.value.len(), 1 << 20);
        assert!(kv
            .value
            .iter()
            .all(|byte| *byte == b'x' + (index % 3) as u8));
    }
    // And through tonic's client.
    let answer = server.kv().range(request).await.unwrap().into_inner();
    assert_eq!(answer.kvs.len(), 6);
}

#[tokio::test]
async fn a_snapshot_download_arrives_whole_through_the_bridge() {
    let server = TestServer::start().await;
    fill(&server, "snap/", 6, 1 << 20).await;
    let mut expected = Vec::new();
    server
        .backend
        .read_store(|store| store.snapshot(&mut expected).unwrap());
    assert!(expected.len() > 6 << 20);

    let mut client = connect(&server).await;
    let (response, mut stream) = client
        .send_request(
            grpc_request(&server, "/etcdserverpb.Maintenance/Snapshot"),
            false,
        )
        .unwrap();
    stream.send_data(frame(&SnapshotRequest {}), true).unwrap();
    let download = async {
        let mut body = response.await.unwrap().into_body();
        let mut data = BytesMut::new();
        let mut blob = Vec::new();
        let mut last_remaining = None;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            for message in split(&mut data) {
                let message =
                    skiff_etcd_proto::etcdserverpb::SnapshotResponse::decode(message).unwrap();
                blob.extend_from_slice(&message.blob);
                last_remaining = Some(message.remaining_bytes);
            }
        }
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(data.is_empty());
        (blob, last_remaining)
    };
    let (blob, last_remaining) = tokio::time::timeout(LIMIT, download).await.unwrap();
    assert_eq!(last_remaining, Some(0));
    // The snapshot, zero-padded, then etcd's hash.
    assert!(blob.len() >= expected.len(), "{} bytes", blob.len());
    assert_eq!(&blob[..expected.len()], &expected[..]);
}

/// Opens a watch of `prefix` on `client`: the request side (kept open) and the answer's body.
async fn open_watch(
    server: &TestServer,
    client: &mut SendRequest<Bytes>,
    prefix: &str,
) -> (h2::SendStream<Bytes>, h2::RecvStream) {
    let mut client = client.clone().ready().await.unwrap();
    let (response, mut stream) = client
        .send_request(grpc_request(server, "/etcdserverpb.Watch/Watch"), false)
        .unwrap();
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b(prefix),
            range_end: b(&format!("{}0", prefix.trim_end_matches('/'))),
            ..Default::default()
        })),
    };
    stream.send_data(frame(&create), false).unwrap();
    let body = response.await.unwrap().into_body();
    (stream, body)
}

/// Reads watch responses from `body` until `events` events have arrived.
async fn read_events(body: &mut h2::RecvStream, events: usize) -> Vec<WatchResponse> {
    let mut data = BytesMut::new();
    let mut answers = Vec::new();
    let mut seen = 0;
    while seen < events {
        let chunk = body.data().await.expect("more of the watch").unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        for message in split(&mut data) {
            let answer = WatchResponse::decode(message).unwrap();
            seen += answer.events.len();
            answers.push(answer);
        }
    }
    answers
}

#[tokio::test]
async fn a_watch_with_many_events_arrives_whole() {
    let server = TestServer::start().await;
    let mut client = connect(&server).await;
    let (_requests, mut body) = open_watch(&server, &mut client, "w/").await;
    let created = tokio::time::timeout(LIMIT, read_events(&mut body, 0))
        .await
        .unwrap();
    assert!(created.is_empty() || created[0].created);
    // 2000 events of 4 KiB: about 8 MiB, far more than the client's 64 KiB window.
    fill(&server, "w/", 2000, 4096).await;
    let answers = tokio::time::timeout(LIMIT, read_events(&mut body, 2000))
        .await
        .unwrap();
    let keys: Vec<_> = answers
        .iter()
        .flat_map(|answer| &answer.events)
        .map(|event| event.kv.as_ref().unwrap().key.clone())
        .collect();
    let expected: Vec<_> = (0..2000).map(|index| b(&format!("w/{index:04}"))).collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn a_client_resetting_a_watch_leaves_the_connection_serving() {
    let server = TestServer::start().await;
    let mut client = connect_with(&server, 64 << 20).await;
    // One watch is reset mid-way, with events still to come; another stays.
    let (mut reset, mut reset_body) = open_watch(&server, &mut client, "r/").await;
    let (_kept, mut kept_body) = open_watch(&server, &mut client, "r/").await;
    fill(&server, "r/", 50, 64 * 1024).await;
    tokio::time::timeout(LIMIT, read_events(&mut reset_body, 1))
        .await
        .unwrap();
    reset.send_reset(h2::Reason::CANCEL);
    drop(reset_body);

    // The same connection still serves unary calls and new streams.
    let answer: PutResponse = tokio::time::timeout(
        LIMIT,
        unary(
            &server,
            &mut client,
            "/etcdserverpb.KV/Put",
            &PutRequest {
                key: b("r/after"),
                value: b("v"),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(answer.header.unwrap().revision, 52);
    let (_new, mut new_body) = open_watch(&server, &mut client, "r/").await;
    fill(&server, "r/again", 1, 10).await;
    let answers = tokio::time::timeout(LIMIT, read_events(&mut new_body, 1))
        .await
        .unwrap();
    let event = &answers.last().unwrap().events[0];
    assert_eq!(event.kv.as_ref().unwrap().key, b("r/again0000"));
    // And the kept watch has every event.
    let answers = tokio::time::timeout(LIMIT, read_events(&mut kept_body, 52))
        .await
        .unwrap();
    let events: usize = answers.iter().map(|answer| answer.events.len()).sum();
    assert_eq!(events, 52);
}

#[tokio::test]
async fn many_concurrent_unary_calls_on_one_connection_are_all_answered() {
    let server = TestServer::start_with(KvConfig::default(), ApiLimits::default()).await;
    let client = connect_with(&server, 64 << 20).await;
    let calls = (0..500).map(|index| {
        let mut client = client.clone();
        let server = &server;
        async move {
            let put = PutRequest {
                key: b(&format!("c/{index}")),
                value: b("v"),
                ..Default::default()
            };
            let answer: PutResponse =
                unary(server, &mut client, "/etcdserverpb.KV/Put", &put).await;
            answer.header.unwrap().revision
        }
    });
    let mut revisions = tokio::time::timeout(LIMIT, futures_util::future::join_all(calls))
        .await
        .unwrap();
    revisions.sort_unstable();
    assert_eq!(revisions, (2..502).collect::<Vec<i64>>());
    assert_eq!(server.backend.proposals(), 500);
}
