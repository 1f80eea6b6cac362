//! Conversions between the etcd protobuf messages (`skiff_etcd_proto`) and the state machine's
//! types (`skiff_kv`), field by field.
//!
//! Enum fields arrive as raw `i32`s; a value this version of the API does not know is refused with
//! `InvalidArgument` instead of being guessed.

use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::mvccpb;
use skiff_kv as kv;
use tonic::Status;

/// A protobuf `RangeRequest` as a `skiff_kv` one.
pub fn range_request(request: pb::RangeRequest) -> Result<kv::RangeRequest, Status> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = match SortOrder::try_from(request.sort_order) {
        Ok(SortOrder::None) => kv::SortOrder::None,
        Ok(SortOrder::Ascend) => kv::SortOrder::Ascend,
        Ok(SortOrder::Descend) => kv::SortOrder::Descend,
        Err(_) => return Err(Status::invalid_argument("skiff: unknown sort order")),
    };
    let sort_target = match SortTarget::try_from(request.sort_target) {
        Ok(SortTarget::Key) => kv::SortTarget::Key,
        Ok(SortTarget::Version) => kv::SortTarget::Version,
        Ok(SortTarget::Create) => kv::SortTarget::Create,
        Ok(SortTarget::Mod) => kv::SortTarget::Mod,
        Ok(SortTarget::Value) => kv::SortTarget::Value,
        Err(_) => return Err(Status::invalid_argument("skiff: unknown sort target")),
    };
    Ok(kv::RangeRequest {
        key: request.key,
        range_end: request.range_end,
        limit: request.limit,
        revision: request.revision,
        sort_order,
        sort_target,
        serializable: request.serializable,
        keys_only: request.keys_only,
        count_only: request.count_only,
        min_mod_revision: request.min_mod_revision,
        max_mod_revision: request.max_mod_revision,
        min_create_revision: request.min_create_revision,
        max_create_revision: request.max_create_revision,
    })
}

/// A protobuf `PutRequest` as a `skiff_kv` one.
pub fn put_request(request: pb::PutRequest) -> kv::PutRequest {
    kv::PutRequest {
        key: request.key,
        value: request.value,
        lease: request.lease,
        prev_kv: request.prev_kv,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    }
}

/// A protobuf `DeleteRangeRequest` as a `skiff_kv` one.
pub fn delete_range_request(request: pb::DeleteRangeRequest) -> kv::DeleteRangeRequest {
    kv::DeleteRangeRequest {
        key: request.key,
        range_end: request.range_end,
        prev_kv: request.prev_kv,
    }
}

/// A protobuf `Compare` as a `skiff_kv` one. As in etcd, the value compared to is taken from
/// `target_union` when it matches `target`; otherwise it is the zero value of the target.
pub fn compare(compare: pb::Compare) -> Result<kv::Compare, Status> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => kv::CompareResult::Equal,
        Ok(CompareResult::Greater) => kv::CompareResult::Greater,
        Ok(CompareResult::Less) => kv::CompareResult::Less,
        Ok(CompareResult::NotEqual) => kv::CompareResult::NotEqual,
        Err(_) => return Err(Status::invalid_argument("skiff: unknown compare result")),
    };
    let union = compare.target_union;
    let target = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Version) => kv::CompareTarget::Version(match union {
            Some(TargetUnion::Version(version)) => version,
            _ => 0,
        }),
        Ok(CompareTarget::Create) => kv::CompareTarget::Create(match union {
            Some(TargetUnion::CreateRevision(revision)) => revision,
            _ => 0,
        }),
        Ok(CompareTarget::Mod) => kv::CompareTarget::Mod(match union {
            Some(TargetUnion::ModRevision(revision)) => revision,
            _ => 0,
        }),
        Ok(CompareTarget::Value) => kv::CompareTarget::Value(match union {
            Some(TargetUnion::Value(value)) => value,
            _ => Default::default(),
        }),
        Ok(CompareTarget::Lease) => kv::CompareTarget::Lease(match union {
            Some(TargetUnion::Lease(lease)) => lease,
            _ => 0,
        }),
        Err(_) => return Err(Status::invalid_argument("skiff: unknown compare target")),
    };
    Ok(kv::Compare {
        result,
        target,
        key: compare.key,
        range_end: compare.range_end,
    })
}

