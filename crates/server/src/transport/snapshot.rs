//! Snapshot transfer: a snapshot's data streamed from a file on the sender to a file on the
//! receiver, in checksummed chunks, resumable, throttled. Neither side ever holds more than a
//! couple of chunks in memory.
//!
//! **Tokens.** Inside a member an InstallSnapshot message never carries the snapshot itself:
//! its `data` is a [`SnapshotToken`]. The sender's event loop attaches
//! [`SnapshotToken::Local`] (the published snapshot file); [`Transport::send`](super::Transport::send)
//! recognizes it and hands the message to a transfer task instead of the message stream. When
//! a transfer completes, the receiver hands its Raft core the same message with
//! [`SnapshotToken::Received`] naming the received file in its [`SnapshotInbox`].
//!
//! **Wire protocol** (`skiffpb.Peer`): the sender asks `SnapshotStatus(header)` how many bytes
//! the receiver holds (0 for a new transfer), then opens `InstallSnapshot(stream
//! SnapshotChunk)`: the first chunk carries the header (the encoded InstallSnapshot message,
//! the data's size and CRC32C), every chunk carries its offset, data (at most
//! [`TransportLimits::snapshot_chunk_bytes`](super::TransportLimits)) and the CRC32C of its
//! data. The receiver checks each chunk (offset continuity, CRC, bounds) before writing it at
//! its offset in a partial file and refuses the stream at the first bad chunk, keeping what
//! came before; the sender then asks for the status again and resumes from there. After the
//! last byte the receiver checks the whole CRC, renames the file to its final name and
//! delivers the message. A broken connection is handled the same way: status, then resume.
//!
//! **Memory.** The sender reads one chunk at a time from the file into a channel of capacity
//! one; the receiver writes each chunk before it reads the next message. Apart from HTTP/2's
//! flow-control windows, at most two or three chunks per transfer exist at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use skiff_etcd_proto::skiffpb::peer_client::PeerClient;
use skiff_etcd_proto::skiffpb::{SnapshotAck, SnapshotChunk, SnapshotHeader};
use skiff_raft::{Message, MessageBody, NodeId, SnapshotMeta};
use skiff_storage::format::{
    decode_snapshot_header, decode_snapshot_trailer, snapshot_header_length, SNAPSHOT_TRAILER_BYTES,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{codec, EventSink, PeerIdentity, TransportEvent, TransportLimits, PROTOCOL_VERSION};

const TOKEN_MAGIC: &[u8] = b"skiff-snapshot-token/1:";

/// What an InstallSnapshot message's `data` holds inside a member (never the snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotToken {
    /// Sending side: the published snapshot file (the storage's format: header, data,
    /// trailer) whose data is to be streamed.
    Local(PathBuf),
    /// Receiving side: the name of a complete, verified data file in the member's
    /// [`SnapshotInbox`] directory.
    Received(String),
}

impl SnapshotToken {
    /// The token as message data.
    pub fn encode(&self) -> Bytes {
        let (kind, text) = match self {
            SnapshotToken::Local(path) => (b'L', path.to_string_lossy().into_owned()),
            SnapshotToken::Received(name) => (b'R', name.clone()),
        };
        let mut out = Vec::with_capacity(TOKEN_MAGIC.len() + 1 + text.len());
        out.extend_from_slice(TOKEN_MAGIC);
        out.push(kind);
        out.extend_from_slice(text.as_bytes());
        Bytes::from(out)
    }

    /// Parses message data; `None` if it is not a token.
    pub fn decode(data: &[u8]) -> Option<SnapshotToken> {
        let rest = data.strip_prefix(TOKEN_MAGIC)?;
        let (&kind, text) = rest.split_first()?;
        let text = std::str::from_utf8(text).ok()?;
        match kind {
            b'L' => Some(SnapshotToken::Local(PathBuf::from(text))),
            b'R' if valid_received_name(text) => Some(SnapshotToken::Received(text.to_string())),
            _ => None,
        }
    }
}

