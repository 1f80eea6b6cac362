//! A test-only `Backend` over one in-process `skiff_kv::Store`, and a loopback server for it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use skiff_etcd_proto::etcdserverpb::{
    cluster_client::ClusterClient, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, watch_client::WatchClient,
};
use skiff_kv::{Command, KvConfig, Operation, Response, Store};
use skiff_server::client_server::{self, ClientService};
use skiff_server::http::HttpState;
use skiff_server::limits::limited_incoming;
use skiff_server::metrics::Metrics;
use skiff_server::{ApiLimits, Backend, MemberInfo, NodeStatus, ServerError};
use tokio::sync::watch;
use tonic::transport::Channel;

pub const CLUSTER_ID: u64 = 0x1c1a_57e2;
pub const MEMBER_ID: u64 = 0x8e9e_05c5;
pub const TERM: u64 = 7;

/// Proposals apply immediately at the next index; reads need no barrier.
#[derive(Clone)]
pub struct TestBackend {
    inner: Arc<Inner>,
}

struct Inner {
    store: RwLock<Store>,
    /// Serialises applies so the revision channel is updated in order.
    apply: Mutex<()>,
    next_index: AtomicU64,
    next_lease: AtomicI64,
    now_ms: AtomicI64,
    proposals: AtomicUsize,
    barriers: AtomicUsize,
    revisions: watch::Sender<i64>,
    moved_to: Mutex<Vec<u64>>,
    leader: AtomicU64,
    /// While set, proposals never finish (a member that lost its quorum).
    stalled: AtomicBool,
}

impl TestBackend {
    pub fn new(config: KvConfig) -> TestBackend {
        let store = Store::new(config).expect("valid config");
        let (revisions, _) = watch::channel(store.current_revision());
        TestBackend {
            inner: Arc::new(Inner {
                store: RwLock::new(store),
                apply: Mutex::new(()),
                next_index: AtomicU64::new(1),
                next_lease: AtomicI64::new(0x7000),
                now_ms: AtomicI64::new(1_000_000),
                proposals: AtomicUsize::new(0),
                barriers: AtomicUsize::new(0),
                revisions,
                moved_to: Mutex::new(Vec::new()),
                leader: AtomicU64::new(MEMBER_ID),
                stalled: AtomicBool::new(false),
            }),
        }
    }

    /// How many operations were proposed so far.
    pub fn proposals(&self) -> usize {
        self.inner.proposals.load(Ordering::SeqCst)
    }

    /// How many read barriers were awaited so far.
    pub fn barriers(&self) -> usize {
        self.inner.barriers.load(Ordering::SeqCst)
    }

    /// Moves the fake leader clock forward.
    pub fn advance_ms(&self, ms: i64) {
        self.inner.now_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Runs `read` on the store (for checks beside the API).
    pub fn read_store<R>(&self, read: impl FnOnce(&Store) -> R) -> R {
        read(&self.inner.store.read().unwrap())
    }

    /// Sets the leader `Status` reports (0: none known).
    pub fn set_leader(&self, leader: u64) {
        self.inner.leader.store(leader, Ordering::SeqCst);
    }

    /// Makes later proposals hang forever (`true`) or apply again (`false`).
    pub fn stall_proposals(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::SeqCst);
    }

    /// The targets MoveLeader was called with.
    pub fn moved_to(&self) -> Vec<u64> {
        self.inner.moved_to.lock().unwrap().clone()
    }
}

impl Backend for TestBackend {
    async fn propose(&self, mut operation: Operation) -> Result<Response, ServerError> {
        self.inner.proposals.fetch_add(1, Ordering::SeqCst);
        if self.inner.stalled.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let now = self.now_ms();
        if let Operation::LeaseGrant { id, .. } = &mut operation {
            if *id == 0 {
                *id = self.inner.next_lease.fetch_add(1, Ordering::SeqCst);
            }
        }
        operation.set_leader_time(now);
        let _guard = self.inner.apply.lock().unwrap();
        let index = self.inner.next_index.fetch_add(1, Ordering::SeqCst);
        let (response, revision) = {
            let mut store = self.inner.store.write().unwrap();
            let applied = store.apply(index, &Command::new(operation));
            (applied.response, store.current_revision())
        };
        self.inner.revisions.send_replace(revision);
        Ok(response)
    }

    async fn read_barrier(&self) -> Result<(), ServerError> {
        self.inner.barriers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn read<R>(&self, read: impl FnOnce(&Store) -> R) -> R {
        read(&self.inner.store.read().unwrap())
    }

    fn revisions(&self) -> watch::Receiver<i64> {
        self.inner.revisions.subscribe()
    }

    fn status(&self) -> NodeStatus {
        let applied = self.read(|store| store.applied_index());
        NodeStatus {
            cluster_id: CLUSTER_ID,
            member_id: MEMBER_ID,
            leader: self.inner.leader.load(Ordering::SeqCst),
            raft_term: TERM,
            raft_index: applied,
            raft_applied_index: applied,
            is_learner: false,
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        vec![
            MemberInfo {
                id: MEMBER_ID,
                name: "one".to_string(),
                peer_urls: vec!["http://127.0.0.1:1".to_string()],
                client_urls: vec!["http://127.0.0.1:2".to_string()],
                is_learner: false,
            },
            MemberInfo {
                id: 42,
                name: String::new(),
                peer_urls: vec!["http://127.0.0.1:3".to_string()],
                client_urls: Vec::new(),
                is_learner: true,
            },
        ]
    }

    fn now_ms(&self) -> i64 {
        self.inner.now_ms.load(Ordering::SeqCst)
    }

    async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        self.inner.moved_to.lock().unwrap().push(target);
        if target == MEMBER_ID {
            Ok(())
        } else {
            Err(ServerError::BadLeaderTransferee)
        }
    }
}

/// A server on a loopback port, with clients for each service.
pub struct TestServer {
    pub backend: TestBackend,
    pub addr: SocketAddr,
    pub channel: Channel,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(KvConfig::default(), ApiLimits::default()).await
    }

    pub async fn start_with(config: KvConfig, limits: ApiLimits) -> TestServer {
        let backend = TestBackend::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The member's own client port: the KV fast path, the tonic services, the HTTP
        // endpoints.
        let http = HttpState::new(Arc::new(Metrics::new()), || true);
        let service = ClientService::new(backend.clone(), limits, http);
        tokio::spawn(client_server::serve(
            limited_incoming(listener, 10_000),
            service,
            std::future::pending(),
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TestServer {
            backend,
            addr,
            channel,
        }
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone())
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }
}

/// Shorthand for byte strings.
pub fn b(text: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(text.as_bytes())
}

/// `message` framed as one uncompressed gRPC message (flag byte, big-endian length, bytes).
pub fn frame(message: &impl skiff_etcd_proto::prost::Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0);
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    bytes::Bytes::from(framed)
}

/// The headers of a gRPC call to `path` on `server`, for a raw HTTP/2 client.
pub fn grpc_request(server: &TestServer, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", server.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}
