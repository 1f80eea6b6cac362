//! The simulator's replicated state machine: a small key-value store with get, put and
//! compare-and-set, where every command carries a client id and sequence number so that a
//! retried command takes effect once (MIT 6.824's duplicate table).

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};

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

fn put_string(buffer: &mut BytesMut, value: &str) {
    buffer.put_u32(value.len() as u32);
    buffer.put_slice(value.as_bytes());
}

fn take_string(bytes: &mut &[u8]) -> Option<String> {
    let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let value = std::str::from_utf8(bytes.get(4..4 + length)?)
        .ok()?
        .to_string();
    *bytes = &bytes[4 + length..];
    Some(value)
}

fn take_u64(bytes: &mut &[u8]) -> Option<u64> {
    let value = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    *bytes = &bytes[8..];
    Some(value)
}

impl Command {
    /// Encodes the command as a log entry payload.
    pub fn encode(&self) -> Bytes {
        let mut buffer = BytesMut::with_capacity(64);
        buffer.put_u64(self.client);
        buffer.put_u64(self.seq);
        match &self.op {
            Op::Get { key } => {
                buffer.put_u8(0);
                put_string(&mut buffer, key);
            }
            Op::Put { key, value } => {
                buffer.put_u8(1);
                put_string(&mut buffer, key);
                put_string(&mut buffer, value);
            }
            Op::Cas { key, from, to } => {
                buffer.put_u8(2);
                put_string(&mut buffer, key);
                match from {
                    Some(from) => {
                        buffer.put_u8(1);
                        put_string(&mut buffer, from);
                    }
                    None => buffer.put_u8(0),
                }
                put_string(&mut buffer, to);
            }
        }
        buffer.freeze()
    }

    /// Decodes a payload; `None` if malformed.
    pub fn decode(mut bytes: &[u8]) -> Option<Command> {
        let bytes = &mut bytes;
        let client = take_u64(bytes)?;
        let seq = take_u64(bytes)?;
        let (&tag, rest) = bytes.split_first()?;
        *bytes = rest;
        let op = match tag {
            0 => Op::Get {
                key: take_string(bytes)?,
            },
            1 => Op::Put {
                key: take_string(bytes)?,
                value: take_string(bytes)?,
            },
            2 => {
                let key = take_string(bytes)?;
                let (&present, rest) = bytes.split_first()?;
                *bytes = rest;
                let from = if present == 1 {
                    Some(take_string(bytes)?)
                } else {
                    None
                };
                Op::Cas {
                    key,
                    from,
                    to: take_string(bytes)?,
                }
            }
            _ => return None,
        };
        bytes.is_empty().then_some(Command { client, seq, op })
    }
}

/// The outcome of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Executed now with this output.
    Executed(Output),
    /// A retry of the client's latest command: its earlier output.
    Duplicate(Output),
    /// A command older than the client's latest: ignored.
    Stale,
}

/// The key-value state of one member.
#[derive(Clone, Debug, Default)]
pub struct KvState {
    data: BTreeMap<String, String>,
    /// Per client: the latest sequence number executed and its output.
    sessions: BTreeMap<u64, (u64, Output)>,
    /// Every (client, seq) executed, to prove none executes twice.
    executed: BTreeSet<(u64, u64)>,
}

impl KvState {
    /// The current value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.data.get(key).cloned()
    }

    /// Applies a command. Returns an error if the command had already been executed,
    /// which would break exactly-once semantics (a simulator invariant).
    pub fn apply(&mut self, command: &Command) -> Result<Applied, String> {
        if let Some((seq, output)) = self.sessions.get(&command.client) {
            if command.seq == *seq {
                return Ok(Applied::Duplicate(output.clone()));
            }
            if command.seq < *seq {
                return Ok(Applied::Stale);
            }
        }
        if !self.executed.insert((command.client, command.seq)) {
            return Err(format!(
                "command {}:{} executed twice",
                command.client, command.seq
            ));
        }
        let output = match &command.op {
            Op::Get { key } => Output::Value(self.data.get(key).cloned()),
            Op::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                Output::Written
            }
            Op::Cas { key, from, to } => {
                let swapped = self.data.get(key) == from.as_ref();
                if swapped {
                    self.data.insert(key.clone(), to.clone());
                }
                Output::Swapped(swapped)
            }
        };
        self.sessions
            .insert(command.client, (command.seq, output.clone()));
        Ok(Applied::Executed(output))
    }
}

