//! The member's value log: a scratch file the key-value store keeps its values in (see
//! [`skiff_kv::ValueLog`]), so that they live in the kernel's page cache instead of the heap.
//!
//! The file is unlinked as soon as it is created: nothing reads it after a restart (the store
//! is rebuilt from a snapshot and the Raft log), so it needs no sync, no name and no cleanup.
//! Appends gather in a buffer of [`FLUSH_BYTES`] written with one call; reads of bytes still
//! in the buffer are served from it. An I/O error on this file is a failure of the member's
//! own disk, and panics.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use skiff_kv::ValueLog;

/// Appended bytes gathered before one write.
const FLUSH_BYTES: usize = 64 << 10;

/// A [`ValueLog`] in an unlinked file (see the module docs).
#[derive(Debug)]
pub struct FileValueLog {
    dir: PathBuf,
    file: File,
    tail: Mutex<Tail>,
}

#[derive(Debug)]
struct Tail {
    /// Bytes written to the file: everything before `buffer`.
    written: u64,
    buffer: Vec<u8>,
}

/// A new file in `dir`, already unlinked, so that its space is freed when it is closed,
/// whatever happens. Its name while it had one ended in `.tmp`: [`FileValueLog::clear_dir`]
/// removes one a crash left between the two steps.
pub(crate) fn unlinked_file(dir: &Path, prefix: &str) -> std::io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(format!(
        "{prefix}-{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

impl FileValueLog {
    /// A new, empty log in `dir` (created if missing).
    pub fn create_in(dir: &Path) -> std::io::Result<FileValueLog> {
        std::fs::create_dir_all(dir)?;
        let file = unlinked_file(dir, "values")?;
        Ok(FileValueLog {
            dir: dir.to_path_buf(),
            file,
            tail: Mutex::new(Tail {
                written: 0,
                buffer: Vec::with_capacity(FLUSH_BYTES),
            }),
        })
    }

    /// Removes what an earlier process may have left in `dir` (a crash between creating a log
    /// and unlinking it).
    pub fn clear_dir(dir: &Path) -> std::io::Result<()> {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry?.path();
                    if path.extension().is_some_and(|extension| extension == "tmp") {
                        std::fs::remove_file(path)?;
                    }
                }
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn failed(&self, what: &str, offset: u64, error: std::io::Error) -> ! {
        panic!(
            "value log in {}: {what} at offset {offset} failed: {error}",
            self.dir.display()
        )
    }
}

impl ValueLog for FileValueLog {
    fn append(&self, bytes: &[u8]) -> u64 {
        let mut tail = self.tail.lock().expect("value log lock");
        let offset = tail.written + tail.buffer.len() as u64;
        tail.buffer.extend_from_slice(bytes);
        if tail.buffer.len() >= FLUSH_BYTES {
            let written = tail.written;
            if let Err(error) = self.file.write_all_at(&tail.buffer, written) {
                self.failed("write", written, error);
            }
            tail.written += tail.buffer.len() as u64;
            tail.buffer.clear();
        }
        offset
    }

    fn read(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + len, 0);
        let into = &mut out[start..];
        let tail = self.tail.lock().expect("value log lock");
        let end = offset + len as u64;
        assert!(
            end <= tail.written + tail.buffer.len() as u64,
            "a value log read past its end"
        );
        // The part still in the buffer, then the part in the file (the file's bytes never
        // change, so it is read without the lock).
        let in_file = (tail.written.saturating_sub(offset) as usize).min(len);
        if in_file < len {
            let from = (offset + in_file as u64 - tail.written) as usize;
            into[in_file..].copy_from_slice(&tail.buffer[from..from + len - in_file]);
        }
        drop(tail);
        if in_file > 0 {
            if let Err(error) = self.file.read_exact_at(&mut into[..in_file], offset) {
                self.failed("read", offset, error);
            }
        }
    }

    fn len(&self) -> u64 {
        let tail = self.tail.lock().expect("value log lock");
        tail.written + tail.buffer.len() as u64
    }

    fn fresh(&self) -> Arc<dyn ValueLog> {
        match FileValueLog::create_in(&self.dir) {
            Ok(log) => Arc::new(log),
            Err(error) => panic!(
                "value log in {}: creating a fresh log failed: {error}",
                self.dir.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::scratch::Scratch;

    /// Reads see every appended byte, from the buffer, the file, or both at once, and nothing
    /// is left behind in the directory.
    #[test]
    fn reads_see_appends_across_the_buffer_and_the_file() {
        let dir = Scratch::new("values-reads");
        let log = FileValueLog::create_in(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut model = Vec::new();
        let mut places = Vec::new();
        // Values of many sizes, so that some straddle a flush and some exceed the buffer.
        for n in 0..400usize {
            let len = (n * 7919) % 3000 + if n % 97 == 0 { FLUSH_BYTES * 2 } else { 1 };
            let value: Vec<u8> = (0..len).map(|i| (i * 31 + n) as u8).collect();
            let offset = log.append(&value);
            assert_eq!(offset, model.len() as u64);
            model.extend_from_slice(&value);
            places.push((offset, len));
            assert_eq!(log.len(), model.len() as u64);
        }
        assert!(
            log.tail.lock().unwrap().written > 0,
            "some bytes reached the file"
        );
        assert!(
            !log.tail.lock().unwrap().buffer.is_empty(),
            "some are still buffered"
        );
        for &(offset, len) in &places {
            let mut out = vec![9u8];
            log.read(offset, len, &mut out);
            assert_eq!(out[0], 9, "a read appends");
            assert_eq!(&out[1..], &model[offset as usize..offset as usize + len]);
        }
        // One read across the file and the buffer.
        let written = log.tail.lock().unwrap().written as usize;
        let mut out = Vec::new();
        log.read(written as u64 - 10, 20, &mut out);
        assert_eq!(out, &model[written - 10..written + 10]);
        let fresh = log.fresh();
        assert!(fresh.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn leftovers_are_cleared() {
        let dir = Scratch::new("values-leftovers");
        std::fs::write(dir.path().join("values-1-0.tmp"), b"old").unwrap();
        FileValueLog::clear_dir(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        FileValueLog::clear_dir(&dir.path().join("missing")).unwrap();
    }
}
