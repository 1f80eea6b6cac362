//! Unary KV calls on the wire: what the client port answers, byte for byte, to well-formed and
//! malformed gRPC requests (oversize, undecodable, truncated, compressed, several messages in one
//! body, deadlines, unknown methods, HTTP/1.1), how it stops, and how long it waits for a
//! silent connection. The expected answers are the
//! ones tonic's server gave before the KV fast path (`client_server.rs`, `api/fast.rs`) replaced
//! it for those calls, so these tests pin that the fast path answers exactly as it did.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{b, TestServer};
use http::{HeaderMap, Request, StatusCode};
use skiff_etcd_proto::etcdserverpb::{
    LeaseGrantRequest, PutRequest, PutResponse, RangeRequest, RangeResponse,
};
use skiff_etcd_proto::prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every call of these tests finishes within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What came back for one request.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    /// Status line, headers in order (but `date`), data and trailers, as one text.
    fn transcript(&self) -> String {
        let mut text = format!("{}\n", self.status.as_u16());
        for (name, value) in &self.headers {
            if name != "date" {
                text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
            }
        }
        text.push_str(&format!("data: {} bytes\n", self.data.len()));
        if let Some(trailers) = &self.trailers {
            for (name, value) in trailers {
                text.push_str(&format!("trailer {name}: {}\n", value.to_str().unwrap()));
            }
        }
        text
    }

    /// A refusal is "trailers-only": the status is in the headers, no data, no trailers.
    fn assert_refused(&self, code: tonic::Code, message: &str) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert!(self.data.is_empty(), "{self:?}");
        assert!(self.trailers.is_none(), "{self:?}");
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/grpc",
            "{self:?}"
        );
        let status = tonic::Status::from_header_map(&self.headers).expect("a grpc-status");
        assert_eq!(status.code(), code, "{self:?}");
        assert_eq!(status.message(), message, "{self:?}");
    }

    /// A successful unary answer: headers without a status, one message, `grpc-status: 0`.
    fn assert_message<M: Message + Default>(&self) -> M {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(
            self.headers.get("content-type").unwrap(),
            "application/grpc"
        );
        assert!(self.headers.get("grpc-status").is_none(), "{self:?}");
        let trailers = self.trailers.as_ref().expect("trailers");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(self.data.len() >= 5, "{self:?}");
        assert_eq!(self.data[0], 0, "not compressed");
        let length = u32::from_be_bytes(self.data[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, self.data.len() - 5, "exactly one message");
        M::decode(&self.data[5..]).expect("a decodable message")
    }
}

/// A gRPC message frame: flag, big-endian length, message.
fn frame_with_flag(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(flag);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

fn frame(message: &impl Message) -> Vec<u8> {
    frame_with_flag(0, &message.encode_to_vec())
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: b(key),
        value: b(value),
        ..Default::default()
    }
}

/// Sends one HTTP/2 request on a fresh connection: `chunks` as DATA frames, the last one ending
/// the stream unless `end` is false (then the stream stays open until the answer is in).
async fn call_with(
    server: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
    end: bool,
) -> Answer {
    tokio::time::timeout(CALL_TIMEOUT, async {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", server.addr));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        let no_body = chunks.is_empty() && end;
        let (response, mut stream) = client.send_request(request, no_body).unwrap();
        let count = chunks.len();
        for (index, chunk) in chunks.into_iter().enumerate() {
            let last = end && index + 1 == count;
            stream.send_data(Bytes::from(chunk), last).unwrap();
        }
        let response = response.await.unwrap();
        let (parts, mut body) = response.into_parts();
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.unwrap();
        drop(stream);
        Answer {
            status: parts.status,
            headers: parts.headers,
            data,
            trailers,
        }
    })
    .await
    .expect("answered in time")
}

/// A gRPC POST with `content-type: application/grpc` plus `headers`, the body in one DATA frame.
async fn call(server: &TestServer, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
    let mut all = vec![("content-type", "application/grpc"), ("te", "trailers")];
    all.extend_from_slice(headers);
    call_with(server, "POST", path, &all, vec![body], true).await
}

const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";

