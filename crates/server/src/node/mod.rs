//! The member runtime around the consensus core.
//!
//! Three workers, connected by channels:
//! - the **event loop** (a tokio task, `event_loop.rs`) owns the `RawNode` and handles a closed
//!   set of events in batches: ticks, peer messages, proposals, reads, and the completions of
//!   the two threads below. It never blocks on disk.
//! - the **log writer** (a thread, `disk.rs`) appends and syncs the log with group commit and
//!   releases the messages that had to wait for durability.
//! - the **applier** (a thread, `apply.rs`) applies committed entries to `skiff-kv`, answers
//!   waiting clients and takes snapshots.
//!
//! Snapshots are files end to end (`snapshot.rs`): taken by streaming the store into the log
//! store's snapshot file, sent by the transport from that file, received into a file and
//! installed from it.
//!
//! `NodeHandle` is the client side: it implements [`Backend`] for the etcd API layer and
//! forwards writes to the leader when this member is not it.

mod apply;
mod disk;
mod event_loop;
mod forward;
#[cfg(test)]
pub(crate) mod scratch;
mod snapshot;
mod values;

pub(crate) use values::unlinked_file;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use skiff_kv::{Command, KvConfig, Operation, Response, Store, ValueLog};
use skiff_raft::{Config as RaftConfig, InitialState, Membership, Message, NodeId, SnapshotMeta};
use skiff_storage::{FileStorage, OsFileSystem, Storage, StorageConfig};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backend::{Backend, MemberInfo, NodeStatus, ServerError};
use crate::members::{self, MemberRequest, Registry, RegistryLog};
use crate::metrics::Metrics;

pub use forward::{ForwardFailure, Forwarder};

/// Sends messages to peers; must not block (the transport queues or drops).
pub type Outbound = Arc<dyn Fn(Vec<Message>) + Send + Sync>;

/// Where the member keeps the transport's list of peers current as configuration changes
/// add, move and remove members. Called from the event loop and the applier; must not block.
pub trait PeerDirectory: Send + Sync + 'static {
    /// Makes sure `id` is reachable at `urls` (a no-op when it already is).
    fn ensure(&self, id: NodeId, urls: Vec<String>);
    /// Forgets `id` (it left the cluster).
    fn remove(&self, id: NodeId);

    /// Makes every member of `registry` reachable.
    fn ensure_all(&self, registry: &Registry) {
        for (id, record) in &registry.members {
            self.ensure(*id, record.peer_urls.clone());
        }
    }
}

/// A [`PeerDirectory`] for members whose peers are fixed (in-process tests).
pub struct FixedPeers;

impl PeerDirectory for FixedPeers {
    fn ensure(&self, _id: NodeId, _urls: Vec<String>) {}
    fn remove(&self, _id: NodeId) {}
}

/// Why a member stopped when the cluster removed it (a normal end, not a failure).
pub const REMOVED: &str = "this member was removed from the cluster";

/// Applied entries the core keeps in memory by default ([`NodeOptions::kept_entries`]).
pub const KEPT_ENTRIES: u64 = 4096;

/// Everything a member needs to start, already resolved from flags and the data directory.
pub struct NodeOptions {
    /// This member.
    pub id: NodeId,
    /// The cluster.
    pub cluster_id: u64,
    /// The members the cluster was bootstrapped with (its configuration at index 0).
    pub initial: Registry,
    /// This member's `--name`.
    pub name: String,
    /// This member's `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// Keeps the transport's peers current.
    pub peers: Arc<dyn PeerDirectory>,
    /// Where the log and snapshots live.
    pub wal_dir: PathBuf,
    /// Where snapshots received from the leader arrive: the directory of the peer service's
    /// [`SnapshotInbox`](crate::transport::SnapshotInbox).
    pub snapshot_dir: PathBuf,
    /// The Raft tick (`--heartbeat-interval`).
    pub tick: Duration,
    /// `--election-timeout` in ticks.
    pub election_ticks: u32,
    /// Applied entries between snapshots (`--snapshot-count`; 0 disables snapshots).
    pub snapshot_count: u64,
    /// Bytes of entry payloads applied since the last snapshot that also trigger one (the
    /// log store keeps those entries on disk until a snapshot compacts them).
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log behind each snapshot (`--snapshot-catchup-entries`).
    pub snapshot_catchup_entries: u64,
    /// Applied entries the core keeps in memory ([`KEPT_ENTRIES`] in a server). It releases
    /// older ones and reads them back from the log store when a lagging member needs them
    /// (see `disk::WalSource`). Otherwise the core would hold every entry since the last
    /// snapshot: up to `--snapshot-count` of them, most of a member's memory under load. A
    /// follower this close behind is served from memory; the log store's cache of recent
    /// entries covers the next few megabytes.
    pub kept_entries: u64,
    /// The state machine's limits (shared by every member).
    pub kv_config: KvConfig,
    /// Where the store keeps its values in a scratch file (see `values`); `None` keeps them in
    /// memory.
    pub value_dir: Option<PathBuf>,
    /// The log store's limits.
    pub storage_config: StorageConfig,
    /// How long a client request may wait for its answer.
    pub request_timeout: Duration,
    /// Where the member reports its metrics.
    pub metrics: Arc<Metrics>,
}