/// A received file's name: `snapshot-<from>-<index>-<term>.recv`, nothing that leaves the
/// inbox directory.
fn valid_received_name(name: &str) -> bool {
    name.starts_with("snapshot-")
        && name.ends_with(".recv")
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
        && !name.contains("..")
}

fn received_name(from: NodeId, index: u64, term: u64) -> String {
    format!("snapshot-{from:016x}-{index:020}-{term:020}.recv")
}

fn partial_name(from: NodeId, index: u64, term: u64) -> String {
    format!("snapshot-{from:016x}-{index:020}-{term:020}.part")
}

/// A published snapshot file opened for streaming its data: the file stays readable even if
/// the log writer deletes it meanwhile (a newer snapshot replaced it).
pub struct SnapshotSource {
    file: File,
    meta: SnapshotMeta,
    data_start: u64,
    total: u64,
    crc: u32,
}

impl SnapshotSource {
    /// Opens a snapshot file written by `skiff-storage` and reads its header and trailer (not
    /// its data).
    pub fn open(path: &Path) -> io::Result<SnapshotSource> {
        let invalid = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {reason}", path.display()),
            )
        };
        let file = File::open(path)?;
        let length = file.metadata()?.len();
        if length < 16 + SNAPSHOT_TRAILER_BYTES as u64 {
            return Err(invalid(format!("{length} bytes is too short")));
        }
        let mut prefix = [0u8; 16];
        file.read_exact_at(&mut prefix, 0)?;
        let header_length =
            snapshot_header_length(&prefix).map_err(|error| invalid(error.to_string()))?;
        if header_length as u64 + SNAPSHOT_TRAILER_BYTES as u64 > length {
            return Err(invalid("header runs past the end".into()));
        }
        let mut header = vec![0u8; header_length];
        file.read_exact_at(&mut header, 0)?;
        let meta = decode_snapshot_header(&header).map_err(|error| invalid(error.to_string()))?;
        let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES];
        let trailer_offset = length - SNAPSHOT_TRAILER_BYTES as u64;
        file.read_exact_at(&mut trailer, trailer_offset)?;
        let (total, crc) =
            decode_snapshot_trailer(&trailer).map_err(|error| invalid(error.to_string()))?;
        if header_length as u64 + total != trailer_offset {
            return Err(invalid("trailer and file length disagree".into()));
        }
        Ok(SnapshotSource {
            file,
            meta,
            data_start: header_length as u64,
            total,
            crc,
        })
    }

    /// The snapshot's metadata (from the file's header).
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Size of the data in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// CRC32C of the whole data (from the trailer, written when the file was made).
    pub fn crc32c(&self) -> u32 {
        self.crc
    }

    /// Reads `length` data bytes at `offset` (clamped to the end).
    pub fn read_chunk(&self, offset: u64, length: usize) -> io::Result<Vec<u8>> {
        let length = (length as u64).min(self.total.saturating_sub(offset)) as usize;
        let mut buffer = vec![0u8; length];
        self.file
            .read_exact_at(&mut buffer, self.data_start + offset)?;
        Ok(buffer)
    }
}

/// Counters of snapshot transfers, for metrics and tests.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    /// Data bytes handed to outgoing streams.
    pub bytes_sent: AtomicU64,
    /// Outgoing transfers that completed.
    pub sent: AtomicU64,
    /// Outgoing transfers given up.
    pub failed: AtomicU64,
    /// Outgoing streams that resumed a transfer from a non-zero offset.
    pub resumed: AtomicU64,
    /// The offset the last resumed stream started at.
    pub last_resume_offset: AtomicU64,
    /// Data bytes accepted by this member's inbox.
    pub bytes_received: AtomicU64,
    /// Chunks refused by this member's inbox (bad CRC, wrong offset, out of bounds).
    pub chunks_refused: AtomicU64,
    /// Snapshots received completely by this member's inbox.
    pub received: AtomicU64,
}