#[tokio::test]
async fn success_is_headers_one_message_and_status_trailer() {
    let server = TestServer::start().await;
    let answer = call(&server, PUT, &[], frame(&put("a", "1"))).await;
    assert_eq!(
        answer.transcript(),
        "200\ncontent-type: application/grpc\ndata: 23 bytes\ntrailer grpc-status: 0\n"
    );
    let response: PutResponse = answer.assert_message();
    assert_eq!(response.header.unwrap().revision, 2);

    let range = RangeRequest {
        key: b("a"),
        ..Default::default()
    };
    let answer = call(&server, RANGE, &[], frame(&range)).await;
    let response: RangeResponse = answer.assert_message();
    assert_eq!(response.kvs.len(), 1);
    assert_eq!(response.kvs[0].value, b("1"));

    // Identity encoding is no encoding.
    let answer = call(
        &server,
        PUT,
        &[("grpc-encoding", "identity")],
        frame(&put("b", "2")),
    )
    .await;
    let response: PutResponse = answer.assert_message();
    assert_eq!(response.header.unwrap().revision, 3);
}

#[tokio::test]
async fn a_message_split_across_many_data_frames() {
    let server = TestServer::start().await;
    let framed = frame(&put("split", "value"));
    // One byte per DATA frame: the prefix and the message both arrive in pieces.
    let chunks: Vec<Vec<u8>> = framed.iter().map(|byte| vec![*byte]).collect();
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let answer = call_with(&server, "POST", PUT, &headers, chunks, true).await;
    let response: PutResponse = answer.assert_message();
    assert_eq!(response.header.unwrap().revision, 2);
    // The stream may also end with an empty DATA frame after the message.
    let chunks = vec![frame(&put("split", "again")), Vec::new()];
    let answer = call_with(&server, "POST", PUT, &headers, chunks, true).await;
    let response: PutResponse = answer.assert_message();
    assert_eq!(response.header.unwrap().revision, 3);
}

#[tokio::test]
async fn service_errors_are_trailers_only_with_etcds_text() {
    let server = TestServer::start().await;
    let answer = call(
        &server,
        PUT,
        &[],
        frame(&PutRequest {
            lease: 12345,
            ..put("k", "v")
        }),
    )
    .await;
    answer.assert_refused(
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
    assert_eq!(
        answer.transcript(),
        "200\ncontent-type: application/grpc\ngrpc-status: 5\n\
         grpc-message: etcdserver:%20requested%20lease%20not%20found\ndata: 0 bytes\n"
    );
}

#[tokio::test]
async fn oversize_messages_are_refused_as_grpc_go_does_without_reading_them() {
    let server = TestServer::start().await;
    let limit = 1536 * 1024 + 512 * 1024;
    // Only the prefix of a 100 MB message, and the stream left open: the answer cannot wait
    // for the body.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&100_000_000u32.to_be_bytes());
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let answer = call_with(&server, "POST", PUT, &headers, vec![prefix], false).await;
    answer.assert_refused(
        tonic::Code::ResourceExhausted,
        &format!("grpc: received message larger than max (100000000 vs. {limit})"),
    );
    assert_eq!(
        answer.transcript(),
        format!(
            "200\ncontent-type: application/grpc\ngrpc-status: 8\n\
             grpc-message: grpc:%20received%20message%20larger%20than%20max%20(100000000%20vs.%20{limit})\n\
             data: 0 bytes\n"
        )
    );

    // One byte over the limit, sent whole.
    let over = vec![0u8; limit + 1];
    let answer = call(&server, PUT, &[], frame_with_flag(0, &over)).await;
    answer.assert_refused(
        tonic::Code::ResourceExhausted,
        &format!(
            "grpc: received message larger than max ({} vs. {limit})",
            limit + 1
        ),
    );

    // Exactly at the limit passes gRPC; the request is then too large for etcd.
    let mut at_limit = put("k", "");
    at_limit.value = vec![b'x'; limit - 3 - 4].into();
    assert_eq!(at_limit.encoded_len(), limit);
    let answer = call(&server, PUT, &[], frame(&at_limit)).await;
    answer.assert_refused(
        tonic::Code::InvalidArgument,
        "etcdserver: request is too large",
    );
    assert_eq!(server.backend.proposals(), 0);
}

#[tokio::test]
async fn undecodable_and_truncated_bodies() {
    let server = TestServer::start().await;
    // Field 1 (key, length-delimited) announcing more bytes than there are.
    let answer = call(&server, PUT, &[], frame_with_flag(0, &[0x0a, 0x05, b'a'])).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "failed to decode Protobuf message: PutRequest.key: buffer underflow",
    );
    // A wire type that does not exist.
    let answer = call(&server, RANGE, &[], frame_with_flag(0, &[0x0f, 0x01])).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "failed to decode Protobuf message: invalid wire type value: 7",
    );
    // The prefix announces 10 bytes, 3 come.
    let mut short = frame_with_flag(0, &[0u8; 10]);
    short.truncate(8);
    let answer = call(&server, PUT, &[], short).await;
    answer.assert_refused(tonic::Code::Internal, "Unexpected EOF decoding stream.");
    // Not even a whole prefix.
    let answer = call(&server, PUT, &[], vec![0, 0, 0]).await;
    answer.assert_refused(tonic::Code::Internal, "Unexpected EOF decoding stream.");
    // No message at all.
    let headers = [("content-type", "application/grpc"), ("te", "trailers")];
    let answer = call_with(&server, "POST", PUT, &headers, Vec::new(), true).await;
    answer.assert_refused(tonic::Code::Internal, "Missing request message.");
    let answer = call(&server, PUT, &[], Vec::new()).await;
    answer.assert_refused(tonic::Code::Internal, "Missing request message.");
    // An empty message is a valid (empty) request, which etcd refuses.
    let answer = call(&server, RANGE, &[], frame_with_flag(0, &[])).await;
    answer.assert_refused(
        tonic::Code::InvalidArgument,
        "etcdserver: key is not provided",
    );
    assert_eq!(server.backend.proposals(), 0);
}

