//! Raft snapshots of the state: a member that lags behind the leader's log
//! (or a new member) is sent a RocksDB checkpoint of the leader's applied
//! state, streamed record by record over the peer service.
//!
//! Sending: raft asks for a snapshot on its own thread (`create`), where
//! nothing is applied meanwhile, so a checkpoint taken there is exactly the
//! state at the applied index. The peer transport then streams the
//! checkpoint's key-value and meta records in chunks (`chunks`).
//!
//! Receiving: the chunks are written to a file under `member/raft-snapshots` as they
//! arrive (`Incoming`); once complete, the raft message goes to raft, and
//! when raft hands the snapshot back to be applied, `load` reads the file
//! into one batch that replaces the state atomically with the raft log's
//! new position. A crash at any point leaves either the old state or the
//! new one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;

use crate::backup::cf_code;
use crate::peer::proto::Record;
use crate::raft::log::SnapshotSource;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};

/// Meta keys under this prefix belong to one member (its own id) and are
/// neither sent nor replaced by a snapshot.
pub const LOCAL_PREFIX: &[u8] = b"local/";

/// Checkpoints kept for sending (older ones are deleted).
const KEEP: usize = 2;

/// Bytes of records per chunk sent.
const CHUNK_BYTES: usize = 1 << 20;

fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> StorageError {
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
    /// `dir` holds checkpoints being sent and snapshots being received;
    /// whatever an earlier run left there is stale and goes.
    pub fn open(dir: PathBuf, engine: Arc<dyn Engine>) -> Result<Self, StorageError> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("clean", &dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        Ok(Self { dir, engine, made: Mutex::new(BTreeMap::new()) })
    }

    fn checkpoint_dir(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}.checkpoint"))
    }

    fn incoming_path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("{index:016x}.incoming"))
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

    /// Starts receiving the snapshot at `index`.
    pub fn incoming(&self, index: u64) -> Result<Incoming, StorageError> {
        let path = self.incoming_path(index);
        let file = File::create(&path).map_err(|e| io("create", &path, e))?;
        Ok(Incoming { path, out: BufWriter::new(file) })
    }

    /// Reads a received snapshot into a batch that replaces the state
    /// (everything but this member's local meta keys).
    pub fn load(&self, index: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let path = self.incoming_path(index);
        let file = File::open(&path).map_err(|e| io("open", &path, e))?;
        batch.delete_range(Cf::Kv, Vec::new(), vec![0xff; 32]);
        batch.delete_range(Cf::Meta, Vec::new(), LOCAL_PREFIX.to_vec());
        let mut after_local = LOCAL_PREFIX.to_vec();
        if let Some(last) = after_local.last_mut() {
            *last += 1;
        }
        batch.delete_range(Cf::Meta, after_local, vec![0xff; 32]);
        let mut input = BufReader::new(file);
        let mut len = [0u8; 4];
        loop {
            match input.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io("read", &path, e)),
            }
            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
            input.read_exact(&mut buf).map_err(|e| io("read", &path, e))?;
            let r = Record::decode(buf.as_slice())
                .map_err(|e| StorageError::Corrupt { path: path.display().to_string(), detail: e.to_string() })?;
            let cf = match r.cf {
                1 => Cf::Kv,
                2 if !r.key.starts_with(LOCAL_PREFIX) => Cf::Meta,
                _ => continue,
            };
            batch.put(cf, r.key, r.value);
        }
        Ok(())
    }

    /// Forgets a received snapshot once applied.
    pub fn discard_incoming(&self, index: u64) {
        let _ = std::fs::remove_file(self.incoming_path(index));
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

/// A snapshot being received: records appended, length-prefixed.
pub struct Incoming {
    path: PathBuf,
    out: BufWriter<File>,
}

impl Incoming {
    pub fn write(&mut self, records: &[Record]) -> Result<(), StorageError> {
        for r in records {
            let bytes = r.encode_to_vec();
            self.out.write_all(&(bytes.len() as u32).to_be_bytes()).map_err(|e| io("write", &self.path, e))?;
            self.out.write_all(&bytes).map_err(|e| io("write", &self.path, e))?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), StorageError> {
        self.out.flush().map_err(|e| io("write", &self.path, e))?;
        self.out.get_ref().sync_all().map_err(|e| io("sync", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    #[test]
    fn a_received_snapshot_replaces_the_state_but_not_local_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let leader: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut b = WriteBatch::default();
        b.put(Cf::Kv, b"rev1".to_vec(), b"v1".to_vec());
        b.put(Cf::Meta, b"members/x".to_vec(), b"m".to_vec());
        b.put(Cf::Meta, b"local/member_id".to_vec(), b"leader".to_vec());
        leader.write(b, true).expect("write");
        let sender = Snapshots::open(dir.path().join("a"), leader).expect("open");
        sender.create(7).expect("create");
        let mut records = Vec::new();
        Snapshots::chunks(sender.get(7).expect("made").as_ref(), |c| {
            records.extend(c);
            true
        })
        .expect("chunks");
        assert_eq!(records.len(), 2, "local keys are not sent");

        let follower: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut b = WriteBatch::default();
        b.put(Cf::Kv, b"old".to_vec(), b"x".to_vec());
        b.put(Cf::Meta, b"local/member_id".to_vec(), b"follower".to_vec());
        b.put(Cf::Meta, b"zzz".to_vec(), b"stale".to_vec());
        follower.write(b, true).expect("write");
        let receiver = Snapshots::open(dir.path().join("b"), follower.clone()).expect("open");
        let mut inc = receiver.incoming(7).expect("incoming");
        inc.write(&records).expect("write");
        inc.finish().expect("finish");
        let mut batch = WriteBatch::default();
        receiver.load(7, &mut batch).expect("load");
        follower.write(batch, true).expect("write");
        assert_eq!(follower.get(Cf::Kv, b"rev1").expect("get"), Some(b"v1".to_vec()));
        assert_eq!(follower.get(Cf::Kv, b"old").expect("get"), None);
        assert_eq!(follower.get(Cf::Meta, b"zzz").expect("get"), None);
        assert_eq!(follower.get(Cf::Meta, b"members/x").expect("get"), Some(b"m".to_vec()));
        assert_eq!(follower.get(Cf::Meta, b"local/member_id").expect("get"), Some(b"follower".to_vec()));
    }
}
