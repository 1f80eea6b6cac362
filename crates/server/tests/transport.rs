//! The peer transport over real sockets on 127.0.0.1 (ephemeral ports only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use skiff_etcd_proto::skiffpb::peer_client::PeerClient;
use skiff_etcd_proto::skiffpb::{peer_frame, Hello, MessageBatch, PeerFrame};
use skiff_raft::{Entry, EntryKind, Membership, Message, MessageBody, NodeId, SnapshotMeta};
use skiff_server::transport::{
    codec, peer_service, serve, EventSink, ForwardError, ForwardFuture, ForwardHandler,
    PeerIdentity, Transport, TransportEvent, TransportLimits, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const CLUSTER: u64 = 0xc1;

/// Records every event a sink receives.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<TransportEvent>>>,
}

impl Recorder {
    fn sink(&self) -> EventSink {
        let events = Arc::clone(&self.events);
        Arc::new(move |event| events.lock().unwrap().push(event))
    }

    fn events(&self) -> Vec<TransportEvent> {
        self.events.lock().unwrap().clone()
    }

    /// Every message received, in arrival order.
    fn messages(&self) -> Vec<Message> {
        self.events()
            .into_iter()
            .flat_map(|event| match event {
                TransportEvent::Messages(messages) => messages,
                _ => Vec::new(),
            })
            .collect()
    }

    fn unreachable(&self, peer: NodeId) -> usize {
        self.events()
            .iter()
            .filter(|event| **event == TransportEvent::Unreachable(peer))
            .count()
    }

