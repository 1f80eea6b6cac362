//! The etcd v3 client API: tonic services for `KV`, `Watch`, `Lease`, `Cluster` and
//! `Maintenance`, each generic over a [`Backend`], and [`client_router`], which mounts all five on
//! the client listener.
//!
//! The services only convert between protobuf and `skiff_kv` types, pick the path a request takes
//! (a linearizable read waits on [`Backend::read_barrier`], a write goes through
//! [`Backend::propose`]) and fill response headers as etcd does: `cluster_id`, `member_id` and
//! `raft_term` from [`Backend::status`], `revision` from the answer (writes) or the store's current
//! revision (everything else).

mod cluster;
pub mod convert;
pub mod fast;
mod kv;
mod lease;
mod limit;
mod maintenance;
mod watch;

use std::time::Duration;

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::{
    cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};

use crate::backend::Backend;
use crate::config::ServerConfig;

pub use cluster::ClusterService;
pub use kv::KvService;
pub use lease::LeaseService;
pub use limit::{go_refusal, go_status, GoLimitStatus};
pub use maintenance::{MaintenanceService, ETCD_VERSION};
pub use watch::WatchService;

/// etcd's extra room on the gRPC receive limit above `--max-request-bytes`
/// (`v3rpc/grpc.go grpcOverheadBytes`).
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Limits of the client API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// etcd `--max-request-bytes` (default 1.5 MiB). Requests whose encoding is larger are refused
    /// with `etcdserver: request is too large` (the state machine's own limit is checked too);
    /// gRPC refuses messages over this plus [`GRPC_OVERHEAD_BYTES`] with `ResourceExhausted`, as
    /// etcd's gRPC server does. Also the size above which a fragmenting watcher splits responses.
    pub max_request_bytes: usize,
    /// Most watchers one watch stream may hold; a create beyond it is refused (answered
    /// `created` + `canceled` with a reason). etcd has no such bound.
    pub max_watchers_per_stream: usize,
    /// How often a watcher created with `progress_notify` gets an empty progress response
    /// (etcd: 10 minutes).
    pub progress_notify_interval: Duration,
    /// Bytes of snapshot data per `SnapshotResponse` message (etcd: 32 KiB).
    pub snapshot_chunk_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_request_bytes: 1536 * 1024,
            max_watchers_per_stream: 10_000,
            progress_notify_interval: Duration::from_secs(600),
            snapshot_chunk_bytes: 32 * 1024,
        }
    }
}

impl ApiLimits {
    /// The defaults with `--max-request-bytes` taken from the member's configuration.
    pub fn from_config(config: &ServerConfig) -> ApiLimits {
        ApiLimits {
            max_request_bytes: config.max_request_bytes,
            ..ApiLimits::default()
        }
    }

    /// The gRPC receive limit: `max_request_bytes` plus etcd's overhead allowance.
    pub fn grpc_max_decoding_bytes(&self) -> usize {
        self.max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
    }
}

/// All five etcd client services over `backend` as tonic routes. The client port serves them
/// through [`crate::client_server`] (which adds the HTTP endpoints and takes unary KV calls on
/// a fast path); a plain tonic server can mount them too:
/// `tonic::transport::Server::builder().add_routes(client_router(backend, limits))`.
pub fn client_router<B: Backend>(backend: B, limits: ApiLimits) -> tonic::service::Routes {
    let decoding = limits.grpc_max_decoding_bytes();
    tonic::service::Routes::new(GoLimitStatus::new(
        KvServer::new(KvService::new(backend.clone(), limits.clone()))
            .max_decoding_message_size(decoding),
    ))
    .add_service(GoLimitStatus::new(
        WatchServer::new(WatchService::new(backend.clone(), limits.clone()))
            .max_decoding_message_size(decoding),
    ))
    .add_service(GoLimitStatus::new(
        LeaseServer::new(LeaseService::new(backend.clone())).max_decoding_message_size(decoding),
    ))
    .add_service(GoLimitStatus::new(
        ClusterServer::new(ClusterService::new(backend.clone()))
            .max_decoding_message_size(decoding),
    ))
    .add_service(GoLimitStatus::new(
        MaintenanceServer::new(MaintenanceService::new(backend, limits))
            .max_decoding_message_size(decoding),
    ))
}

/// The response header for an answer at store revision `revision`.
pub(crate) fn header<B: Backend>(backend: &B, revision: i64) -> Option<pb::ResponseHeader> {
    let status = backend.status();
    Some(pb::ResponseHeader {
        cluster_id: status.cluster_id,
        member_id: status.member_id,
        revision,
        raft_term: status.raft_term,
    })
}

/// The response header at the store's current revision (non-KV RPCs).
pub(crate) fn current_header<B: Backend>(backend: &B) -> Option<pb::ResponseHeader> {
    let revision = backend.read(|store| store.current_revision());
    header(backend, revision)
}

/// The status for an answer whose body is not the kind the request asked for (a bug).
pub(crate) fn unexpected_response() -> tonic::Status {
    tonic::Status::internal("skiff: unexpected response kind from the state machine")
}
