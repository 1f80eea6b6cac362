//! Byte layouts of log records, their payloads and snapshot headers (docs/storage-format.md).
//!
//! Every decoder here takes untrusted bytes: it checks each length against the bytes present and
//! against the configured limits before slicing, and reports a problem as a [`FormatError`]
//! instead of panicking. Fuzzing and property tests hold them to that.

use bytes::Bytes;
use skiff_raft::{Entry, EntryKind, HardState, Membership, SnapshotMeta};

/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Bytes of a segment-header payload.
pub const SEGMENT_HEADER_PAYLOAD_BYTES: usize = 8 + 4 + 8 + HARD_STATE_BYTES;
/// Bytes of an encoded hard state.
pub const HARD_STATE_BYTES: usize = 24;
/// Fixed bytes of a write payload besides its entries and optional hard state.
pub const WRITE_FIXED_BYTES: usize = 1 + 4 + 8;
/// Bytes an entry adds to a write payload besides its data.
pub const ENTRY_HEADER_BYTES: usize = 8 + 1 + 4;
/// Magic at the start of every segment-header payload.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SKIFFWAL";
/// Format version of segments.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Magic at the start of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SKIFSNAP";
/// Magic inside a snapshot trailer.
pub const SNAPSHOT_TRAILER_MAGIC: [u8; 8] = *b"SNAPEND1";
/// Format version of snapshots.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Bytes of a snapshot trailer.
pub const SNAPSHOT_TRAILER_BYTES: usize = 8 + 4 + 8 + 4;
/// Most member ids a snapshot header may list (a bound for decoders).
pub const MAX_SNAPSHOT_MEMBERS: usize = 4096;

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError(pub String);

impl std::fmt::Display for FormatError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

fn format_error<T>(message: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError(message.into()))
}

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordType {
    /// The first record of every segment.
    SegmentHeader,
    /// Entries and/or a hard state written by one group commit.
    Write,
}

impl RecordType {
    /// The on-disk code.
    pub fn code(self) -> u8 {
        match self {
            RecordType::SegmentHeader => 1,
            RecordType::Write => 2,
        }
    }

    /// Inverse of [`RecordType::code`].
    pub fn from_code(code: u8) -> Option<RecordType> {
        match code {
            1 => Some(RecordType::SegmentHeader),
            2 => Some(RecordType::Write),
            _ => None,
        }
    }
}

/// A decoded, checked record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload bytes that follow the header.
    pub payload_length: u32,
    /// What the payload holds.
    pub record_type: RecordType,
    /// Record sequence number.
    pub sequence: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
}

/// Appends one whole record (header and payload) to `out`.
pub fn encode_record(out: &mut Vec<u8>, record_type: RecordType, sequence: u64, payload: &[u8]) {
    let start = out.len();
    out.resize(start + RECORD_HEADER_BYTES, 0);
    out.extend_from_slice(payload);
    finish_record(&mut out[start..], record_type, sequence);
}

/// A buffer for one record whose payload is appended in place (no copy): the header bytes are
/// reserved, and [`finish_record`] fills them once the payload is complete.
pub fn begin_record(payload_capacity: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(RECORD_HEADER_BYTES + payload_capacity);
    buffer.resize(RECORD_HEADER_BYTES, 0);
    buffer
}

/// Fills the header of `record` (header bytes followed by the payload).
pub fn finish_record(record: &mut [u8], record_type: RecordType, sequence: u64) {
    assert!(record.len() >= RECORD_HEADER_BYTES);
    let payload_length = record.len() - RECORD_HEADER_BYTES;
    assert!(
        payload_length <= u32::MAX as usize,
        "record payload too large"
    );
    let payload_crc = crc32c::crc32c(&record[RECORD_HEADER_BYTES..]);
    record[0..4].copy_from_slice(&(payload_length as u32).to_le_bytes());
    record[4] = record_type.code();
    record[5..8].copy_from_slice(&[0, 0, 0]);
    record[8..16].copy_from_slice(&sequence.to_le_bytes());
    record[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&record[..20]);
    record[20..24].copy_from_slice(&header_crc.to_le_bytes());
}

