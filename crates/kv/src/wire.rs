//! Compact binary encoding of commands, responses and snapshot records.
//!
//! Integers are LEB128 varints (signed ones zigzag-encoded), byte strings and lists are prefixed by
//! their length, options and enums by a tag byte. A command starts with a format version byte so the
//! encoding can evolve while old log entries stay readable. Decoding never panics and never allocates
//! more than the input could describe: every length is checked against the bytes left, nesting is
//! bounded by `MAX_DECODE_DEPTH`, and trailing bytes are an error.

use bytes::Bytes;

use crate::command::*;
use crate::error::{DecodeError, KvError};
use crate::types::*;

/// The command format version written by this code.
pub const COMMAND_FORMAT_VERSION: u8 = 1;
/// Deepest nesting of txns the decoder accepts.
pub const MAX_DECODE_DEPTH: usize = 64;

/// Input being decoded.
pub(crate) struct Input<'a> {
    bytes: &'a [u8],
    /// The buffer `bytes` lie in, when payloads may be shared with it (see `payload`).
    shared: Option<&'a Bytes>,
    depth: usize,
}

impl<'a> Input<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Input {
            bytes,
            shared: None,
            depth: 0,
        }
    }

    /// Input over `bytes[from..]` whose large payloads are slices of `bytes` (no copy).
    fn shared(bytes: &'a Bytes, from: usize) -> Self {
        Input {
            bytes: &bytes[from..],
            shared: Some(bytes),
            depth: 0,
        }
    }

    /// A length-prefixed payload. It is a slice of the shared buffer when it is at least half
    /// of it (a put's value in its log entry): the store then keeps the entry's bytes instead
    /// of a second copy of them, and at most doubles what it keeps alive. Smaller payloads (a
    /// key, or one of a txn's many values) are copied, so they never pin a large buffer.
    fn payload(&mut self) -> Result<Bytes, DecodeError> {
        let length = self.length()?;
        let taken = self.take(length)?;
        Ok(match self.shared {
            Some(buffer) if length > 0 && length * 2 >= buffer.len() => buffer.slice_ref(taken),
            _ => Bytes::copy_from_slice(taken),
        })
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let (&first, rest) = self.bytes.split_first().ok_or(DecodeError("truncated"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], DecodeError> {
        if length > self.bytes.len() {
            return Err(DecodeError("length beyond end of input"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = (byte & 0x7F) as u64;
            if shift == 63 && bits > 1 {
                return Err(DecodeError("varint overflow"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn length(&mut self) -> Result<usize, DecodeError> {
        let length = self.varint()?;
        if length > self.bytes.len() as u64 {
            return Err(DecodeError("length beyond end of input"));
        }
        Ok(length as usize)
    }

    fn nested<T>(
        &mut self,
        decode: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        if self.depth >= MAX_DECODE_DEPTH {
            return Err(DecodeError("nesting too deep"));
        }
        self.depth += 1;
        let result = decode(self);
        self.depth -= 1;
        result
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError("trailing bytes"))
        }
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A type with a binary encoding.
pub(crate) trait Wire: Sized {
    fn put(&self, out: &mut Vec<u8>);
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError>;
}

impl Wire for u64 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, *self);
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        input.varint()
    }
}

impl Wire for u32 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, *self as u64);
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        u32::try_from(input.varint()?).map_err(|_| DecodeError("u32 out of range"))
    }
}

impl Wire for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, ((*self << 1) ^ (*self >> 63)) as u64);
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        let raw = input.varint()?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }
}

impl Wire for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        match input.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad bool")),
        }
    }
}

/// Encodes `bytes` as a [`Bytes`] is encoded: the length, then the bytes.
pub(crate) fn put_slice(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

impl Wire for Bytes {
    fn put(&self, out: &mut Vec<u8>) {
        put_slice(out, self);
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        input.payload()
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, out: &mut Vec<u8>) {
        put_varint(out, self.len() as u64);
        for item in self {
            item.put(out);
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        // The count is bounded by the bytes left, but an element may be much larger in memory than
        // its one-byte minimum encoding: reserve a bounded amount and let the vector grow with the
        // elements actually decoded.
        let count = input.length()?;
        let mut items = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            items.push(T::get(input)?);
        }
        Ok(items)
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(value) => {
                out.push(1);
                value.put(out);
            }
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        match input.byte()? {
            0 => Ok(None),
            1 => Ok(Some(T::get(input)?)),
            _ => Err(DecodeError("bad option tag")),
        }
    }
}

macro_rules! wire_struct {
    ($name:ident { $($field:ident),* $(,)? }) => {
        impl Wire for $name {
            fn put(&self, out: &mut Vec<u8>) {
                $( self.$field.put(out); )*
            }
            fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
                Ok($name { $( $field: Wire::get(input)?, )* })
            }
        }
    };
}

