//! The peer transport: how members carry Raft messages and forwarded client requests to each
//! other. Raft messages travel on plain TCP connections ([`wire`]); everything else is gRPC
//! (`skiffpb.Peer`, see [`skiff_etcd_proto::skiffpb`]). Both share the peer port: [`serve`]
//! tells them apart by a connection's first bytes.
//!
//! **Sending.** [`Transport`] keeps one bounded queue and one long-lived message stream per
//! peer. [`Transport::send`] never waits: while the peer's stream is up and nothing is
//! waiting ahead, it writes the messages as one frame straight to the socket, from the
//! caller's thread; otherwise it puts them on the peer's queue, and a full queue drops the
//! message and reports [`TransportEvent::Unreachable`]. Each peer has its own task that
//! connects, sends a hello, then writes whatever could not be written directly (queued
//! messages as one frame per write). When a connection attempt fails or the stream breaks,
//! the task reports `Unreachable`, discards what is queued (Raft resends what matters once it
//! probes the follower again) and reconnects with jittered exponential backoff.
//!
//! **Receiving.** [`peer_service`] builds the receiver. A stream must open with a hello from
//! this cluster addressed to this member; after that every frame's messages are decoded and
//! handed to the sink as one [`TransportEvent::Messages`]. A bad hello or an undecodable
//! frame closes the stream (with the reason; on gRPC, an error status); messages claiming
//! another sender are dropped. The gRPC `Stream` call carries the same frames, for senders
//! that use it.
//!
//! **Snapshots** ([`snapshot`]) do not travel on the message stream. An InstallSnapshot
//! message whose data is a [`SnapshotToken::Local`] is handed to a transfer task of its own
//! (one per peer, on its own connection, so replication to every peer goes on meanwhile)
//! that streams the file in checksummed chunks over `InstallSnapshot`, resumes after a
//! broken stream from what the receiver holds, and reports [`TransportEvent::SnapshotSent`].
//! The receiver assembles the file in its [`SnapshotInbox`] and then delivers the message with
//! a [`SnapshotToken::Received`].
//!
//! **Forwarding.** [`Transport::forward`] is a unary call (on a connection of its own, so a
//! large snapshot on the message stream does not delay it) that carries an opaque client
//! request to a peer's [`ForwardHandler`]. Its error tells whether the request surely did not
//! leave this member or may have been delivered.

pub mod codec;
pub mod snapshot;
pub mod wire;

mod client;
mod server;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use skiff_etcd_proto::skiffpb::peer_server::PeerServer;
use skiff_raft::{Message, NodeId};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;

pub use server::PeerService;
pub use snapshot::{SnapshotInbox, SnapshotSource, SnapshotStats, SnapshotToken};

/// The version of the peer protocol (hello, framing and [`codec`]) this build speaks. A hello
/// with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Who this member is, as told to peers in the hello of every stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The cluster ID; streams from other clusters are refused.
    pub cluster_id: u64,
    /// This member's ID (its Raft node ID).
    pub member_id: u64,
    /// `--name`.
    pub name: String,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

/// What the transport tells the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// Messages received from one peer in one frame, in the order that peer sent them.
    Messages(Vec<Message>),
    /// Messages to this peer were (or may have been) lost: its queue overflowed, a connection
    /// attempt failed or its stream broke. The Raft core should probe it again.
    Unreachable(NodeId),
    /// A peer opened a stream to this member and introduced itself.
    PeerInfo {
        /// The peer's member ID.
        id: NodeId,
        /// Its `--name`.
        name: String,
        /// Its advertised client URLs.
        client_urls: Vec<String>,
    },
    /// A snapshot transfer to `peer` ended: `success` if the peer received the whole
    /// snapshot, else it was given up (the Raft core should probe the peer again).
    SnapshotSent {
        /// The receiving peer.
        peer: NodeId,
        /// The snapshot's index.
        index: u64,
        /// The snapshot's term.
        term: u64,
        /// The peer holds the whole snapshot.
        success: bool,
    },
}

/// Where the transport delivers [`TransportEvent`]s. Called from transport tasks and from
/// [`Transport::send`]; it must not block.
pub type EventSink = Arc<dyn Fn(TransportEvent) + Send + Sync>;

