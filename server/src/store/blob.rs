//! Attachment blobs: opaque ciphertext the relay stores between upload and download.
//!
//! A narrow, object-safe, blocking trait ([`BlobStore`]); the connection shell calls it
//! from `tokio::task::spawn_blocking`. Two implementations: [`FsBlobStore`] (one file per
//! blob in `<data_dir>/blobs/`, named by the blob id in hex, never by anything else a peer
//! sent) and [`MemoryBlobStore`] (tests, the in-memory backend).
//!
//! Contract:
//! * An upload is `begin(blob_id, size)` → [`BlobWriter::write`]… → [`BlobWriter::commit`].
//!   `begin` refuses a blob larger than [`MAX_BLOB_LEN`] (`TooLarge`), an id that is
//!   stored or being uploaded (`Conflict`), and a blob that would take the store past its
//!   total cap (`QuotaExceeded`; the size is reserved until commit or abort). Writing past
//!   the announced size is `TooLarge`; committing short of it is `Incomplete`.
//! * `commit` returns only once the blob is durable (file store: temp file written,
//!   fsynced, renamed to its final name, directory fsynced). A writer dropped without
//!   commit leaves nothing behind.
//! * A committed blob is readable until deleted or expired (`committed + ttl <= now`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

// The relay's one reading of the wall clock.
use crate::relay::unix_ms as now_ms;

use sealpost_protocol::hexid::Hex16;
use sealpost_protocol::wire::MAX_BLOB_LEN;

use super::StoreError;

/// A blob id (random, chosen by the uploader).
pub type BlobId = [u8; 16];

/// A committed blob opened for reading: its size and a reader.
pub type OpenBlob = (u64, Box<dyn BlobReader>);

/// Suffix of in-progress upload files; leftovers are removed when the store opens.
const TMP_SUFFIX: &str = ".partial";

/// A blob storage failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob is larger than allowed.
    #[error("blob of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
    /// A blob with this id is stored or being uploaded.
    #[error("blob already exists")]
    Conflict,
    /// The store's total cap would be exceeded.
    #[error("blob storage full ({used} of at most {max} bytes in use)")]
    QuotaExceeded {
        /// Bytes stored or reserved.
        used: u64,
        /// The cap.
        max: u64,
    },
    /// Commit before all announced bytes were written.
    #[error("blob incomplete: {written} of {size} bytes")]
    Incomplete {
        /// Bytes written.
        written: u64,
        /// Bytes announced.
        size: u64,
    },
    /// I/O failed (details are logged, not sent to peers).
    #[error("blob storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<BlobError> for StoreError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::Conflict => StoreError::Conflict("blob"),
            BlobError::QuotaExceeded { used, max } => StoreError::QuotaExceeded {
                what: "blob storage bytes",
                current: used,
                max,
            },
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// Limits of a blob store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLimits {
    /// Largest blob, bytes (at most [`MAX_BLOB_LEN`]).
    pub max_blob: u64,
    /// Most bytes stored and reserved at once.
    pub max_total: u64,
    /// How long a committed blob is kept.
    pub ttl: Duration,
}

impl BlobLimits {
    /// The limits configured for the relay (blobs live as long as envelopes).
    pub fn from_limits(l: &crate::config::Limits) -> Self {
        Self {
            max_blob: MAX_BLOB_LEN,
            max_total: l.blob_max_total_bytes,
            ttl: Duration::from_secs(l.envelope_ttl_secs),
        }
    }
}

