//! The simulator's client operations (get, put, compare-and-set) and the replicated state
//! machine they run on: the real `skiff-kv` MVCC store, so the simulator checks the store the
//! server will use. A get through the log is an etcd Range, a put a Put, a compare-and-set a
//! Txn comparing the value (or version 0 for "absent"); every command carries a client id and
//! sequence number, and skiff-kv's session table makes a retried command take effect once.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use skiff_kv as kv;

/// A client operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read a key.
    Get {
        /// Key.
        key: String,
    },
    /// Write a key.
    Put {
        /// Key.
        key: String,
        /// New value.
        value: String,
    },
    /// Set `key` to `to` if its current value is `from` (`None`: absent).
    Cas {
        /// Key.
        key: String,
        /// Expected value.
        from: Option<String>,
        /// New value.
        to: String,
    },
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
        }
    }

    /// True for operations that change state.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// A get's value.
    Value(Option<String>),
    /// A put succeeded.
    Written,
    /// A compare-and-set's outcome.
    Swapped(bool),
}

/// A command in the log.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    /// Issuing client.
    pub client: u64,
    /// The client's sequence number for this operation (from 1).
    pub seq: u64,
    /// The operation.
    pub op: Op,
}

fn text(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

impl Command {
    /// The skiff-kv command this operation becomes.
    pub fn to_kv(&self) -> kv::Command {
        let key = Bytes::copy_from_slice(self.op.key().as_bytes());
        let operation = match &self.op {
            Op::Get { .. } => kv::Operation::Range(kv::RangeRequest {
                key,
                ..kv::RangeRequest::default()
            }),
            Op::Put { value, .. } => kv::Operation::Put(kv::PutRequest {
                key,
                value: Bytes::copy_from_slice(value.as_bytes()),
                ..kv::PutRequest::default()
            }),
            Op::Cas { from, to, .. } => {
                let target = match from {
                    Some(value) => {
                        kv::CompareTarget::Value(Bytes::copy_from_slice(value.as_bytes()))
                    }
                    None => kv::CompareTarget::Version(0),
                };
                kv::Operation::Txn(kv::TxnRequest {
                    compare: vec![kv::Compare {
                        result: kv::CompareResult::Equal,
                        target,
                        key: key.clone(),
                        range_end: Bytes::new(),
                    }],
                    success: vec![kv::RequestOp::Put(kv::PutRequest {
                        key,
                        value: Bytes::copy_from_slice(to.as_bytes()),
                        ..kv::PutRequest::default()
                    })],
                    failure: Vec::new(),
                })
            }
        };
        kv::Command {
            request_id: Some(kv::RequestId {
                client_id: self.client,
                sequence: self.seq,
            }),
            operation,
        }
    }

    /// Recognizes a skiff-kv command made by [`Command::to_kv`].
    pub fn from_kv(command: &kv::Command) -> Option<Command> {
        let request = command.request_id?;
        let op = match &command.operation {
            kv::Operation::Range(range) => Op::Get {
                key: text(&range.key)?,
            },
            kv::Operation::Put(put) => Op::Put {
                key: text(&put.key)?,
                value: text(&put.value)?,
            },
            kv::Operation::Txn(txn) => {
                let [compare] = txn.compare.as_slice() else {
                    return None;
                };
                let [kv::RequestOp::Put(put)] = txn.success.as_slice() else {
                    return None;
                };
                let from = match &compare.target {
                    kv::CompareTarget::Value(value) => Some(text(value)?),
                    kv::CompareTarget::Version(0) => None,
                    _ => return None,
                };
                Op::Cas {
                    key: text(&put.key)?,
                    from,
                    to: text(&put.value)?,
                }
            }
            _ => return None,
        };
        Some(Command {
            client: request.client_id,
            seq: request.sequence,
            op,
        })
    }

    /// Encodes the command as a log entry payload (skiff-kv's wire format).
    pub fn encode(&self) -> Bytes {
        Bytes::from(self.to_kv().encode())
    }

    /// Decodes a payload; `None` if malformed or not a simulator command.
    pub fn decode(bytes: &[u8]) -> Option<Command> {
        Command::from_kv(&kv::Command::decode(bytes).ok()?)
    }
}

/// The outcome of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Executed now, or a retry answered from the session table, with this output.
    Executed(Output),
    /// A command older than the client's latest: ignored.
    Stale,
}

/// The key-value state of one member: a skiff-kv store, plus the record of which writes
/// changed it, to prove that none changes it twice. The store keeps its values in a value log,
/// as a server's does (in memory here: `VecValueLog`).
#[derive(Debug)]
pub struct KvState {
    store: kv::Store,
    executed: BTreeSet<(u64, u64)>,
}

impl Default for KvState {
    fn default() -> KvState {
        let mut store = kv::Store::new(kv::KvConfig::default()).expect("default config is valid");
        store.set_value_log(value_log());
        KvState {
            store,
            executed: BTreeSet::new(),
        }
    }
}

/// A fresh value log for a member's store.
fn value_log() -> std::sync::Arc<dyn kv::ValueLog> {
    std::sync::Arc::new(kv::VecValueLog::default())
}