/// Sizes and timings of the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportLimits {
    /// Messages queued per peer before new ones are dropped.
    pub queue_len: usize,
    /// Encoded bytes queued per peer before new messages are dropped (a single message is
    /// always accepted into an empty queue, up to `max_frame_bytes`).
    pub queue_bytes: usize,
    /// Largest frame sent or accepted, in bytes; also tonic's encoding and decoding limit. A
    /// single message larger than this cannot be sent and is dropped.
    pub max_frame_bytes: usize,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// First reconnect delay after a failure.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// HTTP/2 initial stream window, in bytes.
    pub stream_window_bytes: u32,
    /// HTTP/2 initial connection window, in bytes.
    pub connection_window_bytes: u32,
    /// HTTP/2 keep-alive ping interval (detects dead connections while idle).
    pub keepalive_interval: Duration,
    /// How long to wait for a keep-alive ping's answer before closing the connection.
    pub keepalive_timeout: Duration,
    /// Longest TCP retransmission timeout on message streams, where the kernel allows
    /// setting it (Linux 6.15 or later, 1 to 120 s): how long data sent into a healed
    /// partition may still wait.
    pub retransmit_max: Duration,
    /// Largest snapshot chunk sent, in bytes (must stay below `max_frame_bytes`).
    pub snapshot_chunk_bytes: usize,
    /// Snapshot bytes sent per second to one peer (0: unlimited).
    pub snapshot_bytes_per_sec: u64,
    /// Consecutive failed snapshot streams that made no progress before a transfer is given
    /// up (and reported as failed).
    pub snapshot_attempts: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            queue_len: 4096,
            queue_bytes: 256 << 20,
            max_frame_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            stream_window_bytes: 4 << 20,
            connection_window_bytes: 16 << 20,
            keepalive_interval: Duration::from_secs(5),
            keepalive_timeout: Duration::from_secs(5),
            retransmit_max: Duration::from_secs(1),
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_per_sec: 256 << 20,
            snapshot_attempts: 5,
        }
    }
}

/// Why [`Transport::forward`] failed. Which variant matters: a request that surely was not
/// delivered may be retried or reported as not applied; one that may have been delivered
/// may still take effect.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ForwardError {
    /// The peer is not known to this transport; nothing was sent.
    #[error("unknown peer {0:x}")]
    UnknownPeer(NodeId),
    /// No connection could be made; the request surely was not delivered.
    #[error("not delivered: {0}")]
    NotDelivered(String),
    /// The request was sent but no answer came (timeout, broken connection); it may have been
    /// delivered and may take effect.
    #[error("maybe delivered: {0}")]
    MaybeDelivered(String),
    /// The peer answered with an error (from its [`ForwardHandler`] or its checks).
    #[error("refused by peer: {0}")]
    Rejected(tonic::Status),
}

impl ForwardError {
    /// True when the request surely did not reach the peer.
    pub fn surely_not_delivered(&self) -> bool {
        matches!(
            self,
            ForwardError::UnknownPeer(_) | ForwardError::NotDelivered(_)
        )
    }
}

/// The boxed future a [`ForwardHandler`] returns.
pub type ForwardFuture = Pin<Box<dyn Future<Output = Result<Bytes, tonic::Status>> + Send>>;

/// Serves requests forwarded by peers (normally: proposes a client write and waits for its
/// result). The request and response bytes are opaque to the transport.
pub trait ForwardHandler: Send + Sync + 'static {
    /// Handles one forwarded request.
    fn forward(&self, request: Bytes) -> ForwardFuture;

    /// The members this cluster was bootstrapped with and its members now, in the member
    /// registry's text form, for the `Cluster` call of a joining member; `None` refuses it.
    fn cluster_members(&self) -> Option<(String, String)> {
        None
    }
}

/// A cluster as one of its members described it (see [`fetch_cluster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// The cluster ID.
    pub cluster_id: u64,
    /// The member that answered.
    pub member_id: u64,
    /// The bootstrap members, in the member registry's text form.
    pub initial_members: String,
    /// The current members, in the member registry's text form.
    pub members: String,
}

