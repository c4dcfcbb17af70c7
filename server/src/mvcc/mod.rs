//! Multi-version concurrency control, as etcd's `mvcc`: every write request
//! makes one main revision; every key keeps its history until compaction.
//! Values live in the engine's `kv` column family keyed by revision; an
//! in-memory index (`KeyIndex` per key) maps keys to revisions. It must not
//! know raft, leases' expiry or the API.

pub mod key_index;
pub mod revision;
pub mod store;

pub mod crc32c;
pub use revision::Revision;
pub use store::{Change, RangeEnd, RangeOptions, RangeResult, Store, WriteTxn};

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("mvcc: corrupt record: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, MvccError>;