/// Decodes and checks a record header. `max_payload_bytes` is the configured record limit.
pub fn decode_record_header(
    bytes: &[u8],
    max_payload_bytes: u64,
) -> Result<RecordHeader, FormatError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return format_error("record header is cut short");
    }
    if bytes[..RECORD_HEADER_BYTES].iter().all(|byte| *byte == 0) {
        return format_error("zeros instead of a record header");
    }
    let header_crc = read_u32(&bytes[20..24]);
    if crc32c::crc32c(&bytes[..20]) != header_crc {
        return format_error("record header checksum mismatch");
    }
    let payload_length = read_u32(&bytes[0..4]);
    let Some(record_type) = RecordType::from_code(bytes[4]) else {
        return format_error(format!("unknown record type {}", bytes[4]));
    };
    if bytes[5..8] != [0, 0, 0] {
        return format_error("reserved record header bytes are not zero");
    }
    if u64::from(payload_length) > max_payload_bytes {
        return format_error(format!(
            "record payload of {payload_length} bytes exceeds the limit of {max_payload_bytes}"
        ));
    }
    Ok(RecordHeader {
        payload_length,
        record_type,
        sequence: read_u64(&bytes[8..16]),
        payload_crc: read_u32(&bytes[16..20]),
    })
}

/// Checks a payload against its header's checksum.
pub fn check_payload(header: &RecordHeader, payload: &[u8]) -> Result<(), FormatError> {
    if payload.len() != header.payload_length as usize {
        return format_error("record payload is cut short");
    }
    if crc32c::crc32c(payload) != header.payload_crc {
        return format_error("record payload checksum mismatch");
    }
    Ok(())
}

/// The payload of a segment-header record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's sequence number (as in its file name).
    pub segment_sequence: u64,
    /// The hard state current when the segment was created.
    pub hard_state: HardState,
}

/// Encodes a segment-header payload.
pub fn encode_segment_header(header: &SegmentHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEGMENT_HEADER_PAYLOAD_BYTES);
    out.extend_from_slice(&SEGMENT_MAGIC);
    out.extend_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.segment_sequence.to_le_bytes());
    encode_hard_state(&mut out, &header.hard_state);
    assert_eq!(out.len(), SEGMENT_HEADER_PAYLOAD_BYTES);
    out
}

/// Decodes a segment-header payload.
pub fn decode_segment_header(payload: &[u8]) -> Result<SegmentHeader, FormatError> {
    if payload.len() != SEGMENT_HEADER_PAYLOAD_BYTES {
        return format_error("segment header has the wrong length");
    }
    if payload[..8] != SEGMENT_MAGIC {
        return format_error("segment header magic mismatch");
    }
    let version = read_u32(&payload[8..12]);
    if version != SEGMENT_FORMAT_VERSION {
        return format_error(format!("unsupported segment format version {version}"));
    }
    Ok(SegmentHeader {
        segment_sequence: read_u64(&payload[12..20]),
        hard_state: decode_hard_state(&payload[20..44]),
    })
}

/// Appends an encoded hard state (24 bytes).
pub fn encode_hard_state(out: &mut Vec<u8>, hard_state: &HardState) {
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
}

fn decode_hard_state(bytes: &[u8]) -> HardState {
    assert_eq!(bytes.len(), HARD_STATE_BYTES);
    let vote = read_u64(&bytes[8..16]);
    HardState {
        term: read_u64(&bytes[0..8]),
        vote: if vote == 0 { None } else { Some(vote) },
        commit: read_u64(&bytes[16..24]),
    }
}

/// Bytes an entry takes in a write payload.
pub fn encoded_entry_bytes(entry: &Entry) -> u64 {
    ENTRY_HEADER_BYTES as u64 + entry.data.len() as u64
}

/// Bytes of a write payload holding `entry_bytes` of encoded entries.
pub fn write_payload_bytes(has_hard_state: bool, entry_bytes: u64) -> u64 {
    let hard_state_bytes = if has_hard_state { HARD_STATE_BYTES } else { 0 };
    (WRITE_FIXED_BYTES + hard_state_bytes) as u64 + entry_bytes
}

/// Encodes a write payload. `first_index` is 0 for a write that leaves the log alone (a hard
/// state only), else the index from which the log is replaced: the first entry's index, or, with
/// no entries, the index from which the log is truncated. Entries must have consecutive indexes.
pub fn encode_write(
    hard_state: Option<&HardState>,
    first_index: u64,
    entries: &[Entry],
) -> Vec<u8> {
    let entry_bytes: u64 = entries.iter().map(encoded_entry_bytes).sum();
    let mut out =
        Vec::with_capacity(write_payload_bytes(hard_state.is_some(), entry_bytes) as usize);
    encode_write_into(&mut out, hard_state, first_index, entries);
    out
}

