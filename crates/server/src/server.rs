//! `run`: one member, from its configuration to a graceful stop.
//!
//! Start-up: decide the cluster (bootstrap), bind every listener (a port in use is reported
//! with its flag before anything else starts), start the peer transport, the member runtime,
//! the peer gRPC server and the client server (etcd's gRPC API and the HTTP endpoints on the
//! same port). Then wait for the shutdown signal or a failure of the member's own disk.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use skiff_kv::KvConfig;
use skiff_raft::NodeId;
use skiff_storage::StorageConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::ApiLimits;
use crate::backend::Backend;
use crate::bootstrap;
use crate::client_server::{self, ClientService};
use crate::config::ServerConfig;
use crate::http::{self, HttpState};
use crate::limits::limited_incoming;
use crate::metrics::Metrics;
use crate::node::{self, ForwardFailure, Forwarder, Node, NodeHandle, NodeOptions, PeerDirectory};
use crate::transport::{
    self, ForwardFuture, ForwardHandler, PeerIdentity, Transport, TransportEvent, TransportLimits,
};

/// Why a member could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory or the flags do not allow starting.
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// A listener could not be bound.
    #[error("{flag}: cannot listen on {address}: {error}")]
    Listen {
        /// The flag that named the address.
        flag: &'static str,
        /// The address.
        address: SocketAddr,
        /// What failed.
        error: std::io::Error,
    },
    /// The member's log or state machine failed.
    #[error("member failed: {0}")]
    Member(String),
}

