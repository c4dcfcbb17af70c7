//! `snapshot restore`: a data dir for one member of a new cluster, made from
//! a snapshot file, as etcdutl makes one. The keys, their revisions, the
//! compacted revision and the leases come from the file; the member
//! registry, ids and raft log are a founding member's, from
//! `--initial-cluster` and `--initial-cluster-token`, so every member
//! restored from the same file with the same flags starts from the same
//! state (the same HashKV) in a new cluster with a new id.
//!
//! The file may also be a snapshot that etcd wrote (a bbolt database, as
//! `etcdctl snapshot save` stores it): its keys with their revisions and
//! versions, the current and compacted revisions and the leases are
//! imported (`etcd_import`), which is the migration path from etcd.
//!
//! The data dir is built under a temporary name beside it and renamed only
//! when complete: an interrupted or refused restore leaves nothing behind
//! and overwrites nothing.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::backup::{self, FormatError};
use crate::bbolt::{self, BoltError};
use crate::etcd_import::{self, ImportError};
use crate::peer::proto::Record;
use crate::config::{Config, split_urls};
use crate::node::{StartError, bootstrap, prepare_data_dir};
use crate::storage::rocks::RocksEngine;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};

#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot: PathBuf,
    pub data_dir: PathBuf,
    pub name: String,
    pub initial_cluster: String,
    pub initial_cluster_token: String,
    pub initial_advertise_peer_urls: String,
    pub skip_hash_check: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("data-dir {0:?} not empty or could not be read")]
    DataDirNotEmpty(String),
    #[error("{0}")]
    Start(#[from] StartError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Bolt(#[from] BoltError),
    #[error("{0}")]
    Import(#[from] ImportError),
    #[error("{what} {path}: {error}")]
    Io { what: &'static str, path: String, error: std::io::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.display().to_string();
    move |error| RestoreError::Io { what, path, error }
}

/// Meta records a restore does not carry over: the old cluster's member
/// registry, its alarms (raised for members that are gone) and the old raft
/// position (the new cluster starts its own).
fn carried_over(key: &[u8]) -> bool {
    !(key.starts_with(b"members/")
        || key.starts_with(b"removed/")
        || key.starts_with(crate::snapshot::LOCAL_PREFIX)
        || crate::alarm::is_alarm_key(key)
        || key == crate::apply::META_APPLIED)
}

/// Bytes of records written per batch: memory stays bounded whatever the
/// snapshot's size.
const BATCH_BYTES: usize = 4 << 20;

/// Restores `cfg.snapshot` into `cfg.data_dir`. `progress(done, total)`
/// follows the bytes read (the hash check, then the load).
pub fn restore(cfg: &RestoreConfig, progress: &mut dyn FnMut(u64, u64)) -> Result<(), RestoreError> {
    let non_empty = std::fs::read_dir(&cfg.data_dir).map(|mut d| d.next().is_some());
    match non_empty {
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        _ => return Err(RestoreError::DataDirNotEmpty(cfg.data_dir.display().to_string())),
    }
    let server_cfg = Config::try_parse_from([
        "raftkv",
        "--name",
        &cfg.name,
        "--initial-cluster",
        &cfg.initial_cluster,
        "--initial-cluster-token",
        &cfg.initial_cluster_token,
        "--initial-advertise-peer-urls",
        &cfg.initial_advertise_peer_urls,
    ])
    .map_err(|e| StartError::Config(e.to_string()))?;
    server_cfg.validate().map_err(StartError::Config)?;

    let mut file = File::open(&cfg.snapshot).map_err(io("open", &cfg.snapshot))?;
    let size = file.metadata().map_err(io("read", &cfg.snapshot))?.len();
    let mut head = Vec::with_capacity(64);
    (&mut file).take(64).read_to_end(&mut head).map_err(io("read", &cfg.snapshot))?;
    let from_etcd = bbolt::looks_like_bbolt(&head);
    file.rewind().map_err(io("read", &cfg.snapshot))?;
    let payload = if cfg.skip_hash_check {
        if size % backup::ALIGN == backup::HASH_LEN as u64 { size - backup::HASH_LEN as u64 } else { size }
    } else {
        backup::verify_hash(BufReader::new(&mut file), size, |done| progress(done, 2 * size))?
    };
    file.rewind().map_err(io("read", &cfg.snapshot))?;
    let source = if from_etcd { Source::Etcd(&cfg.snapshot) } else { Source::Raftkv(BufReader::new(file.take(payload))) };

    let staging = staging_dir(&cfg.data_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("clean", &staging))?;
    }
    let result = load(&server_cfg, source, &staging, &mut |done| progress(size + done, 2 * size));
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if cfg.data_dir.exists() {
        // Empty, checked above.
        std::fs::remove_dir(&cfg.data_dir).map_err(io("replace", &cfg.data_dir))?;
    }
    std::fs::rename(&staging, &cfg.data_dir).map_err(io("rename to", &cfg.data_dir))?;
    Ok(())
}

/// Where the state comes from: raftkv's own snapshot file (its payload),
/// or an etcd snapshot (a bbolt file, read in place).
enum Source<'a, R> {
    Raftkv(R),
    Etcd(&'a Path),
}

fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".restoring");
    data_dir.with_file_name(name)
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Writes records in batches of about BATCH_BYTES.
struct Batcher<'a> {
    engine: &'a RocksEngine,
    batch: WriteBatch,
    bytes: usize,
    /// Bytes of records written so far.
    total: u64,
}

