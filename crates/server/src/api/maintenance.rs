//! The `Maintenance` service: Status, Alarm, HashKV, Snapshot, MoveLeader, Defragment (Hash is
//! not supported).

use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::pin::Pin;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use skiff_etcd_proto::etcdserverpb as pb;
use skiff_etcd_proto::etcdserverpb::maintenance_server::Maintenance;
use skiff_kv::SnapshotCopy;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{current_header, header, ApiLimits};
use crate::backend::{Backend, ServerError};
use crate::node::unlinked_file;

/// The version `Status` reports: the etcd release whose client API Skiff implements, so clients
/// that check the server version (clientv3 `RejectOldCluster` wants ≥ 3.2) accept it.
pub const ETCD_VERSION: &str = "3.4.23";

/// etcdctl's `snapshot save` wants the data padded to a multiple of this before the hash.
const SNAPSHOT_ALIGNMENT: usize = 512;

/// etcd's `Maintenance` service over a [`Backend`].
#[derive(Clone, Debug)]
pub struct MaintenanceService<B> {
    backend: B,
    limits: ApiLimits,
}

impl<B: Backend> MaintenanceService<B> {
    /// The service over `backend`.
    pub fn new(backend: B, limits: ApiLimits) -> Self {
        MaintenanceService { backend, limits }
    }
}

/// The stream of snapshot chunks.
pub type SnapshotStream =
    Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send + 'static>>;

/// At most this many messages of a client's snapshot stream wait in memory to be sent.
const SNAPSHOT_QUEUE: usize = 4;

