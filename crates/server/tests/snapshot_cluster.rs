//! Members on real transports (gRPC over 127.0.0.1): a member that joins after the leader
//! compacted its log catches up through a streamed, multi-chunk snapshot, while the leader
//! keeps committing writes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use skiff_kv::{KvConfig, Operation, PutRequest};
use skiff_raft::NodeId;
use skiff_server::members::{MemberRecord, Registry};
use skiff_server::node::{FixedPeers, Outbound};
use skiff_server::transport::{
    peer_service_with_snapshots, serve, ForwardFuture, ForwardHandler, PeerIdentity, SnapshotInbox,
    Transport, TransportEvent, TransportLimits,
};
use skiff_server::{Backend, Node, NodeHandle, NodeOptions};
use skiff_storage::StorageConfig;

const CLUSTER: u64 = 0x51;

struct Forward(NodeHandle);

impl ForwardHandler for Forward {
    fn forward(&self, request: bytes::Bytes) -> ForwardFuture {
        let handle = self.0.clone();
        Box::pin(async move { Ok(handle.handle_forward(request).await) })
    }
}

struct Member {
    node: Node,
    transport: Transport,
    inbox: Arc<SnapshotInbox>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn limits() -> TransportLimits {
    TransportLimits {
        snapshot_chunk_bytes: 64 << 10,
        snapshot_bytes_per_sec: 2 << 20,
        backoff_max: Duration::from_millis(200),
        ..TransportLimits::default()
    }
}

async fn start_member(
    id: NodeId,
    dir: &std::path::Path,
    urls: &BTreeMap<NodeId, String>,
    listener: tokio::net::TcpListener,
) -> Member {
    let identity = PeerIdentity {
        cluster_id: CLUSTER,
        member_id: id,
        name: format!("m{id}"),
        client_urls: vec![],
    };
    let cell: Arc<OnceLock<NodeHandle>> = Arc::new(OnceLock::new());
    let sink: skiff_server::transport::EventSink = {
        let cell = cell.clone();
        Arc::new(move |event| {
            let Some(handle) = cell.get() else { return };
            match event {
                TransportEvent::Messages(messages) => handle.deliver(messages),
                TransportEvent::Unreachable(peer) => handle.report_unreachable(peer),
                TransportEvent::SnapshotSent { peer, success, .. } => {
                    handle.report_snapshot(peer, success)
                }
                TransportEvent::PeerInfo { .. } => {}
            }
        })
    };
    let peers = urls
        .iter()
        .filter(|(peer, _)| **peer != id)
        .map(|(peer, url)| (*peer, vec![url.clone()]))
        .collect();
    let transport = Transport::start(identity.clone(), peers, sink.clone(), limits());
    let initial = Registry {
        members: urls
            .keys()
            .map(|&id| {
                let record = MemberRecord {
                    name: format!("m{id}"),
                    peer_urls: vec![urls[&id].clone()],
                };
                (id, record)
            })
            .collect(),
    };
    let options = NodeOptions {
        id,
        cluster_id: CLUSTER,
        initial,
        name: format!("m{id}"),
        client_urls: vec![],
        peers: Arc::new(FixedPeers),
        wal_dir: dir.join(format!("m{id}")).join("wal"),
        snapshot_dir: dir.join(format!("m{id}")).join("snap"),
        tick: Duration::from_millis(20),
        election_ticks: 10,
        snapshot_count: 20,
        snapshot_log_bytes: 256 << 20,
        snapshot_catchup_entries: 5,
        kept_entries: 3,
        kv_config: KvConfig::default(),
        value_dir: Some(dir.join(format!("m{id}")).join("values")),
        storage_config: StorageConfig::default(),
        request_timeout: Duration::from_secs(5),
        metrics: Arc::new(skiff_server::metrics::Metrics::new()),
    };
    let inbox = SnapshotInbox::new(&options.snapshot_dir).unwrap();
    let outbound: Outbound = {
        let transport = transport.clone();
        Arc::new(move |messages| transport.send(messages))
    };
    let node = Node::start(options, outbound).unwrap();
    let _ = cell.set(node.handle());
    let service = peer_service_with_snapshots(
        identity,
        sink,
        Arc::new(Forward(node.handle())),
        limits(),
        inbox.clone(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(service, listener, async {
        let _ = stopped.await;
    }));
    Member {
        node,
        transport,
        inbox,
        _stop: stop,
    }
}

async fn put(handle: &NodeHandle, key: String, value: Vec<u8>) {
    handle
        .propose(Operation::Put(PutRequest {
            key: key.into_bytes().into(),
            value: value.into(),
            ..Default::default()
        }))
        .await
        .expect("put")
        .result
        .expect("put result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_a_compacted_log_catches_up_through_a_streamed_snapshot() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("skiff-snapshot-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut listeners = BTreeMap::new();
    let mut urls = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.insert(id, format!("http://{}", listener.local_addr().unwrap()));
        listeners.insert(id, listener);
    }
    // Two of three members: a quorum. The third is down while the log grows and is compacted.
    let mut members = BTreeMap::new();
    for id in [1, 2] {
        let listener = listeners.remove(&id).unwrap();
        members.insert(id, start_member(id, &dir, &urls, listener).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(id) = members
            .iter()
            .find(|(id, m)| m.node.handle().status().leader == **id)
            .map(|(id, _)| *id)
        {
            break id;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let handle = members[&leader].node.handle();
    // ~3 MiB of values over 100 writes: several snapshots, the log compacted past index 1.
    for i in 0..100u64 {
        let value: Vec<u8> = (0..32 << 10).map(|j| (i * 31 + j) as u8).collect();
        put(&handle, format!("key{:03}", i % 90), value).await;
    }

    let listener = listeners.remove(&3).unwrap();
    members.insert(3, start_member(3, &dir, &urls, listener).await);
    // While the throttled snapshot streams (2 MiB/s), the leader keeps committing.
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut writes = 0;
    while members[&3].inbox.stats().received.load(Ordering::Relaxed) == 0 {
        let t = Instant::now();
        put(&handle, format!("during{writes}"), b"x".to_vec()).await;
        slowest = slowest.max(t.elapsed());
        writes += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no snapshot arrived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let transfer = started.elapsed();
    let stats = members[&leader].transport.snapshot_stats();
    let sent = stats.bytes_sent.load(Ordering::Relaxed);
    eprintln!(
        "snapshot of {sent} bytes reached the new member after {transfer:?}; \
         {writes} writes meanwhile, slowest {slowest:?}"
    );
    assert!(
        sent > 4 * (64 << 10),
        "a multi-chunk snapshot: {sent} bytes"
    );
    assert!(writes >= 3, "the leader kept committing: {writes} writes");
    assert!(
        slowest < Duration::from_secs(1),
        "writes stalled: {slowest:?}"
    );

    // The new member converges to the leader's state.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let hashes: Vec<(u64, Option<u32>)> = members
            .values()
            .map(|m| {
                let h = m.node.handle();
                (
                    h.status().raft_applied_index,
                    h.read(|store| store.hash_kv(0).ok().map(|hash| hash.hash)),
                )
            })
            .collect();
        let ours = &hashes[(leader - 1) as usize];
        if hashes[2] == *ours {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member 3 did not converge: {hashes:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let value = members[&3]
        .node
        .handle()
        .read(|store| store.current_revision());
    assert_eq!(value, handle.read(|store| store.current_revision()));
    for member in members.values() {
        member.node.handle().shutdown();
    }
    for (_, member) in members {
        member.node.stopped().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
