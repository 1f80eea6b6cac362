//! A deterministic in-memory disk for the simulator and the crash tests.
//!
//! It remembers, per file, the bytes that were synced and the writes since; per directory, the
//! names that were synced and the creations, renames and deletions since. [`SimulatedFileSystem::crash`]
//! then builds what a power loss could leave (docs/storage-format.md §4): each unsynced write is
//! kept, dropped, cut at a random byte, torn into random 512-byte sectors, or ends in garbage;
//! each unsynced directory change is kept or lost. Faults can also be scheduled: the next write
//! or fsync fails, the disk holds only so many bytes (`ENOSPC`), or every operation after the
//! next `n` fails (a power cut in the middle of a sequence of operations).
//!
//! No clock and no OS randomness: every random choice comes from a [`Rng`] (the core's seeded generator) seeded
//! by the caller, and the same seed gives the same image.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StorageError};
use crate::file_system::{FileSystem, StorageFile};
use skiff_raft::Rng;

/// What a crash may do, beyond dropping unsynced bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashOptions {
    /// Unsynced writes may be torn (cut at a byte, or split into sectors) rather than kept or
    /// dropped whole.
    pub tear_writes: bool,
    /// A torn write may leave garbage (random bytes) instead of the old contents.
    pub garbage: bool,
    /// Unsynced creations, renames and deletions may be lost.
    pub lose_directory_changes: bool,
}

impl Default for CrashOptions {
    fn default() -> CrashOptions {
        CrashOptions {
            tear_writes: true,
            garbage: true,
            lose_directory_changes: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced_writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Clone, Debug)]
enum DirectoryChange {
    Link { name: String, inode: u64 },
    Rename { from: String, to: String },
    Remove { name: String },
}

#[derive(Debug, Default)]
struct Disk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    directory: BTreeMap<String, u64>,
    durable_directory: BTreeMap<String, u64>,
    unsynced_changes: Vec<DirectoryChange>,
    /// Bumped by every crash; handles from before a crash stop working.
    generation: u64,
    capacity_bytes: Option<u64>,
    fail_next_write: bool,
    fail_next_sync: bool,
    operations_before_power_cut: Option<u64>,
    power_cut: bool,
    operations: u64,
    data_syncs: u64,
    /// `(file name, offset, length)` of every write-back asked for, in order.
    write_backs: Vec<(String, u64, u64)>,
}

impl Disk {
    /// Counts an operation and reports an injected power cut.
    fn operation(&mut self, name: &str) -> Result<()> {
        self.operations += 1;
        if let Some(remaining) = self.operations_before_power_cut {
            if remaining == 0 {
                self.power_cut = true;
            } else {
                self.operations_before_power_cut = Some(remaining - 1);
            }
        }
        if self.power_cut {
            return Err(StorageError::from_io(
                "simulated operation",
                name,
                io::Error::other("simulated power cut"),
            ));
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.inodes
            .values()
            .map(|inode| inode.current.len() as u64)
            .sum()
    }

    fn inode_of(&self, name: &str) -> Result<u64> {
        self.directory.get(name).copied().ok_or_else(|| {
            StorageError::from_io("open", name, io::Error::from(io::ErrorKind::NotFound))
        })
    }
}

/// The simulated disk: a cheap handle, clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimulatedFileSystem {
    disk: Arc<Mutex<Disk>>,
}