/// Identifies one transfer from one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TransferKey {
    index: u64,
    term: u64,
    total: u64,
    crc: u32,
}

/// One incoming transfer: a partial file and how much of it is verified.
struct Transfer {
    key: TransferKey,
    from: NodeId,
    install: Message,
    file: Option<Arc<File>>,
    written: u64,
    running_crc: u32,
    complete: bool,
}

/// Where a member assembles snapshots streamed to it: one partial file per sender, renamed
/// when complete and verified. Shared by the peer service (which writes) and the member (which
/// takes complete files by their token).
pub struct SnapshotInbox {
    dir: PathBuf,
    transfers: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Transfer>>>>,
    stats: Arc<SnapshotStats>,
}

impl std::fmt::Debug for SnapshotInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotInbox")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Why a chunk was refused.
fn refuse(stats: &SnapshotStats, status: Status) -> Status {
    stats.chunks_refused.fetch_add(1, Ordering::Relaxed);
    status
}

impl SnapshotInbox {
    /// Uses `dir` (created if missing) and deletes what a previous run left in it: a transfer
    /// never survives a restart (the leader starts it over).
    pub fn new(dir: &Path) -> io::Result<Arc<SnapshotInbox>> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("snapshot-") && (name.ends_with(".part") || name.ends_with(".recv"))
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(Arc::new(SnapshotInbox {
            dir: dir.to_path_buf(),
            transfers: Mutex::new(HashMap::new()),
            stats: Arc::new(SnapshotStats::default()),
        }))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters of what this inbox received.
    pub fn stats(&self) -> &SnapshotStats {
        &self.stats
    }