macro_rules! wire_unit_enum {
    ($name:ident { $($variant:ident = $tag:expr),* $(,)? }) => {
        impl Wire for $name {
            fn put(&self, out: &mut Vec<u8>) {
                out.push(match self { $( $name::$variant => $tag, )* });
            }
            fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
                match input.byte()? {
                    $( $tag => Ok($name::$variant), )*
                    _ => Err(DecodeError(concat!("bad ", stringify!($name), " tag"))),
                }
            }
        }
    };
}

wire_struct!(KeyValue {
    key,
    create_revision,
    mod_revision,
    version,
    value,
    lease
});
wire_unit_enum!(SortOrder { None = 0, Ascend = 1, Descend = 2 });
wire_unit_enum!(SortTarget { Key = 0, Version = 1, Create = 2, Mod = 3, Value = 4 });
wire_unit_enum!(CompareResult { Equal = 0, Greater = 1, Less = 2, NotEqual = 3 });
wire_unit_enum!(EventType { Put = 0, Delete = 1 });
wire_struct!(RangeRequest {
    key,
    range_end,
    limit,
    revision,
    sort_order,
    sort_target,
    serializable,
    keys_only,
    count_only,
    min_mod_revision,
    max_mod_revision,
    min_create_revision,
    max_create_revision,
});
wire_struct!(RangeResponse { kvs, more, count });
wire_struct!(PutRequest {
    key,
    value,
    lease,
    prev_kv,
    ignore_value,
    ignore_lease
});
wire_struct!(PutResponse { prev_kv });
wire_struct!(DeleteRangeRequest {
    key,
    range_end,
    prev_kv
});
wire_struct!(DeleteRangeResponse { deleted, prev_kvs });
wire_struct!(Compare {
    result,
    target,
    key,
    range_end
});
wire_struct!(TxnRequest {
    compare,
    success,
    failure
});
wire_struct!(TxnResponse {
    succeeded,
    responses
});
wire_struct!(CompactionRequest { revision, physical });
wire_struct!(LeaseGrantResponse { id, ttl });
wire_struct!(LeaseKeepAliveResponse { id, ttl });
wire_struct!(Event { kind, kv, prev_kv });

impl Wire for CompareTarget {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            CompareTarget::Version(value) => (0u8, value).put_tagged(out),
            CompareTarget::Create(value) => (1u8, value).put_tagged(out),
            CompareTarget::Mod(value) => (2u8, value).put_tagged(out),
            CompareTarget::Value(value) => {
                out.push(3);
                value.put(out);
            }
            CompareTarget::Lease(value) => (4u8, value).put_tagged(out),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        Ok(match input.byte()? {
            0 => CompareTarget::Version(Wire::get(input)?),
            1 => CompareTarget::Create(Wire::get(input)?),
            2 => CompareTarget::Mod(Wire::get(input)?),
            3 => CompareTarget::Value(Wire::get(input)?),
            4 => CompareTarget::Lease(Wire::get(input)?),
            _ => return Err(DecodeError("bad CompareTarget tag")),
        })
    }
}

trait PutTagged {
    fn put_tagged(self, out: &mut Vec<u8>);
}

impl<T: Wire> PutTagged for (u8, &T) {
    fn put_tagged(self, out: &mut Vec<u8>) {
        out.push(self.0);
        self.1.put(out);
    }
}

impl Wire for RequestOp {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            RequestOp::Range(request) => (0u8, request).put_tagged(out),
            RequestOp::Put(request) => (1u8, request).put_tagged(out),
            RequestOp::DeleteRange(request) => (2u8, request).put_tagged(out),
            RequestOp::Txn(request) => (3u8, request).put_tagged(out),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        Ok(match input.byte()? {
            0 => RequestOp::Range(Wire::get(input)?),
            1 => RequestOp::Put(Wire::get(input)?),
            2 => RequestOp::DeleteRange(Wire::get(input)?),
            3 => RequestOp::Txn(input.nested(Wire::get)?),
            _ => return Err(DecodeError("bad RequestOp tag")),
        })
    }
}

impl Wire for ResponseOp {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            ResponseOp::Range(response) => (0u8, response).put_tagged(out),
            ResponseOp::Put(response) => (1u8, response).put_tagged(out),
            ResponseOp::DeleteRange(response) => (2u8, response).put_tagged(out),
            ResponseOp::Txn(response) => (3u8, response).put_tagged(out),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        Ok(match input.byte()? {
            0 => ResponseOp::Range(Wire::get(input)?),
            1 => ResponseOp::Put(Wire::get(input)?),
            2 => ResponseOp::DeleteRange(Wire::get(input)?),
            3 => ResponseOp::Txn(input.nested(Wire::get)?),
            _ => return Err(DecodeError("bad ResponseOp tag")),
        })
    }
}