/// Asks the members at `urls`, in turn, to describe their cluster; the first answer wins.
/// `Err` lists why each failed.
pub async fn fetch_cluster(
    urls: &[String],
    limits: &TransportLimits,
) -> Result<ClusterView, String> {
    use skiff_etcd_proto::skiffpb::peer_client::PeerClient;
    let mut failures = Vec::new();
    for url in urls {
        let attempt = async {
            let channel = client::connect(url, limits).await?;
            let mut client = PeerClient::new(channel);
            let answer = tokio::time::timeout(
                limits.connect_timeout * 5,
                client.cluster(skiff_etcd_proto::skiffpb::ClusterRequest {}),
            )
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|status| status.message().to_string())?
            .into_inner();
            if answer.protocol_version != PROTOCOL_VERSION {
                return Err(format!(
                    "peer protocol version {} (this member speaks {PROTOCOL_VERSION})",
                    answer.protocol_version
                ));
            }
            Ok(ClusterView {
                cluster_id: answer.cluster_id,
                member_id: answer.member_id,
                initial_members: answer.initial_members,
                members: answer.members,
            })
        };
        match attempt.await {
            Ok(view) => return Ok(view),
            Err(error) => failures.push(format!("{url}: {error}")),
        }
    }
    Err(failures.join("; "))
}

/// Builds what receives peer streams and forwarded requests; serve it on the member's peer
/// listener with [`serve`]. It refuses snapshots: see [`peer_service_with_snapshots`].
pub fn peer_service(
    identity: PeerIdentity,
    sink: EventSink,
    forward: Arc<dyn ForwardHandler>,
    limits: TransportLimits,
) -> PeerService {
    PeerService::new(identity, sink, forward, limits, None)
}

/// Like [`peer_service`], and receives snapshots into `inbox`: a complete snapshot is
/// delivered to the sink as an InstallSnapshot message carrying a [`SnapshotToken::Received`].
pub fn peer_service_with_snapshots(
    identity: PeerIdentity,
    sink: EventSink,
    forward: Arc<dyn ForwardHandler>,
    limits: TransportLimits,
    inbox: Arc<SnapshotInbox>,
) -> PeerService {
    PeerService::new(identity, sink, forward, limits, Some(inbox))
}

/// The gRPC service of `service` (forwarding, snapshots, the cluster query, and message
/// streams from members that send them over gRPC).
fn grpc_service(service: PeerService) -> PeerServer<PeerService> {
    let max_frame_bytes = service.max_frame_bytes();
    PeerServer::new(service)
        .max_decoding_message_size(max_frame_bytes)
        .max_encoding_message_size(max_frame_bytes)
}

