//! Raft snapshots of the state: a member that lags behind the leader's log
//! (or a new member) is sent a RocksDB checkpoint of the leader's applied
//! state, streamed record by record over the peer service.
//!
//! Sending: raft asks for a snapshot on its own thread (`create`), where
//! nothing is applied meanwhile, so a checkpoint taken there is exactly the
//! state at the applied index. The peer transport then streams the
//! checkpoint's key-value and meta records in chunks (`chunks`).
//!
//! Receiving: the chunks are written as they arrive into one sorted file
//! (an SST) per column family under `member/raft-snapshots` (`Incoming`);
//! once complete, the raft message goes to raft, and when raft hands the
//! snapshot back to be applied, `install` ingests the files into RocksDB:
//! nothing of the snapshot passes through memory, whatever its size.
//!
//! Installing is not one atomic write, so it is made restartable: the raft
//! log's move to the snapshot's position is written first, with a mark
//! (`INSTALLING`); then each column family's file is ingested (each file
//! deletes the old state and adds the new at once); then the applied index
//! is written and the mark removed. A member that stops in between finds
//! the mark when it starts, and ingests the same files again (`open`). A
//! crash at any point leaves either the old state or the new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backup::{cf_code, cf_of};
use crate::peer::proto::Record;
use crate::raft::log::SnapshotSource;
use crate::storage::{Cf, Engine, SortedFile, StorageError, WriteBatch};

/// Meta keys under this prefix belong to one member (its own id) and are
/// neither sent nor replaced by a snapshot.
pub const LOCAL_PREFIX: &[u8] = b"local/";

/// Set while a received snapshot is being installed: its index.
const INSTALLING: &[u8] = b"local/installing_snapshot";

/// Checkpoints kept for sending (older ones are deleted).
const KEEP: usize = 2;

/// Bytes of records per chunk sent.
const CHUNK_BYTES: usize = 1 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Engine(format!("snapshot: cannot {what} {}: {e}", path.display()))
}

/// The column families a snapshot carries.
const STATE_CFS: [Cf; 2] = [Cf::Kv, Cf::Meta];

pub struct Snapshots {
    dir: PathBuf,
    engine: Arc<dyn Engine>,
    /// Open checkpoints by applied index, newest last.
    made: Mutex<BTreeMap<u64, Arc<dyn Engine>>>,
}

impl Snapshots {
    /// `dir` holds checkpoints being sent and snapshots being received.
    /// An install that a stop interrupted is completed first (before
    /// anything reads the state); whatever else an earlier run left there
    /// is stale and goes.
    pub fn open(dir: PathBuf, engine: Arc<dyn Engine>) -> Result<Self, StorageError> {
        let snapshots = Self { dir, engine, made: Mutex::new(BTreeMap::new()) };
        if let Some(index) = snapshots.engine.get(Cf::Meta, INSTALLING)? {
            let index = u64::from_be_bytes(index.as_slice().try_into().map_err(|_| StorageError::Corrupt {
                path: snapshots.dir.display().to_string(),
                detail: "the mark of a snapshot install is not an index".into(),
            })?);
            tracing::warn!(index, "completing the install of a raft snapshot that a stop interrupted");
            snapshots.complete_install(index)?;
        }
        let dir = &snapshots.dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io("clean", dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        Ok(snapshots)
    }

    fn checkpoint_dir(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}.checkpoint"))
    }

    /// The file of `cf` in the complete snapshot received for `index`.
    fn received(&self, index: u64, cf: Cf) -> PathBuf {
        self.dir.join(format!("{index:016x}.{}.sst", cf.name()))
    }

