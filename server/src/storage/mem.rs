//! An in-memory engine for unit tests: the same contract as RocksDB, no disk.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::Mutex;

use super::{Cf, CfSize, Engine, Result, WriteBatch, WriteOp};

/// A key in one column family.
type CfKey = (Cf, Vec<u8>);

#[derive(Default)]
pub struct MemEngine {
    cfs: Mutex<BTreeMap<CfKey, Vec<u8>>>,
}

impl MemEngine {
    pub fn new() -> Self {
        Self::default()
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
        Ok(std::sync::Arc::new(MemEngine { cfs: Mutex::new(self.cfs.lock().clone()) }))
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.cfs.lock().get(&(cf, key.to_vec())).cloned())
    }

    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<()> {
        let mut m = self.cfs.lock();
        for op in batch.ops {
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

    fn cf_size(&self, cf: Cf) -> CfSize {
        let total = self.cfs.lock().iter().filter(|((c, _), _)| *c == cf).map(|((_, k), v)| (k.len() + v.len()) as u64).sum();
        CfSize { total, live: total }
    }
}
