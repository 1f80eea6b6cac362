//! Writes sent to a follower travel to the leader as an encoded `Command`; the leader
//! answers with the entry's index and the state machine's `Response`, or with an error.
//!
//! Answer format: tag byte 0, index (u64 BE), `Response::encode()`; or tag 1 and an error
//! code byte (see `ERROR_CODES`), followed by a UTF-8 message for internal errors.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use skiff_kv::Response;
use skiff_raft::NodeId;

use crate::backend::ServerError;

/// Why a forwarded write got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The request surely did not reach the leader (no connection): safe to retry.
    NotDelivered,
    /// The request may have reached the leader (timeout, broken connection).
    Unknown,
}

/// Carries a forwarded write to another member and brings back its answer.
pub trait Forwarder: Send + Sync + 'static {
    /// Sends `request` to member `to` and waits at most `timeout` for the answer.
    fn forward(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, ForwardFailure>> + Send>>;
}

const OK: u8 = 0;
const ERROR: u8 = 1;

/// Errors that travel by code (any other travels as its message, as an internal error).
const CODED_ERRORS: [ServerError; 18] = [
    ServerError::NoLeader,
    ServerError::LeaderChanged,
    ServerError::Timeout,
    ServerError::Stopped,
    ServerError::TooManyRequests,
    ServerError::BadLeaderTransferee,
    ServerError::NotLeader,
    ServerError::MemberNotFound,
    ServerError::PeerUrlExists,
    ServerError::MemberBadUrls,
    ServerError::NotEnoughStartedMembers,
    ServerError::UnhealthyCluster,
    ServerError::MemberNotLearner,
    ServerError::LearnerNotReady,
    ServerError::TooManyLearners,
    ServerError::NotSupportedForLearner,
    ServerError::ConfigChangePending,
    ServerError::MemberIdExists,
];

fn error_code(error: &ServerError) -> u8 {
    CODED_ERRORS
        .iter()
        .position(|coded| coded == error)
        .map_or(0, |position| position as u8 + 1)
}

fn encode_error(out: &mut Vec<u8>, error: &ServerError) {
    out.push(ERROR);
    out.push(error_code(error));
    out.extend_from_slice(error.to_string().as_bytes());
}

fn decode_error(rest: &[u8]) -> ServerError {
    match CODED_ERRORS.get((rest[0] as usize).wrapping_sub(1)) {
        Some(error) => error.clone(),
        None => ServerError::Internal(String::from_utf8_lossy(&rest[1..]).into_owned()),
    }
}

/// Encodes the leader's answer to a forwarded membership request: the index of the
/// configuration entry and the member it concerns.
pub(crate) fn encode_member_answer(answer: &Result<(u64, u64), ServerError>) -> Bytes {
    let mut out = Vec::new();
    match answer {
        Ok((index, member)) => {
            out.push(OK);
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&member.to_be_bytes());
        }
        Err(error) => encode_error(&mut out, error),
    }
    Bytes::from(out)
}

/// Decodes an answer written by [`encode_member_answer`].
pub(crate) fn decode_member_answer(bytes: &[u8]) -> Result<(u64, u64), ServerError> {
    match bytes.split_first() {
        Some((&OK, rest)) if rest.len() == 16 => Ok((
            u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(rest[8..].try_into().expect("8 bytes")),
        )),
        Some((&ERROR, rest)) if !rest.is_empty() => Err(decode_error(rest)),
        _ => Err(ServerError::Internal(
            "undecodable answer from the leader".into(),
        )),
    }
}

/// Encodes the leader's answer to a forwarded write.
pub(crate) fn encode_answer(answer: &Result<(u64, Response), ServerError>) -> Bytes {
    let mut out = Vec::new();
    match answer {
        Ok((index, response)) => {
            out.push(OK);
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&response.encode());
        }
        Err(error) => encode_error(&mut out, error),
    }
    Bytes::from(out)
}

/// Decodes an answer written by [`encode_answer`].
pub(crate) fn decode_answer(bytes: &[u8]) -> Result<(u64, Response), ServerError> {
    let bad = || ServerError::Internal("undecodable answer from the leader".into());
    match bytes.split_first() {
        Some((&OK, rest)) if rest.len() >= 8 => {
            let index = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes"));
            let response = Response::decode(&rest[8..]).map_err(|_| bad())?;
            Ok((index, response))
        }
        Some((&ERROR, rest)) if !rest.is_empty() => Err(decode_error(rest)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_kv::{KvError, ResponseBody};

    #[test]
    fn answers_round_trip() {
        let ok = Ok((
            42,
            Response {
                revision: 7,
                result: Ok(ResponseBody::Compact),
            },
        ));
        assert_eq!(decode_answer(&encode_answer(&ok)), ok);
        let refused = Ok((
            43,
            Response {
                revision: 7,
                result: Err(KvError::KeyNotProvided),
            },
        ));
        assert_eq!(decode_answer(&encode_answer(&refused)), refused);
        for error in CODED_ERRORS {
            assert_eq!(
                decode_answer(&encode_answer(&Err(error.clone()))),
                Err(error.clone())
            );
            assert_eq!(
                decode_member_answer(&encode_member_answer(&Err(error.clone()))),
                Err(error)
            );
        }
        let internal = ServerError::Internal("disk".into());
        assert_eq!(
            decode_answer(&encode_answer(&Err(internal.clone()))),
            Err(ServerError::Internal("etcdserver: disk".into()))
        );
        assert_eq!(
            decode_member_answer(&encode_member_answer(&Ok((7, u64::MAX)))),
            Ok((7, u64::MAX))
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], &[0], &[0, 1, 2], &[1], &[9, 9, 9], &[1, 200]] {
            assert!(decode_answer(bytes).is_err());
            assert!(decode_member_answer(bytes).is_err());
        }
    }
}