impl Batcher<'_> {
    fn put(&mut self, r: Record) -> Result<(), StorageError> {
        let Some(cf) = backup::cf_of(r.cf) else { return Ok(()) };
        if cf == Cf::Meta && !carried_over(&r.key) {
            return Ok(());
        }
        let n = r.key.len() + r.value.len();
        self.bytes += n;
        self.total += n as u64;
        self.batch.put(cf, r.key, r.value);
        if self.bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        self.bytes = 0;
        self.engine.write(std::mem::take(&mut self.batch), false)
    }
}

fn load<R: Read>(cfg: &Config, source: Source<'_, R>, dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<(), RestoreError> {
    let db = prepare_data_dir(dir)?;
    let engine = RocksEngine::open(&db)?;
    let mut out = Batcher { engine: &engine, batch: WriteBatch::default(), bytes: 0, total: 0 };
    match source {
        Source::Raftkv(payload) => {
            let mut input = Counted { inner: payload, read: 0 };
            let mut decoder = backup::Decoder::new(&mut input)?;
            while let Some(r) = decoder.next_record()? {
                out.put(r)?;
                if out.bytes == 0 {
                    progress(decoder.get_ref().read);
                }
            }
        }
        Source::Etcd(path) => {
            let bolt = bbolt::Db::open(path)?;
            let summary = etcd_import::import(&bolt, &mut |r| {
                out.put(r)?;
                if out.bytes == 0 {
                    progress(out.total);
                }
                Ok(())
            })?;
            tracing::info!(?summary, "imported an etcd snapshot");
        }
    }
    out.flush()?;
    bootstrap(cfg, &split_urls(&cfg.initial_advertise_peer_urls), &engine)?;
    Ok(())
}

/// `defrag --data-dir`: compacts a stopped member's engine in place.
pub fn defragment_offline(data_dir: &Path) -> Result<(), RestoreError> {
    let db = data_dir.join("member").join("db");
    if !db.is_dir() {
        return Err(RestoreError::Start(StartError::DataDir(format!("{} is not a raftkv data dir", data_dir.display()))));
    }
    let engine = RocksEngine::open(&db)?;
    for cf in Cf::ALL {
        engine.compact_cf(cf)?;
    }
    Ok(())
}
