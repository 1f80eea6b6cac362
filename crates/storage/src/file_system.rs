//! The few file operations the store needs, behind a trait, so that the same log and snapshot
//! code runs on real files ([`OsFileSystem`]) and on the deterministic, fault-injecting
//! in-memory disk of the simulator ([`crate::SimulatedFileSystem`]). Crash tests then exercise
//! the real recovery code, not a model of it.
//!
//! A file system is one flat directory: names never contain a path separator.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StorageError};

/// One directory of files, as the store uses it.
pub trait FileSystem: Clone + Send + 'static {
    /// An open file.
    type File: StorageFile;

    /// Names of every file in the directory, in ascending order.
    fn list(&self) -> Result<Vec<String>>;
    /// Creates `name` (truncating it if it exists), open for reading and writing.
    fn create(&self, name: &str) -> Result<Self::File>;
    /// Opens the existing file `name` for reading and writing.
    fn open(&self, name: &str) -> Result<Self::File>;
    /// Renames `from` to `to`, replacing `to` if it exists. Durable only after
    /// [`FileSystem::sync_directory`].
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Deletes `name`. Durable only after [`FileSystem::sync_directory`].
    fn remove(&self, name: &str) -> Result<()>;
    /// Makes every creation, rename and deletion so far durable.
    fn sync_directory(&self) -> Result<()>;
    /// Whether recovery may read several files at once on threads. A deterministic file system
    /// (the simulator's) says no, so that the order of its operations is fixed.
    fn allows_parallel_reads(&self) -> bool {
        true
    }
    /// Whether the store may prepare a file (the next log segment) on a helper thread while it
    /// writes others. A deterministic file system (the simulator's) says no, so that the order
    /// of its operations is fixed.
    fn allows_background_work(&self) -> bool {
        true
    }
}

/// An open file of a [`FileSystem`].
pub trait StorageFile: Send {
    /// The file's name in its directory.
    fn name(&self) -> &str;
    /// The file's length in bytes.
    fn length(&self) -> Result<u64>;
    /// Fills `buffer` from `offset`; an error if the file ends first.
    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<()>;
    /// Writes all of `bytes` at `offset`, extending the file if needed.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> Result<()>;
    /// Writes `offset..offset + length` back to the disk and waits for it, without flushing
    /// the disk's cache or any metadata (`sync_file_range`): it makes nothing durable, it only
    /// spreads the write-back of a large file over time, so that a later `sync_data` has
    /// little left to write. The default does nothing.
    fn write_back(&mut self, offset: u64, length: u64) -> Result<()> {
        let _ = (offset, length);
        Ok(())
    }
}

/// How much of a large file being written (a segment prepared ahead, a snapshot) is written
/// back at a time with [`StorageFile::write_back`]. The disk then never has more than about
/// this much of it to write at once, so the log's next `fdatasync` does not wait behind tens
/// of megabytes of it (dirty pages flushed all at once by the kernel or by one final sync).
pub const WRITE_BACK_PIECE_BYTES: u64 = 2 << 20;

/// Real files in one directory of the operating system's file system.
#[derive(Clone, Debug)]
pub struct OsFileSystem {
    directory: PathBuf,
}

impl OsFileSystem {
    /// Uses `directory`, creating it (and syncing its parent) if it does not exist.
    pub fn new(directory: impl AsRef<Path>) -> Result<OsFileSystem> {
        let directory = directory.as_ref().to_path_buf();
        let display = directory.display().to_string();
        if !directory.exists() {
            fs::create_dir_all(&directory)
                .map_err(|error| StorageError::from_io("create directory", &display, error))?;
            if let Some(parent) = directory.parent() {
                let parent_display = parent.display().to_string();
                let parent_file = File::open(parent).map_err(|error| {
                    StorageError::from_io("open directory", &parent_display, error)
                })?;
                parent_file.sync_all().map_err(|error| {
                    StorageError::from_io("fsync directory", &parent_display, error)
                })?;
            }
        }
        Ok(OsFileSystem { directory })
    }

    /// The directory's path.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path(&self, name: &str) -> PathBuf {
        assert!(!name.contains('/'), "file names are flat: {name}");
        self.directory.join(name)
    }
}

impl FileSystem for OsFileSystem {
    type File = OsFile;

    fn list(&self) -> Result<Vec<String>> {
        let display = self.directory.display().to_string();
        let reader = fs::read_dir(&self.directory)
            .map_err(|error| StorageError::from_io("list", &display, error))?;
        let mut names = Vec::new();
        for item in reader {
            let item = item.map_err(|error| StorageError::from_io("list", &display, error))?;
            if let Ok(name) = item.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> Result<OsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path(name))
            .map_err(|error| StorageError::from_io("create", name, error))?;
        Ok(OsFile {
            file,
            name: name.to_string(),
        })
    }

    fn open(&self, name: &str) -> Result<OsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))
            .map_err(|error| StorageError::from_io("open", name, error))?;
        Ok(OsFile {
            file,
            name: name.to_string(),
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        fs::rename(self.path(from), self.path(to))
            .map_err(|error| StorageError::from_io("rename", from, error))
    }

    fn remove(&self, name: &str) -> Result<()> {
        fs::remove_file(self.path(name))
            .map_err(|error| StorageError::from_io("remove", name, error))
    }

    fn sync_directory(&self) -> Result<()> {
        let display = self.directory.display().to_string();
        let directory = File::open(&self.directory)
            .map_err(|error| StorageError::from_io("open directory", &display, error))?;
        directory
            .sync_all()
            .map_err(|error| StorageError::from_io("fsync directory", &display, error))
    }
}

/// An open real file.
#[derive(Debug)]
pub struct OsFile {
    file: File,
    name: String,
}

impl StorageFile for OsFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn length(&self) -> Result<u64> {
        let metadata = self
            .file
            .metadata()
            .map_err(|error| StorageError::from_io("stat", &self.name, error))?;
        Ok(metadata.len())
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buffer, offset)
            .map_err(|error| StorageError::from_io("read", &self.name, error))
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|error| StorageError::from_io("write", &self.name, error))
    }

    fn sync_data(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|error| StorageError::from_io("fdatasync", &self.name, error))
    }

    #[cfg(target_os = "linux")]
    fn write_back(&mut self, offset: u64, length: u64) -> Result<()> {
        use std::os::fd::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: the descriptor is open for as long as `self.file` lives; the call only
        // reads its arguments.
        let result = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset as libc::off64_t,
                length as libc::off64_t,
                flags,
            )
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            // A file system without it wrote nothing back: the later fdatasync does it all.
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP)
            ) {
                return Ok(());
            }
            // Any other error (EIO) must be reported here: waiting on the write-back consumes
            // the file's write-back error, so the next fdatasync might not report it.
            return Err(StorageError::from_io("sync_file_range", &self.name, error));
        }
        Ok(())
    }
}