wire_struct!(RequestId {
    client_id,
    sequence
});

impl Wire for Operation {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Operation::Range(request) => (0u8, request).put_tagged(out),
            Operation::Put(request) => (1u8, request).put_tagged(out),
            Operation::DeleteRange(request) => (2u8, request).put_tagged(out),
            Operation::Txn(request) => (3u8, request).put_tagged(out),
            Operation::Compact(request) => (4u8, request).put_tagged(out),
            Operation::LeaseGrant {
                id,
                ttl_seconds,
                now_ms,
            } => {
                out.push(5);
                id.put(out);
                ttl_seconds.put(out);
                now_ms.put(out);
            }
            Operation::LeaseRevoke { id } => (6u8, id).put_tagged(out),
            Operation::LeaseKeepAlive { id, now_ms } => {
                out.push(7);
                id.put(out);
                now_ms.put(out);
            }
            Operation::ExpireLeases { now_ms, max_leases } => {
                out.push(8);
                now_ms.put(out);
                max_leases.put(out);
            }
            Operation::LeasePromote { now_ms } => (9u8, now_ms).put_tagged(out),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        Ok(match input.byte()? {
            0 => Operation::Range(Wire::get(input)?),
            1 => Operation::Put(Wire::get(input)?),
            2 => Operation::DeleteRange(Wire::get(input)?),
            3 => Operation::Txn(Wire::get(input)?),
            4 => Operation::Compact(Wire::get(input)?),
            5 => Operation::LeaseGrant {
                id: Wire::get(input)?,
                ttl_seconds: Wire::get(input)?,
                now_ms: Wire::get(input)?,
            },
            6 => Operation::LeaseRevoke {
                id: Wire::get(input)?,
            },
            7 => Operation::LeaseKeepAlive {
                id: Wire::get(input)?,
                now_ms: Wire::get(input)?,
            },
            8 => Operation::ExpireLeases {
                now_ms: Wire::get(input)?,
                max_leases: Wire::get(input)?,
            },
            9 => Operation::LeasePromote {
                now_ms: Wire::get(input)?,
            },
            _ => return Err(DecodeError("bad Operation tag")),
        })
    }
}

wire_struct!(Command {
    request_id,
    operation
});

impl Wire for KvError {
    fn put(&self, out: &mut Vec<u8>) {
        use KvError::*;
        out.push(match self {
            KeyNotProvided => 0,
            KeyNotFound => 1,
            ValueProvided => 2,
            LeaseProvided => 3,
            TooManyOps => 4,
            DuplicateKey => 5,
            RequestTooLarge => 6,
            Compacted => 7,
            FutureRevision => 8,
            LeaseNotFound => 9,
            LeaseExists => 10,
            LeaseTtlTooLarge => 11,
            StaleRequest => 12,
        });
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        use KvError::*;
        Ok(match input.byte()? {
            0 => KeyNotProvided,
            1 => KeyNotFound,
            2 => ValueProvided,
            3 => LeaseProvided,
            4 => TooManyOps,
            5 => DuplicateKey,
            6 => RequestTooLarge,
            7 => Compacted,
            8 => FutureRevision,
            9 => LeaseNotFound,
            10 => LeaseExists,
            11 => LeaseTtlTooLarge,
            12 => StaleRequest,
            _ => return Err(DecodeError("bad KvError tag")),
        })
    }
}

impl Wire for ResponseBody {
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            ResponseBody::Range(response) => (0u8, response).put_tagged(out),
            ResponseBody::Put(response) => (1u8, response).put_tagged(out),
            ResponseBody::DeleteRange(response) => (2u8, response).put_tagged(out),
            ResponseBody::Txn(response) => (3u8, response).put_tagged(out),
            ResponseBody::Compact => out.push(4),
            ResponseBody::LeaseGrant(response) => (5u8, response).put_tagged(out),
            ResponseBody::LeaseRevoke => out.push(6),
            ResponseBody::LeaseKeepAlive(response) => (7u8, response).put_tagged(out),
            ResponseBody::ExpireLeases { revoked } => (8u8, revoked).put_tagged(out),
            ResponseBody::LeasePromote => out.push(9),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        Ok(match input.byte()? {
            0 => ResponseBody::Range(Wire::get(input)?),
            1 => ResponseBody::Put(Wire::get(input)?),
            2 => ResponseBody::DeleteRange(Wire::get(input)?),
            3 => ResponseBody::Txn(Wire::get(input)?),
            4 => ResponseBody::Compact,
            5 => ResponseBody::LeaseGrant(Wire::get(input)?),
            6 => ResponseBody::LeaseRevoke,
            7 => ResponseBody::LeaseKeepAlive(Wire::get(input)?),
            8 => ResponseBody::ExpireLeases {
                revoked: Wire::get(input)?,
            },
            9 => ResponseBody::LeasePromote,
            _ => return Err(DecodeError("bad ResponseBody tag")),
        })
    }
}