#[tokio::test]
async fn compressed_flags() {
    let server = TestServer::start().await;
    let message = put("k", "v").encode_to_vec();
    let answer = call(&server, PUT, &[], frame_with_flag(1, &message)).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "protocol error: received message with compressed-flag but no grpc-encoding was specified",
    );
    let answer = call(
        &server,
        PUT,
        &[("grpc-encoding", "identity")],
        frame_with_flag(1, &message),
    )
    .await;
    answer.assert_refused(
        tonic::Code::Internal,
        "protocol error: received message with compressed-flag but no grpc-encoding was specified",
    );
    let answer = call(&server, PUT, &[], frame_with_flag(2, &message)).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), while sending request",
    );
    // An encoding the server does not accept.
    let answer = call(
        &server,
        PUT,
        &[("grpc-encoding", "gzip")],
        frame_with_flag(1, &message),
    )
    .await;
    answer.assert_refused(
        tonic::Code::Unimplemented,
        "Content is compressed with `gzip` which isn't supported",
    );
    assert_eq!(
        answer.headers.get("grpc-accept-encoding").unwrap(),
        "identity"
    );
    assert_eq!(server.backend.proposals(), 0);
}

#[tokio::test]
async fn several_messages_in_one_body() {
    let server = TestServer::start().await;
    // Two puts: the first is served, the second is read and dropped.
    let mut body = frame(&put("first", "1"));
    body.extend(frame(&put("second", "2")));
    let answer = call(&server, PUT, &[], body).await;
    let response: PutResponse = answer.assert_message();
    assert_eq!(response.header.unwrap().revision, 2);
    assert_eq!(server.backend.proposals(), 1);
    let all = RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        ..Default::default()
    };
    let kvs = server.kv().range(all).await.unwrap().into_inner().kvs;
    assert_eq!(kvs.len(), 1, "only the first message is served");
    assert_eq!(kvs[0].key, b("first"));

    // A second message that does not decode fails the call before anything is proposed.
    let mut body = frame(&put("third", "3"));
    body.extend(frame_with_flag(0, &[0x0a, 0x05, b'a']));
    let answer = call(&server, PUT, &[], body).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "failed to decode Protobuf message: PutRequest.key: buffer underflow",
    );
    // So do a truncated second message, an oversize one and a bad flag.
    let mut body = frame(&put("third", "3"));
    body.extend([0, 0]);
    let answer = call(&server, PUT, &[], body).await;
    answer.assert_refused(tonic::Code::Internal, "Unexpected EOF decoding stream.");
    let mut body = frame(&put("third", "3"));
    body.extend([0, 0xff, 0xff, 0xff, 0xff]);
    let answer = call(&server, PUT, &[], body).await;
    answer.assert_refused(
        tonic::Code::ResourceExhausted,
        "grpc: received message larger than max (4294967295 vs. 2097152)",
    );
    let mut body = frame(&put("third", "3"));
    body.extend(frame_with_flag(1, &[]));
    let answer = call(&server, PUT, &[], body).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "protocol error: received message with compressed-flag but no grpc-encoding was specified",
    );
    // The first bad message decides, even if a later one is worse.
    let mut body = frame_with_flag(0, &[0x0a, 0x05, b'a']);
    body.extend([0, 0xff, 0xff, 0xff, 0xff]);
    let answer = call(&server, PUT, &[], body).await;
    answer.assert_refused(
        tonic::Code::Internal,
        "failed to decode Protobuf message: PutRequest.key: buffer underflow",
    );
    assert_eq!(server.backend.proposals(), 1);
}

