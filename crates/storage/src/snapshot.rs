//! Snapshot files: streamed in, checksummed, published atomically (temporary file, fsync,
//! rename, directory fsync), streamed out with the checksum checked at the end.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use skiff_raft::SnapshotMeta;

use crate::error::{Result, StorageError};
use crate::file_system::{FileSystem, StorageFile, WRITE_BACK_PIECE_BYTES};
use crate::format::{
    decode_snapshot_header, decode_snapshot_trailer, encode_snapshot_header,
    encode_snapshot_trailer, snapshot_header_length, SNAPSHOT_TRAILER_BYTES,
};

/// Streams a snapshot into a temporary file. Write the state machine's bytes with
/// [`io::Write`], then hand it to the store's `finish_snapshot` to publish it. Dropping it
/// unfinished leaves a temporary file that the next open deletes.
///
/// The file is written back to the disk in pieces of [`WRITE_BACK_PIECE_BYTES`] as it
/// grows, so the sync that publishes it has little left to write, and the log's syncs on
/// the same disk never queue behind a whole snapshot.
pub struct FileSnapshotWriter<F: FileSystem> {
    file: F::File,
    meta: SnapshotMeta,
    offset: u64,
    /// The file is written back up to here.
    written_back: u64,
    data_length: u64,
    data_crc: u32,
    buffer: Vec<u8>,
    buffer_limit: usize,
    failed: bool,
    poisoned: Arc<AtomicBool>,
}

impl<F: FileSystem> FileSnapshotWriter<F> {
    pub(crate) fn create(
        file_system: &F,
        temporary_name: &str,
        meta: SnapshotMeta,
        buffer_limit: usize,
        poisoned: Arc<AtomicBool>,
    ) -> Result<FileSnapshotWriter<F>> {
        let mut file = file_system.create(temporary_name)?;
        let header = encode_snapshot_header(&meta);
        file.write_at(0, &header)?;
        Ok(FileSnapshotWriter {
            file,
            meta,
            offset: header.len() as u64,
            written_back: 0,
            data_length: 0,
            data_crc: 0,
            buffer: Vec::with_capacity(buffer_limit),
            buffer_limit,
            failed: false,
            poisoned,
        })
    }

    /// The metadata this snapshot will be published with.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The temporary file's name.
    pub fn temporary_name(&self) -> &str {
        self.file.name()
    }

    fn flush_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let result = self.file.write_at(self.offset, &self.buffer);
        self.checked(result)?;
        self.offset += self.buffer.len() as u64;
        self.buffer.clear();
        if self.offset - self.written_back >= WRITE_BACK_PIECE_BYTES {
            let result = self
                .file
                .write_back(self.written_back, self.offset - self.written_back);
            self.checked(result)?;
            self.written_back = self.offset;
        }
        Ok(())
    }

    /// Passes `result` on; a failed file operation also fails this writer and poisons the
    /// store.
    fn checked(&mut self, result: Result<()>) -> Result<()> {
        if result.is_err() {
            self.failed = true;
            self.poisoned.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Writes the trailer and makes the file durable; returns its metadata and file handle.
    pub(crate) fn seal(mut self) -> Result<(SnapshotMeta, F::File)> {
        if self.failed || self.poisoned.load(Ordering::SeqCst) {
            return Err(StorageError::Poisoned);
        }
        self.flush_buffer()?;
        let trailer = encode_snapshot_trailer(self.data_length, self.data_crc);
        let result = self
            .file
            .write_at(self.offset, &trailer)
            .and_then(|()| self.file.sync_data());
        self.checked(result)?;
        Ok((self.meta, self.file))
    }
}

impl<F: FileSystem> io::Write for FileSnapshotWriter<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("snapshot writer failed earlier"));
        }
        self.data_crc = crc32c::crc32c_append(self.data_crc, bytes);
        self.data_length += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= self.buffer_limit {
            self.flush_buffer().map_err(io::Error::other)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer().map_err(io::Error::other)
    }
}

/// Streams a published snapshot's data. The data checksum is checked when the end is reached;
/// a mismatch is an [`io::ErrorKind::InvalidData`] error from `read`.
pub struct FileSnapshotReader<F: FileSystem> {
    file: F::File,
    position: u64,
    data_end: u64,
    running_crc: u32,
    expected_crc: u32,
    checked: bool,
}

impl<F: FileSystem> io::Read for FileSnapshotReader<F> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let remaining = self.data_end - self.position;
        if remaining == 0 {
            if !self.checked {
                if self.running_crc != self.expected_crc {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot {} data checksum mismatch", self.file.name()),
                    ));
                }
                self.checked = true;
            }
            return Ok(0);
        }
        let length = (buffer.len() as u64).min(remaining) as usize;
        self.file
            .read_at(self.position, &mut buffer[..length])
            .map_err(io::Error::other)?;
        self.running_crc = crc32c::crc32c_append(self.running_crc, &buffer[..length]);
        self.position += length as u64;
        Ok(length)
    }
}

/// Opens the snapshot file `name`: checks its header and trailer and returns its metadata and
/// a reader positioned at the data.
pub(crate) fn open_snapshot_file<F: FileSystem>(
    file_system: &F,
    name: &str,
) -> Result<(SnapshotMeta, FileSnapshotReader<F>)> {
    let file = file_system.open(name)?;
    let length = file.length()?;
    let corrupt = |offset: u64, reason: String| StorageError::corrupt(name, offset, reason);
    if length < 16 + SNAPSHOT_TRAILER_BYTES as u64 {
        return Err(corrupt(
            0,
            format!("snapshot file of {length} bytes is too short"),
        ));
    }
    let mut prefix = [0u8; 16];
    file.read_at(0, &mut prefix)?;
    let header_length =
        snapshot_header_length(&prefix).map_err(|error| corrupt(0, error.to_string()))?;
    if header_length as u64 + SNAPSHOT_TRAILER_BYTES as u64 > length {
        return Err(corrupt(0, "snapshot header runs past the end".to_string()));
    }
    let mut header = vec![0u8; header_length];
    file.read_at(0, &mut header)?;
    let meta = decode_snapshot_header(&header).map_err(|error| corrupt(0, error.to_string()))?;
    let trailer_offset = length - SNAPSHOT_TRAILER_BYTES as u64;
    let mut trailer = [0u8; SNAPSHOT_TRAILER_BYTES];
    file.read_at(trailer_offset, &mut trailer)?;
    let (data_length, data_crc) = decode_snapshot_trailer(&trailer)
        .map_err(|error| corrupt(trailer_offset, error.to_string()))?;
    if header_length as u64 + data_length != trailer_offset {
        return Err(corrupt(
            trailer_offset,
            format!("trailer says {data_length} data bytes, the file holds a different amount"),
        ));
    }
    Ok((
        meta,
        FileSnapshotReader {
            file,
            position: header_length as u64,
            data_end: trailer_offset,
            running_crc: 0,
            expected_crc: data_crc,
            checked: false,
        },
    ))
}