async fn bind(flag: &'static str, addresses: &[SocketAddr]) -> Result<Vec<TcpListener>, RunError> {
    let mut listeners = Vec::new();
    for &address in addresses {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| RunError::Listen {
                flag,
                address,
                error,
            })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Forwards writes over the peer transport.
struct TransportForwarder(Transport);

impl Forwarder for TransportForwarder {
    fn forward(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Bytes, ForwardFailure>> + Send>> {
        let transport = self.0.clone();
        Box::pin(async move {
            transport
                .forward(to, request, timeout)
                .await
                .map_err(|error| {
                    if error.surely_not_delivered() {
                        ForwardFailure::NotDelivered
                    } else {
                        tracing::debug!(%error, "forwarded write without an answer");
                        ForwardFailure::Unknown
                    }
                })
        })
    }
}

/// Answers writes forwarded by peers, and joining members' questions.
struct NodeForwardHandler(NodeHandle);

impl ForwardHandler for NodeForwardHandler {
    fn forward(&self, request: Bytes) -> ForwardFuture {
        let handle = self.0.clone();
        Box::pin(async move { Ok(handle.handle_forward(request).await) })
    }

    fn cluster_members(&self) -> Option<(String, String)> {
        Some(self.0.cluster_members())
    }
}

/// Configuration changes reach the transport's peer list.
struct TransportPeers(Transport);

impl PeerDirectory for TransportPeers {
    fn ensure(&self, id: NodeId, urls: Vec<String>) {
        self.0.ensure_peer(id, urls);
    }

    fn remove(&self, id: NodeId) {
        tracing::info!(peer = %format_args!("{id:x}"), "member left the cluster");
        self.0.remove_peer(id);
    }
}

/// Runs a member until `shutdown` resolves (then stops gracefully: the servers stop
/// accepting, queued log writes are synced) or the member's own disk fails.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let cluster = if bootstrap::must_join(&config) {
        let urls = bootstrap::join_urls(&config);
        let view = transport::fetch_cluster(&urls, &TransportLimits::default())
            .await
            .map_err(|error| {
                bootstrap::BootstrapError::Config(format!(
                    "--initial-cluster-state existing: no member of --initial-cluster \
                     answered: {error}"
                ))
            })?;
        let cluster = bootstrap::join(&config, &view)?;
        tracing::info!(
            member = format_args!("{:x}", cluster.member_id),
            cluster = format_args!("{:x}", cluster.cluster_id),
            via = format_args!("{:x}", view.member_id),
            "joining a running cluster"
        );
        cluster
    } else {
        bootstrap::load_or_create(&config)?
    };
    let peer_listeners = bind("--listen-peer-urls", &config.listen_peer).await?;
    let client_listeners = bind("--listen-client-urls", &config.listen_client).await?;
    let metrics_listeners = bind("--listen-metrics-urls", &config.listen_metrics).await?;
    tracing::info!(
        name = %config.name,
        member = format_args!("{:x}", cluster.member_id),
        cluster = format_args!("{:x}", cluster.cluster_id),
        data_dir = %config.data_dir.display(),
        restarted = cluster.restarted,
        "starting skiff member"
    );

    let metrics = Arc::new(Metrics::new());
    let identity = PeerIdentity {
        cluster_id: cluster.cluster_id,
        member_id: cluster.member_id,
        name: config.name.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    let handle_cell: Arc<OnceLock<NodeHandle>> = Arc::new(OnceLock::new());
    let sink: transport::EventSink = {
        let cell = handle_cell.clone();
        Arc::new(move |event| {
            let Some(handle) = cell.get() else {
                return; // not started yet: Raft recovers from the loss
            };
            match event {
                TransportEvent::Messages(messages) => handle.deliver(messages),
                TransportEvent::Unreachable(peer) => handle.report_unreachable(peer),
                TransportEvent::PeerInfo {
                    id,
                    name,
                    client_urls,
                } => handle.update_member(id, name, client_urls),
                TransportEvent::SnapshotSent { peer, success, .. } => {
                    handle.report_snapshot(peer, success)
                }
            }
        })
    };
    let limits = TransportLimits::default();
    // The bootstrap members (and, when joining, the members now); the member's log adds
    // and removes peers from there.
    let peers = cluster
        .initial
        .members
        .iter()
        .chain(
            cluster
                .joined
                .iter()
                .flat_map(|joined| joined.members.iter()),
        )
        .filter(|(id, _)| **id != cluster.member_id)
        .map(|(id, record)| (*id, record.peer_urls.clone()))
        .collect();
    let transport = Transport::start(identity.clone(), peers, sink.clone(), limits.clone());

    let election_ticks = (config.election_timeout.as_millis()
        / config.heartbeat_interval.as_millis().max(1))
    .max(2) as u32;
    let kv_config = KvConfig {
        max_txn_ops: config.max_txn_ops,
        max_request_bytes: config.max_request_bytes,
        // etcd: leases are granted at least ceil(1.5 × election timeout).
        min_lease_ttl_seconds: ((config.election_timeout.as_millis() * 3).div_ceil(2000)) as i64,
        ..KvConfig::default()
    };
    let options = NodeOptions {
        id: cluster.member_id,
        cluster_id: cluster.cluster_id,
        initial: cluster.initial.clone(),
        name: config.name.clone(),
        client_urls: config.advertise_client_urls.clone(),
        peers: Arc::new(TransportPeers(transport.clone())),
        wal_dir: node::wal_dir(&config.data_dir),
        snapshot_dir: node::snapshot_dir(&config.data_dir),
        value_dir: Some(node::value_dir(&config.data_dir)),
        tick: config.heartbeat_interval,
        election_ticks,
        snapshot_count: config.snapshot_count,
        // The log keeps every entry since the last snapshot on disk: large values bring the
        // snapshot forward so that this stays bounded.
        snapshot_log_bytes: 256 << 20,
        snapshot_catchup_entries: config.snapshot_catchup_entries,
        kept_entries: crate::node::KEPT_ENTRIES,
        kv_config,
        storage_config: StorageConfig {
            // The core keeps its last `KEPT_ENTRIES` applied entries (and every later one)
            // in memory and reads older ones back from the store: this cache spares the
            // disk for a follower a little further behind. Its entries share their payloads
            // with the core's, and a small cache keeps the member's memory down.
            entry_cache_bytes: 1 << 20,
            ..StorageConfig::default()
        },
        // etcd: 5 s plus two election timeouts.
        request_timeout: Duration::from_secs(5) + 2 * config.election_timeout,
        metrics: metrics.clone(),
    };
    let outbound: node::Outbound = {
        let transport = transport.clone();
        Arc::new(move |messages| transport.send(messages))
    };
    let inbox = transport::SnapshotInbox::new(&options.snapshot_dir).map_err(|error| {
        RunError::Member(format!(
            "snapshot directory {}: {error}",
            options.snapshot_dir.display()
        ))
    })?;
    let member = Node::start(options, outbound).map_err(RunError::Member)?;
    let handle = member.handle();
    let _ = handle_cell.set(handle.clone());
    handle.set_forwarder(Arc::new(TransportForwarder(transport.clone())));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut receiver: watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    for listener in peer_listeners {
        let service = transport::peer_service_with_snapshots(
            identity.clone(),
            sink.clone(),
            Arc::new(NodeForwardHandler(handle.clone())),
            limits.clone(),
            inbox.clone(),
        );
        let server = transport::serve(service, listener, stopped(stop_rx.clone()));
        servers.spawn(async move { ("peer", server.await) });
    }
    let health = {
        let handle = handle.clone();
        move || {
            let handle = handle.clone();
            async move {
                // etcd 3.4: healthy when a quorum read succeeds in time.
                matches!(
                    tokio::time::timeout(Duration::from_secs(2), handle.read_barrier()).await,
                    Ok(Ok(()))
                )
            }
        }
    };
    let http_state = HttpState::with_async_health(metrics.clone(), health);
    for listener in client_listeners {
        let service = ClientService::new(
            handle.clone(),
            ApiLimits::from_config(&config),
            http_state.clone(),
        );
        let server = client_server::serve(
            limited_incoming(listener, config.max_client_connections),
            service,
            stopped(stop_rx.clone()),
        );
        servers.spawn(async move {
            server.await;
            ("client", Ok(()))
        });
    }
    for listener in metrics_listeners {
        let routes = tonic::service::Routes::from(http::metrics_routes(http_state.clone()));
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .add_routes(routes)
            .serve_with_incoming_shutdown(transport::incoming(listener), stopped(stop_rx.clone()));
        servers.spawn(async move { ("metrics", server.await.map_err(|e| e.to_string())) });
    }
    tracing::info!(
        client = ?config.listen_client,
        peer = ?config.listen_peer,
        "serving"
    );
    let failure = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            None
        }
        reason = handle.wait_stopped() => Some(reason.unwrap_or_else(|| "stopped".into())),
        Some(Ok((kind, Err(error)))) = servers.join_next() => {
            Some(format!("{kind} server failed: {error}"))
        }
    };
    let _ = stop_tx.send(true);
    handle.shutdown();
    let stopped = member.stopped().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    match (failure, stopped) {
        (None, Ok(())) => Ok(()),
        // Removal is how a member's life ends normally (etcd exits too).
        (Some(reason), _) if reason == node::REMOVED => Ok(()),
        (Some(reason), _) | (None, Err(reason)) => Err(RunError::Member(reason)),
    }
}