impl SimulatedFileSystem {
    /// An empty disk without faults.
    pub fn new() -> SimulatedFileSystem {
        SimulatedFileSystem::default()
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Limits the total bytes of all files; a write beyond fails with `ENOSPC` after writing
    /// what fits. `None` removes the limit.
    pub fn set_capacity_bytes(&self, capacity_bytes: Option<u64>) {
        self.lock().capacity_bytes = capacity_bytes;
    }

    /// Makes the next file write fail with `EIO`.
    pub fn fail_next_write(&self) {
        self.lock().fail_next_write = true;
    }

    /// Makes the next `fdatasync` fail with `EIO` (and drop nothing yet: the crash decides).
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Lets `operations` more operations succeed, then fails every one until [`Self::crash`].
    pub fn power_cut_after(&self, operations: u64) {
        self.lock().operations_before_power_cut = Some(operations);
    }

    /// Operations performed so far (reads, writes, syncs and directory changes).
    pub fn operations(&self) -> u64 {
        self.lock().operations
    }

    /// `fdatasync` calls that succeeded so far.
    pub fn data_syncs(&self) -> u64 {
        self.lock().data_syncs
    }

    /// Every write-back asked for so far, `(file name, offset, length)` in order. A
    /// write-back makes nothing durable here, and it is not counted as an operation.
    pub fn write_backs(&self) -> Vec<(String, u64, u64)> {
        self.lock().write_backs.clone()
    }

    /// Simulates a power loss and reboot: every file and directory falls back to its synced
    /// state plus whatever of the unsynced changes `options` and `seed` let through. Clears
    /// the scheduled faults (but not the capacity). Open handles stop working.
    pub fn crash(&self, seed: u64, options: CrashOptions) {
        let mut rng = Rng::new(seed);
        let mut disk = self.lock();
        let disk = &mut *disk;
        for inode in disk.inodes.values_mut() {
            let mut image = std::mem::take(&mut inode.durable);
            for (offset, bytes) in std::mem::take(&mut inode.unsynced_writes) {
                apply_crashed_write(&mut image, offset, &bytes, options, &mut rng);
            }
            inode.current = image.clone();
            inode.durable = image;
        }
        let mut directory = disk.durable_directory.clone();
        for change in std::mem::take(&mut disk.unsynced_changes) {
            if options.lose_directory_changes && rng.chance(1, 2) {
                continue;
            }
            match change {
                DirectoryChange::Link { name, inode } => {
                    directory.insert(name, inode);
                }
                DirectoryChange::Rename { from, to } => {
                    if let Some(inode) = directory.remove(&from) {
                        directory.insert(to, inode);
                    }
                }
                DirectoryChange::Remove { name } => {
                    directory.remove(&name);
                }
            }
        }
        disk.inodes
            .retain(|id, _| directory.values().any(|linked| linked == id));
        disk.durable_directory = directory.clone();
        disk.directory = directory;
        disk.generation += 1;
        disk.fail_next_write = false;
        disk.fail_next_sync = false;
        disk.operations_before_power_cut = None;
        disk.power_cut = false;
    }

    /// Every file's current contents, by name (what a reader would see now).
    pub fn image(&self) -> BTreeMap<String, Vec<u8>> {
        let disk = self.lock();
        disk.directory
            .iter()
            .map(|(name, inode)| (name.clone(), disk.inodes[inode].current.clone()))
            .collect()
    }

    /// The current contents of `name`, if it exists.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let disk = self.lock();
        let inode = disk.directory.get(name)?;
        Some(disk.inodes[inode].current.clone())
    }

    /// Overwrites bytes of `name` as if the medium changed them: synced and current contents
    /// both change, and no operation is counted.
    pub fn overwrite(&self, name: &str, offset: u64, bytes: &[u8]) {
        let mut disk = self.lock();
        let inode_id = disk.directory[name];
        let inode = disk.inodes.get_mut(&inode_id).expect("linked inode exists");
        write_into(&mut inode.current, offset, bytes);
        write_into(&mut inode.durable, offset, bytes);
    }

    /// Removes `name` at once and durably, as an operator's mistake would.
    pub fn delete(&self, name: &str) {
        let mut disk = self.lock();
        disk.directory.remove(name);
        disk.durable_directory.remove(name);
    }

    /// Flips one bit of `name`, as if the medium decayed: synced and current contents both
    /// change, and no operation is counted.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) {
        let mut disk = self.lock();
        let inode_id = disk.directory[name];
        let inode = disk.inodes.get_mut(&inode_id).expect("linked inode exists");
        let mask = 1u8 << (bit % 8);
        inode.current[offset as usize] ^= mask;
        if let Some(byte) = inode.durable.get_mut(offset as usize) {
            *byte ^= mask;
        }
    }
}

fn write_into(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[offset as usize..end].copy_from_slice(bytes);
}

/// Applies what a crash leaves of one unsynced write.
fn apply_crashed_write(
    image: &mut Vec<u8>,
    offset: u64,
    bytes: &[u8],
    options: CrashOptions,
    rng: &mut Rng,
) {
    let choices = if options.tear_writes { 5 } else { 2 };
    match rng.range(0, choices) {
        0 => {}
        1 => write_into(image, offset, bytes),
        2 => {
            // Cut at a random byte: a prefix reaches the disk.
            let kept = rng.range(0, bytes.len() as u64 + 1) as usize;
            write_into(image, offset, &bytes[..kept]);
        }
        3 => {
            // Sectors reach the disk in any order: a random subset of 512-byte pieces.
            for (position, piece) in bytes.chunks(512).enumerate() {
                if rng.chance(1, 2) {
                    write_into(image, offset + (position * 512) as u64, piece);
                }
            }
        }
        _ => {
            let kept = rng.range(0, bytes.len() as u64 + 1) as usize;
            write_into(image, offset, &bytes[..kept]);
            if options.garbage {
                let garbage: Vec<u8> = (kept..bytes.len()).map(|_| rng.next_u64() as u8).collect();
                write_into(image, offset + kept as u64, &garbage);
            }
        }
    }
}

impl FileSystem for SimulatedFileSystem {
    type File = SimulatedFile;