/// Messages from the log writer and the applier to the event loop (unbounded: their volume is
/// bounded by the core's flow control).
pub(crate) enum Internal {
    Persisted {
        index: u64,
        term: u64,
    },
    Applied {
        index: u64,
    },
    Compacted {
        meta: SnapshotMeta,
    },
    /// The applied configuration no longer includes this member.
    Removed,
    Fatal(String),
}

/// Requests from clients and peers to the event loop (bounded).
pub(crate) enum Event {
    Messages(Vec<Message>),
    Unreachable(NodeId),
    SnapshotSent {
        peer: NodeId,
        success: bool,
    },
    Propose {
        data: Bytes,
        reply: Reply,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, ServerError>>,
    },
    TransferLeader {
        target: NodeId,
        reply: oneshot::Sender<Result<(), ServerError>>,
    },
    /// A membership change, answered with the index of its configuration entry and the
    /// member it concerns once applied here.
    ChangeMembers {
        request: MemberRequest,
        reply: oneshot::Sender<Result<(u64, u64), ServerError>>,
    },
}

/// How a waiting client is answered.
pub(crate) enum Reply {
    /// A write: the state machine's response.
    Write(oneshot::Sender<Result<(u64, Response), ServerError>>),
    /// A membership change: the entry's index and the member it concerns.
    Members {
        member: u64,
        reply: oneshot::Sender<Result<(u64, u64), ServerError>>,
    },
}

