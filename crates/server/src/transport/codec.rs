//! The wire encoding of one [`Message`]: compact, versioned, and safe to decode from
//! untrusted bytes.
//!
//! Layout (all integers are unsigned LEB128 varints unless noted, `u8` is one raw byte):
//!
//! ```text
//! message  = version:u8 (= 1) from to term body_tag:u8 body
//! body     = RequestVote(1)           flags:u8 (bit0 pre_vote, bit1 leadership_transfer)
//!                                     last_log_index last_log_term
//!          | RequestVoteResponse(2)   flags:u8 (bit0 pre_vote, bit1 granted)
//!          | AppendEntries(3)         prev_log_index prev_log_term commit count entry*count
//!          | AppendEntriesResponse(4) success:u8 (0|1) index hint_index hint_term
//!          | Heartbeat(5)             commit sequence
//!          | HeartbeatResponse(6)     sequence
//!          | ReadIndex(7)             context
//!          | ReadIndexResponse(8)     context has_index:u8 (0|1) [index]
//!          | TimeoutNow(9)
//!          | InstallSnapshot(10)      index term set(voters) set(voters_outgoing)
//!                                     set(learners) data_len data
//! entry    = kind:u8 (EntryKind::code) term index data_len data
//! set      = count id*count            (strictly ascending IDs)
//! ```
//!
//! Decoding is strict: unknown versions, tags, flag bits or entry kinds, over-long or overflowing varints,
//! unsorted sets and trailing bytes are errors, so every accepted input has exactly one
//! encoding. Decoding never panics and allocates at most in proportion to its input: counts
//! read from the input are checked against the bytes left before anything is reserved.
//! Entry and snapshot payloads are copied out of the input, each into an allocation of its own
//! size. They outlive the input by far (a follower keeps every entry since its last snapshot in
//! memory), and a slice would keep the whole receive buffer it came in alive: on a follower
//! receiving one small entry per message, that was 64 KiB of buffer per 300-byte entry.

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use skiff_raft::{Entry, EntryKind, Membership, Message, MessageBody, SnapshotMeta};

/// The codec version written as the first byte of every encoded message.
pub const CODEC_VERSION: u8 = 1;

const TAG_REQUEST_VOTE: u8 = 1;
const TAG_REQUEST_VOTE_RESPONSE: u8 = 2;
const TAG_APPEND_ENTRIES: u8 = 3;
const TAG_APPEND_ENTRIES_RESPONSE: u8 = 4;
const TAG_HEARTBEAT: u8 = 5;
const TAG_HEARTBEAT_RESPONSE: u8 = 6;
const TAG_READ_INDEX: u8 = 7;
const TAG_READ_INDEX_RESPONSE: u8 = 8;
const TAG_TIMEOUT_NOW: u8 = 9;
const TAG_INSTALL_SNAPSHOT: u8 = 10;

/// The smallest possible encoded entry: kind, term, index and a zero length, one byte each.
const MIN_ENTRY_BYTES: usize = 4;

/// Why bytes could not be decoded into a [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("message truncated")]
    Truncated,
    /// The first byte names a codec version this member does not speak.
    #[error("unsupported message codec version {0}")]
    UnsupportedVersion(u8),
    /// Unknown message body tag.
    #[error("unknown message body tag {0}")]
    UnknownBody(u8),
    /// Unknown entry kind code.
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(u8),
    /// A flag or boolean byte has bits that mean nothing.
    #[error("invalid flag byte {0:#04x}")]
    BadFlags(u8),
    /// A varint is longer than ten bytes or overflows 64 bits.
    #[error("varint overflows 64 bits")]
    VarintOverflow,
    /// A varint is not in its shortest form.
    #[error("varint is not in its shortest form")]
    OverlongVarint,
    /// A length or count is larger than the bytes that follow it can hold.
    #[error("length {0} exceeds the remaining input")]
    LengthTooLarge(u64),
    /// The IDs of a membership set are not strictly ascending.
    #[error("membership set is not strictly ascending")]
    UnsortedSet,
    /// Bytes are left over after the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

fn varint_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 0x80 {
        value >>= 7;
        len += 1;
    }
    len
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn set_len(set: &BTreeSet<u64>) -> usize {
    varint_len(set.len() as u64) + set.iter().map(|id| varint_len(*id)).sum::<usize>()
}