    /// A checkpoint of the state as it is now, for a client's
    /// `Maintenance.Snapshot`: each applied entry is one atomic write, so
    /// the checkpoint holds whole entries. Deleted when dropped.
    pub fn client_checkpoint(&self) -> Result<ClientCheckpoint, StorageError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join(format!("client-{n}.checkpoint"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("clean", &dir, e))?;
        }
        let engine = self.engine.checkpoint(&dir)?;
        Ok(ClientCheckpoint { engine, _dir: RemovedOnDrop(dir) })
    }

    /// The checkpoint made for `index`, if still kept.
    pub fn get(&self, index: u64) -> Option<Arc<dyn Engine>> {
        self.made.lock().get(&index).cloned()
    }

    /// Every record of a checkpoint, in chunks of about CHUNK_BYTES.
    pub fn chunks(engine: &dyn Engine, mut each: impl FnMut(Vec<Record>) -> bool) -> Result<(), StorageError> {
        let mut chunk = Vec::new();
        let mut size = 0;
        let mut going = true;
        for cf in STATE_CFS {
            engine.scan(cf, &[], None, &mut |k, v| {
                if cf == Cf::Meta && k.starts_with(LOCAL_PREFIX) {
                    return true;
                }
                size += k.len() + v.len() + 8;
                chunk.push(Record { cf: cf_code(cf), key: k.to_vec(), value: v.to_vec() });
                if size >= CHUNK_BYTES {
                    size = 0;
                    going = each(std::mem::take(&mut chunk));
                }
                going
            })?;
            if !going {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            each(chunk);
        }
        Ok(())
    }

    /// Starts receiving the snapshot at `index`. Files are written under
    /// names of their own (the leader may send the same snapshot again) and
    /// take their final names once complete.
    pub fn incoming(&self, index: u64) -> Result<Incoming, StorageError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut files = Vec::with_capacity(STATE_CFS.len());
        for cf in STATE_CFS {
            let partial = self.dir.join(format!("{index:016x}.{}.{n}.receiving", cf.name()));
            let writer = self.engine.sorted_file(&partial, &replaced_ranges(cf))?;
            files.push(IncomingFile { cf, writer: Some(writer), partial, done: self.received(index, cf) });
        }
        Ok(Incoming { files })
    }

    /// Replaces the state (everything but this member's local meta keys)
    /// with the snapshot received for `index`. `raft` holds the raft log's
    /// move to the snapshot's position: written first, with the mark that
    /// makes the install restartable.
    pub fn install(&self, index: u64, mut raft: WriteBatch) -> Result<(), StorageError> {
        for cf in STATE_CFS {
            let path = self.received(index, cf);
            if !path.exists() {
                return Err(StorageError::Engine(format!("snapshot {index} was not received ({} is missing)", path.display())));
            }
        }
        raft.put(Cf::Meta, INSTALLING, index.to_be_bytes().to_vec());
        self.engine.write(raft, true)?;
        self.complete_install(index)
    }

    fn complete_install(&self, index: u64) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        for cf in STATE_CFS {
            let path = self.received(index, cf);
            if !path.exists() {
                return Err(StorageError::Corrupt {
                    path: self.dir.display().to_string(),
                    detail: format!(
                        "the install of raft snapshot {index} was interrupted and its file {} is gone: \
                         remove this member and add it again with an empty data dir",
                        path.display()
                    ),
                });
            }
            self.engine.ingest(cf, &path)?;
        }
        let mut done = WriteBatch::default();
        done.put(Cf::Meta, crate::apply::META_APPLIED, index.to_be_bytes().to_vec());
        done.delete(Cf::Meta, INSTALLING);
        self.engine.write(done, true)?;
        for cf in STATE_CFS {
            let _ = std::fs::remove_file(self.received(index, cf));
        }
        tracing::info!(index, took = ?started.elapsed(), "installed a raft snapshot");
        Ok(())
    }
}

/// What a snapshot replaces in `cf`: all of it, but for this member's own
/// meta keys.
fn replaced_ranges(cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    let end = vec![0xff; 32];
    match cf {
        Cf::Meta => {
            let mut after_local = LOCAL_PREFIX.to_vec();
            if let Some(last) = after_local.last_mut() {
                *last += 1;
            }
            vec![(Vec::new(), LOCAL_PREFIX.to_vec()), (after_local, end)]
        }
        _ => vec![(Vec::new(), end)],
    }
}

impl SnapshotSource for Snapshots {
    fn create(&self, index: u64) -> Result<Vec<u8>, StorageError> {
        let mut made = self.made.lock();
        if let std::collections::btree_map::Entry::Vacant(slot) = made.entry(index) {
            let dir = self.checkpoint_dir(index);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| io("clean", &dir, e))?;
            }
            let started = std::time::Instant::now();
            let cp = self.engine.checkpoint(&dir)?;
            tracing::info!(index, took = ?started.elapsed(), "made a checkpoint to send as a raft snapshot");
            slot.insert(cp);
            while made.len() > KEEP {
                if let Some((&old, _)) = made.iter().next() {
                    made.remove(&old);
                    // A transfer still reading it keeps its files open.
                    let _ = std::fs::remove_dir_all(self.checkpoint_dir(old));
                }
            }
        }
        Ok(index.to_be_bytes().to_vec())
    }
}