impl Default for BlobLimits {
    fn default() -> Self {
        Self {
            max_blob: MAX_BLOB_LEN,
            max_total: 10 * 1024 * 1024 * 1024,
            ttl: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Store, read, delete and expire blobs. Methods block (file I/O): call them from
/// `spawn_blocking` in async code.
pub trait BlobStore: Send + Sync + 'static {
    /// Start an upload of `size` bytes.
    fn begin(&self, id: BlobId, size: u64) -> Result<Box<dyn BlobWriter>, BlobError>;
    /// Open a committed blob: its size and a reader, or `None` if unknown or expired.
    fn open(&self, id: &BlobId) -> Result<Option<OpenBlob>, BlobError>;
    /// Delete a blob; true if it existed.
    fn delete(&self, id: &BlobId) -> Result<bool, BlobError>;
    /// Delete blobs committed at or before `now_ms - ttl`; returns how many.
    fn expire(&self, now_ms: u64) -> Result<u64, BlobError>;
    /// Bytes stored plus reserved by uploads in progress.
    fn used_bytes(&self) -> u64;
}

/// An upload in progress. Dropping it without [`BlobWriter::commit`] discards it.
pub trait BlobWriter: Send {
    /// Append bytes.
    fn write(&mut self, data: &[u8]) -> Result<(), BlobError>;
    /// Bytes written so far.
    fn written(&self) -> u64;
    /// Make the blob durable and visible.
    fn commit(self: Box<Self>) -> Result<(), BlobError>;
}

/// A committed blob being read.
pub trait BlobReader: Send {
    /// Read up to `buf.len()` bytes; 0 at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlobError>;
}

/// Bookkeeping shared by both implementations: bytes in use, ids being uploaded.
#[derive(Default)]
struct Ledger {
    used: u64,
    uploading: HashSet<BlobId>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn check_begin(
    limits: &BlobLimits,
    ledger: &mut Ledger,
    id: BlobId,
    size: u64,
    exists: bool,
) -> Result<(), BlobError> {
    let max = limits.max_blob.min(MAX_BLOB_LEN);
    if size > max {
        return Err(BlobError::TooLarge { size, max });
    }
    if exists || ledger.uploading.contains(&id) {
        return Err(BlobError::Conflict);
    }
    if ledger.used.saturating_add(size) > limits.max_total {
        return Err(BlobError::QuotaExceeded {
            used: ledger.used,
            max: limits.max_total,
        });
    }
    ledger.used += size;
    ledger.uploading.insert(id);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// File system

/// Blobs as files `<dir>/<hex id>`.
pub struct FsBlobStore {
    dir: PathBuf,
    limits: BlobLimits,
    ledger: Arc<Mutex<Ledger>>,
}

impl FsBlobStore {
    /// Open (creating) the directory, remove leftovers of interrupted uploads and count the
    /// bytes stored.
    pub fn open(dir: &Path, limits: BlobLimits) -> Result<Self, BlobError> {
        fs::create_dir_all(dir)?;
        let mut used = 0u64;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(TMP_SUFFIX) {
                fs::remove_file(entry.path())?;
            } else if parse_name(&name).is_some() {
                used += entry.metadata()?.len();
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            limits,
            ledger: Arc::new(Mutex::new(Ledger {
                used,
                uploading: HashSet::new(),
            })),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `id` is stored once committed.
    pub fn path_of(&self, id: &BlobId) -> PathBuf {
        self.dir.join(hex::encode(id))
    }
}

fn parse_name(name: &str) -> Option<BlobId> {
    name.parse::<Hex16>().ok().map(Hex16::into_bytes)
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    // Directories cannot be opened for fsync on every platform; where they can, do it.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl BlobStore for FsBlobStore {
    fn begin(&self, id: BlobId, size: u64) -> Result<Box<dyn BlobWriter>, BlobError> {
        let path = self.path_of(&id);
        {
            let mut ledger = lock(&self.ledger);
            check_begin(&self.limits, &mut ledger, id, size, path.exists())?;
        }
        let mut suffix = [0u8; 8];
        rand::Rng::fill(&mut rand::thread_rng(), &mut suffix);
        let tmp = self.dir.join(format!(
            "{}.{}{TMP_SUFFIX}",
            hex::encode(id),
            hex::encode(suffix)
        ));
        let mut writer = FsWriter {
            id,
            size,
            written: 0,
            file: None,
            tmp,
            path,
            dir: self.dir.clone(),
            ledger: self.ledger.clone(),
            committed: false,
        };
        // On failure the writer's drop releases the reservation.
        writer.file = Some(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&writer.tmp)?,
        );
        Ok(Box::new(writer))
    }

    fn open(&self, id: &BlobId) -> Result<Option<OpenBlob>, BlobError> {
        let file = match File::open(self.path_of(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let meta = file.metadata()?;
        if expired(&meta, self.limits.ttl, now_ms()) {
            return Ok(None);
        }
        Ok(Some((meta.len(), Box::new(FsReader(file)))))
    }

    fn delete(&self, id: &BlobId) -> Result<bool, BlobError> {
        let path = self.path_of(id);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        match fs::remove_file(&path) {
            Ok(()) => {
                let mut l = lock(&self.ledger);
                l.used = l.used.saturating_sub(len);
                drop(l);
                sync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn expire(&self, now_ms: u64) -> Result<u64, BlobError> {
        let mut n = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(id) = parse_name(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let meta = entry.metadata()?;
            if expired(&meta, self.limits.ttl, now_ms) && self.delete(&id)? {
                n += 1;
            }
        }
        Ok(n)
    }

    fn used_bytes(&self) -> u64 {
        lock(&self.ledger).used
    }
}

fn expired(meta: &fs::Metadata, ttl: Duration, now_ms: u64) -> bool {
    let committed = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    committed.saturating_add(ttl.as_millis() as u64) <= now_ms
}

struct FsWriter {
    id: BlobId,
    size: u64,
    written: u64,
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
    committed: bool,
}

impl BlobWriter for FsWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        let after = self.written.saturating_add(data.len() as u64);
        if after > self.size {
            return Err(BlobError::TooLarge {
                size: after,
                max: self.size,
            });
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("blob writer closed"))?;
        file.write_all(data)?;
        self.written = after;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn commit(mut self: Box<Self>) -> Result<(), BlobError> {
        if self.written != self.size {
            return Err(BlobError::Incomplete {
                written: self.written,
                size: self.size,
            });
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("blob writer closed"))?;
        file.sync_all()?;
        drop(file);
        if self.path.exists() {
            return Err(BlobError::Conflict);
        }
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        sync_dir(&self.dir)?;
        Ok(())
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        let mut l = lock(&self.ledger);
        l.uploading.remove(&self.id);
        if !self.committed {
            l.used = l.used.saturating_sub(self.size);
            drop(l);
            self.file.take();
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

struct FsReader(File);

impl BlobReader for FsReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlobError> {
        Ok(self.0.read(buf)?)
    }
}

// ---------------------------------------------------------------------------------------
// Memory

struct MemBlob {
    data: Arc<Vec<u8>>,
    committed_ms: u64,
}

#[derive(Default)]
struct MemState {
    ledger: Ledger,
    blobs: HashMap<BlobId, MemBlob>,
}

/// Blobs in memory (tests and the in-memory backend).
pub struct MemoryBlobStore {
    limits: BlobLimits,
    state: Arc<Mutex<MemState>>,
}

impl MemoryBlobStore {
    /// An empty store.
    pub fn new(limits: BlobLimits) -> Self {
        Self {
            limits,
            state: Arc::new(Mutex::new(MemState::default())),
        }
    }

    /// Replace the stored bytes of a committed blob (tests: simulate a corrupted or
    /// malicious relay). False if the blob does not exist.
    pub fn replace(&self, id: &BlobId, data: Vec<u8>) -> bool {
        match lock(&self.state).blobs.get_mut(id) {
            Some(b) => {
                b.data = Arc::new(data);
                true
            }
            None => false,
        }
    }

    /// A copy of a committed blob's bytes (tests).
    pub fn get(&self, id: &BlobId) -> Option<Vec<u8>> {
        lock(&self.state).blobs.get(id).map(|b| b.data.to_vec())
    }
}

impl BlobStore for MemoryBlobStore {
    fn begin(&self, id: BlobId, size: u64) -> Result<Box<dyn BlobWriter>, BlobError> {
        {
            let mut s = lock(&self.state);
            let exists = s.blobs.contains_key(&id);
            check_begin(&self.limits, &mut s.ledger, id, size, exists)?;
        }
        Ok(Box::new(MemWriter {
            id,
            size,
            data: Vec::new(),
            state: self.state.clone(),
            committed: false,
        }))
    }

    fn open(&self, id: &BlobId) -> Result<Option<OpenBlob>, BlobError> {
        let s = lock(&self.state);
        Ok(s.blobs.get(id).and_then(|b| {
            if b.committed_ms
                .saturating_add(self.limits.ttl.as_millis() as u64)
                <= now_ms()
            {
                return None;
            }
            let reader: Box<dyn BlobReader> = Box::new(MemReader {
                data: b.data.clone(),
                pos: 0,
            });
            Some((b.data.len() as u64, reader))
        }))
    }

    fn delete(&self, id: &BlobId) -> Result<bool, BlobError> {
        let mut s = lock(&self.state);
        match s.blobs.remove(id) {
            Some(b) => {
                s.ledger.used = s.ledger.used.saturating_sub(b.data.len() as u64);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn expire(&self, now_ms: u64) -> Result<u64, BlobError> {
        let ttl = self.limits.ttl.as_millis() as u64;
        let mut s = lock(&self.state);
        let expired: Vec<BlobId> = s
            .blobs
            .iter()
            .filter(|(_, b)| b.committed_ms.saturating_add(ttl) <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(b) = s.blobs.remove(id) {
                s.ledger.used = s.ledger.used.saturating_sub(b.data.len() as u64);
            }
        }
        Ok(expired.len() as u64)
    }

    fn used_bytes(&self) -> u64 {
        lock(&self.state).ledger.used
    }
}

struct MemWriter {
    id: BlobId,
    size: u64,
    data: Vec<u8>,
    state: Arc<Mutex<MemState>>,
    committed: bool,
}

impl BlobWriter for MemWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), BlobError> {
        let after = (self.data.len() as u64).saturating_add(data.len() as u64);
        if after > self.size {
            return Err(BlobError::TooLarge {
                size: after,
                max: self.size,
            });
        }
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.data.len() as u64
    }

    fn commit(mut self: Box<Self>) -> Result<(), BlobError> {
        if self.data.len() as u64 != self.size {
            return Err(BlobError::Incomplete {
                written: self.data.len() as u64,
                size: self.size,
            });
        }
        let data = std::mem::take(&mut self.data);
        let mut s = lock(&self.state);
        s.blobs.insert(
            self.id,
            MemBlob {
                data: Arc::new(data),
                committed_ms: now_ms(),
            },
        );
        self.committed = true;
        Ok(())
    }
}

impl Drop for MemWriter {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.ledger.uploading.remove(&self.id);
        if !self.committed {
            s.ledger.used = s.ledger.used.saturating_sub(self.size);
        }
    }
}

struct MemReader {
    data: Arc<Vec<u8>>,
    pos: usize,
}

impl BlobReader for MemReader {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlobError> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn limits(max_total: u64) -> BlobLimits {
        BlobLimits {
            max_blob: MAX_BLOB_LEN,
            max_total,
            ttl: Duration::from_secs(3600),
        }
    }

    fn read_all(store: &dyn BlobStore, id: &BlobId) -> Option<Vec<u8>> {
        let (size, mut r) = store.open(id).unwrap()?;
        let mut out = Vec::new();
        let mut buf = [0u8; 7];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out.len() as u64, size);
        Some(out)
    }

    fn conformance(store: &dyn BlobStore) {
        let id = [1u8; 16];
        // Too large for the store.
        assert!(matches!(
            store.begin([9; 16], MAX_BLOB_LEN + 1),
            Err(BlobError::TooLarge { .. })
        ));
        // Past the total cap (1000 bytes).
        assert!(matches!(
            store.begin([9; 16], 1001),
            Err(BlobError::QuotaExceeded { .. })
        ));
        let mut w = store.begin(id, 10).unwrap();
        assert_eq!(store.used_bytes(), 10);
        // Same id while uploading, and after: conflict.
        assert!(matches!(store.begin(id, 10), Err(BlobError::Conflict)));
        w.write(b"hello").unwrap();
        assert!(matches!(
            w.write(b"too much!"),
            Err(BlobError::TooLarge { .. })
        ));
        assert!(
            store.open(&id).unwrap().is_none(),
            "invisible before commit"
        );
        w.write(b"world").unwrap();
        w.commit().unwrap();
        assert_eq!(read_all(store, &id).unwrap(), b"helloworld");
        assert!(matches!(store.begin(id, 10), Err(BlobError::Conflict)));
        // Abort releases the reservation and leaves nothing.
        let mut w = store.begin([2; 16], 990).unwrap();
        assert!(matches!(
            store.begin([3; 16], 1),
            Err(BlobError::QuotaExceeded { .. })
        ));
        w.write(b"partial").unwrap();
        drop(w);
        assert!(store.open(&[2; 16]).unwrap().is_none());
        assert_eq!(store.used_bytes(), 10);
        // Short commit refused.
        let mut w = store.begin([4; 16], 5).unwrap();
        w.write(b"abc").unwrap();
        assert!(matches!(w.commit(), Err(BlobError::Incomplete { .. })));
        assert!(store.open(&[4; 16]).unwrap().is_none());
        assert_eq!(store.used_bytes(), 10);
        // Expiry: nothing before the TTL, everything after.
        assert_eq!(store.expire(now_ms()).unwrap(), 0);
        assert_eq!(store.expire(now_ms() + 3_600_001).unwrap(), 1);
        assert!(store.open(&id).unwrap().is_none());
        assert_eq!(store.used_bytes(), 0);
        // Delete.
        let mut w = store.begin([5; 16], 1).unwrap();
        w.write(b"x").unwrap();
        w.commit().unwrap();
        assert!(store.delete(&[5; 16]).unwrap());
        assert!(!store.delete(&[5; 16]).unwrap());
    }

    #[test]
    fn memory_store_conformance() {
        conformance(&MemoryBlobStore::new(limits(1000)));
    }

    #[test]
    fn fs_store_conformance_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        {
            let store = FsBlobStore::open(&blobs, limits(1000)).unwrap();
            conformance(&store);
            let mut w = store.begin([7; 16], 3).unwrap();
            w.write(b"abc").unwrap();
            w.commit().unwrap();
            // An interrupted upload leaves a temp file behind in a crash; simulate it.
            std::fs::write(
                blobs.join(format!("{}.00{TMP_SUFFIX}", "ab".repeat(16))),
                b"x",
            )
            .unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2);
        let store = FsBlobStore::open(&blobs, limits(1000)).unwrap();
        assert_eq!(store.used_bytes(), 3);
        let names: Vec<String> = std::fs::read_dir(&blobs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![hex::encode([7u8; 16])]);
        assert_eq!(read_all(&store, &[7; 16]).unwrap(), b"abc");
    }
}