/// A protobuf `RequestOp` as a `skiff_kv` one.
pub fn request_op(op: pb::RequestOp) -> Result<kv::RequestOp, Status> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(range)) => kv::RequestOp::Range(range_request(range)?),
        Some(Request::RequestPut(put)) => kv::RequestOp::Put(put_request(put)),
        Some(Request::RequestDeleteRange(delete)) => {
            kv::RequestOp::DeleteRange(delete_range_request(delete))
        }
        Some(Request::RequestTxn(txn)) => kv::RequestOp::Txn(txn_request(txn)?),
        None => return Err(Status::invalid_argument("skiff: empty request op in txn")),
    })
}

/// A protobuf `TxnRequest` (nested txns included) as a `skiff_kv` one.
pub fn txn_request(request: pb::TxnRequest) -> Result<kv::TxnRequest, Status> {
    Ok(kv::TxnRequest {
        compare: request
            .compare
            .into_iter()
            .map(compare)
            .collect::<Result<_, _>>()?,
        success: request
            .success
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
        failure: request
            .failure
            .into_iter()
            .map(request_op)
            .collect::<Result<_, _>>()?,
    })
}

/// A protobuf `CompactionRequest` as a `skiff_kv` one.
pub fn compaction_request(request: pb::CompactionRequest) -> kv::CompactionRequest {
    kv::CompactionRequest {
        revision: request.revision,
        physical: request.physical,
    }
}

/// A `skiff_kv` key-value as `mvccpb.KeyValue`.
pub fn key_value(kv: kv::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// A `skiff_kv` range answer as a protobuf one with `header`.
pub fn range_response(
    response: kv::RangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::RangeResponse {
    pb::RangeResponse {
        header,
        kvs: response.kvs.into_iter().map(key_value).collect(),
        more: response.more,
        count: response.count,
    }
}

/// A `skiff_kv` put answer as a protobuf one with `header`.
pub fn put_response(
    response: kv::PutResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::PutResponse {
    pb::PutResponse {
        header,
        prev_kv: response.prev_kv.map(key_value),
    }
}

/// A `skiff_kv` delete answer as a protobuf one with `header`.
pub fn delete_range_response(
    response: kv::DeleteRangeResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header,
        deleted: response.deleted,
        prev_kvs: response.prev_kvs.into_iter().map(key_value).collect(),
    }
}

/// A `skiff_kv` txn answer as a protobuf one. As etcd does, nested responses carry a header
/// with only the revision set.
pub fn txn_response(
    response: kv::TxnResponse,
    header: Option<pb::ResponseHeader>,
) -> pb::TxnResponse {
    use pb::response_op::Response;
    let outer = header;
    let header = outer.map(|outer| pb::ResponseHeader {
        revision: outer.revision,
        ..pb::ResponseHeader::default()
    });
    let responses = response
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                kv::ResponseOp::Range(range) => {
                    Response::ResponseRange(range_response(range, header))
                }
                kv::ResponseOp::Put(put) => Response::ResponsePut(put_response(put, header)),
                kv::ResponseOp::DeleteRange(delete) => {
                    Response::ResponseDeleteRange(delete_range_response(delete, header))
                }
                kv::ResponseOp::Txn(txn) => Response::ResponseTxn(txn_response(txn, header)),
            }),
        })
        .collect();
    pb::TxnResponse {
        header: outer,
        succeeded: response.succeeded,
        responses,
    }
}

/// A `skiff_kv` watch event as `mvccpb.Event`; `prev_kv` is kept only when `with_prev_kv`.
pub fn event(event: kv::Event, with_prev_kv: bool) -> mvccpb::Event {
    let kind = match event.kind {
        kv::EventType::Put => mvccpb::event::EventType::Put,
        kv::EventType::Delete => mvccpb::event::EventType::Delete,
    };
    mvccpb::Event {
        r#type: kind as i32,
        kv: Some(key_value(event.kv)),
        prev_kv: if with_prev_kv {
            event.prev_kv.map(key_value)
        } else {
            None
        },
    }
}