#[tokio::test]
async fn grpc_timeout_bounds_a_stuck_call() {
    let server = TestServer::start().await;
    server.backend.stall_proposals(true);
    let started = Instant::now();
    let answer = call(
        &server,
        PUT,
        &[("grpc-timeout", "300m")],
        frame(&put("k", "v")),
    )
    .await;
    let elapsed = started.elapsed();
    answer.assert_refused(tonic::Code::Cancelled, "Timeout expired");
    assert!(elapsed >= Duration::from_millis(290), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");

    // The deadline covers reading the request: a body that never comes.
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&10u32.to_be_bytes());
    let headers = [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "200000u"),
    ];
    let answer = call_with(&server, "POST", PUT, &headers, vec![prefix], false).await;
    answer.assert_refused(tonic::Code::Cancelled, "Timeout expired");

    // Other services keep their deadline too (LeaseGrant is proposed, so it hangs).
    let grant = LeaseGrantRequest { ttl: 60, id: 0 };
    let answer = call(
        &server,
        "/etcdserverpb.Lease/LeaseGrant",
        &[("grpc-timeout", "1S")],
        frame(&grant),
    )
    .await;
    answer.assert_refused(tonic::Code::Cancelled, "Timeout expired");

    // A timeout that does not parse is ignored.
    server.backend.stall_proposals(false);
    for bad in ["abc", "1x", "123456789S", ""] {
        let answer = call(
            &server,
            PUT,
            &[("grpc-timeout", bad)],
            frame(&put("k", "v")),
        )
        .await;
        let _: PutResponse = answer.assert_message();
    }
}

#[tokio::test]
async fn other_paths_keep_their_answers() {
    let server = TestServer::start().await;
    let message = frame(&put("k", "v"));
    let answer = call(&server, "/etcdserverpb.KV/Nope", &[], message.clone()).await;
    answer.assert_refused(
        tonic::Code::Unimplemented,
        "unknown method Nope for service etcdserverpb.KV",
    );
    let answer = call(&server, "/etcdserverpb.KV/Put/extra", &[], message.clone()).await;
    answer.assert_refused(
        tonic::Code::Unimplemented,
        "unknown method Put/extra for service etcdserverpb.KV",
    );
    let answer = call(&server, "/etcdserverpb.Nope/Put", &[], message.clone()).await;
    answer.assert_refused(
        tonic::Code::Unimplemented,
        "unknown service etcdserverpb.Nope",
    );
    // Not gRPC's content type, or not POST: served as before (tonic does not look at either).
    let json = [("content-type", "application/json"), ("te", "trailers")];
    let answer = call_with(&server, "POST", PUT, &json, vec![message.clone()], true).await;
    let _: PutResponse = answer.assert_message();
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let answer = call_with(&server, "PUT", PUT, &grpc, vec![message.clone()], true).await;
    let _: PutResponse = answer.assert_message();
    assert_eq!(server.backend.proposals(), 2);
}

/// gRPC over HTTP/1.1 (the client port accepts both): the raw answer, but its `date` line.
async fn http1(server: &TestServer, path: &str, body: &[u8]) -> String {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/grpc\r\n\
         TE: trailers\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    http1_raw(server, &head, body).await
}