    fn transfers(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<NodeId, Arc<tokio::sync::Mutex<Transfer>>>> {
        self.transfers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The transfer `header` names, created (replacing an older one from the same sender,
    /// whose files are deleted) if this inbox does not hold it.
    fn transfer(
        &self,
        key: TransferKey,
        from: NodeId,
        install: &Message,
    ) -> Result<Arc<tokio::sync::Mutex<Transfer>>, Status> {
        let mut transfers = self.transfers();
        if let Some(existing) = transfers.get(&from) {
            // A transfer in progress holds its lock; only a matching key may wait for it.
            let same = match existing.try_lock() {
                Ok(transfer) => transfer.key == key,
                Err(_) => true,
            };
            if same {
                return Ok(Arc::clone(existing));
            }
        }
        let path = self.dir.join(partial_name(from, key.index, key.term));
        let file = File::create(&path)
            .map_err(|error| Status::internal(format!("creating {}: {error}", path.display())))?;
        if let Some(old) = transfers.remove(&from) {
            if let Ok(old) = old.try_lock() {
                if old.key.index != key.index || old.key.term != key.term {
                    let _ = std::fs::remove_file(self.dir.join(partial_name(
                        from,
                        old.key.index,
                        old.key.term,
                    )));
                    let _ = std::fs::remove_file(self.dir.join(received_name(
                        from,
                        old.key.index,
                        old.key.term,
                    )));
                }
            }
        }
        let transfer = Arc::new(tokio::sync::Mutex::new(Transfer {
            key,
            from,
            install: install.clone(),
            file: Some(Arc::new(file)),
            written: 0,
            running_crc: 0,
            complete: false,
        }));
        transfers.insert(from, Arc::clone(&transfer));
        Ok(transfer)
    }

    /// How much of the transfer `header` names this inbox holds.
    async fn status(&self, header: &SnapshotHeader, key: TransferKey) -> SnapshotAck {
        let existing = self.transfers().get(&header.from).cloned();
        match existing {
            Some(transfer) => {
                let transfer = transfer.lock().await;
                if transfer.key == key {
                    SnapshotAck {
                        offset: transfer.written,
                        complete: transfer.complete,
                    }
                } else {
                    SnapshotAck::default()
                }
            }
            None => SnapshotAck::default(),
        }
    }

    /// Checks and writes one chunk; returns the completed message (with a
    /// [`SnapshotToken::Received`]) after the last one.
    async fn accept(
        &self,
        transfer: &mut Transfer,
        offset: u64,
        data: Bytes,
        crc: u32,
    ) -> Result<Option<Message>, Status> {
        if transfer.complete {
            return Err(refuse(
                &self.stats,
                Status::already_exists("snapshot already received"),
            ));
        }
        if offset != transfer.written {
            return Err(refuse(
                &self.stats,
                Status::out_of_range(format!(
                    "chunk at offset {offset}, expected {}",
                    transfer.written
                )),
            ));
        }
        if offset + data.len() as u64 > transfer.key.total {
            return Err(refuse(
                &self.stats,
                Status::out_of_range(format!(
                    "chunk of {} bytes at {offset} runs past the snapshot's {} bytes",
                    data.len(),
                    transfer.key.total
                )),
            ));
        }
        if crc32c::crc32c(&data) != crc {
            tracing::warn!(from = %format_args!("{:x}", transfer.from), offset, "snapshot chunk checksum mismatch, refused");
            return Err(refuse(
                &self.stats,
                Status::data_loss(format!("chunk at offset {offset}: checksum mismatch")),
            ));
        }
        let file = transfer
            .file
            .clone()
            .ok_or_else(|| Status::internal("snapshot file closed"))?;
        let length = data.len() as u64;
        let running = crc32c::crc32c_append(transfer.running_crc, &data);
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(|error| Status::internal(error.to_string()))?
            .map_err(|error| Status::internal(format!("writing snapshot: {error}")))?;
        transfer.written += length;
        transfer.running_crc = running;
        self.stats
            .bytes_received
            .fetch_add(length, Ordering::Relaxed);
        if transfer.written < transfer.key.total {
            return Ok(None);
        }
        let (from, index, term) = (transfer.from, transfer.key.index, transfer.key.term);
        let partial = self.dir.join(partial_name(from, index, term));
        if transfer.running_crc != transfer.key.crc {
            // The chunks were each intact, yet the whole is not what the sender described:
            // start over.
            transfer.written = 0;
            transfer.running_crc = 0;
            let _ = std::fs::remove_file(&partial);
            transfer.file = File::create(&partial).ok().map(Arc::new);
            return Err(refuse(
                &self.stats,
                Status::data_loss("snapshot checksum mismatch; transfer restarts"),
            ));
        }
        transfer.file = None;
        let name = received_name(from, index, term);
        std::fs::rename(&partial, self.dir.join(&name))
            .map_err(|error| Status::internal(format!("publishing received snapshot: {error}")))?;
        transfer.complete = true;
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let mut message = transfer.install.clone();
        if let MessageBody::InstallSnapshot { data, .. } = &mut message.body {
            *data = SnapshotToken::Received(name).encode();
        }
        tracing::info!(from = %format_args!("{from:x}"), index, term, bytes = transfer.key.total, "snapshot received");
        Ok(Some(message))
    }

    /// Checks a header against this member; returns the transfer key and the decoded message.
    fn check_header(
        identity: &PeerIdentity,
        header: &SnapshotHeader,
    ) -> Result<(TransferKey, Message), Status> {
        if header.cluster_id != identity.cluster_id {
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        if header.to != identity.member_id {
            return Err(Status::failed_precondition(
                "snapshot meant for another member",
            ));
        }
        if header.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "unsupported peer protocol version {}",
                header.protocol_version
            )));
        }
        let message = codec::decode(&header.install)
            .map_err(|error| Status::invalid_argument(format!("bad install message: {error}")))?;
        let MessageBody::InstallSnapshot { meta, data } = &message.body else {
            return Err(Status::invalid_argument(
                "the header must carry an InstallSnapshot message",
            ));
        };
        if message.from != header.from
            || message.from == identity.member_id
            || message.to != identity.member_id
            || !data.is_empty()
        {
            return Err(Status::invalid_argument("inconsistent snapshot header"));
        }
        let key = TransferKey {
            index: meta.index,
            term: meta.term,
            total: header.total_bytes,
            crc: header.crc32c,
        };
        Ok((key, message))
    }