impl KvState {
    /// The current value of `key` (a local read, for reads confirmed by ReadIndex).
    pub fn get(&self, key: &str) -> Option<String> {
        let request = kv::RangeRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            ..kv::RangeRequest::default()
        };
        let response = self.store.range(&request).expect("a plain range is valid");
        response.kvs.first().and_then(|found| text(&found.value))
    }

    /// Marks a log entry that carries no command (a no-op) as applied.
    pub fn skip(&mut self, index: u64) {
        self.store.advance_applied_index(index);
    }

    /// Applies the command at log `index`. Returns an error if a write took effect twice
    /// (exactly-once broken) or the store answered something a simulator command cannot get.
    pub fn apply(&mut self, index: u64, command: &Command) -> Result<Applied, String> {
        let applied = self.store.apply(index, &command.to_kv());
        if index.is_multiple_of(64) {
            // The store's full self-check walks every version: often, not always.
            self.store.check_invariants();
        }
        if !applied.events.is_empty() && !self.executed.insert((command.client, command.seq)) {
            return Err(format!(
                "command {}:{} changed the store twice",
                command.client, command.seq
            ));
        }
        let output = match applied.response.result {
            Ok(kv::ResponseBody::Range(range)) => {
                Output::Value(range.kvs.first().and_then(|found| text(&found.value)))
            }
            Ok(kv::ResponseBody::Put(_)) => Output::Written,
            Ok(kv::ResponseBody::Txn(txn)) => Output::Swapped(txn.succeeded),
            Err(kv::KvError::StaleRequest) => return Ok(Applied::Stale),
            other => return Err(format!("unexpected answer to {command:?}: {other:?}")),
        };
        Ok(Applied::Executed(output))
    }

    /// Serializes the whole state (a snapshot's contents).
    pub fn encode(&self) -> Bytes {
        let mut buffer = BytesMut::new();
        buffer.put_u64(self.executed.len() as u64);
        for (client, seq) in &self.executed {
            buffer.put_u64(*client);
            buffer.put_u64(*seq);
        }
        let mut writer = buffer.writer();
        self.store
            .snapshot(&mut writer)
            .expect("writing to memory cannot fail");
        writer.into_inner().freeze()
    }

    /// Inverse of [`KvState::encode`]; `None` if malformed.
    pub fn decode(bytes: &[u8]) -> Option<KvState> {
        let mut rest = bytes;
        let take_u64 = |rest: &mut &[u8]| -> Option<u64> {
            let value = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
            *rest = &rest[8..];
            Some(value)
        };
        let mut executed = BTreeSet::new();
        for _ in 0..take_u64(&mut rest)? {
            let client = take_u64(&mut rest)?;
            executed.insert((client, take_u64(&mut rest)?));
        }
        let store =
            kv::Store::restore_with(rest, kv::KvConfig::default(), Some(value_log())).ok()?;
        Some(KvState { store, executed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_skiff_kv_and_garbage_is_refused() {
        let commands = [
            Command {
                client: 7,
                seq: 3,
                op: Op::Get { key: "k".into() },
            },
            Command {
                client: 1,
                seq: 9,
                op: Op::Put {
                    key: "a".into(),
                    value: "b".into(),
                },
            },
            Command {
                client: 2,
                seq: 1,
                op: Op::Cas {
                    key: "a".into(),
                    from: None,
                    to: "c".into(),
                },
            },
            Command {
                client: 2,
                seq: 2,
                op: Op::Cas {
                    key: "a".into(),
                    from: Some("c".into()),
                    to: "d".into(),
                },
            },
        ];
        for command in commands {
            let bytes = command.encode();
            assert_eq!(Command::decode(&bytes), Some(command));
            assert_eq!(Command::decode(&bytes[..bytes.len() - 1]), None);
        }
    }

    #[test]
    fn retries_apply_once_and_snapshots_keep_everything() {
        let mut state = KvState::default();
        let cas = |seq, from: Option<&str>, to: &str| Command {
            client: 1,
            seq,
            op: Op::Cas {
                key: "k".into(),
                from: from.map(str::to_string),
                to: to.into(),
            },
        };
        let first = cas(1, None, "v");
        assert_eq!(
            state.apply(1, &first),
            Ok(Applied::Executed(Output::Swapped(true)))
        );
        // A retry of the same command answers as the first time and changes nothing.
        assert_eq!(
            state.apply(2, &first),
            Ok(Applied::Executed(Output::Swapped(true)))
        );
        assert_eq!(
            state.apply(3, &cas(2, None, "w")),
            Ok(Applied::Executed(Output::Swapped(false)))
        );
        assert_eq!(state.apply(4, &first), Ok(Applied::Stale));
        assert_eq!(
            state.apply(5, &cas(3, Some("v"), "x")),
            Ok(Applied::Executed(Output::Swapped(true)))
        );
        state.skip(6);
        assert_eq!(state.get("k"), Some("x".into()));
        let encoded = state.encode();
        let mut restored = KvState::decode(&encoded).expect("decodes");
        assert_eq!(restored.get("k"), Some("x".into()));
        assert_eq!(restored.apply(7, &first), Ok(Applied::Stale));
        assert!(KvState::decode(&encoded[..encoded.len() - 1]).is_none());
    }
}