fn put_set(buf: &mut BytesMut, set: &BTreeSet<u64>) {
    put_varint(buf, set.len() as u64);
    for id in set {
        put_varint(buf, *id);
    }
}

fn entry_len(entry: &Entry) -> usize {
    1 + varint_len(entry.term)
        + varint_len(entry.index)
        + varint_len(entry.data.len() as u64)
        + entry.data.len()
}

/// The exact number of bytes [`encode`] produces for `message`.
pub fn encoded_len(message: &Message) -> usize {
    let header = 1 + varint_len(message.from) + varint_len(message.to) + varint_len(message.term);
    let body = match &message.body {
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            ..
        } => 1 + varint_len(*last_log_index) + varint_len(*last_log_term),
        MessageBody::RequestVoteResponse { .. } => 1,
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => {
            varint_len(*prev_log_index)
                + varint_len(*prev_log_term)
                + varint_len(*commit)
                + varint_len(entries.len() as u64)
                + entries.iter().map(entry_len).sum::<usize>()
        }
        MessageBody::AppendEntriesResponse {
            index,
            hint_index,
            hint_term,
            ..
        } => 1 + varint_len(*index) + varint_len(*hint_index) + varint_len(*hint_term),
        MessageBody::Heartbeat { commit, sequence } => varint_len(*commit) + varint_len(*sequence),
        MessageBody::HeartbeatResponse { sequence } => varint_len(*sequence),
        MessageBody::ReadIndex { context } => varint_len(*context),
        MessageBody::ReadIndexResponse { context, index } => {
            varint_len(*context) + 1 + index.map_or(0, varint_len)
        }
        MessageBody::TimeoutNow => 0,
        MessageBody::InstallSnapshot { meta, data } => {
            varint_len(meta.index)
                + varint_len(meta.term)
                + set_len(&meta.membership.voters)
                + set_len(&meta.membership.voters_outgoing)
                + set_len(&meta.membership.learners)
                + varint_len(data.len() as u64)
                + data.len()
        }
    };
    header + 1 + body
}

/// Encodes `message` (see the module docs for the layout).
pub fn encode(message: &Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(encoded_len(message));
    encode_into(message, &mut buf);
    buf.freeze()
}