/// How long an accepted connection may take to show whether it is a message stream.
const CLASSIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the peer port on `listener` until `shutdown` resolves: message streams on plain TCP
/// (see [`wire`]) and, on the same port, the gRPC service.
pub async fn serve(
    service: PeerService,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let (grpc_tx, grpc_rx) = tokio::sync::mpsc::channel::<std::io::Result<TcpStream>>(64);
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut grpc = tokio::spawn(
        server_builder(service.limits())
            .add_service(grpc_service(service.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::ReceiverStream::new(grpc_rx),
                async {
                    let _ = grpc_stopped.await;
                },
            ),
    );
    // Message streams and connections not yet classified; dropped (so aborted) at shutdown.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // The gRPC server stopped on its own: the peer port is broken, say so.
            ended = &mut grpc => {
                return Err(match ended {
                    Ok(Ok(())) => "the peer gRPC server stopped".to_string(),
                    Ok(Err(error)) => error.to_string(),
                    Err(error) => error.to_string(),
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let service = service.clone();
                    let grpc_tx = grpc_tx.clone();
                    connections.spawn(async move {
                        if is_message_stream(&stream).await {
                            service.serve_message_stream(stream, remote.to_string()).await;
                        } else {
                            let _ = grpc_tx.send(Ok(stream)).await;
                        }
                    });
                }
                Err(error) => {
                    // E.g. out of file descriptors: keep serving those already open.
                    tracing::warn!(%error, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(connections);
    let _ = stop_grpc.send(());
    match grpc.await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// True once the connection's first bytes are [`wire::MAGIC`]; false as soon as they differ
/// (an HTTP/2 client), or if it closes or stays silent too long.
async fn is_message_stream(stream: &TcpStream) -> bool {
    let deadline = tokio::time::Instant::now() + CLASSIFY_TIMEOUT;
    let mut first = [0u8; wire::MAGIC.len()];
    loop {
        let seen = match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(seen)) => seen,
            Ok(Err(_)) | Err(_) => return false,
        };
        if seen == 0 || first[..seen] != wire::MAGIC[..seen] {
            return false;
        }
        if seen == wire::MAGIC.len() {
            return true;
        }
        // Part of the magic so far: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A tonic server builder with the transport's HTTP/2 settings (windows, keep-alive,
/// TCP_NODELAY when tonic binds the socket itself).
pub fn server_builder(limits: &TransportLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .tcp_nodelay(true)
}

/// Accepted connections of `listener` with TCP_NODELAY set, for
/// `Server::serve_with_incoming`.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Protobuf overhead of one message inside a batch (tag + length varint), upper bound.
const PER_MESSAGE_OVERHEAD: usize = 11;

/// A message waiting to be sent, with the bytes it adds to a frame.
struct Queued {
    message: Message,
    /// Encoded length plus [`PER_MESSAGE_OVERHEAD`].
    size: usize,
}

#[derive(Default)]
struct QueueState {
    messages: VecDeque<Queued>,
    bytes: usize,
    closed: bool,
    /// The peer's message stream while it is up: with nothing queued, unsent or being
    /// written ahead of them, [`PeerQueue::push`] writes new messages straight to it, from the
    /// caller's thread, without waking the peer's task.
    direct: Option<Arc<OwnedWriteHalf>>,
    /// The rest of a frame `push` could not write whole: the task writes it before anything.
    unsent: Option<Bytes>,
    /// The task is writing what it took from the queue.
    writing: bool,
}

/// What the peer's task writes next.
enum Work {
    /// The rest of a frame written in part by [`PeerQueue::push`].
    Unsent(Bytes),
    /// Queued messages, to encode as one frame.
    Batch(Vec<Queued>),
}

/// One peer's outbound queue, shared by [`Transport::send`] and the peer's task.
#[derive(Default)]
struct PeerQueue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl PeerQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The lock is never held across code that can panic; recover from poison anyway.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Sends or queues `messages`; returns how many were dropped. When the stream is up and
    /// idle they are written at once as one frame (what the socket does not take now is left
    /// to the task); otherwise queued, as far as they fit.
    fn push(&self, messages: Vec<Queued>, limits: &TransportLimits) -> usize {
        let mut state = self.lock();
        if state.closed {
            return messages.len();
        }
        let idle = state.messages.is_empty() && state.unsent.is_none() && !state.writing;
        if let (true, Some(direct)) = (idle, state.direct.as_ref()) {
            let size: usize = messages.iter().map(|queued| queued.size).sum();
            if size <= client::frame_budget(limits) {
                let mut frame = BytesMut::with_capacity(size + client::FRAME_OVERHEAD);
                wire::put_batch(&mut frame, messages.iter().map(|queued| &queued.message));
                // Would block, or failed: the task writes it (and finds out which).
                let written = direct.try_write(&frame).unwrap_or_default();
                if written < frame.len() {
                    state.unsent = Some(frame.freeze().slice(written..));
                    drop(state);
                    self.notify.notify_one();
                }
                return 0;
            }
        }
        let mut dropped = 0;
        for queued in messages {
            let fits = state.messages.len() < limits.queue_len
                && (state.messages.is_empty() || state.bytes + queued.size <= limits.queue_bytes);
            if fits {
                state.bytes += queued.size;
                state.messages.push_back(queued);
            } else {
                dropped += 1;
            }
        }
        drop(state);
        self.notify.notify_one();
        dropped
    }

    /// The stream is up: later pushes may write to it directly.
    fn attach(&self, stream: Arc<OwnedWriteHalf>) {
        self.lock().direct = Some(stream);
    }

    /// Waits for work: a partly written frame first, else as many queued messages as fit in
    /// `budget` bytes (at least one). Until [`PeerQueue::written`], pushes queue. `None` once
    /// the queue is closed.
    async fn next_work(&self, budget: usize) -> Option<Work> {
        loop {
            {
                let mut state = self.lock();
                if state.closed {
                    return None;
                }
                if let Some(unsent) = state.unsent.take() {
                    state.writing = true;
                    return Some(Work::Unsent(unsent));
                }
                if !state.messages.is_empty() {
                    let mut batch = Vec::new();
                    let mut total = 0;
                    while let Some(next) = state.messages.front() {
                        if !batch.is_empty() && total + next.size > budget {
                            break;
                        }
                        total += next.size;
                        let queued = state.messages.pop_front()?;
                        state.bytes -= queued.size;
                        batch.push(queued);
                    }
                    state.writing = true;
                    return Some(Work::Batch(batch));
                }
            }
            self.notify.notified().await;
        }
    }

    /// The task wrote what [`PeerQueue::next_work`] gave it.
    fn written(&self) {
        self.lock().writing = false;
    }

    /// The stream ended: drops it and everything queued or unsent; returns how many messages
    /// were queued.
    fn clear(&self) -> usize {
        let mut state = self.lock();
        let dropped = state.messages.len();
        state.messages.clear();
        state.bytes = 0;
        state.direct = None;
        state.unsent = None;
        state.writing = false;
        dropped
    }

    fn len(&self) -> usize {
        self.lock().messages.len()
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.messages.clear();
        state.bytes = 0;
        state.direct = None;
        state.unsent = None;
        drop(state);
        self.notify.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// What the transport keeps for one peer.
struct PeerEntry {
    urls: Vec<String>,
    queue: Arc<PeerQueue>,
    forward: Arc<client::ForwardLink>,
    /// The snapshot transfer running to this peer: its (index, term) and task.
    snapshot: Option<(u64, u64, tokio::task::AbortHandle)>,
}

struct Inner {
    identity: Arc<PeerIdentity>,
    sink: EventSink,
    limits: Arc<TransportLimits>,
    peers: Mutex<BTreeMap<NodeId, PeerEntry>>,
    snapshot_stats: Arc<SnapshotStats>,
    /// The runtime the transport was started in ([`Transport::send`] may be called from
    /// other threads).
    runtime: tokio::runtime::Handle,
}

impl Inner {
    fn peers(&self) -> MutexGuard<'_, BTreeMap<NodeId, PeerEntry>> {
        self.peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for entry in self.peers().values() {
            entry.queue.close();
            if let Some((_, _, task)) = &entry.snapshot {
                task.abort();
            }
        }
    }
}

/// The sending side of the peer transport: a cheap, cloneable handle. Peer tasks stop once
/// every handle is dropped.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("identity", &self.inner.identity)
            .field("peers", &self.inner.peers().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Transport {
    /// Starts a transport for `identity` with one stream task per peer (`peers` maps member
    /// IDs to peer URLs such as `http://127.0.0.1:2380`; this member's own ID is ignored).
    /// Must be called inside a Tokio runtime.
    pub fn start(
        identity: PeerIdentity,
        peers: BTreeMap<NodeId, Vec<String>>,
        sink: EventSink,
        limits: TransportLimits,
    ) -> Transport {
        let transport = Transport {
            inner: Arc::new(Inner {
                identity: Arc::new(identity),
                sink,
                limits: Arc::new(limits),
                peers: Mutex::new(BTreeMap::new()),
                snapshot_stats: Arc::new(SnapshotStats::default()),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        for (id, urls) in peers {
            transport.add_peer(id, urls);
        }
        transport
    }

    /// This member's identity.
    pub fn identity(&self) -> &PeerIdentity {
        &self.inner.identity
    }

    /// Adds a peer unless it is known with these very URLs (then its stream is left alone).
    /// May be called from any thread.
    pub fn ensure_peer(&self, id: NodeId, urls: Vec<String>) {
        let known = self
            .inner
            .peers()
            .get(&id)
            .is_some_and(|entry| entry.urls == urls);
        if !known {
            self.add_peer(id, urls);
        }
    }

    /// Adds a peer (or replaces its URLs, restarting its stream). May be called from any
    /// thread. Adding this member itself does nothing.
    pub fn add_peer(&self, id: NodeId, urls: Vec<String>) {
        if id == self.inner.identity.member_id {
            return;
        }
        let queue = Arc::new(PeerQueue::default());
        let link = client::PeerLink {
            id,
            urls: urls.clone(),
            queue: Arc::clone(&queue),
            identity: Arc::clone(&self.inner.identity),
            sink: Arc::clone(&self.inner.sink),
            limits: Arc::clone(&self.inner.limits),
        };
        let forward = Arc::new(client::ForwardLink::new(
            urls.clone(),
            Arc::clone(&self.inner.limits),
        ));
        let entry = PeerEntry {
            urls,
            queue,
            forward,
            snapshot: None,
        };
        let old = self.inner.peers().insert(id, entry);
        if let Some(old) = old {
            old.queue.close();
            if let Some((_, _, task)) = old.snapshot {
                task.abort();
            }
        }
        self.inner.runtime.spawn(link.run());
    }

    /// Removes a peer: its queue is discarded and its task stops.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(old) = self.inner.peers().remove(&id) {
            old.queue.close();
            if let Some((_, _, task)) = old.snapshot {
                task.abort();
            }
        }
    }

    /// Counters of the snapshots this transport sent.
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.inner.snapshot_stats
    }

    /// Starts streaming the snapshot `message` names to its recipient, unless that very
    /// snapshot is already on its way there; a transfer of an older one is stopped.
    fn send_snapshot(&self, message: Message) {
        let (index, term) = match &message.body {
            skiff_raft::MessageBody::InstallSnapshot { meta, .. } => (meta.index, meta.term),
            _ => return,
        };
        let to = message.to;
        let mut peers = self.inner.peers();
        let Some(entry) = peers.get_mut(&to) else {
            tracing::debug!(peer = %format_args!("{to:x}"), "dropping a snapshot to an unknown peer");
            return;
        };
        if let Some((running_index, running_term, task)) = &entry.snapshot {
            if !task.is_finished() && (*running_index, *running_term) == (index, term) {
                return;
            }
            task.abort();
        }
        let outgoing = snapshot::Outgoing {
            identity: Arc::clone(&self.inner.identity),
            to,
            urls: entry.urls.clone(),
            limits: Arc::clone(&self.inner.limits),
            sink: Arc::clone(&self.inner.sink),
            stats: Arc::clone(&self.inner.snapshot_stats),
        };
        tracing::info!(peer = %format_args!("{to:x}"), index, term, "sending a snapshot");
        let task = self
            .inner
            .runtime
            .spawn(outgoing.run(message))
            .abort_handle();
        entry.snapshot = Some((index, term, task));
    }

    /// The peers this transport sends to.
    pub fn peers(&self) -> Vec<NodeId> {
        self.inner.peers().keys().copied().collect()
    }

    /// Messages queued for `peer` and not yet handed to its stream; `None` for an unknown peer.
    pub fn queued(&self, peer: NodeId) -> Option<usize> {
        self.inner.peers().get(&peer).map(|entry| entry.queue.len())
    }

    /// Queues `messages` for their recipients (`Message::to`) without waiting. A message that
    /// does not fit in its peer's queue is dropped and the peer is reported
    /// [`TransportEvent::Unreachable`] (once per call); a message to an unknown peer is dropped.
    ///
    /// An InstallSnapshot carrying a [`SnapshotToken::Local`] starts a snapshot transfer
    /// instead (see [`snapshot`]).
    pub fn send(&self, messages: Vec<Message>) {
        let mut by_peer: BTreeMap<NodeId, Vec<Queued>> = BTreeMap::new();
        for message in messages {
            if snapshot::is_local_snapshot(&message) {
                self.send_snapshot(message);
                continue;
            }
            let size = codec::encoded_len(&message) + PER_MESSAGE_OVERHEAD;
            by_peer
                .entry(message.to)
                .or_default()
                .push(Queued { message, size });
        }
        let mut unreachable = Vec::new();
        {
            let peers = self.inner.peers();
            for (id, batch) in by_peer {
                match peers.get(&id) {
                    Some(entry) => {
                        let dropped = entry.queue.push(batch, &self.inner.limits);
                        if dropped > 0 {
                            tracing::debug!(peer = %format_args!("{id:x}"), dropped, "peer queue full, dropping messages");
                            unreachable.push(id);
                        }
                    }
                    None => {
                        tracing::debug!(peer = %format_args!("{id:x}"), count = batch.len(), "dropping messages to unknown peer");
                    }
                }
            }
        }
        for id in unreachable {
            (self.inner.sink)(TransportEvent::Unreachable(id));
        }
    }

    /// Sends `request` to peer `to`'s [`ForwardHandler`] and waits at most `timeout` for its
    /// answer.
    pub async fn forward(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let link = self
            .inner
            .peers()
            .get(&to)
            .map(|entry| Arc::clone(&entry.forward))
            .ok_or(ForwardError::UnknownPeer(to))?;
        link.forward(&self.inner.identity, to, request, timeout)
            .await
    }
}
