//! An in-memory engine for unit tests and the simulation: the same
//! contract as RocksDB, no disk. It also keeps what a power loss would
//! leave: the state as of the last synced write, and the writes since in
//! order (RocksDB's WAL: a crash loses a suffix of the unsynced writes).

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::Mutex;

use super::{Cf, CfSize, Engine, Result, SortedFile, StorageError, WriteBatch, WriteOp};

/// A key in one column family.
type CfKey = (Cf, Vec<u8>);

type Map = BTreeMap<CfKey, Vec<u8>>;

#[derive(Default)]
pub struct MemEngine {
    cfs: Mutex<Map>,
    /// The state as of the last synced write, and the batches written
    /// since without a sync, oldest first.
    durable: Mutex<(Map, Vec<WriteBatch>)>,
    /// A disk that acknowledges syncs and keeps nothing (a failure on
    /// demand, for the simulation's own test: it must catch the loss).
    lying: std::sync::atomic::AtomicBool,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, syncs are acknowledged and do nothing.
    pub fn lie_about_syncs(&self) {
        self.lying.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes not yet synced.
    pub fn unsynced(&self) -> usize {
        self.durable.lock().1.len()
    }

    /// A power loss: the state becomes the last synced one plus the first
    /// `keep` writes made since (at most all of them), as RocksDB's WAL
    /// would replay. Whatever holds the engine must be dropped first.
    pub fn crash(&self, keep: usize) {
        let mut durable = self.durable.lock();
        let (state, unsynced) = &mut *durable;
        let kept: Vec<WriteBatch> = unsynced.drain(..).take(keep).collect();
        for batch in &kept {
            apply(state, batch.ops.iter().cloned());
        }
        *self.cfs.lock() = state.clone();
    }
}

fn apply(m: &mut Map, ops: impl IntoIterator<Item = WriteOp>) {
    for op in ops {
        match op {
            WriteOp::Put(cf, k, v) => {
                m.insert((cf, k), v);
            }
            WriteOp::Delete(cf, k) => {
                m.remove(&(cf, k));
            }
            WriteOp::DeleteRange(cf, s, e) => {
                let keys: Vec<_> = m.range(bounds(cf, &s, Some(&e))).map(|(k, _)| k.clone()).collect();
                for k in keys {
                    m.remove(&k);
                }
            }
        }
    }
}

fn bounds(cf: Cf, start: &[u8], end: Option<&[u8]>) -> (Bound<CfKey>, Bound<CfKey>) {
    let lo = Bound::Included((cf, start.to_vec()));
    let hi = match end {
        Some(e) => Bound::Excluded((cf, e.to_vec())),
        None => match cf {
            Cf::Raft => Bound::Excluded((Cf::Kv, Vec::new())),
            Cf::Kv => Bound::Excluded((Cf::Meta, Vec::new())),
            Cf::Meta => Bound::Unbounded,
        },
    };
    (lo, hi)
}

impl Engine for MemEngine {
    fn checkpoint(&self, _dir: &std::path::Path) -> Result<std::sync::Arc<dyn Engine>> {
        let state = self.cfs.lock().clone();
        Ok(std::sync::Arc::new(MemEngine { cfs: Mutex::new(state.clone()), durable: Mutex::new((state, Vec::new())), lying: Default::default() }))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.lock().get(&(cf, key.to_vec())).cloned())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        // The durable side first: a sync covers every earlier write.
        let mut durable = self.durable.lock();
        let (state, unsynced) = &mut *durable;
        unsynced.push(batch.clone());
        if sync && !self.lying.load(std::sync::atomic::Ordering::Relaxed) {
            for b in unsynced.drain(..) {
                apply(state, b.ops);
            }
        }
        apply(&mut self.cfs.lock(), batch.ops);
        Ok(())
    }

    fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let m = self.cfs.lock();
        for ((_, k), v) in m.range(bounds(cf, start, end)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let m = self.cfs.lock();
        Ok(m.range(bounds(cf, start, Some(end))).next_back().map(|((_, k), v)| (k.clone(), v.clone())))
    }

    fn compact_cf(&self, _cf: Cf) -> Result<()> {
        Ok(())
    }

    fn sorted_file(&self, path: &std::path::Path, clear: &[(Vec<u8>, Vec<u8>)]) -> Result<Box<dyn SortedFile>> {
        let file = std::fs::File::create(path).map_err(|e| file_error(path, e))?;
        let mut f = MemSortedFile { out: std::io::BufWriter::new(file), path: path.to_path_buf(), last: None };
        f.field(&(clear.len() as u32).to_be_bytes())?;
        for (start, end) in clear {
            f.field(start)?;
            f.field(end)?;
        }
        Ok(Box::new(f))
    }

    fn ingest(&self, cf: Cf, path: &std::path::Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, e))?;
        let mut fields = Fields(&bytes);
        let mut batch = WriteBatch::default();
        let clear = fields.next().and_then(|n| n.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
        for _ in 0..clear {
            if let (Some(start), Some(end)) = (fields.next(), fields.next()) {
                batch.delete_range(cf, start, end);
            }
        }
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            batch.put(cf, k, v);
        }
        self.write(batch, true)
    }

    fn cf_size(&self, cf: Cf) -> CfSize {
        let total = self.cfs.lock().iter().filter(|((c, _), _)| *c == cf).map(|((_, k), v)| (k.len() + v.len()) as u64).sum();
        CfSize { total, live: total }
    }
}

fn file_error(path: &std::path::Path, e: std::io::Error) -> StorageError {
    StorageError::Engine(format!("sorted file {}: {e}", path.display()))
}

/// A sorted file of the in-memory engine: the ranges to clear, then keys
/// and values, each field length-prefixed.
struct MemSortedFile {
    out: std::io::BufWriter<std::fs::File>,
    path: std::path::PathBuf,
    last: Option<Vec<u8>>,
}

impl MemSortedFile {
    fn field(&mut self, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        self.out.write_all(&(bytes.len() as u32).to_be_bytes()).map_err(|e| file_error(&self.path, e))?;
        self.out.write_all(bytes).map_err(|e| file_error(&self.path, e))
    }
}

impl SortedFile for MemSortedFile {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        // The same contract as RocksDB's SST writer.
        if self.last.as_deref().is_some_and(|last| key <= last) {
            return Err(StorageError::Engine(format!("sorted file {}: keys must be added in strictly increasing order", self.path.display())));
        }
        self.last = Some(key.to_vec());
        self.field(key)?;
        self.field(value)
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        use std::io::Write;
        self.out.flush().map_err(|e| file_error(&self.path, e))
    }
}

/// Reads length-prefixed fields.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (field, rest) = rest.split_at(len);
        self.0 = rest;
        Some(field)
    }
}
