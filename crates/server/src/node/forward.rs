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

fn error_code(error: &ServerError) -> u8 {
    match error {
        ServerError::Kv(_) | ServerError::Internal(_) => 0,
        ServerError::NoLeader => 1,
        ServerError::LeaderChanged => 2,
        ServerError::Timeout => 3,
        ServerError::Stopped => 4,
        ServerError::TooManyRequests => 5,
        ServerError::BadLeaderTransferee => 6,
        ServerError::NotLeader => 7,
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
        Err(error) => {
            out.push(ERROR);
            out.push(error_code(error));
            out.extend_from_slice(error.to_string().as_bytes());
        }
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
        Some((&ERROR, rest)) if !rest.is_empty() => Err(match rest[0] {
            1 => ServerError::NoLeader,
            2 => ServerError::LeaderChanged,
            3 => ServerError::Timeout,
            4 => ServerError::Stopped,
            5 => ServerError::TooManyRequests,
            6 => ServerError::BadLeaderTransferee,
            7 => ServerError::NotLeader,
            _ => ServerError::Internal(String::from_utf8_lossy(&rest[1..]).into_owned()),
        }),
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
        for error in [
            ServerError::NoLeader,
            ServerError::LeaderChanged,
            ServerError::Timeout,
            ServerError::Stopped,
            ServerError::TooManyRequests,
            ServerError::BadLeaderTransferee,
            ServerError::NotLeader,
        ] {
            assert_eq!(
                decode_answer(&encode_answer(&Err(error.clone()))),
                Err(error)
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], &[0], &[0, 1, 2], &[1], &[9, 9, 9]] {
            assert!(decode_answer(bytes).is_err());
        }
    }
}