/// Writes `copy` to an unlinked scratch file in `dir`, zero-padded to a multiple of 512 bytes,
/// then sends it to `out` as etcd's snapshot stream: messages of at most `chunk_bytes`, each
/// with the number of data bytes still to come, then one with the SHA-256 of all the (padded)
/// data and `remaining_bytes` 0. The snapshot is never held in memory: a few messages are
/// (the channel's bound), however large the store. Stops early if the client is gone.
fn stream_snapshot(
    copy: &SnapshotCopy,
    dir: &Path,
    chunk_bytes: usize,
    out: &mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) -> std::io::Result<()> {
    let file = unlinked_file(dir, "client-snapshot")?;
    let mut writer = Hashing {
        inner: BufWriter::with_capacity(1 << 16, &file),
        hasher: Sha256::new(),
        len: 0,
    };
    copy.write(&mut writer).map_err(std::io::Error::other)?;
    let padded = writer.len.div_ceil(SNAPSHOT_ALIGNMENT as u64).max(1) * SNAPSHOT_ALIGNMENT as u64;
    let padding = vec![0u8; (padded - writer.len) as usize];
    writer.write_all(&padding)?;
    writer.flush()?;
    let digest = writer.hasher.finalize();
    let chunk_bytes = chunk_bytes.max(1) as u64;
    let mut sent = 0;
    while sent < padded {
        let mut blob = vec![0u8; chunk_bytes.min(padded - sent) as usize];
        file.read_exact_at(&mut blob, sent)?;
        sent += blob.len() as u64;
        let message = pb::SnapshotResponse {
            header: None,
            remaining_bytes: padded - sent,
            blob: Bytes::from(blob),
        };
        if out.blocking_send(Ok(message)).is_err() {
            return Ok(()); // the client went away
        }
    }
    let _ = out.blocking_send(Ok(pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: Bytes::copy_from_slice(&digest),
    }));
    Ok(())
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[tonic::async_trait]
impl<B: Backend> Maintenance for MaintenanceService<B> {
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        match AlarmAction::try_from(request.into_inner().action) {
            // No alarm is ever raised: listing or disarming answers an empty list.
            Ok(AlarmAction::Get) | Ok(AlarmAction::Deactivate) => {
                Ok(Response::new(pb::AlarmResponse {
                    header: current_header(&self.backend),
                    alarms: Vec::new(),
                }))
            }
            Ok(AlarmAction::Activate) => Err(Status::unimplemented(
                "skiff: raising alarms is not supported",
            )),
            Err(_) => Err(Status::invalid_argument("skiff: unknown alarm action")),
        }
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let status = self.backend.status();
        let revision = self.backend.read(|store| store.current_revision());
        let db_size = self.backend.db_size();
        Ok(Response::new(pb::StatusResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: status.cluster_id,
                member_id: status.member_id,
                revision,
                raft_term: status.raft_term,
            }),
            version: ETCD_VERSION.to_string(),
            db_size,
            leader: status.leader,
            raft_index: status.raft_index,
            raft_term: status.raft_term,
            raft_applied_index: status.raft_applied_index,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: status.is_learner,
        }))
    }

    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // Nothing to defragment: the store lives in memory and its log is compacted by snapshots.
        Ok(Response::new(pb::DefragmentResponse {
            header: current_header(&self.backend),
        }))
    }

    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        Err(Status::unimplemented(
            "skiff: Hash is not supported (hashes bbolt pages); use HashKV",
        ))
    }

    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<Response<pb::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        // Under the store's lock only the copy (no value is read); the hash, which reads every
        // value back, runs on a blocking thread while applying goes on.
        let (copy, current) = self
            .backend
            .read(|store| (store.hash_kv_copy(revision), store.current_revision()));
        let copy = copy.map_err(ServerError::Kv)?;
        let answer = tokio::task::spawn_blocking(move || copy.hash())
            .await
            .map_err(|error| Status::internal(format!("skiff: hash: {error}")))?;
        // etcd's header revision is the store's current revision, whatever was hashed.
        Ok(Response::new(pb::HashKvResponse {
            header: header(&self.backend, current),
            hash: answer.hash,
            compact_revision: answer.compact_revision,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        // The copy is taken under the store's lock; writing it (which reads every value back)
        // and sending it happen on a blocking thread, so neither the applier nor this runtime
        // waits for it.
        let copy = self.backend.read(|store| store.snapshot_copy());
        let dir = self.backend.scratch_dir();
        let chunk_bytes = self.limits.snapshot_chunk_bytes;
        let (out, messages) = mpsc::channel(SNAPSHOT_QUEUE);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = stream_snapshot(&copy, &dir, chunk_bytes, &out) {
                tracing::warn!(%error, "cannot send a snapshot to a client");
                let status = Status::internal(format!("skiff: snapshot: {error}"));
                let _ = out.blocking_send(Err(status));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(messages))))
    }

    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        self.backend.move_leader(target).await?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: current_header(&self.backend),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::scratch::Scratch;
    use skiff_kv::{Command, KvConfig, Operation, PutRequest, Store};

    fn store(puts: usize) -> Store {
        let mut store = Store::new(KvConfig::default()).expect("default config");
        for index in 0..puts {
            let put = PutRequest {
                key: Bytes::from(format!("key/{index}")),
                value: Bytes::from(vec![b'v'; 300]),
                ..PutRequest::default()
            };
            store.apply(index as u64 + 1, &Command::new(Operation::Put(put)));
        }
        store
    }

    #[test]
    fn a_client_snapshot_streams_from_an_unlinked_file_with_etcds_framing() {
        let store = store(200);
        let scratch = Scratch::new("client-snapshot");
        let dir = scratch.path().to_path_buf();
        let (out, mut messages) = mpsc::channel(SNAPSHOT_QUEUE);
        let copy = store.snapshot_copy();
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || stream_snapshot(&copy, &dir, 4000, &out))
        };
        let mut received = Vec::new();
        while let Some(message) = messages.blocking_recv() {
            received.push(message.expect("no error"));
            // Only the file holds the snapshot, and no name points at it.
            assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        }
        writer.join().unwrap().expect("streamed");
        let (digest, chunks) = received.split_last().unwrap();
        assert_eq!(digest.remaining_bytes, 0);
        let data: Vec<u8> = chunks.iter().flat_map(|m| m.blob.to_vec()).collect();
        assert!(chunks.len() > 10 && chunks.iter().all(|m| m.blob.len() <= 4000));
        assert_eq!(data.len() % SNAPSHOT_ALIGNMENT, 0);
        assert_eq!(Sha256::digest(&data).as_slice(), &digest.blob[..]);
        let mut sent = 0;
        for chunk in chunks {
            sent += chunk.blob.len();
            assert_eq!(chunk.remaining_bytes as usize, data.len() - sent);
        }
        let mut expected = Vec::new();
        store.snapshot(&mut expected).unwrap();
        assert_eq!(&data[..expected.len()], &expected[..]);
        assert!(data[expected.len()..].iter().all(|byte| *byte == 0));
    }

    #[test]
    fn a_client_that_goes_away_stops_the_stream() {
        let store = store(200);
        let scratch = Scratch::new("client-snapshot-gone");
        let dir = scratch.path().to_path_buf();
        let (out, mut messages) = mpsc::channel(1);
        let copy = store.snapshot_copy();
        let writer = {
            let dir = dir.clone();
            std::thread::spawn(move || stream_snapshot(&copy, &dir, 100, &out))
        };
        assert!(messages.blocking_recv().is_some());
        drop(messages);
        writer
            .join()
            .unwrap()
            .expect("a gone client is not an error");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_is_an_error() {
        let store = store(10);
        let (out, _messages) = mpsc::channel(SNAPSHOT_QUEUE);
        let missing = std::env::temp_dir().join("skiff-no-such-directory/inside");
        let error = stream_snapshot(&store.snapshot_copy(), &missing, 100, &out).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