/// Appends a write payload to `out` (see [`encode_write`]).
pub fn encode_write_into(
    out: &mut Vec<u8>,
    hard_state: Option<&HardState>,
    first_index: u64,
    entries: &[Entry],
) {
    out.push(u8::from(hard_state.is_some()));
    if let Some(hard_state) = hard_state {
        encode_hard_state(out, hard_state);
    }
    assert!(entries.len() <= u32::MAX as usize);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    if let Some(first) = entries.first() {
        assert_eq!(first.index, first_index, "first entry index mismatch");
    }
    out.extend_from_slice(&first_index.to_le_bytes());
    for (position, entry) in entries.iter().enumerate() {
        assert_eq!(
            entry.index,
            first_index + position as u64,
            "entries not consecutive"
        );
        assert!(entry.data.len() <= u32::MAX as usize);
        out.extend_from_slice(&entry.term.to_le_bytes());
        out.push(entry.kind.code());
        out.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry.data);
    }
}

/// A decoded write payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The hard state it sets, if any.
    pub hard_state: Option<HardState>,
    /// 0 if the write leaves the log alone; else the index from which it replaces the log.
    pub first_index: u64,
    /// Its entries, consecutive; each entry's data is a copy of its own (see `decode_write`).
    pub entries: Vec<Entry>,
}

/// Decodes a write payload; entry data are copied out of `payload`, one allocation each.
pub fn decode_write(payload: &Bytes) -> Result<Write, FormatError> {
    let mut reader = Reader::new(payload);
    let flags = reader.u8()?;
    if flags & !1 != 0 {
        return format_error(format!("unknown write flags {flags:#x}"));
    }
    let hard_state = if flags & 1 == 1 {
        Some(decode_hard_state(reader.take(HARD_STATE_BYTES)?))
    } else {
        None
    };
    let count = reader.u32()? as usize;
    let first_index = reader.u64()?;
    // Each entry takes at least ENTRY_HEADER_BYTES, which bounds the count by the bytes present.
    if count > reader.remaining() / ENTRY_HEADER_BYTES {
        return format_error(format!("entry count {count} exceeds the payload"));
    }
    if count > 0 && first_index == 0 {
        return format_error("entries start at index 0");
    }
    if first_index == u64::MAX {
        return format_error("first index out of range");
    }
    if first_index.checked_add(count as u64).is_none() {
        return format_error("entry indexes overflow");
    }
    let mut entries = Vec::with_capacity(count);
    for position in 0..count as u64 {
        let term = reader.u64()?;
        let code = reader.u8()?;
        let Some(kind) = EntryKind::from_code(code) else {
            return format_error(format!("unknown entry kind {code}"));
        };
        let length = reader.u32()? as usize;
        let start = reader.position;
        reader.take(length)?;
        entries.push(Entry {
            term,
            index: first_index + position,
            kind,
            // A copy, not a slice: an entry can outlive the segment read into memory by far
            // (the state machine may keep its value), and must not keep all of it alive.
            data: Bytes::copy_from_slice(&payload[start..start + length]),
        });
    }
    if reader.remaining() != 0 {
        return format_error("trailing bytes after the last entry");
    }
    Ok(Write {
        hard_state,
        first_index,
        entries,
    })
}

