//! The storage engine: an ordered key-value store with column families,
//! atomic write batches and synced writes. It owns bytes on disk and nothing
//! else: it knows neither raft nor MVCC. `rocks` is the only file that names
//! RocksDB; `mem` serves unit tests.

pub mod mem;
pub mod rocks;

/// Column families. Each keeps one kind of data so that scans never mix them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// The raft log, hard state, conf state and log snapshot metadata.
    Raft,
    /// MVCC key-value revisions (etcd's "key" bucket).
    Kv,
    /// Applied index, compaction state, members and other small records.
    Meta,
}

impl Cf {
    pub const ALL: [Cf; 3] = [Cf::Raft, Cf::Kv, Cf::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Cf::Raft => "raft",
            Cf::Kv => "kv",
            Cf::Meta => "meta",
        }
    }
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[start, end)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

/// A set of writes applied atomically.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put(cf, key.into(), value.into()));
    }

    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete(cf, key.into()));
    }

    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeleteRange(cf, start.into(), end.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
}

/// A column family's size: all the bytes it takes, and those holding live
/// data (RocksDB's estimate; the rest is space that deletions and
/// overwrites left for compaction, or a defragmentation, to reclaim).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CfSize {
    pub total: u64,
    pub live: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data dir {path} is locked by another process (is another raftkv running on it?)")]
    Locked { path: String },
    #[error("data dir {path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("storage engine error: {0}")]
    Engine(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// What the rest of raftkv needs from a storage engine.
pub trait Engine: Send + Sync + 'static {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Writes the batch atomically; with `sync`, durably before returning.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()>;

    /// Visits `[start, end)` in key order (`end` None = to the end of the
    /// column family) until `visit` returns false.
    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;

    /// The last key-value pair in `[start, end)`, if any.
    fn last_in(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>>;

    /// Reclaims space left by deletions in `cf` (defragmentation).
    fn compact_cf(&self, cf: Cf) -> Result<()>;

    /// Bytes one column family takes on disk (or in memory, for `mem`).
    fn cf_size(&self, cf: Cf) -> CfSize;

    /// etcd's dbSize and dbSizeInUse: the state's column families (MVCC and
    /// meta; the raft log, like etcd's WAL, is not counted).
    fn state_size(&self) -> CfSize {
        let (kv, meta) = (self.cf_size(Cf::Kv), self.cf_size(Cf::Meta));
        CfSize { total: kv.total + meta.total, live: kv.live + meta.live }
    }

    /// A consistent point-in-time copy of every column family, written to
    /// `dir` (which must not exist yet) and opened: what a lagging member
    /// is sent as a raft snapshot.
    fn checkpoint(&self, dir: &std::path::Path) -> Result<std::sync::Arc<dyn Engine>>;

    /// Starts a sorted file at `path` for `ingest`: once ingested into a
    /// column family, it deletes the ranges `clear` (`[start, end)`) of
    /// what was there and holds the keys put into it, all at once.
    fn sorted_file(&self, path: &std::path::Path, clear: &[(Vec<u8>, Vec<u8>)]) -> Result<Box<dyn SortedFile>>;

    /// Ingests a finished sorted file into `cf` atomically (RocksDB's
    /// external SST ingestion: the file becomes part of the database
    /// without passing through memory). The file stays at `path`, so an
    /// interrupted ingestion can be done again.
    fn ingest(&self, cf: Cf, path: &std::path::Path) -> Result<()>;
}

/// A sorted file in the making (see `Engine::sorted_file`).
pub trait SortedFile: Send {
    /// Adds a key, which must sort after every key added before it.
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Completes the file, durably.
    fn finish(self: Box<Self>) -> Result<()>;
}