    /// Streams a local snapshot (a message carrying [`SnapshotToken::Local`]) into this inbox
    /// through the same checks as the network path, in chunks of `chunk_bytes`, and returns
    /// the message to hand to the receiving member. For in-process clusters in tests.
    pub async fn receive_local(
        &self,
        message: &Message,
        chunk_bytes: usize,
    ) -> Result<Message, String> {
        let (meta, path) = local_source(message)?;
        let source = SnapshotSource::open(&path).map_err(|error| error.to_string())?;
        if source.meta().index != meta.index || source.meta().term != meta.term {
            return Err("snapshot file does not match the message".into());
        }
        let mut install = message.clone();
        if let MessageBody::InstallSnapshot { data, .. } = &mut install.body {
            *data = Bytes::new();
        }
        let key = TransferKey {
            index: meta.index,
            term: meta.term,
            total: source.total_bytes(),
            crc: source.crc32c(),
        };
        let transfer = self
            .transfer(key, message.from, &install)
            .map_err(|status| status.message().to_string())?;
        let mut transfer = transfer.lock().await;
        let mut offset = transfer.written;
        loop {
            let data = source
                .read_chunk(offset, chunk_bytes.max(1))
                .map_err(|error| error.to_string())?;
            let length = data.len() as u64;
            let crc = crc32c::crc32c(&data);
            if let Some(done) = self
                .accept(&mut transfer, offset, Bytes::from(data), crc)
                .await
                .map_err(|status| status.message().to_string())?
            {
                return Ok(done);
            }
            offset += length;
        }
    }

    /// The receiving side of `InstallSnapshot`: checks and writes chunks until the stream ends
    /// or a chunk is refused; delivers the message once the snapshot is complete.
    pub(super) async fn receive(
        &self,
        identity: &PeerIdentity,
        sink: &EventSink,
        mut chunks: tonic::Streaming<SnapshotChunk>,
    ) -> Result<SnapshotAck, Status> {
        let Some(first) = chunks.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let Some(header) = first.header.as_ref() else {
            return Err(Status::invalid_argument(
                "the first chunk must carry the header",
            ));
        };
        let (key, install) = Self::check_header(identity, header)?;
        let from = header.from;
        let transfer = self.transfer(key, from, &install)?;
        let mut transfer = transfer.lock().await;
        if transfer.key != key {
            return Err(Status::aborted("a newer transfer replaced this one"));
        }
        if transfer.complete {
            return Ok(SnapshotAck {
                offset: transfer.written,
                complete: true,
            });
        }
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(chunk) => chunk,
                None => match chunks.message().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => {
                        return Ok(SnapshotAck {
                            offset: transfer.written,
                            complete: false,
                        })
                    }
                    Err(status) => {
                        tracing::debug!(from = %format_args!("{from:x}"), held = transfer.written, error = %status, "snapshot stream broke");
                        return Err(status);
                    }
                },
            };
            let done = self
                .accept(&mut transfer, chunk.offset, chunk.data, chunk.crc32c)
                .await?;
            if let Some(message) = done {
                sink(TransportEvent::Messages(vec![message]));
                return Ok(SnapshotAck {
                    offset: transfer.written,
                    complete: true,
                });
            }
        }
    }

    /// The receiving side of `SnapshotStatus`.
    pub(super) async fn answer_status(
        &self,
        identity: &PeerIdentity,
        header: &SnapshotHeader,
    ) -> Result<SnapshotAck, Status> {
        let (key, _) = Self::check_header(identity, header)?;
        Ok(self.status(header, key).await)
    }
}