async fn http1_raw(server: &TestServer, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(CALL_TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    text.split("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test]
async fn grpc_over_http1() {
    let server = TestServer::start().await;
    let answer = http1(&server, PUT, &frame(&put("k", "v"))).await;
    let expected_message = PutResponse {
        header: Some(skiff_etcd_proto::etcdserverpb::ResponseHeader {
            cluster_id: common::CLUSTER_ID,
            member_id: common::MEMBER_ID,
            revision: 2,
            raft_term: common::TERM,
        }),
        prev_kv: None,
    };
    let framed = frame(&expected_message);
    let expected = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\nconnection: close\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        framed.len(),
        String::from_utf8_lossy(&framed)
    );
    assert_eq!(answer, expected);

    let answer = http1(&server, PUT, &frame_with_flag(0, &[0x0a, 0x05, b'a'])).await;
    assert_eq!(
        answer,
        "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 13\r\n\
         grpc-message: failed%20to%20decode%20Protobuf%20message:%20PutRequest.key:%20buffer%20underflow\r\n\
         connection: close\r\ncontent-length: 0\r\n\r\n"
    );
}

#[tokio::test]
async fn http_endpoints_share_the_port() {
    let server = TestServer::start().await;
    let answer = http1_raw(
        &server,
        "GET /nope HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert_eq!(
        answer,
        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: 19\r\nconnection: close\r\n\r\n404 page not found\n"
    );
    let answer = http1_raw(
        &server,
        "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        b"",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("{\"health\":\"true\"}"), "{answer}");
    let get = [("te", "trailers")];
    let answer = call_with(&server, "GET", "/version", &get, Vec::new(), true).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        String::from_utf8_lossy(&answer.data).starts_with("{\"etcdserver\":\"3.4.23\""),
        "{answer:?}"
    );
}

#[tokio::test]
async fn shutdown_lets_open_calls_finish_then_stops() {
    use skiff_server::client_server::{self, ClientService};
    use skiff_server::http::HttpState;
    use skiff_server::limits::limited_incoming;
    use skiff_server::metrics::Metrics;
    use std::sync::Arc;

    let backend = common::TestBackend::new(skiff_kv::KvConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = HttpState::new(Arc::new(Metrics::new()), || true);
    let service = ClientService::new(backend.clone(), skiff_server::ApiLimits::default(), http);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(client_server::serve(
        limited_incoming(listener, 16),
        service,
        async move {
            let _ = stopped.await;
        },
    ));

    // A call whose body is not finished when the shutdown starts.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{PUT}"))
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let framed = frame(&put("during", "shutdown"));
    stream
        .send_data(Bytes::copy_from_slice(&framed[..3]), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The listener is closed at once.
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    // The open call is still served.
    stream
        .send_data(Bytes::copy_from_slice(&framed[3..]), true)
        .unwrap();
    let response = tokio::time::timeout(CALL_TIMEOUT, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        data.extend_from_slice(&chunk.unwrap());
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(
        PutResponse::decode(&data[5..])
            .unwrap()
            .header
            .unwrap()
            .revision,
        2
    );
    // Then the connection closes and the server returns.
    tokio::time::timeout(CALL_TIMEOUT, server)
        .await
        .expect("server stopped")
        .unwrap();
    let _ = tokio::time::timeout(CALL_TIMEOUT, driver)
        .await
        .expect("connection closed");
}

/// A connection that never sends a byte is closed once `FIRST_BYTES_TIMEOUT` has passed, and
/// not before (it would otherwise hold one of the port's connection permits for good).
#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_in_time() {
    use std::sync::Arc;

    use skiff_server::client_server::{self, ClientService, FIRST_BYTES_TIMEOUT};
    use skiff_server::http::HttpState;
    use skiff_server::metrics::Metrics;

    let backend = common::TestBackend::new(skiff_kv::KvConfig::default());
    let http = HttpState::new(Arc::new(Metrics::new()), || true);
    let service = ClientService::new(backend, skiff_server::ApiLimits::default(), http);
    let (connections, incoming) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(client_server::serve(
        tokio_stream::wrappers::UnboundedReceiverStream::new(incoming),
        service,
        std::future::pending(),
    ));
    let (mut client, server) = tokio::io::duplex(4096);
    connections.send(Ok::<_, std::io::Error>(server)).unwrap();

    let mut byte = [0u8; 1];
    tokio::time::sleep(FIRST_BYTES_TIMEOUT - Duration::from_secs(1)).await;
    let early = tokio::time::timeout(Duration::from_millis(10), client.read(&mut byte)).await;
    assert!(early.is_err(), "closed early: {early:?}");
    let late = tokio::time::timeout(Duration::from_secs(2), client.read(&mut byte)).await;
    assert_eq!(late.expect("still open").unwrap(), 0);
}
