//! Snapshots as files, never as one buffer.
//!
//! - Sending: the event loop attaches to each InstallSnapshot a [`SnapshotToken::Local`] naming
//!   the published snapshot file in the log directory; the transport streams that file.
//! - Receiving: the transport assembles the data in the member's snapshot directory and
//!   delivers the message with a [`SnapshotToken::Received`]. Before the core sees it, the
//!   event loop opens that file and unlinks it ([`ReceivedSnapshot::take`]): the open file is
//!   shared by the log writer (which copies it into the log store as the member's snapshot)
//!   and the applier (which restores the state machine from it), and disappears when both are
//!   done, or at once if the core ignores the message.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use skiff_raft::SnapshotMeta;
use skiff_storage::format::snapshot_file_name;

use crate::transport::SnapshotToken;

/// A complete snapshot received from the leader: an open, unlinked data file.
pub(crate) struct ReceivedSnapshot {
    file: File,
    length: u64,
}

impl ReceivedSnapshot {
    /// Opens (and unlinks) the file that the token in `data` names in `dir`. `None` if `data`
    /// is not a received-snapshot token or the file is gone (replaced by a newer transfer).
    pub fn take(dir: &Path, data: &[u8]) -> Option<Arc<ReceivedSnapshot>> {
        let Some(SnapshotToken::Received(name)) = SnapshotToken::decode(data) else {
            return None;
        };
        let path = dir.join(name);
        let file = File::open(&path).ok()?;
        let length = file.metadata().ok()?.len();
        let _ = std::fs::remove_file(&path);
        Some(Arc::new(ReceivedSnapshot { file, length }))
    }

    /// Size of the data in bytes.
    pub fn len(&self) -> u64 {
        self.length
    }

    /// Streams the data from the start (positional reads: readers do not interfere).
    pub fn reader(&self) -> impl Read + '_ {
        PositionalReader {
            file: &self.file,
            position: 0,
            end: self.length,
        }
    }
}

struct PositionalReader<'a> {
    file: &'a File,
    position: u64,
    end: u64,
}

impl Read for PositionalReader<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let length = (buffer.len() as u64).min(self.end - self.position) as usize;
        if length == 0 {
            return Ok(0);
        }
        let read = self.file.read_at(&mut buffer[..length], self.position)?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.position += read as u64;
        Ok(read)
    }
}

/// The token an outgoing InstallSnapshot carries: the published file of snapshot `meta` in
/// the log directory `wal_dir`.
pub(crate) fn local_token(wal_dir: &Path, meta: &SnapshotMeta) -> Bytes {
    SnapshotToken::Local(wal_dir.join(snapshot_file_name(meta.index, meta.term))).encode()
}