/// The metadata and source path of a message carrying a [`SnapshotToken::Local`].
fn local_source(message: &Message) -> Result<(SnapshotMeta, PathBuf), String> {
    match &message.body {
        MessageBody::InstallSnapshot { meta, data } => match SnapshotToken::decode(data) {
            Some(SnapshotToken::Local(path)) => Ok((meta.clone(), path)),
            _ => Err("InstallSnapshot without a local snapshot token".into()),
        },
        _ => Err("not an InstallSnapshot message".into()),
    }
}

/// True if `message` is an InstallSnapshot to stream with the snapshot protocol.
pub(super) fn is_local_snapshot(message: &Message) -> bool {
    matches!(&message.body, MessageBody::InstallSnapshot { data, .. }
        if matches!(SnapshotToken::decode(data), Some(SnapshotToken::Local(_))))
}

/// Paces a stream to a byte rate: a chunk may leave once the bytes before it would have taken
/// their time at `bytes_per_sec` (0: no limit).
struct Throttle {
    started: Instant,
    bytes: u64,
    bytes_per_sec: u64,
}

impl Throttle {
    fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            started: Instant::now(),
            bytes: 0,
            bytes_per_sec,
        }
    }

    async fn admit(&mut self, length: u64) {
        if self.bytes_per_sec > 0 {
            let due = self.started
                + Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_sec as f64);
            tokio::time::sleep_until(due).await;
        }
        self.bytes += length;
    }
}

/// Everything a transfer task needs.
pub(super) struct Outgoing {
    pub identity: Arc<PeerIdentity>,
    pub to: NodeId,
    pub urls: Vec<String>,
    pub limits: Arc<TransportLimits>,
    pub sink: EventSink,
    pub stats: Arc<SnapshotStats>,
}