    /// Polls until `done` holds or `timeout` passes; returns whether it held.
    async fn wait(&self, timeout: Duration, done: impl Fn(&Recorder) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn identity(id: NodeId) -> PeerIdentity {
    identity_in(CLUSTER, id)
}

fn identity_in(cluster_id: u64, id: NodeId) -> PeerIdentity {
    PeerIdentity {
        cluster_id,
        member_id: id,
        name: format!("m{id}"),
        client_urls: vec![format!("http://127.0.0.1:{}", 40000 + id)],
    }
}

/// Echoes requests prefixed with "ok:"; "fail" is refused, "slow" answers after 5 s.
struct Echo;

impl ForwardHandler for Echo {
    fn forward(&self, request: Bytes) -> ForwardFuture {
        Box::pin(async move {
            match &request[..] {
                b"fail" => Err(tonic::Status::unavailable("etcdserver: no leader")),
                b"slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(request)
                }
                _ => Ok(Bytes::from([&b"ok:"[..], &request[..]].concat())),
            }
        })
    }
}

/// A peer server on its own runtime and thread, so that stopping it closes every connection
/// at once, like a crashed process.
struct PeerServerProcess {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeerServerProcess {
    /// Serves `identity`'s peer service on `addr` (port 0 for any free port).
    fn start(addr: SocketAddr, identity: PeerIdentity, sink: EventSink) -> PeerServerProcess {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.set_reuseaddr(true).unwrap();
                socket.bind(addr).unwrap();
                let listener = socket.listen(128).unwrap();
                bound_tx.send(listener.local_addr().unwrap()).unwrap();
                let limits = TransportLimits::default();
                let service = peer_service(identity, sink, Arc::new(Echo), limits.clone());
                let (_never, forever) = tokio::sync::oneshot::channel::<()>();
                let serve = serve(service, listener, async {
                    let _ = forever.await;
                });
                tokio::select! {
                    result = serve => result.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every connection task.
            drop(runtime);
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("server bound");
        PeerServerProcess {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(mut self) -> SocketAddr {
        self.shutdown();
        self.addr
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for PeerServerProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A member: a transport and a peer server sharing one recorder.
struct Member {
    recorder: Recorder,
    server: PeerServerProcess,
}

fn member(id: NodeId) -> Member {
    let recorder = Recorder::default();
    let server = PeerServerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        identity(id),
        recorder.sink(),
    );
    Member { recorder, server }
}

fn start_transport(
    id: NodeId,
    peers: &[(NodeId, String)],
    recorder: &Recorder,
    limits: TransportLimits,
) -> Transport {
    let peers: BTreeMap<NodeId, Vec<String>> = peers
        .iter()
        .map(|(id, url)| (*id, vec![url.clone()]))
        .collect();
    Transport::start(identity(id), peers, recorder.sink(), limits)
}

fn entry(index: u64, kind: EntryKind, data: &[u8]) -> Entry {
    Entry {
        term: 3,
        index,
        kind,
        data: Bytes::copy_from_slice(data),
    }
}

/// One message of every kind from `from` to `to`, with `seq` folded into the values.
fn every_kind(from: NodeId, to: NodeId, seq: u64) -> Vec<Message> {
    let big: Vec<u8> = (0..100_000u32)
        .map(|i| (i * 7 + seq as u32) as u8)
        .collect();
    let bodies = vec![
        MessageBody::RequestVote {
            pre_vote: true,
            last_log_index: seq,
            last_log_term: 2,
            leadership_transfer: false,
        },
        MessageBody::RequestVote {
            pre_vote: false,
            last_log_index: seq,
            last_log_term: 2,
            leadership_transfer: true,
        },
        MessageBody::RequestVoteResponse {
            pre_vote: false,
            granted: true,
        },
        MessageBody::AppendEntries {
            prev_log_index: seq,
            prev_log_term: 2,
            entries: vec![
                entry(seq + 1, EntryKind::Noop, b""),
                entry(seq + 2, EntryKind::Normal, format!("put {seq}").as_bytes()),
                entry(seq + 3, EntryKind::ConfigChange, &[0, 1, 2, 255]),
                entry(seq + 4, EntryKind::Normal, &big),
            ],
            commit: seq,
        },
        MessageBody::AppendEntries {
            prev_log_index: seq,
            prev_log_term: 2,
            entries: Vec::new(),
            commit: u64::MAX,
        },
        MessageBody::AppendEntriesResponse {
            success: false,
            index: seq,
            hint_index: 4,
            hint_term: 1,
        },
        MessageBody::Heartbeat {
            commit: 9,
            sequence: seq,
        },
        MessageBody::HeartbeatResponse { sequence: seq },
        MessageBody::ReadIndex { context: seq },
        MessageBody::ReadIndexResponse {
            context: seq,
            index: Some(77),
        },
        MessageBody::ReadIndexResponse {
            context: seq,
            index: None,
        },
        MessageBody::TimeoutNow,
        MessageBody::InstallSnapshot {
            meta: SnapshotMeta {
                index: 1000 + seq,
                term: 3,
                membership: Membership {
                    voters: BTreeSet::from([1, 2, 3]),
                    voters_outgoing: BTreeSet::from([1, 2, 4]),
                    learners: BTreeSet::from([5]),
                },
            },
            data: Bytes::from(big.repeat(3)),
        },
    ];
    bodies
        .into_iter()
        .map(|body| Message {
            from,
            to,
            term: 3 + seq,
            body,
        })
        .collect()
}

fn heartbeat(from: NodeId, to: NodeId, sequence: u64) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat {
            commit: 0,
            sequence,
        },
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_arrives_intact_and_in_order_per_peer() {
    let a = member(1);
    let b = member(2);
    let c = member(3);
    let ta = start_transport(
        1,
        &[(2, b.server.url()), (3, c.server.url())],
        &a.recorder,
        TransportLimits::default(),
    );
    let tc = start_transport(
        3,
        &[(1, a.server.url()), (2, b.server.url())],
        &c.recorder,
        TransportLimits::default(),
    );

    let mut to_b = Vec::new();
    let mut to_c = Vec::new();
    let mut c_to_b = Vec::new();
    for seq in 0..20 {
        let mut batch = every_kind(1, 2, seq);
        to_b.extend(batch.clone());
        let for_c = every_kind(1, 3, seq);
        to_c.extend(for_c.clone());
        // Interleave recipients within one call.
        batch.extend(for_c);
        batch.push(heartbeat(1, 99, seq)); // unknown peer: dropped
        ta.send(batch);
        let from_c: Vec<Message> = (0..50).map(|i| heartbeat(3, 2, seq * 50 + i)).collect();
        c_to_b.extend(from_c.clone());
        tc.send(from_c);
        if seq % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(ta.queued(99), None);

    let from = |recorder: &Recorder, sender: NodeId| -> Vec<Message> {
        recorder
            .messages()
            .into_iter()
            .filter(|m| m.from == sender)
            .collect()
    };
    assert!(
        b.recorder
            .wait(WAIT, |r| from(r, 1).len() >= to_b.len()
                && from(r, 3).len() >= c_to_b.len())
            .await,
        "B received {} of {} messages from A",
        from(&b.recorder, 1).len(),
        to_b.len()
    );
    assert!(
        c.recorder
            .wait(WAIT, |r| from(r, 1).len() >= to_c.len())
            .await
    );
    assert_eq!(from(&b.recorder, 1), to_b);
    assert_eq!(from(&b.recorder, 3), c_to_b);
    assert_eq!(from(&c.recorder, 1), to_c);
    // Nothing addressed elsewhere, nothing lost, nothing reported unreachable.
    assert!(b.recorder.messages().iter().all(|m| m.to == 2));
    assert_eq!(a.recorder.unreachable(2) + a.recorder.unreachable(3), 0);
    assert_eq!(c.recorder.unreachable(2), 0);

    // Each receiver learned who its callers are.
    let infos: Vec<TransportEvent> = b
        .recorder
        .events()
        .into_iter()
        .filter(|e| matches!(e, TransportEvent::PeerInfo { .. }))
        .collect();
    assert!(infos.contains(&TransportEvent::PeerInfo {
        id: 1,
        name: "m1".into(),
        client_urls: vec!["http://127.0.0.1:40001".into()],
    }));
    assert!(infos.contains(&TransportEvent::PeerInfo {
        id: 3,
        name: "m3".into(),
        client_urls: vec!["http://127.0.0.1:40003".into()],
    }));
    assert_eq!(
        infos.len(),
        2,
        "one PeerInfo per accepted stream: {infos:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_peer_is_reported_queue_stays_bounded_and_traffic_resumes() {
    let a = Recorder::default();
    let b = member(2);
    let b_addr = b.server.addr;
    let b_url = b.server.url();
    let limits = TransportLimits {
        queue_len: 64,
        ..TransportLimits::default()
    };
    let ta = start_transport(1, &[(2, b_url.clone())], &a, limits);

    // Up: traffic flows.
    ta.send(vec![heartbeat(1, 2, 0)]);
    assert!(b.recorder.wait(WAIT, |r| !r.messages().is_empty()).await);
    let recorder_b = b.recorder.clone();

    // Crash B: the stream breaks and A reports it.
    b.server.kill();
    let mut max_queued = 0;
    let mut seq = 1;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        ta.send((0..100).map(|_| heartbeat(1, 2, seq)).collect());
        seq += 1;
        max_queued = max_queued.max(ta.queued(2).unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(max_queued <= 64, "queue grew to {max_queued}");
    assert!(a.unreachable(2) >= 2, "events: {}", a.unreachable(2));

    // B comes back on the same address: traffic resumes without intervention.
    let before = recorder_b.messages().len();
    let b = PeerServerProcess::start(b_addr, identity(2), recorder_b.sink());
    let deadline = Instant::now() + WAIT;
    let mut resumed = false;
    while Instant::now() < deadline {
        ta.send(vec![heartbeat(1, 2, 1_000_000 + seq)]);
        seq += 1;
        if recorder_b.messages().len() > before {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(resumed, "no message reached B after it restarted");
    // Once reconnected, nothing is reported lost for a while.
    let unreachable = a.unreachable(2);
    for i in 0..20 {
        ta.send(vec![heartbeat(1, 2, 2_000_000 + i)]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        recorder_b
            .wait(WAIT, |r| r.messages().last()
                == Some(&heartbeat(1, 2, 2_000_019)))
            .await
    );
    assert_eq!(a.unreachable(2), unreachable);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_started_peer_is_unreachable() {
    // Reserve a port, then close it so that nothing listens there.
    let addr = PeerServerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        identity(2),
        Recorder::default().sink(),
    )
    .kill();
    let a = Recorder::default();
    let limits = TransportLimits {
        queue_len: 8,
        ..TransportLimits::default()
    };
    let ta = start_transport(1, &[(2, format!("http://{addr}"))], &a, limits);
    ta.send((0..100).map(|i| heartbeat(1, 2, i)).collect());
    assert!(ta.queued(2).unwrap() <= 8);
    // The overflow is reported at once, failed connection attempts after that.
    assert!(a.unreachable(2) >= 1);
    assert!(a.wait(WAIT, |r| r.unreachable(2) >= 3).await);
    assert!(ta.queued(2).unwrap() <= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_from_another_cluster_is_refused() {
    let b = member(2);
    let a = Recorder::default();
    let peers = BTreeMap::from([(2, vec![b.server.url()])]);
    let ta = Transport::start(
        identity_in(CLUSTER + 1, 1),
        peers,
        a.sink(),
        TransportLimits::default(),
    );
    for i in 0..10 {
        ta.send(vec![heartbeat(1, 2, i)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused stream is reported on the sender's side...
    assert!(a.wait(WAIT, |r| r.unreachable(2) >= 1).await);
    // ...and nothing at all reached the receiver.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.recorder.events(), Vec::new());
}

fn hello_frame(cluster_id: u64, from: NodeId, to: NodeId) -> PeerFrame {
    PeerFrame {
        frame: Some(peer_frame::Frame::Hello(Hello {
            cluster_id,
            from,
            to,
            name: format!("m{from}"),
            client_urls: Vec::new(),
            protocol_version: PROTOCOL_VERSION,
        })),
    }
}

fn batch_frame(messages: Vec<Bytes>) -> PeerFrame {
    PeerFrame {
        frame: Some(peer_frame::Frame::Batch(MessageBatch { messages })),
    }
}

/// Opens a raw stream with `frames` and returns how it ended.
async fn raw_stream(url: String, frames: Vec<PeerFrame>) -> Result<(), tonic::Status> {
    let mut client = PeerClient::connect(url).await.unwrap();
    tokio::time::timeout(WAIT, client.stream(tokio_stream::iter(frames)))
        .await
        .expect("stream answered")
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_and_frames_close_the_stream() {
    let b = member(2);
    let url = b.server.url();
    let good = || codec::encode(&heartbeat(1, 2, 1));

    // Wrong cluster, wrong recipient, wrong version, missing hello: refused, nothing delivered.
    let wrong_cluster = raw_stream(
        url.clone(),
        vec![hello_frame(CLUSTER + 1, 1, 2), batch_frame(vec![good()])],
    )
    .await;
    assert_eq!(
        wrong_cluster.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    let wrong_to = raw_stream(
        url.clone(),
        vec![hello_frame(CLUSTER, 1, 3), batch_frame(vec![good()])],
    )
    .await;
    assert_eq!(
        wrong_to.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    let mut old = hello_frame(CLUSTER, 1, 2);
    if let Some(peer_frame::Frame::Hello(hello)) = &mut old.frame {
        hello.protocol_version = PROTOCOL_VERSION + 1;
    }
    let wrong_version = raw_stream(url.clone(), vec![old, batch_frame(vec![good()])]).await;
    assert_eq!(
        wrong_version.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    let no_hello = raw_stream(url.clone(), vec![batch_frame(vec![good()])]).await;
    assert_eq!(no_hello.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(b.recorder.events(), Vec::new());

    // A forged sender is dropped; the rest of the frame is delivered.
    let forged = codec::encode(&heartbeat(3, 2, 2));
    let ok = raw_stream(
        url.clone(),
        vec![
            hello_frame(CLUSTER, 1, 2),
            batch_frame(vec![good(), forged]),
        ],
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(b.recorder.messages(), vec![heartbeat(1, 2, 1)]);

    // An undecodable frame closes the stream: nothing of it, nor after it, is delivered.
    let truncated = codec::encode(&heartbeat(1, 2, 3)).slice(..4);
    let bad = raw_stream(
        url.clone(),
        vec![
            hello_frame(CLUSTER, 1, 2),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 4))]),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 5)), truncated]),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 6))]),
        ],
    )
    .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    assert_eq!(
        b.recorder.messages(),
        vec![heartbeat(1, 2, 1), heartbeat(1, 2, 4)]
    );
    let infos = b
        .recorder
        .events()
        .iter()
        .filter(|e| matches!(e, TransportEvent::PeerInfo { .. }))
        .count();
    assert_eq!(infos, 2);
}

/// Sends `wire` on a plain-TCP message stream (after the magic) and returns what the
/// receiver answered before closing: its refusal, or `None` if it closed without one.
async fn message_stream(addr: SocketAddr, wire: &[u8]) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(skiff_server::transport::wire::MAGIC)
        .await
        .unwrap();
    stream.write_all(wire).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the receiver closed the stream")
        .unwrap();
    if answer.is_empty() {
        return None;
    }
    let len = u32::from_be_bytes(answer[..4].try_into().unwrap()) as usize;
    assert_eq!(answer.len(), 4 + len, "one refusal frame");
    Some(String::from_utf8(answer[4..].to_vec()).unwrap())
}

fn frames(frames: &[PeerFrame]) -> Vec<u8> {
    let mut wire = bytes::BytesMut::new();
    for frame in frames {
        skiff_server::transport::wire::put_frame(&mut wire, frame);
    }
    wire.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_message_streams_are_checked_like_grpc_streams() {
    let b = member(2);
    let addr = b.server.addr;
    let good = || codec::encode(&heartbeat(1, 2, 1));

    let refused = message_stream(
        addr,
        &frames(&[hello_frame(CLUSTER + 1, 1, 2), batch_frame(vec![good()])]),
    )
    .await;
    assert!(
        refused
            .as_deref()
            .unwrap_or("")
            .contains("cluster ID mismatch"),
        "{refused:?}"
    );
    let refused = message_stream(
        addr,
        &frames(&[hello_frame(CLUSTER, 1, 3), batch_frame(vec![good()])]),
    )
    .await;
    assert!(
        refused
            .as_deref()
            .unwrap_or("")
            .contains("meant for member 3"),
        "{refused:?}"
    );
    let refused = message_stream(addr, &frames(&[batch_frame(vec![good()])])).await;
    assert_eq!(refused.as_deref(), Some("the first frame must be a hello"));
    // A length beyond the frame limit is refused before anything is read into memory.
    let refused = message_stream(addr, &u32::MAX.to_be_bytes()).await;
    assert!(
        refused
            .as_deref()
            .unwrap_or("")
            .contains("exceeds the limit"),
        "{refused:?}"
    );
    assert_eq!(b.recorder.messages(), Vec::new());

    // A good stream: a forged sender is dropped, the rest delivered in order; an undecodable
    // message then closes the stream with nothing of its frame, nor after it, delivered.
    let forged = codec::encode(&heartbeat(3, 2, 2));
    let truncated = codec::encode(&heartbeat(1, 2, 3)).slice(..4);
    let refused = message_stream(
        addr,
        &frames(&[
            hello_frame(CLUSTER, 1, 2),
            batch_frame(vec![good(), forged]),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 4))]),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 5)), truncated]),
            batch_frame(vec![codec::encode(&heartbeat(1, 2, 6))]),
        ]),
    )
    .await;
    assert!(
        refused
            .as_deref()
            .unwrap_or("")
            .contains("undecodable message"),
        "{refused:?}"
    );
    assert_eq!(
        b.recorder.messages(),
        vec![heartbeat(1, 2, 1), heartbeat(1, 2, 4)]
    );
    // A stream that ends cleanly gets no answer.
    let ended = message_stream(
        addr,
        &frames(&[hello_frame(CLUSTER, 1, 2), batch_frame(vec![good()])]),
    )
    .await;
    assert_eq!(ended, None);
    assert_eq!(b.recorder.messages().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_peer_port_does_not_hurt_the_server() {
    let b = member(2);
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        (0..4096u32).map(|i| (i * 31 % 251) as u8).collect(),
        // The HTTP/2 preface followed by nonsense frames.
        [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            &[0xff; 64][..],
            &[0, 0, 4, 0, 0, 0, 0, 0, 1][..],
        ]
        .concat(),
    ];
    for bytes in garbage {
        let mut stream = tokio::net::TcpStream::connect(b.server.addr).await.unwrap();
        let _ = stream.write_all(&bytes).await;
        let mut sink = Vec::new();
        // The server answers or closes; it must not hang forever nor crash.
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut sink)).await;
    }
    let a = Recorder::default();
    let ta = start_transport(1, &[(2, b.server.url())], &a, TransportLimits::default());
    ta.send(vec![heartbeat(1, 2, 42)]);
    assert!(
        b.recorder
            .wait(WAIT, |r| r.messages() == vec![heartbeat(1, 2, 42)])
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_round_trip_and_failures() {
    let b = member(2);
    let b_addr = b.server.addr;
    let a = Recorder::default();
    let down = PeerServerProcess::start(
        "127.0.0.1:0".parse().unwrap(),
        identity(3),
        Recorder::default().sink(),
    )
    .kill();
    let ta = start_transport(
        1,
        &[(2, b.server.url()), (3, format!("http://{down}"))],
        &a,
        TransportLimits::default(),
    );
    let timeout = Duration::from_secs(3);

    let answer = ta
        .forward(2, Bytes::from_static(b"put k v"), timeout)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"ok:put k v");
    for i in 0..20 {
        let request = Bytes::from(format!("r{i}"));
        let answer = ta.forward(2, request, timeout).await.unwrap();
        assert_eq!(answer, Bytes::from(format!("ok:r{i}")));
    }

    // The handler's error comes back as the peer's answer.
    match ta.forward(2, Bytes::from_static(b"fail"), timeout).await {
        Err(ForwardError::Rejected(status)) => {
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(status.message(), "etcdserver: no leader");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // No answer in time: maybe delivered.
    let slow = ta
        .forward(2, Bytes::from_static(b"slow"), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(slow, ForwardError::MaybeDelivered(_)), "{slow:?}");
    assert!(!slow.surely_not_delivered());

    // Down peer and unknown peer: surely not delivered.
    let err = ta
        .forward(3, Bytes::from_static(b"x"), timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::NotDelivered(_)), "{err:?}");
    assert!(err.surely_not_delivered());
    let err = ta
        .forward(9, Bytes::from_static(b"x"), timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::UnknownPeer(9)), "{err:?}");
    assert!(err.surely_not_delivered());

    // A peer that goes down after a successful forward: the first failure may be ambiguous,
    // a later one (no connection can be made) is not.
    b.server.kill();
    let first = ta
        .forward(2, Bytes::from_static(b"x"), timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(
            first,
            ForwardError::NotDelivered(_) | ForwardError::MaybeDelivered(_)
        ),
        "{first:?}"
    );
    let second = ta
        .forward(2, Bytes::from_static(b"x"), timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(second, ForwardError::NotDelivered(_)),
        "{second:?}"
    );

    // Back up on the same address: forwarding works again.
    let recorder = Recorder::default();
    let _b = PeerServerProcess::start(b_addr, identity(2), recorder.sink());
    let answer = ta
        .forward(2, Bytes::from_static(b"again"), timeout)
        .await
        .unwrap();
    assert_eq!(&answer[..], b"ok:again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_to_the_wrong_cluster_is_refused() {
    let b = member(2);
    let peers = BTreeMap::from([(2, vec![b.server.url()])]);
    let ta = Transport::start(
        identity_in(CLUSTER + 1, 1),
        peers,
        Recorder::default().sink(),
        TransportLimits::default(),
    );
    let err = ta
        .forward(2, Bytes::from_static(b"x"), Duration::from_secs(3))
        .await
        .unwrap_err();
    match err {
        ForwardError::Rejected(status) => {
            assert_eq!(status.code(), tonic::Code::FailedPrecondition)
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_the_frame_limit_and_oversized_messages_are_dropped() {
    let b = member(2);
    let a = Recorder::default();
    let limits = TransportLimits {
        max_frame_bytes: 4096,
        ..TransportLimits::default()
    };
    let ta = start_transport(1, &[(2, b.server.url())], &a, limits);
    let mut expected = Vec::new();
    let mut batch = Vec::new();
    for i in 0..500 {
        let message = if i == 250 {
            // Far larger than a frame: dropped, the rest still flows.
            Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::InstallSnapshot {
                    meta: SnapshotMeta::default(),
                    data: Bytes::from(vec![7u8; 100_000]),
                },
            }
        } else {
            let message = Message {
                from: 1,
                to: 2,
                term: 1,
                body: MessageBody::AppendEntries {
                    prev_log_index: i,
                    prev_log_term: 1,
                    entries: vec![entry(i + 1, EntryKind::Normal, &[i as u8; 100])],
                    commit: i,
                },
            };
            expected.push(message.clone());
            message
        };
        batch.push(message);
    }
    ta.send(batch);
    assert!(
        b.recorder
            .wait(WAIT, |r| r.messages().len() >= expected.len())
            .await
    );
    assert_eq!(b.recorder.messages(), expected);
    // Several frames were needed, each within the limit.
    let frames = b
        .recorder
        .events()
        .iter()
        .filter(|e| matches!(e, TransportEvent::Messages(_)))
        .count();
    assert!(frames >= 499 * 120 / 4096, "only {frames} frames");
    assert_eq!(a.unreachable(2), 0);
}