fn put_output(buffer: &mut BytesMut, output: &Output) {
    match output {
        Output::Value(None) => buffer.put_u8(0),
        Output::Value(Some(value)) => {
            buffer.put_u8(1);
            put_string(buffer, value);
        }
        Output::Written => buffer.put_u8(2),
        Output::Swapped(swapped) => buffer.put_u8(3 + *swapped as u8),
    }
}

fn take_output(bytes: &mut &[u8]) -> Option<Output> {
    let (&tag, rest) = bytes.split_first()?;
    *bytes = rest;
    Some(match tag {
        0 => Output::Value(None),
        1 => Output::Value(Some(take_string(bytes)?)),
        2 => Output::Written,
        3 => Output::Swapped(false),
        4 => Output::Swapped(true),
        _ => return None,
    })
}

impl KvState {
    /// Serializes the whole state (a snapshot's contents).
    pub fn encode(&self) -> Bytes {
        let mut buffer = BytesMut::new();
        buffer.put_u64(self.data.len() as u64);
        for (key, value) in &self.data {
            put_string(&mut buffer, key);
            put_string(&mut buffer, value);
        }
        buffer.put_u64(self.sessions.len() as u64);
        for (client, (seq, output)) in &self.sessions {
            buffer.put_u64(*client);
            buffer.put_u64(*seq);
            put_output(&mut buffer, output);
        }
        buffer.put_u64(self.executed.len() as u64);
        for (client, seq) in &self.executed {
            buffer.put_u64(*client);
            buffer.put_u64(*seq);
        }
        buffer.freeze()
    }

    /// Inverse of [`KvState::encode`]; `None` if malformed.
    pub fn decode(mut bytes: &[u8]) -> Option<KvState> {
        let bytes = &mut bytes;
        let mut state = KvState::default();
        for _ in 0..take_u64(bytes)? {
            let key = take_string(bytes)?;
            state.data.insert(key, take_string(bytes)?);
        }
        for _ in 0..take_u64(bytes)? {
            let client = take_u64(bytes)?;
            let seq = take_u64(bytes)?;
            state.sessions.insert(client, (seq, take_output(bytes)?));
        }
        for _ in 0..take_u64(bytes)? {
            let client = take_u64(bytes)?;
            state.executed.insert((client, take_u64(bytes)?));
        }
        bytes.is_empty().then_some(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
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
        ];
        for command in commands {
            let bytes = command.encode();
            assert_eq!(Command::decode(&bytes), Some(command));
            assert_eq!(Command::decode(&bytes[..bytes.len() - 1]), None);
        }
    }

    #[test]
    fn retries_apply_once() {
        let mut state = KvState::default();
        let put = Command {
            client: 1,
            seq: 1,
            op: Op::Cas {
                key: "k".into(),
                from: None,
                to: "v".into(),
            },
        };
        assert_eq!(
            state.apply(&put),
            Ok(Applied::Executed(Output::Swapped(true)))
        );
        assert_eq!(
            state.apply(&put),
            Ok(Applied::Duplicate(Output::Swapped(true)))
        );
        let next = Command {
            client: 1,
            seq: 2,
            op: Op::Get { key: "k".into() },
        };
        state.apply(&next).unwrap();
        assert_eq!(state.apply(&put), Ok(Applied::Stale));
        assert_eq!(state.get("k"), Some("v".into()));
        // A snapshot keeps the data, the sessions and the exactly-once record.
        let encoded = state.encode();
        let mut restored = KvState::decode(&encoded).expect("decodes");
        assert_eq!(restored.get("k"), Some("v".into()));
        assert_eq!(restored.apply(&put), Ok(Applied::Stale));
        assert!(KvState::decode(&encoded[..encoded.len() - 1]).is_none());
    }
}