/// Encodes a snapshot file header (magic, version, metadata, checksum).
pub fn encode_snapshot_header(meta: &SnapshotMeta) -> Vec<u8> {
    let mut metadata = Vec::new();
    metadata.extend_from_slice(&meta.index.to_le_bytes());
    metadata.extend_from_slice(&meta.term.to_le_bytes());
    for set in [
        &meta.membership.voters,
        &meta.membership.voters_outgoing,
        &meta.membership.learners,
    ] {
        assert!(set.len() <= MAX_SNAPSHOT_MEMBERS, "too many members");
        metadata.extend_from_slice(&(set.len() as u32).to_le_bytes());
        for id in set {
            metadata.extend_from_slice(&id.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(metadata.len() + 20);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u32).to_le_bytes());
    out.extend_from_slice(&metadata);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Largest snapshot header the decoder accepts.
pub const MAX_SNAPSHOT_HEADER_BYTES: usize = 16 + 16 + 3 * (4 + 8 * MAX_SNAPSHOT_MEMBERS) + 4;

/// Length of the snapshot header whose first 16 bytes are `prefix`, if plausible.
pub fn snapshot_header_length(prefix: &[u8]) -> Result<usize, FormatError> {
    if prefix.len() < 16 {
        return format_error("snapshot header is cut short");
    }
    if prefix[..8] != SNAPSHOT_MAGIC {
        return format_error("snapshot magic mismatch");
    }
    let version = read_u32(&prefix[8..12]);
    if version != SNAPSHOT_FORMAT_VERSION {
        return format_error(format!("unsupported snapshot format version {version}"));
    }
    let metadata_length = read_u32(&prefix[12..16]) as usize;
    let total = 16 + metadata_length + 4;
    if total > MAX_SNAPSHOT_HEADER_BYTES {
        return format_error("snapshot metadata too long");
    }
    Ok(total)
}

/// Decodes a whole snapshot header (as sized by [`snapshot_header_length`]).
pub fn decode_snapshot_header(bytes: &[u8]) -> Result<SnapshotMeta, FormatError> {
    let total = snapshot_header_length(bytes)?;
    if bytes.len() != total {
        return format_error("snapshot header has the wrong length");
    }
    let crc = read_u32(&bytes[total - 4..]);
    if crc32c::crc32c(&bytes[..total - 4]) != crc {
        return format_error("snapshot header checksum mismatch");
    }
    let mut reader = Reader::new(&bytes[16..total - 4]);
    let index = reader.u64()?;
    let term = reader.u64()?;
    let mut sets = Vec::with_capacity(3);
    for _ in 0..3 {
        let count = reader.u32()? as usize;
        if count > MAX_SNAPSHOT_MEMBERS || count > reader.remaining() / 8 {
            return format_error("member count exceeds the header");
        }
        let mut set = std::collections::BTreeSet::new();
        for _ in 0..count {
            set.insert(reader.u64()?);
        }
        sets.push(set);
    }
    if reader.remaining() != 0 {
        return format_error("trailing bytes in snapshot metadata");
    }
    let learners = sets.pop().expect("three sets");
    let voters_outgoing = sets.pop().expect("three sets");
    let voters = sets.pop().expect("three sets");
    Ok(SnapshotMeta {
        index,
        term,
        membership: Membership {
            voters,
            voters_outgoing,
            learners,
        },
    })
}

/// Encodes a snapshot trailer.
pub fn encode_snapshot_trailer(data_length: u64, data_crc: u32) -> [u8; SNAPSHOT_TRAILER_BYTES] {
    let mut out = [0u8; SNAPSHOT_TRAILER_BYTES];
    out[0..8].copy_from_slice(&data_length.to_le_bytes());
    out[8..12].copy_from_slice(&data_crc.to_le_bytes());
    out[12..20].copy_from_slice(&SNAPSHOT_TRAILER_MAGIC);
    let crc = crc32c::crc32c(&out[..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot trailer into (data length, data checksum).
pub fn decode_snapshot_trailer(bytes: &[u8]) -> Result<(u64, u32), FormatError> {
    if bytes.len() != SNAPSHOT_TRAILER_BYTES {
        return format_error("snapshot trailer has the wrong length");
    }
    if bytes[12..20] != SNAPSHOT_TRAILER_MAGIC {
        return format_error("snapshot trailer magic mismatch");
    }
    if crc32c::crc32c(&bytes[..20]) != read_u32(&bytes[20..24]) {
        return format_error("snapshot trailer checksum mismatch");
    }
    Ok((read_u64(&bytes[0..8]), read_u32(&bytes[8..12])))
}

/// The file name of segment `sequence`.
pub fn segment_file_name(sequence: u64) -> String {
    format!("{sequence:020}.wal")
}

/// The segment sequence named by `name`, if it names a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    parse_digits(digits)
}

/// The file name of the snapshot through `index` at `term`.
pub fn snapshot_file_name(index: u64, term: u64) -> String {
    format!("{index:020}-{term:020}.snap")
}

/// The (index, term) named by `name`, if it names a snapshot.
pub fn parse_snapshot_file_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".snap")?;
    let (index, term) = stem.split_once('-')?;
    Some((parse_digits(index)?, parse_digits(term)?))
}

fn parse_digits(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().expect("four bytes"))
}

fn read_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("eight bytes"))
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], FormatError> {
        if length > self.remaining() {
            return format_error("field runs past the end of the payload");
        }
        let slice = &self.bytes[self.position..self.position + length];
        self.position += length;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(read_u32(self.take(4)?))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(read_u64(self.take(8)?))
    }
}
