//! The hook `client_server::on_connection_end` registers runs once per ended client
//! connection, HTTP/2 or HTTP/1.1, and not while a connection is open. Its own test binary: the
//! hook is process-wide.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{b, frame, grpc_request, TestServer};
use skiff_etcd_proto::etcdserverpb::PutRequest;
use skiff_server::client_server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static ENDED: AtomicUsize = AtomicUsize::new(0);

fn count_end() {
    ENDED.fetch_add(1, Ordering::SeqCst);
}

/// Waits until the hook has run `count` times in all (at most 10 s), then checks that it does
/// not run again within a short while.
async fn expect_ended(count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while ENDED.load(Ordering::SeqCst) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ENDED.load(Ordering::SeqCst), count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_runs_once_each_time_a_client_connection_ends() {
    assert!(client_server::on_connection_end(count_end));
    assert!(
        !client_server::on_connection_end(count_end),
        "a second registration must be refused"
    );
    // The test server's own client channel stays open throughout.
    let server = TestServer::start().await;
    expect_ended(0).await;

    // An HTTP/2 connection: a put, then the client goes away.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = grpc_request(&server, "/etcdserverpb.KV/Put");
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let put = PutRequest {
        key: b("k"),
        value: b("v"),
        ..Default::default()
    };
    stream.send_data(frame(&put), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    expect_ended(0).await;
    // The connection closes once no handle of it is left.
    drop((client, stream, body));
    driver.await.unwrap().unwrap();
    expect_ended(1).await;

    // An HTTP/1.1 connection (served by hyper) that asks to be closed after its answer.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: skiff\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    expect_ended(2).await;
    assert_eq!(server.backend.proposals(), 1);
}