/// A checkpoint taken for a client; its files go when it is dropped. The
/// fields drop in order: the engine closes before its directory goes.
pub struct ClientCheckpoint {
    engine: Arc<dyn Engine>,
    _dir: RemovedOnDrop,
}

impl ClientCheckpoint {
    pub fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }
}

struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A snapshot being received: each record goes into its column family's
/// sorted file, in the order the leader read them (key order).
pub struct Incoming {
    files: Vec<IncomingFile>,
}

struct IncomingFile {
    cf: Cf,
    writer: Option<Box<dyn SortedFile>>,
    partial: PathBuf,
    done: PathBuf,
}

impl Incoming {
    pub fn write(&mut self, records: &[Record]) -> Result<(), StorageError> {
        for r in records {
            let Some(cf) = cf_of(r.cf) else { continue };
            if cf == Cf::Meta && r.key.starts_with(LOCAL_PREFIX) {
                continue;
            }
            if let Some(writer) = self.files.iter_mut().find(|f| f.cf == cf).and_then(|f| f.writer.as_mut()) {
                writer.put(&r.key, &r.value)?;
            }
        }
        Ok(())
    }

    /// Completes the files and gives them their final names.
    pub fn finish(mut self) -> Result<(), StorageError> {
        for f in &mut self.files {
            if let Some(writer) = f.writer.take() {
                writer.finish()?;
            }
            std::fs::rename(&f.partial, &f.done).map_err(|e| io("rename", &f.partial, e))?;
        }
        // The names must be durable before an install's mark points at them.
        if let Some(dir) = self.files.first().and_then(|f| f.done.parent()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("sync", dir, e))?;
        }
        Ok(())
    }
}

