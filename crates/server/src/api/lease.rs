//! The `Lease` service: LeaseGrant, LeaseRevoke, LeaseKeepAlive (a bidirectional stream),
//! LeaseTimeToLive, LeaseLeases.

use std::pin::Pin;

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::lease_server::Lease;
use skiff_kv::{KvError, Operation, ResponseBody};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{header, unexpected_response};
use crate::backend::{Backend, ServerError};

/// etcd's `Lease` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct LeaseService<B> {
    backend: B,
}

impl<B: Backend> LeaseService<B> {
    /// The service over `backend`.
    pub fn new(backend: B) -> Self {
        LeaseService { backend }
    }
}

/// Proposes a keep-alive for `id` at the leader's time; an unknown lease answers TTL 0.
async fn keep_alive<B: Backend>(
    backend: &B,
    id: i64,
) -> Result<pb::LeaseKeepAliveResponse, Status> {
    let response = backend
        .propose(Operation::LeaseKeepAlive {
            id,
            now_ms: backend.now_ms(),
        })
        .await?;
    let (id, ttl) = match response.result {
        Ok(ResponseBody::LeaseKeepAlive(keep_alive)) => (keep_alive.id, keep_alive.ttl),
        // etcd answers an unknown or expired lease with TTL 0, not an error.
        Err(KvError::LeaseNotFound) => (id, 0),
        Err(error) => return Err(ServerError::Kv(error).into()),
        Ok(_) => return Err(unexpected_response()),
    };
    Ok(pb::LeaseKeepAliveResponse {
        header: header(backend, response.revision),
        id,
        ttl,
    })
}

/// The stream of keep-alive answers.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl<B: Backend> Lease for LeaseService<B> {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let max_ttl = self
            .backend
            .read(|store| store.config().max_lease_ttl_seconds);
        if request.ttl > max_ttl {
            return Err(ServerError::Kv(KvError::LeaseTtlTooLarge).into());
        }
        let response = self
            .backend
            .propose(Operation::LeaseGrant {
                id: request.id,
                ttl_seconds: request.ttl,
                now_ms: self.backend.now_ms(),
            })
            .await?;
        match response.result.map_err(ServerError::Kv)? {
            ResponseBody::LeaseGrant(grant) => Ok(Response::new(pb::LeaseGrantResponse {
                header: header(&self.backend, response.revision),
                id: grant.id,
                ttl: grant.ttl,
                error: String::new(),
            })),
            _ => Err(unexpected_response()),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let response = self.backend.propose(Operation::LeaseRevoke { id }).await?;
        match response.result.map_err(ServerError::Kv)? {
            ResponseBody::LeaseRevoke => Ok(Response::new(pb::LeaseRevokeResponse {
                header: header(&self.backend, response.revision),
            })),
            _ => Err(unexpected_response()),
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut inbound = request.into_inner();
        let backend = self.backend.clone();
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = inbound.next() => next,
                    _ = sender.closed() => return,
                };
                let request = match next {
                    Some(Ok(request)) => request,
                    // The client closed its side or the connection failed: nothing to answer.
                    Some(Err(_)) | None => return,
                };
                let answer = keep_alive(&backend, request.id).await;
                let failed = answer.is_err();
                if sender.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        // etcd asks the leader; a read barrier gives the same freshness.
        self.backend.read_barrier().await?;
        let now_ms = self.backend.now_ms();
        let (answer, revision) = self.backend.read(|store| {
            (
                store.lease_time_to_live(request.id, request.keys, now_ms),
                store.current_revision(),
            )
        });
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: header(&self.backend, revision),
            id: answer.id,
            ttl: answer.ttl,
            granted_ttl: answer.granted_ttl,
            keys: answer.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let (ids, revision) = self
            .backend
            .read(|store| (store.lease_leases(), store.current_revision()));
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: header(&self.backend, revision),
            leases: ids.into_iter().map(|id| pb::LeaseStatus { id }).collect(),
        }))
    }
}