    fn list(&self) -> Result<Vec<String>> {
        let mut disk = self.lock();
        disk.operation("directory")?;
        Ok(disk.directory.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> Result<SimulatedFile> {
        let mut disk = self.lock();
        disk.operation(name)?;
        let inode = disk.next_inode;
        disk.next_inode += 1;
        disk.inodes.insert(inode, Inode::default());
        disk.directory.insert(name.to_string(), inode);
        disk.unsynced_changes.push(DirectoryChange::Link {
            name: name.to_string(),
            inode,
        });
        Ok(SimulatedFile {
            file_system: self.clone(),
            inode,
            generation: disk.generation,
            name: name.to_string(),
        })
    }

    fn open(&self, name: &str) -> Result<SimulatedFile> {
        let mut disk = self.lock();
        disk.operation(name)?;
        let inode = disk.inode_of(name)?;
        Ok(SimulatedFile {
            file_system: self.clone(),
            inode,
            generation: disk.generation,
            name: name.to_string(),
        })
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut disk = self.lock();
        disk.operation(from)?;
        let inode = disk.inode_of(from)?;
        disk.directory.remove(from);
        disk.directory.insert(to.to_string(), inode);
        disk.unsynced_changes.push(DirectoryChange::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<()> {
        let mut disk = self.lock();
        disk.operation(name)?;
        disk.inode_of(name)?;
        disk.directory.remove(name);
        disk.unsynced_changes.push(DirectoryChange::Remove {
            name: name.to_string(),
        });
        Ok(())
    }

    fn allows_parallel_reads(&self) -> bool {
        false
    }

    fn allows_background_work(&self) -> bool {
        false
    }

    fn sync_directory(&self) -> Result<()> {
        let mut disk = self.lock();
        disk.operation("directory")?;
        disk.durable_directory = disk.directory.clone();
        disk.unsynced_changes.clear();
        // Files that are no longer linked anywhere are gone for good.
        let disk = &mut *disk;
        let linked: Vec<u64> = disk.directory.values().copied().collect();
        disk.inodes.retain(|id, _| linked.contains(id));
        Ok(())
    }
}

/// An open file of a [`SimulatedFileSystem`].
#[derive(Debug)]
pub struct SimulatedFile {
    file_system: SimulatedFileSystem,
    inode: u64,
    generation: u64,
    name: String,
}

impl SimulatedFile {
    fn with_inode<T>(&self, action: impl FnOnce(&mut Disk, u64) -> Result<T>) -> Result<T> {
        let mut disk = self.file_system.lock();
        if disk.generation != self.generation || !disk.inodes.contains_key(&self.inode) {
            return Err(StorageError::from_io(
                "use",
                &self.name,
                io::Error::other("file handle from before a simulated crash"),
            ));
        }
        disk.operation(&self.name)?;
        action(&mut disk, self.inode)
    }
}

impl StorageFile for SimulatedFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn length(&self) -> Result<u64> {
        self.with_inode(|disk, inode| Ok(disk.inodes[&inode].current.len() as u64))
    }

    fn read_at(&self, offset: u64, buffer: &mut [u8]) -> Result<()> {
        let name = self.name.clone();
        self.with_inode(|disk, inode| {
            let current = &disk.inodes[&inode].current;
            let end = offset.checked_add(buffer.len() as u64);
            match end {
                Some(end) if end <= current.len() as u64 => {
                    buffer.copy_from_slice(&current[offset as usize..end as usize]);
                    Ok(())
                }
                _ => Err(StorageError::from_io(
                    "read",
                    &name,
                    io::Error::from(io::ErrorKind::UnexpectedEof),
                )),
            }
        })
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let name = self.name.clone();
        self.with_inode(|disk, inode| {
            if disk.fail_next_write {
                disk.fail_next_write = false;
                return Err(StorageError::from_io(
                    "write",
                    &name,
                    io::Error::other("simulated write failure"),
                ));
            }
            let current_length = disk.inodes[&inode].current.len() as u64;
            let growth = (offset + bytes.len() as u64).saturating_sub(current_length);
            let mut fitting = bytes;
            let mut no_space = false;
            if let Some(capacity) = disk.capacity_bytes {
                let free = capacity.saturating_sub(disk.used_bytes());
                if growth > free {
                    let fitting_length = (current_length + free).saturating_sub(offset) as usize;
                    fitting = &bytes[..fitting_length.min(bytes.len())];
                    no_space = true;
                }
            }
            let node = disk.inodes.get_mut(&inode).expect("checked above");
            write_into(&mut node.current, offset, fitting);
            node.unsynced_writes.push((offset, fitting.to_vec()));
            if no_space {
                return Err(StorageError::from_io(
                    "write",
                    &name,
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            Ok(())
        })
    }

    fn write_back(&mut self, offset: u64, length: u64) -> Result<()> {
        self.file_system
            .lock()
            .write_backs
            .push((self.name.clone(), offset, length));
        Ok(())
    }

    fn sync_data(&mut self) -> Result<()> {
        let name = self.name.clone();
        self.with_inode(|disk, inode| {
            if disk.fail_next_sync {
                disk.fail_next_sync = false;
                return Err(StorageError::from_io(
                    "fdatasync",
                    &name,
                    io::Error::other("simulated fdatasync failure"),
                ));
            }
            let node = disk.inodes.get_mut(&inode).expect("checked above");
            for (offset, bytes) in std::mem::take(&mut node.unsynced_writes) {
                write_into(&mut node.durable, offset, &bytes);
            }
            disk.data_syncs += 1;
            Ok(())
        })
    }
}
