//! The `Cluster` service: MemberList, and MemberAdd/Remove/Update/Promote through the
//! backend's membership changes (checked and proposed by the leader, see `node`).

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::cluster_server::Cluster;
use tonic::{Request, Response, Status};

use super::header;
use crate::backend::{Backend, MemberInfo, ServerError};
use crate::members::MemberRequest;

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

impl<B: Backend> ClusterService<B> {
    async fn change(&self, request: MemberRequest) -> Result<(u64, Vec<pb::Member>), Status> {
        if self.backend.status().is_learner {
            return Err(ServerError::NotSupportedForLearner.into());
        }
        let (id, members) = self.backend.change_members(request).await?;
        Ok((id, members.into_iter().map(member).collect()))
    }
}

#[tonic::async_trait]
impl<B: Backend> Cluster for ClusterService<B> {
    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        let request = request.into_inner();
        let learner = request.is_learner;
        let (id, members) = self
            .change(MemberRequest::Add {
                peer_urls: request.peer_ur_ls,
                learner,
            })
            .await?;
        // The new member as etcd reports it: not started, so no name and no client URLs.
        let added = members
            .iter()
            .find(|member| member.id == id)
            .cloned()
            .ok_or_else(|| Status::internal("skiff: the added member is not listed"))?;
        Ok(Response::new(pb::MemberAddResponse {
            header: header(&self.backend, 0),
            member: Some(added),
            members,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        let id = request.into_inner().id;
        let (_, members) = self.change(MemberRequest::Remove { id }).await?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: header(&self.backend, 0),
            members,
        }))
    }

    async fn member_update(
        &self,
        request: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        let request = request.into_inner();
        let (_, members) = self
            .change(MemberRequest::Update {
                id: request.id,
                peer_urls: request.peer_ur_ls,
            })
            .await?;
        Ok(Response::new(pb::MemberUpdateResponse {
            header: header(&self.backend, 0),
            members,
        }))
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
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        let id = request.into_inner().id;
        let (_, members) = self.change(MemberRequest::Promote { id }).await?;
        Ok(Response::new(pb::MemberPromoteResponse {
            header: header(&self.backend, 0),
            members,
        }))
    }
}