/// Appends the encoding of `message` to `buf`.
pub fn encode_into(message: &Message, buf: &mut BytesMut) {
    buf.reserve(encoded_len(message));
    buf.put_u8(CODEC_VERSION);
    put_varint(buf, message.from);
    put_varint(buf, message.to);
    put_varint(buf, message.term);
    match &message.body {
        MessageBody::RequestVote {
            pre_vote,
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => {
            buf.put_u8(TAG_REQUEST_VOTE);
            buf.put_u8(u8::from(*pre_vote) | (u8::from(*leadership_transfer) << 1));
            put_varint(buf, *last_log_index);
            put_varint(buf, *last_log_term);
        }
        MessageBody::RequestVoteResponse { pre_vote, granted } => {
            buf.put_u8(TAG_REQUEST_VOTE_RESPONSE);
            buf.put_u8(u8::from(*pre_vote) | (u8::from(*granted) << 1));
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            commit,
        } => {
            buf.put_u8(TAG_APPEND_ENTRIES);
            put_varint(buf, *prev_log_index);
            put_varint(buf, *prev_log_term);
            put_varint(buf, *commit);
            put_varint(buf, entries.len() as u64);
            for entry in entries {
                buf.put_u8(entry.kind.code());
                put_varint(buf, entry.term);
                put_varint(buf, entry.index);
                put_varint(buf, entry.data.len() as u64);
                buf.put_slice(&entry.data);
            }
        }
        MessageBody::AppendEntriesResponse {
            success,
            index,
            hint_index,
            hint_term,
        } => {
            buf.put_u8(TAG_APPEND_ENTRIES_RESPONSE);
            buf.put_u8(u8::from(*success));
            put_varint(buf, *index);
            put_varint(buf, *hint_index);
            put_varint(buf, *hint_term);
        }
        MessageBody::Heartbeat { commit, sequence } => {
            buf.put_u8(TAG_HEARTBEAT);
            put_varint(buf, *commit);
            put_varint(buf, *sequence);
        }
        MessageBody::HeartbeatResponse { sequence } => {
            buf.put_u8(TAG_HEARTBEAT_RESPONSE);
            put_varint(buf, *sequence);
        }
        MessageBody::ReadIndex { context } => {
            buf.put_u8(TAG_READ_INDEX);
            put_varint(buf, *context);
        }
        MessageBody::ReadIndexResponse { context, index } => {
            buf.put_u8(TAG_READ_INDEX_RESPONSE);
            put_varint(buf, *context);
            match index {
                Some(index) => {
                    buf.put_u8(1);
                    put_varint(buf, *index);
                }
                None => buf.put_u8(0),
            }
        }
        MessageBody::TimeoutNow => buf.put_u8(TAG_TIMEOUT_NOW),
        MessageBody::InstallSnapshot { meta, data } => {
            buf.put_u8(TAG_INSTALL_SNAPSHOT);
            put_varint(buf, meta.index);
            put_varint(buf, meta.term);
            put_set(buf, &meta.membership.voters);
            put_set(buf, &meta.membership.voters_outgoing);
            put_set(buf, &meta.membership.learners);
            put_varint(buf, data.len() as u64);
            buf.put_slice(data);
        }
    }
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    input: &'a Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.input.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && bits > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                // A final zero byte after a continuation adds nothing: not the shortest form.
                if byte == 0 && shift > 0 {
                    return Err(DecodeError::OverlongVarint);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::BadFlags(other)),
        }
    }

    /// Two flag bits; any other bit set is an error.
    fn flags(&mut self) -> Result<(bool, bool), DecodeError> {
        let byte = self.u8()?;
        if byte & !0b11 != 0 {
            return Err(DecodeError::BadFlags(byte));
        }
        Ok((byte & 1 != 0, byte & 2 != 0))
    }

    /// A count or length that must be at most `remaining / unit`.
    fn bounded(&mut self, unit: usize) -> Result<usize, DecodeError> {
        let value = self.varint()?;
        match usize::try_from(value) {
            Ok(n) if n <= self.remaining() / unit => Ok(n),
            _ => Err(DecodeError::LengthTooLarge(value)),
        }
    }

    /// A length-prefixed payload, copied out of the input (see the module's documentation).
    fn data(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.bounded(1)?;
        let data = Bytes::copy_from_slice(&self.input[self.pos..self.pos + len]);
        self.pos += len;
        Ok(data)
    }

    fn set(&mut self) -> Result<BTreeSet<u64>, DecodeError> {
        let count = self.bounded(1)?;
        let mut set = BTreeSet::new();
        let mut last = None;
        for _ in 0..count {
            let id = self.varint()?;
            if last.is_some_and(|last| id <= last) {
                return Err(DecodeError::UnsortedSet);
            }
            last = Some(id);
            set.insert(id);
        }
        Ok(set)
    }
}