impl Reply {
    /// Answers with an error.
    pub fn fail(self, error: ServerError) {
        match self {
            Reply::Write(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Members { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// A client waiting for its proposal at `index` (of `term`) to be applied.
pub(crate) struct Waiter {
    term: u64,
    reply: Reply,
}

/// The members as applied: the registry, the configuration, and what members told about
/// themselves when they connected (their names and client URLs).
pub(crate) struct MemberView {
    registry: Registry,
    membership: Membership,
    heard: BTreeMap<NodeId, (String, Vec<String>)>,
}

impl MemberView {
    /// The members as `MemberList` shows them.
    fn list(&self) -> Vec<MemberInfo> {
        self.registry
            .members
            .iter()
            .map(|(id, record)| {
                let (name, client_urls) = match self.heard.get(id) {
                    Some((name, urls)) => (name.clone(), urls.clone()),
                    None => (record.name.clone(), Vec::new()),
                };
                MemberInfo {
                    id: *id,
                    name,
                    peer_urls: record.peer_urls.clone(),
                    client_urls,
                    is_learner: self.membership.learners.contains(id),
                }
            })
            .collect()
    }

    /// True if `id` has started, as etcd counts it: its name is known.
    fn started(&self, id: NodeId) -> bool {
        self.heard.contains_key(&id)
            || self
                .registry
                .members
                .get(&id)
                .is_some_and(|record| !record.name.is_empty())
    }
}

/// State shared by the handle, the event loop and the applier.
pub(crate) struct Shared {
    id: NodeId,
    cluster_id: u64,
    events: mpsc::Sender<Event>,
    store: RwLock<Store>,
    waiters: Mutex<BTreeMap<u64, Waiter>>,
    applied: watch::Sender<u64>,
    revision: watch::Sender<i64>,
    status: watch::Sender<NodeStatus>,
    members: Mutex<MemberView>,
    initial_members: Registry,
    peers: Arc<dyn PeerDirectory>,
    forwarder: Mutex<Option<Arc<dyn Forwarder>>>,
    request_timeout: Duration,
    tick: Duration,
    /// Entries the core keeps in memory behind each snapshot (`--snapshot-catchup-entries`).
    catchup_entries: u64,
    lease_ids: Mutex<skiff_raft::Rng>,
    stopped: watch::Sender<Option<String>>,
    shutdown: watch::Sender<bool>,
    metrics: Arc<Metrics>,
    /// Where scratch files go: the value log's directory, if the store has one.
    scratch_dir: Option<PathBuf>,
}

impl Shared {
    fn publish_applied(&self, index: u64, revision: i64) {
        self.applied.send_if_modified(|applied| {
            let changed = index > *applied;
            *applied = (*applied).max(index);
            changed
        });
        self.revision.send_if_modified(|current| {
            let changed = *current != revision;
            *current = revision;
            changed
        });
    }
}

/// A running member: the handle plus what it takes to stop it.
pub struct Node {
    handle: NodeHandle,
    loop_task: tokio::task::JoinHandle<Result<(), String>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Opens the log in `options.wal_dir`, recovers the state machine, and starts the three
    /// workers. `outbound` carries messages to peers.
    pub fn start(options: NodeOptions, outbound: Outbound) -> Result<Node, String> {
        let file_system = OsFileSystem::new(&options.wal_dir).map_err(|error| error.to_string())?;
        let (storage, recovered) = FileStorage::open(file_system, options.storage_config.clone())
            .map_err(|error| error.to_string())?;
        let membership = Membership::new(options.initial.members.keys().copied());
        if let Some(dir) = &options.value_dir {
            values::FileValueLog::clear_dir(dir)
                .map_err(|error| format!("clearing {}: {error}", dir.display()))?;
        }
        let (store, snapshot_registry) =
            recover_store(&storage, &options.kv_config, options.value_dir.as_deref())?;
        let applied_registry = snapshot_registry.unwrap_or_else(|| options.initial.clone());
        let mut registry_log = RegistryLog::new(applied_registry.clone());
        registry_log.append(&recovered.entries);
        // The log may keep a tail behind the snapshot: its registries are history.
        registry_log.applied(store.applied_index());
        options.peers.ensure_all(&applied_registry);
        options.peers.ensure_all(registry_log.current());
        let applied = store.applied_index();
        let revision = store.current_revision();
        let applied_term = recovered.snapshot.as_ref().map_or(0, |meta| meta.term);
        let recovered_membership = recovered
            .snapshot
            .as_ref()
            .map_or_else(|| membership.clone(), |meta| meta.membership.clone());
        tracing::info!(
            member = format_args!("{:x}", options.id),
            applied,
            last_index = recovered
                .entries
                .last()
                .map_or(applied, |entry| entry.index),
            term = recovered.hard_state.term,
            "starting member"
        );
        let mut config = RaftConfig::new(options.id);
        config.election_ticks = options.election_ticks;
        config.heartbeat_ticks = 1;
        config.random_seed = options.id ^ now_ms() as u64;
        let initial = InitialState {
            hard_state: recovered.hard_state,
            snapshot: recovered.snapshot.clone(),
            entries: recovered.entries,
            membership: membership.clone(),
            applied,
        };
        let mut raw =
            skiff_raft::RawNode::new(config, initial).map_err(|error| error.to_string())?;

        let (events_tx, events_rx) = mpsc::channel(16 * 1024);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std::sync::mpsc::channel();
        let members = MemberView {
            registry: applied_registry.clone(),
            membership: recovered_membership.clone(),
            heard: BTreeMap::from([(
                options.id,
                (options.name.clone(), options.client_urls.clone()),
            )]),
        };
        let shared = Arc::new(Shared {
            id: options.id,
            cluster_id: options.cluster_id,
            events: events_tx,
            store: RwLock::new(store),
            waiters: Mutex::new(BTreeMap::new()),
            applied: watch::channel(applied).0,
            revision: watch::channel(revision).0,
            status: watch::channel(NodeStatus {
                cluster_id: options.cluster_id,
                member_id: options.id,
                raft_applied_index: applied,
                ..NodeStatus::default()
            })
            .0,
            members: Mutex::new(members),
            initial_members: options.initial.clone(),
            peers: options.peers.clone(),
            forwarder: Mutex::new(None),
            request_timeout: options.request_timeout,
            tick: options.tick,
            catchup_entries: options.snapshot_catchup_entries,
            lease_ids: Mutex::new(skiff_raft::Rng::new(options.id ^ now_ms() as u64)),
            stopped: watch::channel(None).0,
            shutdown: watch::channel(false).0,
            metrics: options.metrics.clone(),
            scratch_dir: options.value_dir.clone(),
        });

        let writer = Arc::new(std::sync::Mutex::new(disk::DiskWriter {
            done: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            catchup_entries: options.snapshot_catchup_entries,
            synced_hard_state: storage.hard_state(),
            unsynced_commit_writes: 0,
            storage,
            internal: internal_tx.clone(),
            outbound: outbound.clone(),
            on_fsync: {
                let metrics = options.metrics.clone();
                Arc::new(move |elapsed| metrics.wal_fsync_duration.observe(elapsed))
            },
        }));
        let source = Arc::new(disk::WalSource::new(writer.clone()));
        raw.release_applied_entries(source, options.kept_entries);
        let disk_queue = disk::DiskQueue::new(disk_tx.clone(), writer.clone());
        let log_thread = std::thread::Builder::new()
            .name("skiff-log".into())
            .spawn(move || disk::run(writer, disk_rx))
            .map_err(|error| error.to_string())?;
        let applier = apply::Applier {
            shared: shared.clone(),
            stopped: false,
            disk: disk_tx.clone(),
            internal: internal_tx,
            kv_config: options.kv_config.clone(),
            value_dir: options.value_dir.clone(),
            snapshot_count: options.snapshot_count,
            snapshot_log_bytes: options.snapshot_log_bytes,
            bytes_since_snapshot: 0,
            last_snapshot_index: applied,
            last_applied_term: applied_term,
            // The store reflects the snapshot: its configuration until the log says otherwise.
            membership: recovered_membership,
            registry: applied_registry,
            snapshotting: None,
            reports: Vec::new(),
        };
        let (apply_queue, apply_thread) =
            apply::ApplyQueue::start(applier).map_err(|error| error.to_string())?;

        let event_loop = event_loop::EventLoop::new(
            raw,
            shared.clone(),
            events_rx,
            internal_rx,
            disk_queue,
            apply_queue,
            outbound,
            options.wal_dir.clone(),
            options.snapshot_dir.clone(),
            registry_log,
        );
        let loop_task = tokio::spawn(event_loop.run(options.tick));
        Ok(Node {
            handle: NodeHandle { shared },
            loop_task,
            threads: vec![log_thread, apply_thread],
        })
    }

    /// The client-side handle.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Waits until the member stops (after [`NodeHandle::shutdown`], or on a failure of its
    /// disk or state machine) and its log writer has finished: `Err` says what failed.
    pub async fn stopped(self) -> Result<(), String> {
        let result = match self.loop_task.await {
            Ok(result) => result,
            Err(error) => Err(format!("event loop panicked: {error}")),
        };
        // The loop dropped its senders: the threads finish their queued work and exit.
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
        result
    }
}

/// A new value log in `dir`, if there is one.
pub(crate) fn value_log(dir: Option<&Path>) -> Result<Option<Arc<dyn ValueLog>>, String> {
    dir.map(|dir| match values::FileValueLog::create_in(dir) {
        Ok(log) => Ok(Arc::new(log) as Arc<dyn ValueLog>),
        Err(error) => Err(format!(
            "creating a value log in {}: {error}",
            dir.display()
        )),
    })
    .transpose()
}

/// Streams the newest snapshot, if any, into a store (with the member registry it starts
/// with); else an empty store. Its values go to a log in `value_dir`, if given.
fn recover_store(
    storage: &FileStorage,
    config: &KvConfig,
    value_dir: Option<&Path>,
) -> Result<(Store, Option<Registry>), String> {
    let log = value_log(value_dir)?;
    match storage.open_snapshot().map_err(|error| error.to_string())? {
        None => {
            let mut store = Store::new(config.clone()).map_err(|error| error.to_string())?;
            if let Some(log) = log {
                store.set_value_log(log);
            }
            Ok((store, None))
        }
        Some((meta, reader)) => {
            let mut reader = std::io::BufReader::with_capacity(256 << 10, reader);
            let registry = members::read_snapshot_prefix(&mut reader)
                .map_err(|error| format!("snapshot {}: {error}", meta.index))?;
            let store = Store::restore_with(reader, config.clone(), log)
                .map_err(|error| format!("snapshot {} does not restore: {error}", meta.index))?;
            if store.applied_index() != meta.index {
                return Err(format!(
                    "snapshot {} holds a store applied to {}",
                    meta.index,
                    store.applied_index()
                ));
            }
            Ok((store, registry))
        }
    }
}

/// Milliseconds since the Unix epoch (lease times are the leader's wall clock).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// The client side of a member. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl NodeHandle {
    /// This member's ID.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Hands messages from a peer to the event loop; dropped when the loop is overloaded
    /// (Raft recovers from lost messages).
    pub fn deliver(&self, messages: Vec<Message>) {
        if self
            .shared
            .events
            .try_send(Event::Messages(messages))
            .is_err()
        {
            tracing::debug!("event queue full: dropped peer messages");
        }
    }

    /// Reports that a peer could not be reached.
    pub fn report_unreachable(&self, peer: NodeId) {
        let _ = self.shared.events.try_send(Event::Unreachable(peer));
    }

    /// Reports how a snapshot transfer to `peer` ended; a failure makes the leader probe the
    /// peer again (and send a snapshot again if it still needs one).
    pub fn report_snapshot(&self, peer: NodeId, success: bool) {
        let _ = self
            .shared
            .events
            .try_send(Event::SnapshotSent { peer, success });
    }

    /// Records what a peer told about itself (name and client URLs).
    pub fn update_member(&self, id: NodeId, name: String, client_urls: Vec<String>) {
        let mut members = self.shared.members.lock().expect("members lock");
        members.heard.insert(id, (name, client_urls));
    }

    /// The bootstrap members and the members now (as applied here), in the member
    /// registry's text form: what a joining member asks for.
    pub fn cluster_members(&self) -> (String, String) {
        let members = self.shared.members.lock().expect("members lock");
        (
            self.shared.initial_members.encode(),
            members.registry.encode(),
        )
    }

    /// Sets how writes reach the leader from this member.
    pub fn set_forwarder(&self, forwarder: Arc<dyn Forwarder>) {
        *self.shared.forwarder.lock().expect("forwarder lock") = Some(forwarder);
    }

    /// Asks the member to stop: the event loop ends, queued log writes are synced.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Resolves when the member stopped; the value says why if it failed.
    pub async fn wait_stopped(&self) -> Option<String> {
        let mut stopped = self.shared.stopped.subscribe();
        let reason = stopped.wait_for(Option::is_some).await.ok()?.clone();
        reason
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.request_timeout
    }

    async fn send_event(&self, event: Event) -> Result<(), ServerError> {
        match self.shared.events.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ServerError::TooManyRequests),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ServerError::Stopped),
        }
    }

    /// Waits (until `deadline`) for the status to satisfy `condition`.
    async fn wait_status(
        &self,
        deadline: Instant,
        condition: impl Fn(&NodeStatus) -> bool,
    ) -> bool {
        let mut status = self.shared.status.subscribe();
        let wait = async move { status.wait_for(|status| condition(status)).await.is_ok() };
        matches!(
            tokio::time::timeout_at(deadline.into(), wait).await,
            Ok(true)
        )
    }

    /// Waits (until `deadline`) for this member to apply `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ServerError> {
        let mut applied = self.shared.applied.subscribe();
        let wait = async move { applied.wait_for(|applied| *applied >= index).await.is_ok() };
        match tokio::time::timeout_at(deadline.into(), wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Proposes `command` on this member, which believes it leads. `Err(NotLeader)` means
    /// surely not proposed.
    pub(crate) async fn propose_here(
        &self,
        mut command: Command,
        deadline: Instant,
    ) -> Result<(u64, Response), ServerError> {
        self.fill_leader_fields(&mut command.operation);
        let data = Bytes::from(command.encode());
        let (reply, answer) = oneshot::channel();
        self.send_event(Event::Propose {
            data,
            reply: Reply::Write(reply),
        })
        .await?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    fn fresh_lease_id(&self) -> i64 {
        let mut rng = self.shared.lease_ids.lock().expect("rng lock");
        (rng.next_u64() >> 1).max(1) as i64
    }

    /// The leader's part of lease operations: its clock, and an ID for a grant without one
    /// (normally picked already by the member the client called, see `Backend::propose`).
    fn fill_leader_fields(&self, operation: &mut Operation) {
        if let Operation::LeaseGrant { id, .. } = operation {
            if *id == 0 {
                *id = self.fresh_lease_id();
            }
        }
        operation.set_leader_time(now_ms());
    }

    /// Sends a request to the leader over the peer transport: its answer, or why none came
    /// (`NotLeader`: surely not delivered; `Timeout`: it may have been).
    async fn forward_to(
        &self,
        leader: NodeId,
        request: Bytes,
        deadline: Instant,
    ) -> Result<Bytes, ServerError> {
        let forwarder = self.shared.forwarder.lock().expect("lock").clone();
        let Some(forwarder) = forwarder else {
            return Err(ServerError::NoLeader);
        };
        let budget = deadline.saturating_duration_since(Instant::now());
        match forwarder.forward(leader, request, budget).await {
            Ok(answer) => Ok(answer),
            Err(ForwardFailure::NotDelivered) => Err(ServerError::NotLeader),
            Err(ForwardFailure::Unknown) => Err(ServerError::Timeout),
        }
    }

    /// A learner serves serializable reads, status and the member list only (as etcd's).
    fn refuse_on_learner(&self) -> Result<(), ServerError> {
        if self.shared.status.borrow().is_learner {
            Err(ServerError::NotSupportedForLearner)
        } else {
            Ok(())
        }
    }

    /// Proposes a membership change on this member, which believes it leads: the index of
    /// its configuration entry and the member it concerns. `Err(NotLeader)` means surely
    /// not proposed.
    async fn change_members_here(
        &self,
        request: MemberRequest,
        deadline: Instant,
    ) -> Result<(u64, u64), ServerError> {
        let (reply, answer) = oneshot::channel();
        self.send_event(Event::ChangeMembers { request, reply })
            .await?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Answers a request forwarded by another member (a write or a membership change):
    /// carry it out here if this member leads.
    pub async fn handle_forward(&self, request: Bytes) -> Bytes {
        if request.first() == Some(&members::MEMBER_REQUEST_TAG) {
            let answer = match MemberRequest::decode(&request) {
                None => Err(ServerError::Internal(
                    "bad forwarded membership request".into(),
                )),
                Some(_) if self.shared.status.borrow().leader != self.shared.id => {
                    Err(ServerError::NotLeader)
                }
                Some(request) => self.change_members_here(request, self.deadline()).await,
            };
            return forward::encode_member_answer(&answer);
        }
        let answer = match Command::decode(&request) {
            Err(error) => Err(ServerError::Internal(format!(
                "bad forwarded command: {error}"
            ))),
            Ok(command) => {
                let status = self.shared.status.borrow().clone();
                if status.leader != self.shared.id {
                    Err(ServerError::NotLeader)
                } else {
                    self.propose_here(command, self.deadline()).await
                }
            }
        };
        forward::encode_answer(&answer)
    }
}

impl Backend for NodeHandle {
    async fn propose(&self, operation: Operation) -> Result<Response, ServerError> {
        self.refuse_on_learner()?;
        let deadline = self.deadline();
        let mut operation = operation;
        if let Operation::LeaseGrant { id, .. } = &mut operation {
            if *id == 0 {
                // Any member may pick the ID: 63 random bits make a collision negligible (and
                // the store refuses a duplicate with "lease already exists").
                *id = self.fresh_lease_id();
            }
        }
        let command = Command::new(operation);
        {
            let store = self.shared.store.read().expect("store lock");
            store.validate_command(&command)?;
        }
        loop {
            let leader = self.shared.status.borrow().leader;
            if leader == 0 {
                if !self
                    .wait_status(deadline, |status| status.leader != 0)
                    .await
                {
                    return Err(ServerError::NoLeader);
                }
                continue;
            }
            let result = if leader == self.shared.id {
                self.propose_here(command.clone(), deadline).await
            } else {
                self.forward_to(leader, Bytes::from(command.encode()), deadline)
                    .await
                    .and_then(|answer| forward::decode_answer(&answer))
            };
            match result {
                Ok((index, response)) => {
                    // Read-your-writes on this member too.
                    self.wait_applied(index, deadline).await?;
                    return Ok(response);
                }
                // Surely not proposed: wait for news of a leader and try again.
                Err(ServerError::NotLeader) | Err(ServerError::NoLeader) => {
                    if Instant::now() >= deadline {
                        return Err(ServerError::NoLeader);
                    }
                    let changed = self
                        .wait_status(
                            (Instant::now() + self.shared.tick).min(deadline),
                            |status| status.leader != leader,
                        )
                        .await;
                    if !changed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn read_barrier(&self) -> Result<(), ServerError> {
        self.refuse_on_learner()?;
        let deadline = self.deadline();
        loop {
            let (reply, answer) = oneshot::channel();
            self.send_event(Event::ReadIndex { reply }).await?;
            let index = match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(Ok(Ok(index))) => index,
                // No leader, or the one asked stepped down: ask again once one leads.
                Ok(Ok(Err(ServerError::NoLeader | ServerError::LeaderChanged))) => {
                    if !self
                        .wait_status(deadline, |status| status.leader != 0)
                        .await
                    {
                        return Err(ServerError::NoLeader);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                Ok(Ok(Err(error))) => return Err(error),
                Ok(Err(_)) => return Err(ServerError::Stopped),
                Err(_) => return Err(ServerError::Timeout),
            };
            return self.wait_applied(index, deadline).await;
        }
    }

    fn read<R>(&self, read: impl FnOnce(&Store) -> R) -> R {
        read(&self.shared.store.read().expect("store lock"))
    }

    fn scratch_dir(&self) -> PathBuf {
        self.shared
            .scratch_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
    }

    fn revisions(&self) -> watch::Receiver<i64> {
        self.shared.revision.subscribe()
    }

    fn status(&self) -> NodeStatus {
        self.shared.status.borrow().clone()
    }

    fn members(&self) -> Vec<MemberInfo> {
        self.shared.members.lock().expect("members lock").list()
    }

    async fn change_members(
        &self,
        request: MemberRequest,
    ) -> Result<(u64, Vec<MemberInfo>), ServerError> {
        if let MemberRequest::Add { peer_urls, .. } | MemberRequest::Update { peer_urls, .. } =
            &request
        {
            if !members::valid_peer_urls(peer_urls) {
                return Err(ServerError::MemberBadUrls);
            }
        }
        let deadline = self.deadline();
        loop {
            let leader = self.shared.status.borrow().leader;
            let result = if leader == 0 {
                Err(ServerError::NoLeader)
            } else if leader == self.shared.id {
                self.change_members_here(request.clone(), deadline).await
            } else {
                self.forward_to(leader, Bytes::from(request.encode()), deadline)
                    .await
                    .and_then(|answer| forward::decode_member_answer(&answer))
            };
            match result {
                Ok((index, member)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok((member, self.members()));
                }
                // Surely not proposed: retry once a leader is known or the change in
                // flight is done, until the deadline.
                Err(
                    ServerError::NotLeader
                    | ServerError::NoLeader
                    | ServerError::ConfigChangePending,
                ) => {
                    if Instant::now() >= deadline {
                        return Err(ServerError::Timeout);
                    }
                    tokio::time::sleep(self.shared.tick.min(Duration::from_millis(50))).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }

    async fn move_leader(&self, target: u64) -> Result<(), ServerError> {
        let deadline = self.deadline();
        let (reply, answer) = oneshot::channel();
        self.send_event(Event::TransferLeader { target, reply })
            .await?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(error),
            Ok(Err(_)) => return Err(ServerError::Stopped),
            Err(_) => return Err(ServerError::Timeout),
        }
        if self
            .wait_status(deadline, |status| status.leader == target)
            .await
        {
            Ok(())
        } else {
            Err(ServerError::Timeout)
        }
    }
}

/// Where a member keeps its log under its data directory.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("wal")
}

/// Where a member receives snapshots under its data directory.
pub fn snapshot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("snap")
}

/// Where a member keeps its value log under its data directory.
pub fn value_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("values")
}
