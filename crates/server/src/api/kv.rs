//! The `KV` service: Range, Put, DeleteRange, Txn, Compact.

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::kv_server::Kv;
use skiff_etcd_proto::prost::Message;
use skiff_kv::{Command, KvError, Operation, ResponseBody};
use tonic::{Request, Response, Status};

use super::{convert, header, unexpected_response, ApiLimits};
use crate::backend::{Backend, ServerError};

/// etcd's `KV` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct KvService<B> {
    backend: B,
    limits: ApiLimits,
}

impl<B: Backend> KvService<B> {
    /// The service over `backend`.
    pub fn new(backend: B, limits: ApiLimits) -> Self {
        KvService { backend, limits }
    }

    /// Refuses, without proposing, a write that is too large or fails the state machine's static
    /// checks; then proposes it and answers the body with the header revision.
    async fn write(
        &self,
        encoded_len: usize,
        operation: Operation,
    ) -> Result<(ResponseBody, i64), Status> {
        if encoded_len > self.limits.max_request_bytes {
            return Err(ServerError::Kv(KvError::RequestTooLarge).into());
        }
        let command = Command::new(operation);
        self.backend
            .read(|store| {
                store.check_request_size(encoded_len)?;
                store.validate_command(&command)
            })
            .map_err(ServerError::Kv)?;
        let response = self.backend.propose(command.operation).await?;
        let body = response.result.map_err(ServerError::Kv)?;
        Ok((body, response.revision))
    }
}

#[tonic::async_trait]
impl<B: Backend> Kv for KvService<B> {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let request = convert::range_request(request.into_inner())?;
        if !request.serializable {
            self.backend.read_barrier().await?;
        }
        let (result, revision) = self
            .backend
            .read(|store| (store.range(&request), store.current_revision()));
        let response = result.map_err(ServerError::Kv)?;
        Ok(Response::new(convert::range_response(
            response,
            header(&self.backend, revision),
        )))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let request = request.into_inner();
        let encoded_len = request.encoded_len();
        let operation = Operation::Put(convert::put_request(request));
        match self.write(encoded_len, operation).await? {
            (ResponseBody::Put(put), revision) => Ok(Response::new(convert::put_response(
                put,
                header(&self.backend, revision),
            ))),
            _ => Err(unexpected_response()),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        let encoded_len = request.encoded_len();
        let operation = Operation::DeleteRange(convert::delete_range_request(request));
        match self.write(encoded_len, operation).await? {
            (ResponseBody::DeleteRange(delete), revision) => Ok(Response::new(
                convert::delete_range_response(delete, header(&self.backend, revision)),
            )),
            _ => Err(unexpected_response()),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        // A read-only txn is proposed too: skiff-kv evaluates compares only inside `apply`. It
        // makes no revision, and going through the log keeps it linearizable.
        let request = request.into_inner();
        let encoded_len = request.encoded_len();
        let operation = Operation::Txn(convert::txn_request(request)?);
        match self.write(encoded_len, operation).await? {
            (ResponseBody::Txn(txn), revision) => Ok(Response::new(convert::txn_response(
                txn,
                header(&self.backend, revision),
            ))),
            _ => Err(unexpected_response()),
        }
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let encoded_len = request.encoded_len();
        let operation = Operation::Compact(convert::compaction_request(request));
        match self.write(encoded_len, operation).await? {
            (ResponseBody::Compact, revision) => Ok(Response::new(pb::CompactionResponse {
                header: header(&self.backend, revision),
            })),
            _ => Err(unexpected_response()),
        }
    }
}