/// Decodes one message encoded by [`encode`]. Payloads share `input`'s buffer.
///
/// Never panics; returns an error for anything that is not exactly one valid encoding.
pub fn decode(input: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { input, pos: 0 };
    let version = r.u8()?;
    if version != CODEC_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let from = r.varint()?;
    let to = r.varint()?;
    let term = r.varint()?;
    let body = match r.u8()? {
        TAG_REQUEST_VOTE => {
            let (pre_vote, leadership_transfer) = r.flags()?;
            MessageBody::RequestVote {
                pre_vote,
                last_log_index: r.varint()?,
                last_log_term: r.varint()?,
                leadership_transfer,
            }
        }
        TAG_REQUEST_VOTE_RESPONSE => {
            let (pre_vote, granted) = r.flags()?;
            MessageBody::RequestVoteResponse { pre_vote, granted }
        }
        TAG_APPEND_ENTRIES => {
            let prev_log_index = r.varint()?;
            let prev_log_term = r.varint()?;
            let commit = r.varint()?;
            let count = r.bounded(MIN_ENTRY_BYTES)?;
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let code = r.u8()?;
                let kind = EntryKind::from_code(code).ok_or(DecodeError::UnknownEntryKind(code))?;
                let term = r.varint()?;
                let index = r.varint()?;
                let data = r.data()?;
                entries.push(Entry {
                    term,
                    index,
                    kind,
                    data,
                });
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            }
        }
        TAG_APPEND_ENTRIES_RESPONSE => MessageBody::AppendEntriesResponse {
            success: r.bool()?,
            index: r.varint()?,
            hint_index: r.varint()?,
            hint_term: r.varint()?,
        },
        TAG_HEARTBEAT => MessageBody::Heartbeat {
            commit: r.varint()?,
            sequence: r.varint()?,
        },
        TAG_HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse {
            sequence: r.varint()?,
        },
        TAG_READ_INDEX => MessageBody::ReadIndex {
            context: r.varint()?,
        },
        TAG_READ_INDEX_RESPONSE => {
            let context = r.varint()?;
            let index = if r.bool()? { Some(r.varint()?) } else { None };
            MessageBody::ReadIndexResponse { context, index }
        }
        TAG_TIMEOUT_NOW => MessageBody::TimeoutNow,
        TAG_INSTALL_SNAPSHOT => {
            let index = r.varint()?;
            let term = r.varint()?;
            let voters = r.set()?;
            let voters_outgoing = r.set()?;
            let learners = r.set()?;
            let data = r.data()?;
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index,
                    term,
                    membership: Membership {
                        voters,
                        voters_outgoing,
                        learners,
                    },
                },
                data,
            }
        }
        other => return Err(DecodeError::UnknownBody(other)),
    };
    if r.remaining() != 0 {
        return Err(DecodeError::TrailingBytes(r.remaining()));
    }
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![
                Just(EntryKind::Noop),
                Just(EntryKind::Normal),
                Just(EntryKind::ConfigChange)
            ],
            arb_bytes(64),
        )
            .prop_map(|(term, index, kind, data)| Entry {
                term,
                index,
                kind,
                data,
            })
    }

    fn arb_set() -> impl Strategy<Value = BTreeSet<u64>> {
        prop::collection::btree_set(any::<u64>(), 0..6)
    }

    fn arb_body() -> impl Strategy<Value = MessageBody> {
        prop_oneof![
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(p, i, t, l)| {
                MessageBody::RequestVote {
                    pre_vote: p,
                    last_log_index: i,
                    last_log_term: t,
                    leadership_transfer: l,
                }
            }),
            (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| {
                MessageBody::RequestVoteResponse { pre_vote, granted }
            }),
            (
                any::<u64>(),
                any::<u64>(),
                prop::collection::vec(arb_entry(), 0..8),
                any::<u64>()
            )
                .prop_map(|(i, t, entries, commit)| MessageBody::AppendEntries {
                    prev_log_index: i,
                    prev_log_term: t,
                    entries,
                    commit,
                }),
            (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(s, i, hi, ht)| {
                MessageBody::AppendEntriesResponse {
                    success: s,
                    index: i,
                    hint_index: hi,
                    hint_term: ht,
                }
            }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(commit, sequence)| MessageBody::Heartbeat { commit, sequence }),
            any::<u64>().prop_map(|sequence| MessageBody::HeartbeatResponse { sequence }),
            any::<u64>().prop_map(|context| MessageBody::ReadIndex { context }),
            (any::<u64>(), any::<Option<u64>>())
                .prop_map(|(context, index)| MessageBody::ReadIndexResponse { context, index }),
            Just(MessageBody::TimeoutNow),
            (
                any::<u64>(),
                any::<u64>(),
                arb_set(),
                arb_set(),
                arb_set(),
                arb_bytes(256)
            )
                .prop_map(|(index, term, voters, voters_outgoing, learners, data)| {
                    MessageBody::InstallSnapshot {
                        meta: SnapshotMeta {
                            index,
                            term,
                            membership: Membership {
                                voters,
                                voters_outgoing,
                                learners,
                            },
                        },
                        data,
                    }
                }),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (any::<u64>(), any::<u64>(), any::<u64>(), arb_body()).prop_map(|(from, to, term, body)| {
            Message {
                from,
                to,
                term,
                body,
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_trips(message in arb_message()) {
            let bytes = encode(&message);
            prop_assert_eq!(bytes.len(), encoded_len(&message));
            prop_assert_eq!(bytes[0], CODEC_VERSION);
            prop_assert_eq!(decode(&bytes), Ok(message));
        }

        #[test]
        fn every_strict_prefix_is_an_error(message in arb_message()) {
            let bytes = encode(&message);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes.slice(..cut)).is_err());
            }
            let mut longer = BytesMut::from(&bytes[..]);
            longer.put_u8(0);
            prop_assert_eq!(decode(&longer.freeze()), Err(DecodeError::TrailingBytes(1)));
        }

        #[test]
        fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&Bytes::from(data));
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            tag in 0u8..12,
            rest in prop::collection::vec(any::<u8>(), 0..96),
        ) {
            let mut buf = vec![CODEC_VERSION, 1, 2, 3, tag];
            buf.extend(rest);
            if let Ok(message) = decode(&Bytes::from(buf.clone())) {
                // Whatever decodes re-encodes to the same bytes (the encoding is canonical).
                prop_assert_eq!(&encode(&message)[..], &buf[..]);
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            message in arb_message(),
            mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&message).to_vec();
            for (at, value) in mutations {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            if let Ok(decoded) = decode(&Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode(&decoded)[..], &bytes[..]);
            }
        }
    }

    #[test]
    fn payloads_do_not_keep_the_input_alive() {
        let entry = |index: u64, data: &'static [u8]| Entry {
            term: 3,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(data),
        };
        let message = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::AppendEntries {
                prev_log_index: 0,
                prev_log_term: 0,
                entries: vec![entry(1, b"first payload"), entry(2, b"second payload")],
                commit: 0,
            },
        };
        // As a receive buffer does: the message is a slice of a larger allocation.
        let mut buffer = BytesMut::with_capacity(64 << 10);
        buffer.put_slice(b"bytes of the frame before the message");
        let before = buffer.len();
        buffer.put_slice(&encode(&message));
        let input = buffer.freeze().slice(before..);
        let decoded = decode(&input).unwrap();
        let range = input.as_ptr_range();
        drop(input);
        let MessageBody::AppendEntries { entries, .. } = decoded.body else {
            panic!("wrong body");
        };
        assert_eq!(&entries[0].data[..], b"first payload");
        assert_eq!(&entries[1].data[..], b"second payload");
        for entry in entries {
            assert!(!range.contains(&entry.data.as_ptr()));
            // Its own allocation: nothing else (the buffer, the other entry) shares it.
            assert!(entry.data.is_unique());
        }
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        // AppendEntries claiming u64::MAX entries, then nothing.
        let mut buf = BytesMut::new();
        buf.put_slice(&[CODEC_VERSION, 1, 2, 3, TAG_APPEND_ENTRIES, 0, 0, 0]);
        put_varint(&mut buf, u64::MAX);
        assert_eq!(
            decode(&buf.freeze()),
            Err(DecodeError::LengthTooLarge(u64::MAX))
        );
        // A snapshot claiming a 2^40-byte payload.
        let mut buf = BytesMut::new();
        buf.put_slice(&[CODEC_VERSION, 1, 2, 3, TAG_INSTALL_SNAPSHOT, 5, 1, 0, 0, 0]);
        put_varint(&mut buf, 1 << 40);
        assert_eq!(
            decode(&buf.freeze()),
            Err(DecodeError::LengthTooLarge(1 << 40))
        );
    }

    #[test]
    fn varints_are_bounded() {
        let mut buf = vec![CODEC_VERSION];
        buf.extend([0xff; 10]);
        buf.push(0x01);
        assert_eq!(decode(&Bytes::from(buf)), Err(DecodeError::VarintOverflow));
        let mut buf = vec![CODEC_VERSION];
        buf.extend([0xff; 9]);
        buf.push(0x02);
        assert_eq!(decode(&Bytes::from(buf)), Err(DecodeError::VarintOverflow));
        assert_eq!(
            decode(&Bytes::from_static(&[2, 1, 2, 3, TAG_TIMEOUT_NOW])),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn small_messages_are_small() {
        let heartbeat = Message {
            from: 1,
            to: 2,
            term: 7,
            body: MessageBody::Heartbeat {
                commit: 100,
                sequence: 5,
            },
        };
        assert_eq!(encode(&heartbeat).len(), 7);
    }
}