impl Drop for Incoming {
    /// A transfer cut short leaves no partial file behind.
    fn drop(&mut self) {
        for f in &mut self.files {
            drop(f.writer.take());
            let _ = std::fs::remove_file(&f.partial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;
    use crate::storage::rocks::RocksEngine;

    /// A leader's state: two revisions, a member record and its own id.
    fn leader_records(dir: &Path) -> Vec<Record> {
        let leader: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut b = WriteBatch::default();
        b.put(Cf::Kv, b"rev1".to_vec(), b"v1".to_vec());
        b.put(Cf::Kv, b"rev2".to_vec(), b"v2".to_vec());
        b.put(Cf::Meta, b"members/x".to_vec(), b"m".to_vec());
        b.put(Cf::Meta, b"local/member_id".to_vec(), b"leader".to_vec());
        leader.write(b, true).expect("write");
        let sender = Snapshots::open(dir.to_path_buf(), leader).expect("open");
        sender.create(7).expect("create");
        let mut records = Vec::new();
        Snapshots::chunks(sender.get(7).expect("made").as_ref(), |c| {
            records.extend(c);
            true
        })
        .expect("chunks");
        records
    }

    /// A follower's stale state, which a snapshot must replace.
    fn stale(follower: &dyn Engine) {
        let mut b = WriteBatch::default();
        b.put(Cf::Kv, b"old".to_vec(), b"x".to_vec());
        b.put(Cf::Kv, b"rev1".to_vec(), b"stale".to_vec());
        b.put(Cf::Meta, b"local/member_id".to_vec(), b"follower".to_vec());
        b.put(Cf::Meta, b"zzz".to_vec(), b"stale".to_vec());
        b.put(Cf::Meta, b"aaa".to_vec(), b"stale".to_vec());
        follower.write(b, true).expect("write");
    }

    fn receive(receiver: &Snapshots, records: &[Record]) {
        let mut inc = receiver.incoming(7).expect("incoming");
        // In chunks, as they arrive.
        for chunk in records.chunks(1) {
            inc.write(chunk).expect("write");
        }
        inc.finish().expect("finish");
    }

    fn assert_replaced(follower: &dyn Engine) {
        assert_eq!(follower.get(Cf::Kv, b"rev1").expect("get"), Some(b"v1".to_vec()));
        assert_eq!(follower.get(Cf::Kv, b"rev2").expect("get"), Some(b"v2".to_vec()));
        assert_eq!(follower.get(Cf::Kv, b"old").expect("get"), None);
        assert_eq!(follower.get(Cf::Meta, b"zzz").expect("get"), None);
        assert_eq!(follower.get(Cf::Meta, b"aaa").expect("get"), None);
        assert_eq!(follower.get(Cf::Meta, b"members/x").expect("get"), Some(b"m".to_vec()));
        assert_eq!(follower.get(Cf::Meta, b"local/member_id").expect("get"), Some(b"follower".to_vec()));
        assert_eq!(crate::apply::applied_index(follower).expect("applied"), 7);
        assert_eq!(follower.get(Cf::Meta, INSTALLING).expect("get"), None, "the mark stays after the install");
    }

    #[test]
    fn a_received_snapshot_replaces_the_state_but_not_local_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = leader_records(&dir.path().join("a"));
        assert_eq!(records.len(), 3, "local keys are not sent");
        for engine in ["mem", "rocks"] {
            let follower: Arc<dyn Engine> = match engine {
                "mem" => Arc::new(MemEngine::new()),
                _ => Arc::new(RocksEngine::open(&dir.path().join("db")).expect("rocks")),
            };
            stale(follower.as_ref());
            let receiver = Snapshots::open(dir.path().join(format!("{engine}-snap")), follower.clone()).expect("open");
            receive(&receiver, &records);
            let mut raft = WriteBatch::default();
            raft.put(Cf::Raft, b"truncated".to_vec(), b"7".to_vec());
            receiver.install(7, raft).expect("install");
            assert_replaced(follower.as_ref());
            assert_eq!(follower.get(Cf::Raft, b"truncated").expect("get"), Some(b"7".to_vec()), "{engine}: the raft log's move");
            let left: Vec<_> = std::fs::read_dir(dir.path().join(format!("{engine}-snap"))).expect("dir").collect();
            assert!(left.is_empty(), "{engine}: files left after the install: {left:?}");
        }
    }

    #[test]
    fn an_install_cut_short_by_a_stop_is_completed_at_the_next_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = leader_records(&dir.path().join("a"));
        let db = dir.path().join("db");
        let snap_dir = dir.path().join("snap");
        {
            let follower: Arc<dyn Engine> = Arc::new(RocksEngine::open(&db).expect("rocks"));
            stale(follower.as_ref());
            let receiver = Snapshots::open(snap_dir.clone(), follower.clone()).expect("open");
            receive(&receiver, &records);
            // The install's first step and one of its files, then a stop.
            let mut raft = WriteBatch::default();
            raft.put(Cf::Meta, INSTALLING, 7u64.to_be_bytes().to_vec());
            follower.write(raft, true).expect("mark");
            follower.ingest(Cf::Kv, &receiver.received(7, Cf::Kv)).expect("ingest kv");
        }
        let follower: Arc<dyn Engine> = Arc::new(RocksEngine::open(&db).expect("reopen"));
        Snapshots::open(snap_dir, follower.clone()).expect("open completes the install");
        assert_replaced(follower.as_ref());
    }

    #[test]
    fn an_interrupted_install_whose_files_are_gone_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let follower: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut b = WriteBatch::default();
        b.put(Cf::Meta, INSTALLING, 7u64.to_be_bytes().to_vec());
        follower.write(b, true).expect("mark");
        let err = Snapshots::open(dir.path().join("snap"), follower).err().expect("refused");
        assert!(err.to_string().contains("remove this member and add it again"), "{err}");
    }

    #[test]
    fn records_out_of_order_are_refused_and_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let follower: Arc<dyn Engine> = Arc::new(RocksEngine::open(&dir.path().join("db")).expect("rocks"));
        let receiver = Snapshots::open(dir.path().join("snap"), follower).expect("open");
        let mut inc = receiver.incoming(7).expect("incoming");
        let r = |k: &[u8]| Record { cf: cf_code(Cf::Kv), key: k.to_vec(), value: b"v".to_vec() };
        inc.write(&[r(b"b")]).expect("first");
        assert!(inc.write(&[r(b"a")]).is_err(), "a key before the last one was accepted");
        drop(inc);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("snap")).expect("dir").collect();
        assert!(left.is_empty(), "partial files left: {left:?}");
        assert!(receiver.install(7, WriteBatch::default()).is_err(), "installed a snapshot never received");
    }
}
