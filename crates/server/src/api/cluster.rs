//! The `Cluster` service: MemberList; membership changes are not built yet.

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::header;
use crate::backend::{Backend, MemberInfo};

/// etcd's `Cluster` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct ClusterService<B> {
    backend: B,
}

impl<B: Backend> ClusterService<B> {
    /// The service over `backend`.
    pub fn new(backend: B) -> Self {
        ClusterService { backend }
    }
}

/// A member as the protobuf `Member`.
pub fn member(info: MemberInfo) -> pb::Member {
    pb::Member {
        id: info.id,
        name: info.name,
        peer_ur_ls: info.peer_urls,
        client_ur_ls: info.client_urls,
        is_learner: info.is_learner,
    }
}

fn membership_unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "skiff: {rpc} is not supported yet (membership changes are not implemented)"
    ))
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        _request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(membership_unimplemented("MemberAdd"))
    }

    async fn member_remove(
        &self,
        _request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        Err(membership_unimplemented("MemberRemove"))
    }

    async fn member_update(
        &self,
        _request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(membership_unimplemented("MemberUpdate"))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        // Served locally, as etcd 3.4 does; its header carries no revision.
        Ok(Response::new(pb::MemberListResponse {
            header: header(&self.backend, 0),
            members: self.backend.members().into_iter().map(member).collect(),
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(membership_unimplemented("MemberPromote"))
    }
}
