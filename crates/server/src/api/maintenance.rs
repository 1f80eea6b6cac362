//! The `Maintenance` service: Status, Alarm, HashKV, Snapshot, MoveLeader, Defragment (Hash is
//! not supported).

use std::pin::Pin;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{current_header, header, ApiLimits};
use crate::backend::{Backend, ServerError};

/// The version `Status` reports: the etcd release whose client API Skiff implements, so clients
/// that check the server version (clientv3 `RejectOldCluster` wants ≥ 3.2) accept it.
pub const ETCD_VERSION: &str = "3.4.23";

/// etcdctl's `snapshot save` wants the data padded to a multiple of this before the hash.
const SNAPSHOT_ALIGNMENT: usize = 512;

/// etcd's `Maintenance` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct MaintenanceService<B> {
    backend: B,
    limits: ApiLimits,
}

impl<B: Backend> MaintenanceService<B> {
    /// The service over `backend`.
    pub fn new(backend: B, limits: ApiLimits) -> Self {
        MaintenanceService { backend, limits }
    }
}

/// The stream of snapshot chunks.
pub type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

/// Splits `data` (padded with zeros to a multiple of 512 bytes) into messages of at most
/// `chunk_bytes`, each with the number of data bytes still to come, followed by one message with
/// the SHA-256 of all the (padded) data and `remaining_bytes` 0, as etcd's snapshot stream.
pub fn snapshot_messages(mut data: Vec<u8>, chunk_bytes: usize) -> Vec<pb::SnapshotResponse> {
    let padded = data.len().div_ceil(SNAPSHOT_ALIGNMENT).max(1) * SNAPSHOT_ALIGNMENT;
    data.resize(padded, 0);
    let digest = Sha256::digest(&data);
    let data = Bytes::from(data);
    let chunk_bytes = chunk_bytes.max(1);
    let mut messages = Vec::with_capacity(data.len() / chunk_bytes + 2);
    let mut sent = 0;
    while sent < data.len() {
        let end = (sent + chunk_bytes).min(data.len());
        messages.push(pb::SnapshotResponse {
            header: None,
            remaining_bytes: (data.len() - end) as u64,
            blob: data.slice(sent..end),
        });
        sent = end;
    }
    messages.push(pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: Bytes::copy_from_slice(&digest),
    });
    messages
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        match AlarmAction::try_from(request.into_inner().action) {
            // No alarm is ever raised: listing or disarming answers an empty list.
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => {
                Ok(Response::new(pb::AlarmResponse {
                    header: current_header(&self.backend),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(Status::unimplemented(
                "skiff: raising alarms is not supported",
            )),
            Err(_) => Err(Status::invalid_argument("skiff: unknown alarm action")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.backend.status();
        let revision = self.backend.read(|store| store.current_revision());
        let db_size = self.backend.db_size();
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: status.cluster_id,
                member_id: status.member_id,
                revision,
                raft_term: status.raft_term,
            }),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: status.leader,
            raft_index: status.raft_index,
            raft_term: status.raft_term,
            raft_applied_index: status.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: status.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Nothing to defragment: the store lives in memory and its log is compacted by snapshots.
        Ok(Response::new(pb::DefragmentResponse {
            header: current_header(&self.backend),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented(
            "skiff: Hash is not supported (hashes bbolt pages); use HashKV",
        ))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        let (answer, current) = self
            .backend
            .read(|store| (store.hash_kv(revision), store.current_revision()));
        let answer = answer.map_err(ServerError::Kv)?;
        // etcd's header revision is the store's current revision, whatever was hashed.
        Ok(Response::new(pb::HashKvResponse {
            header: header(&self.backend, current),
            hash: answer.hash,
            compact_revision: answer.compact_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // The copy is taken under the store's lock; writing it (which reads every value back)
        // happens on a blocking thread, so neither the applier nor this runtime waits for it.
        let (copy, size) = self
            .backend
            .read(|store| (store.snapshot_copy(), store.approximate_size_bytes()));
        let data = tokio::task::spawn_blocking(move || {
            let mut data = Vec::with_capacity(size as usize + 1024);
            copy.write(&mut data).map(|()| data)
        })
        .await
        .map_err(|error| Status::internal(format!("skiff: snapshot: {error}")))?
        .map_err(|error| Status::internal(format!("skiff: snapshot: {error}")))?;
        let messages = snapshot_messages(data, self.limits.snapshot_chunk_bytes);
        Ok(Response::new(Box::pin(tokio_stream::iter(
            messages.into_iter().map(Ok),
        ))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.backend.move_leader(target).await?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: current_header(&self.backend),
        }))
    }
}