impl Outgoing {
    /// Streams the snapshot `message` names to the peer, resuming after failures while they
    /// make progress, then reports the outcome as [`TransportEvent::SnapshotSent`].
    pub(super) async fn run(self, message: Message) {
        let (index, term) = match &message.body {
            MessageBody::InstallSnapshot { meta, .. } => (meta.index, meta.term),
            _ => (0, 0),
        };
        let peer = format!("{:x}", self.to);
        let result = self.transfer(&message).await;
        let success = match result {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(peer = %peer, index, term, "snapshot sent");
                true
            }
            Err(error) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = %peer, index, term, %error, "snapshot transfer failed");
                false
            }
        };
        (self.sink)(TransportEvent::SnapshotSent {
            peer: self.to,
            index,
            term,
            success,
        });
    }

    async fn transfer(&self, message: &Message) -> Result<(), String> {
        let (meta, path) = local_source(message)?;
        let source = tokio::task::spawn_blocking(move || SnapshotSource::open(&path))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("opening the snapshot: {error}"))?;
        if source.meta().index != meta.index || source.meta().term != meta.term {
            return Err("the snapshot file does not match the message".into());
        }
        let source = Arc::new(source);
        let mut install = message.clone();
        if let MessageBody::InstallSnapshot { data, .. } = &mut install.body {
            *data = Bytes::new();
        }
        let header = SnapshotHeader {
            cluster_id: self.identity.cluster_id,
            from: self.identity.member_id,
            to: self.to,
            protocol_version: PROTOCOL_VERSION,
            install: codec::encode(&install),
            total_bytes: source.total_bytes(),
            crc32c: source.crc32c(),
        };
        let mut fruitless = 0;
        let mut best = None::<u64>;
        let mut attempt = 0usize;
        let mut last_error = String::new();
        while fruitless < self.limits.snapshot_attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.limits.backoff_min * (fruitless as u32 + 1)).await;
            }
            let url = &self.urls[attempt % self.urls.len().max(1)];
            attempt += 1;
            match self.attempt(url, &header, &source).await {
                Ok(()) => return Ok(()),
                Err((held, error)) => {
                    tracing::debug!(peer = %format_args!("{:x}", self.to), held, %error, "snapshot stream interrupted");
                    last_error = error;
                    if best.is_none_or(|best| held > best) {
                        best = Some(held);
                        fruitless = 0;
                    } else {
                        fruitless += 1;
                    }
                }
            }
        }
        Err(last_error)
    }

    /// One connection: status, then the rest of the data. `Err` carries how much the peer
    /// was known to hold.
    async fn attempt(
        &self,
        url: &str,
        header: &SnapshotHeader,
        source: &Arc<SnapshotSource>,
    ) -> Result<(), (u64, String)> {
        if self.urls.is_empty() {
            return Err((0, "peer has no URLs".into()));
        }
        let channel = super::client::connect(url, &self.limits)
            .await
            .map_err(|error| (0, error))?;
        let mut client = PeerClient::new(channel)
            .max_encoding_message_size(self.limits.max_frame_bytes)
            .max_decoding_message_size(self.limits.max_frame_bytes);
        let status = client
            .snapshot_status(header.clone())
            .await
            .map_err(|status| (0, format!("status: {}", status.message())))?
            .into_inner();
        if status.complete {
            return Ok(());
        }
        let start = status.offset;
        if start > source.total_bytes() {
            return Err((
                0,
                format!("peer claims {start} bytes of {}", source.total_bytes()),
            ));
        }
        if start > 0 {
            self.stats.resumed.fetch_add(1, Ordering::Relaxed);
            self.stats
                .last_resume_offset
                .store(start, Ordering::Relaxed);
            tracing::info!(peer = %format_args!("{:x}", self.to), offset = start, "resuming snapshot transfer");
        }
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(1);
        let producer = {
            let source = Arc::clone(source);
            let header = header.clone();
            let chunk_bytes = self.limits.snapshot_chunk_bytes.max(1);
            let stats = Arc::clone(&self.stats);
            let mut throttle = Throttle::new(self.limits.snapshot_bytes_per_sec);
            async move {
                let mut offset = start;
                let mut first = true;
                while first || offset < source.total_bytes() {
                    let read = {
                        let source = Arc::clone(&source);
                        tokio::task::spawn_blocking(move || source.read_chunk(offset, chunk_bytes))
                    };
                    let data = match read.await {
                        Ok(Ok(data)) => data,
                        _ => return,
                    };
                    throttle.admit(data.len() as u64).await;
                    let length = data.len() as u64;
                    let chunk = SnapshotChunk {
                        header: first.then(|| header.clone()),
                        offset,
                        crc32c: crc32c::crc32c(&data),
                        data: Bytes::from(data),
                    };
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                    stats.bytes_sent.fetch_add(length, Ordering::Relaxed);
                    offset += length;
                    first = false;
                }
            }
        };
        let producer = tokio::spawn(producer);
        let result = client.install_snapshot(ReceiverStream::new(rx)).await;
        producer.abort();
        match result {
            Ok(ack) => {
                let ack = ack.into_inner();
                if ack.complete {
                    Ok(())
                } else {
                    Err((ack.offset, "peer ended the snapshot stream early".into()))
                }
            }
            Err(status) => {
                // How far it got is asked at the next attempt.
                let held = self.peek_status(&mut client, header).await;
                Err((held, format!("{:?}: {}", status.code(), status.message())))
            }
        }
    }

    async fn peek_status(
        &self,
        client: &mut PeerClient<tonic::transport::Channel>,
        header: &SnapshotHeader,
    ) -> u64 {
        match tokio::time::timeout(
            self.limits.connect_timeout,
            client.snapshot_status(header.clone()),
        )
        .await
        {
            Ok(Ok(ack)) => ack.into_inner().offset,
            _ => 0,
        }
    }
}