impl Wire for Response {
    fn put(&self, out: &mut Vec<u8>) {
        self.revision.put(out);
        match &self.result {
            Ok(body) => (0u8, body).put_tagged(out),
            Err(error) => (1u8, error).put_tagged(out),
        }
    }
    fn get(input: &mut Input<'_>) -> Result<Self, DecodeError> {
        let revision = Wire::get(input)?;
        let result = match input.byte()? {
            0 => Ok(Wire::get(input)?),
            1 => Err(Wire::get(input)?),
            _ => return Err(DecodeError("bad Response tag")),
        };
        Ok(Response { revision, result })
    }
}

/// Decodes a whole buffer as one value.
pub(crate) fn decode_all<T: Wire>(bytes: &[u8]) -> Result<T, DecodeError> {
    let mut input = Input::new(bytes);
    let value = T::get(&mut input)?;
    input.finish()?;
    Ok(value)
}

/// Encodes one value.
pub(crate) fn encode<T: Wire>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    value.put(&mut out);
    out
}

impl Command {
    /// Encodes the command: a format version byte, then the fields. The vector's capacity is
    /// its length: a command lives on as a log entry, without the growth's slack.
    pub fn encode(&self) -> Vec<u8> {
        thread_local! {
            // Commands are encoded into this buffer, then copied out at their exact size: one
            // allocation per command instead of the growth steps and a shrink.
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        /// A buffer grown past this by a large command is not kept.
        const KEEP_BYTES: usize = 64 * 1024;
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            scratch.clear();
            scratch.push(COMMAND_FORMAT_VERSION);
            self.put(&mut scratch);
            let out = scratch.to_vec();
            if scratch.capacity() > KEEP_BYTES {
                *scratch = Vec::new();
            }
            out
        })
    }

    /// Decodes a command written by `encode`. Garbage gives an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError("empty command"))?;
        if version != COMMAND_FORMAT_VERSION {
            return Err(DecodeError("unknown command format version"));
        }
        decode_all(rest)
    }

    /// As [`Command::decode`], but a put's value that makes up most of `bytes` is a slice of
    /// them instead of a copy: applying a log entry keeps one copy of the value, not two.
    pub fn decode_shared(bytes: &Bytes) -> Result<Command, DecodeError> {
        if bytes.first() != Some(&COMMAND_FORMAT_VERSION) {
            return Command::decode(bytes);
        }
        let mut input = Input::shared(bytes, 1);
        let command = Command::get(&mut input)?;
        input.finish()?;
        Ok(command)
    }
}

impl Response {
    /// Encodes the response (used for the session table in snapshots; also handy for forwarding).
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Decodes a response written by `encode`.
    pub fn decode(bytes: &[u8]) -> Result<Response, DecodeError> {
        decode_all(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &[u8], value: &[u8]) -> PutRequest {
        PutRequest {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ..PutRequest::default()
        }
    }

    fn within(part: &Bytes, buffer: &Bytes) -> bool {
        buffer.as_ptr_range().contains(&part.as_ptr())
    }

    #[test]
    fn a_puts_value_is_shared_with_its_entry_and_small_payloads_are_copied() {
        let entry = Bytes::from(Command::new(Operation::Put(put(b"key", &[7; 256]))).encode());
        let Operation::Put(decoded) = Command::decode_shared(&entry).unwrap().operation else {
            panic!("not a put");
        };
        assert_eq!(&decoded.value[..], &[7; 256]);
        assert!(
            within(&decoded.value, &entry),
            "the value is a slice of the entry"
        );
        assert!(!within(&decoded.key, &entry), "the key is a copy");

        // No payload of a txn of two puts is half of the entry: all are copies.
        let txn = TxnRequest {
            success: vec![
                RequestOp::Put(put(b"a", &[1; 100])),
                RequestOp::Put(put(b"b", &[2; 100])),
            ],
            ..TxnRequest::default()
        };
        let entry = Bytes::from(Command::new(Operation::Txn(txn.clone())).encode());
        let Operation::Txn(decoded) = Command::decode_shared(&entry).unwrap().operation else {
            panic!("not a txn");
        };
        assert_eq!(decoded, txn);
        for op in &decoded.success {
            let RequestOp::Put(put) = op else {
                panic!("not a put")
            };
            assert!(!within(&put.key, &entry) && !within(&put.value, &entry));
        }

        // Plain `decode` copies everything.
        let entry = Bytes::from(Command::new(Operation::Put(put(b"key", &[7; 256]))).encode());
        let Operation::Put(decoded) = Command::decode(&entry).unwrap().operation else {
            panic!("not a put");
        };
        assert!(!within(&decoded.value, &entry));
    }
}
