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
use crate::storage::{Cf, Engine, SortedFile, StorageError, WriteBatch};

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
pub(crate) fn carried_over(key: &[u8]) -> bool {
    !(key.starts_with(b"members/")
        || key.starts_with(b"removed/")
        || key.starts_with(crate::snapshot::LOCAL_PREFIX)
        || crate::alarm::is_alarm_key(key)
        || key == crate::apply::META_APPLIED)
}

/// Bytes of records written per batch: memory stays bounded whatever the
/// snapshot's size.
const BATCH_BYTES: usize = 4 << 20;

/// Refuses a data dir that exists with anything in it (etcdutl's check);
/// an empty or absent one is restored into.
pub fn check_data_dir(data_dir: &Path) -> Result<(), RestoreError> {
    match std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()) {
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(RestoreError::DataDirNotEmpty(data_dir.display().to_string())),
    }
}

/// Restores `cfg.snapshot` into `cfg.data_dir`. `progress(done, total)`
/// follows the bytes read (the hash check, then the load).
pub fn restore(cfg: &RestoreConfig, progress: &mut dyn FnMut(u64, u64)) -> Result<(), RestoreError> {
    check_data_dir(&cfg.data_dir)?;
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
    let check_hash = !cfg.skip_hash_check;
    let (source, done_before, total) = if from_etcd {
        // bbolt is read in place, in page order: its hash takes a pass of
        // its own, first.
        if check_hash {
            backup::verify_hash(BufReader::new(&mut file), size, |done| progress(done, 2 * size))?;
        }
        (Source::Etcd(&cfg.snapshot), size, 2 * size)
    } else {
        if check_hash && backup::hashed_payload_len(size).is_none() {
            return Err(FormatError::MissingHash.into());
        }
        (Source::Raftkv { file, size, check_hash }, 0, size)
    };

    let staging = staging_dir(&cfg.data_dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("clean", &staging))?;
    }
    let result = load(&server_cfg, source, &staging, &mut |done| progress(done_before + done, total));
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

/// Where the state comes from: raftkv's own snapshot file, or an etcd
/// snapshot (a bbolt file, read in place).
enum Source<'a> {
    Raftkv { file: File, size: u64, check_hash: bool },
    Etcd(&'a Path),
}

fn staging_dir(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".restoring");
    data_dir.with_file_name(name)
}

/// Progress is told every this many bytes.
const PROGRESS_BYTES: u64 = 4 << 20;

/// Writes the records. The key-value revisions, the bulk of a snapshot and
/// in key order, go into one sorted file that RocksDB ingests at the end
/// (no memtable, no WAL: the restore's cost is one write of the data); the
/// meta records go in batches of about BATCH_BYTES.
struct Writer<'a> {
    engine: &'a RocksEngine,
    kv: Option<Box<dyn SortedFile>>,
    kv_path: PathBuf,
    kv_keys: u64,
    meta: WriteBatch,
    meta_bytes: usize,
    /// Bytes of records written so far.
    total: u64,
    told: u64,
}

impl<'a> Writer<'a> {
    fn new(engine: &'a RocksEngine, dir: &Path) -> Result<Self, StorageError> {
        let kv_path = dir.join("restore-kv.sst");
        let kv = Some(engine.sorted_file(&kv_path, &[])?);
        Ok(Self { engine, kv, kv_path, kv_keys: 0, meta: WriteBatch::default(), meta_bytes: 0, total: 0, told: 0 })
    }

    fn put(&mut self, r: Record) -> Result<(), StorageError> {
        let Some(cf) = backup::cf_of(r.cf) else { return Ok(()) };
        let n = r.key.len() + r.value.len();
        match cf {
            Cf::Kv => {
                if let Some(kv) = self.kv.as_mut() {
                    kv.put(&r.key, &r.value)?;
                }
                self.kv_keys += 1;
            }
            _ if !carried_over(&r.key) => return Ok(()),
            _ => {
                self.meta_bytes += n;
                self.meta.put(cf, r.key, r.value);
                if self.meta_bytes >= BATCH_BYTES {
                    self.meta_bytes = 0;
                    self.engine.write(std::mem::take(&mut self.meta), false)?;
                }
            }
        }
        self.total += n as u64;
        Ok(())
    }

    /// True every PROGRESS_BYTES written.
    fn progress_due(&mut self) -> bool {
        let due = self.total >= self.told + PROGRESS_BYTES;
        if due {
            self.told = self.total;
        }
        due
    }

    fn finish(mut self) -> Result<(), StorageError> {
        self.engine.write(std::mem::take(&mut self.meta), false)?;
        if let Some(kv) = self.kv.take() {
            // RocksDB makes no file of nothing.
            if self.kv_keys > 0 {
                kv.finish()?;
                self.engine.ingest(Cf::Kv, &self.kv_path)?;
            }
        }
        let _ = std::fs::remove_file(&self.kv_path);
        Ok(())
    }
}

fn load(cfg: &Config, source: Source<'_>, dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<(), RestoreError> {
    let db = prepare_data_dir(dir)?;
    let engine = RocksEngine::open(&db)?;
    let mut out = Writer::new(&engine, dir)?;
    match source {
        Source::Raftkv { file, size, check_hash } => {
            let payload = backup::hashed_payload_len(size).unwrap_or(size);
            let mut input = backup::Hashing::new(BufReader::with_capacity(1 << 20, file));
            let decoded = (|| -> Result<(), RestoreError> {
                let mut decoder = backup::Decoder::new((&mut input).take(payload))?;
                while let Some(r) = decoder.next_record()? {
                    out.put(r)?;
                    if out.progress_due() {
                        progress(decoder.get_ref().get_ref().read_bytes());
                    }
                }
                Ok(())
            })();
            if check_hash {
                // A damaged file is told by its hash, as etcdutl tells it,
                // whatever the damage made of its records: the rest of the
                // payload is hashed before the records' error is given.
                let left = payload.saturating_sub(input.read_bytes());
                std::io::copy(&mut (&mut input).take(left), &mut std::io::sink()).map_err(FormatError::Io)?;
                input.verify()?;
            }
            decoded?;
            progress(payload);
        }
        Source::Etcd(path) => {
            let bolt = bbolt::Db::open(path)?;
            let summary = etcd_import::import(&bolt, &mut |r| {
                out.put(r)?;
                if out.progress_due() {
                    progress(out.total);
                }
                Ok(())
            })?;
            tracing::info!(?summary, "imported an etcd snapshot");
        }
    }
    out.finish()?;
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
