//! The MVCC store: reads at any revision since the last compaction, write
//! transactions that make one revision, and compaction.
//!
//! Readers and the single writer (the apply loop) share the index. A write
//! transaction updates the index in place with revisions above the current
//! one, writes the values to the engine, and only then advances the current
//! revision: a reader, which never looks past the current revision, sees a
//! transaction entirely or not at all (etcd's scheme).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use etcd_client::proto::PbKeyValue as KeyValue;
use parking_lot::RwLock;
use prost::Message;

use super::key_index::KeyIndex;
use super::{MvccError, Result, Revision};
use crate::storage::{Cf, Engine, WriteBatch};

const META_CURRENT_REV: &[u8] = b"mvcc/current_rev";
const META_COMPACTED_REV: &[u8] = b"mvcc/compacted_rev";

/// Where a range ends, decoded from etcd's `range_end` conventions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// Only the key itself (empty range_end).
    Single,
    /// Every key >= key (range_end "\0").
    Infinity,
    /// Keys in [key, end).
    Until(Vec<u8>),
}

impl RangeEnd {
    pub fn from_request(range_end: &[u8]) -> Self {
        match range_end {
            [] => RangeEnd::Single,
            [0] => RangeEnd::Infinity,
            end => RangeEnd::Until(end.to_vec()),
        }
    }

    /// Whether `k` falls in the range that starts at `key`.
    pub fn contains(&self, key: &[u8], k: &[u8]) -> bool {
        match self {
            RangeEnd::Single => k == key,
            RangeEnd::Infinity => k >= key,
            RangeEnd::Until(end) => k >= key && k < end.as_slice(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct RangeOptions {
    /// 0 = no limit.
    pub limit: usize,
    /// <= 0 = the current revision.
    pub rev: i64,
    pub count_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision read, ignoring the limit.
    pub count: usize,
    /// The store's current revision.
    pub rev: i64,
}

/// One change made by a write transaction, for watchers.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub kv: KeyValue,
    pub deleted: bool,
}

#[derive(Default)]
struct Index {
    keys: BTreeMap<Vec<u8>, KeyIndex>,
    current: i64,
    compacted: i64,
}

/// The lower and upper bound of a key range, for BTreeMap::range.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

impl Index {
    fn bounds<'a>(key: &'a [u8], end: &'a RangeEnd) -> Option<KeyBounds<'a>> {
        match end {
            RangeEnd::Single => Some((Bound::Included(key), Bound::Included(key))),
            RangeEnd::Infinity => Some((Bound::Included(key), Bound::Unbounded)),
            RangeEnd::Until(e) if e.as_slice() > key => Some((Bound::Included(key), Bound::Excluded(e.as_slice()))),
            RangeEnd::Until(_) => None,
        }
    }

    /// (key, revision) pairs visible at `at`, in key order.
    fn visible(&self, key: &[u8], end: &RangeEnd, at: i64) -> Vec<Revision> {
        let Some(b) = Self::bounds(key, end) else { return Vec::new() };
        self.keys
            .range::<[u8], _>(b)
            .filter_map(|(_, ki)| ki.get(at).map(|v| v.modified))
            .collect()
    }
}

pub struct Store {
    engine: Arc<dyn Engine>,
    index: RwLock<Index>,
}

fn decode(bytes: &[u8]) -> Result<KeyValue> {
    KeyValue::decode(bytes).map_err(|e| MvccError::Corrupt(e.to_string()))
}

fn read_i64(engine: &dyn Engine, key: &[u8]) -> Result<i64> {
    Ok(match engine.get(Cf::Meta, key)? {
        Some(b) => i64::from_be_bytes(b.as_slice().try_into().map_err(|_| MvccError::Corrupt("meta revision".into()))?),
        None => 0,
    })
}

impl Store {
    /// Opens the store, rebuilding the index from the revisions on disk.
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let idx = Self::load_index(engine.as_ref())?;
        Ok(Self { engine, index: RwLock::new(idx) })
    }

    /// Rebuilds the index after the engine's content was replaced (a raft
    /// snapshot from the leader).
    pub fn reload(&self) -> Result<()> {
        let idx = Self::load_index(self.engine.as_ref())?;
        *self.index.write() = idx;
        Ok(())
    }

    fn load_index(engine: &dyn Engine) -> Result<Index> {
        let mut idx = Index { current: 1, ..Default::default() };
        let mut failure = None;
        engine.scan(Cf::Kv, &[], None, &mut |k, v| {
            let mut step = || -> Result<()> {
                let (rev, tombstone) = Revision::from_bytes(k).ok_or_else(|| MvccError::Corrupt("revision key".into()))?;
                let kv = decode(v)?;
                idx.current = idx.current.max(rev.main);
                match idx.keys.get_mut(&kv.key) {
                    Some(ki) if tombstone => {
                        ki.tombstone(rev);
                    }
                    Some(ki) => ki.put(rev),
                    None if tombstone => {}
                    None => {
                        let ki = KeyIndex::restored(Revision::new(kv.create_revision, 0), rev, kv.version);
                        idx.keys.insert(kv.key, ki);
                    }
                }
                Ok(())
            };
            match step() {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        idx.compacted = read_i64(engine, META_COMPACTED_REV)?;
        idx.current = idx.current.max(read_i64(engine, META_CURRENT_REV)?).max(idx.compacted);
        Ok(idx)
    }

    /// etcd's HashKV: a CRC-32C of every revision (key and value) up to
    /// `rev` (0 = current) that compaction kept; equal on every member at
    /// the same revision. Returns (hash, compacted revision, revision).
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let idx = self.index.read();
        let rev = if rev <= 0 { idx.current } else { rev };
        if rev > idx.current {
            return Err(MvccError::FutureRev);
        }
        if rev < idx.compacted {
            return Err(MvccError::Compacted);
        }
        let mut crc = crate::mvcc::crc32c::Crc32c::new();
        self.engine.scan(Cf::Kv, &[], None, &mut |k, v| match Revision::from_bytes(k) {
            Some((r, _)) if r.main <= rev => {
                crc.update(k);
                crc.update(v);
                true
            }
            Some(_) => false,
            None => true,
        })?;
        Ok((crc.finish(), idx.compacted, rev))
    }

    pub fn current_revision(&self) -> i64 {
        self.index.read().current
    }

    pub fn compacted_revision(&self) -> i64 {
        self.index.read().compacted
    }

    pub fn key_count(&self) -> usize {
        self.index.read().keys.len()
    }

    /// The live keys attached to a lease, with their lease, read one value
    /// at a time (at start-up and after a raft snapshot: the values of a
    /// large store must not all be held at once).
    pub fn leased_keys(&self) -> Result<Vec<(Vec<u8>, i64)>> {
        let revs = {
            let idx = self.index.read();
            idx.visible(&[0], &RangeEnd::Infinity, idx.current)
        };
        let mut attached = Vec::new();
        for rev in revs {
            if let Some(v) = self.engine.get(Cf::Kv, &rev.to_bytes(false))? {
                let kv = decode(&v)?;
                if kv.lease != 0 {
                    attached.push((kv.key, kv.lease));
                }
            }
        }
        Ok(attached)
    }

    /// Reads a range at a revision.
    pub fn range(&self, key: &[u8], end: &RangeEnd, opts: &RangeOptions) -> Result<RangeResult> {
        self.read(key, end, opts, None, &HashMap::new())
    }

    /// The one range reader. `latest` is the newest readable revision (None:
    /// the current one); `staged` holds values a write transaction has not
    /// written to the engine yet.
    fn read(
        &self,
        key: &[u8],
        end: &RangeEnd,
        opts: &RangeOptions,
        latest: Option<i64>,
        staged: &HashMap<Revision, KeyValue>,
    ) -> Result<RangeResult> {
        let (revs, latest) = {
            let idx = self.index.read();
            let latest = latest.unwrap_or(idx.current);
            let at = if opts.rev <= 0 { latest } else { opts.rev };
            if at > latest {
                return Err(MvccError::FutureRev);
            }
            if at < idx.compacted {
                return Err(MvccError::Compacted);
            }
            (idx.visible(key, end, at), latest)
        };
        let count = revs.len();
        if opts.count_only {
            return Ok(RangeResult { kvs: Vec::new(), count, rev: latest });
        }
        let take = if opts.limit == 0 { count } else { opts.limit.min(count) };
        let mut kvs = Vec::with_capacity(take);
        for rev in &revs[..take] {
            if let Some(kv) = staged.get(rev) {
                kvs.push(kv.clone());
                continue;
            }
            match self.engine.get(Cf::Kv, &rev.to_bytes(false))? {
                Some(v) => kvs.push(decode(&v)?),
                // A compaction removed it between the index read and now.
                None => return Err(MvccError::Compacted),
            }
        }
        Ok(RangeResult { kvs, count, rev: latest })
    }

    /// Changes with main revision in `[from, to]` to keys in the range, in
    /// revision order (watch catch-up). Stops at a revision boundary once
    /// `max` changes are read; also returns the last revision fully read.
    pub fn changes(&self, from: i64, to: i64, key: &[u8], end: &RangeEnd, max: usize) -> Result<(Vec<(i64, Change)>, i64)> {
        let mut out = Vec::new();
        let mut read_through = to;
        let mut failure = None;
        let stop = Revision::start_of(to + 1);
        self.engine.scan(Cf::Kv, &Revision::start_of(from), Some(&stop), &mut |k, v| {
            let Some((rev, deleted)) = Revision::from_bytes(k) else { return true };
            if rev.sub == 0 && out.len() >= max {
                read_through = rev.main - 1;
                return false;
            }
            match decode(v) {
                Ok(kv) => {
                    if end.contains(key, &kv.key) {
                        out.push((rev.main, Change { kv, deleted }));
                    }
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok((out, read_through)),
        }
    }

    /// Starts the write transaction of the next revision. Only the apply
    /// loop writes, so there is never more than one.
    pub fn write(&self) -> WriteTxn<'_> {
        let begin = self.current_revision();
        WriteTxn { store: self, begin, sub: 0, batch: WriteBatch::default(), staged: HashMap::new(), changes: Vec::new() }
    }

    /// Validates a compaction target as etcd does.
    pub fn check_compact(&self, rev: i64) -> Result<()> {
        let idx = self.index.read();
        if rev <= idx.compacted {
            return Err(MvccError::Compacted);
        }
        if rev > idx.current {
            return Err(MvccError::FutureRev);
        }
        Ok(())
    }

    /// Removes every revision older than `rev` except each key's value as
    /// of `rev`, together with `extra`, in one atomic batch.
    pub fn compact(&self, rev: i64, extra: WriteBatch) -> Result<()> {
        self.check_compact(rev)?;
        let mut keep = HashSet::new();
        let mut idx = self.index.write();
        idx.keys.retain(|_, ki| {
            ki.compact(rev, &mut keep);
            !ki.is_empty()
        });
        let mut batch = WriteBatch::default();
        let end = Revision::start_of(rev + 1);
        self.engine.scan(Cf::Kv, &[], Some(&end), &mut |k, _| {
            if let Some((r, _)) = Revision::from_bytes(k)
                && !keep.contains(&r)
            {
                batch.delete(Cf::Kv, k.to_vec());
            }
            true
        })?;
        batch.put(Cf::Meta, META_COMPACTED_REV, rev.to_be_bytes().to_vec());
        batch.append(extra);
        self.engine.write(batch, false)?;
        idx.compacted = rev;
        Ok(())
    }
}

/// The changes of one revision in the making.
pub struct WriteTxn<'a> {
    store: &'a Store,
    begin: i64,
    sub: i64,
    batch: WriteBatch,
    staged: HashMap<Revision, KeyValue>,
    changes: Vec<Change>,
}

impl WriteTxn<'_> {
    /// The revision a read inside this transaction sees.
    pub fn rev(&self) -> i64 {
        if self.changes.is_empty() { self.begin } else { self.begin + 1 }
    }

    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// A range that sees this transaction's own writes (its sub-revisions).
    pub fn range(&self, key: &[u8], end: &RangeEnd, opts: &RangeOptions) -> Result<RangeResult> {
        self.store.read(key, end, opts, Some(self.rev()), &self.staged)
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision::new(self.begin + 1, self.sub);
        self.sub += 1;
        r
    }

    /// Puts a key; returns the new revision.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> i64 {
        let rev = self.next_rev();
        let mut idx = self.store.index.write();
        let ki = idx.keys.entry(key.to_vec()).or_default();
        let (create_revision, version) = match ki.get(rev.main) {
            Some(v) => (v.created.main, v.version + 1),
            None => (rev.main, 1),
        };
        ki.put(rev);
        drop(idx);
        let kv = KeyValue { key: key.to_vec(), value, create_revision, mod_revision: rev.main, version, lease };
        self.batch.put(Cf::Kv, rev.to_bytes(false), kv.encode_to_vec());
        self.staged.insert(rev, kv.clone());
        self.changes.push(Change { kv, deleted: false });
        rev.main
    }

    /// Deletes the live keys of a range; returns how many.
    pub fn delete_range(&mut self, key: &[u8], end: &RangeEnd) -> i64 {
        let at = self.begin + 1;
        let keys: Vec<Vec<u8>> = {
            let idx = self.store.index.read();
            match Index::bounds(key, end) {
                None => Vec::new(),
                Some(b) => idx
                    .keys
                    .range::<[u8], _>(b)
                    .filter(|(_, ki)| ki.get(at).is_some())
                    .map(|(k, _)| k.clone())
                    .collect(),
            }
        };
        for k in &keys {
            let rev = self.next_rev();
            if let Some(ki) = self.store.index.write().keys.get_mut(k) {
                ki.tombstone(rev);
            }
            let kv = KeyValue { key: k.clone(), mod_revision: rev.main, ..Default::default() };
            self.batch.put(Cf::Kv, rev.to_bytes(true), kv.encode_to_vec());
            self.changes.push(Change { kv, deleted: true });
        }
        keys.len() as i64
    }

    /// Writes the revision and `extra` atomically (not synced: the raft log
    /// already holds the request durably), then makes it visible.
    pub fn commit(mut self, extra: WriteBatch) -> Result<Vec<Change>> {
        let changed = !self.changes.is_empty();
        if changed {
            self.batch.put(Cf::Meta, META_CURRENT_REV, (self.begin + 1).to_be_bytes().to_vec());
        }
        self.batch.append(extra);
        if !self.batch.is_empty() {
            self.store.engine.write(std::mem::take(&mut self.batch), false)?;
        }
        if changed {
            self.store.index.write().current = self.begin + 1;
        }
        Ok(std::mem::take(&mut self.changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    fn store() -> Store {
        Store::open(Arc::new(MemEngine::new())).expect("open empty store")
    }

    fn put(s: &Store, k: &str, v: &str) -> i64 {
        let mut t = s.write();
        let r = t.put(k.as_bytes(), v.as_bytes().to_vec(), 0);
        t.commit(WriteBatch::default()).expect("commit");
        r
    }

    fn get(s: &Store, k: &str, rev: i64) -> Result<Vec<KeyValue>> {
        s.range(k.as_bytes(), &RangeEnd::Single, &RangeOptions { rev, ..Default::default() }).map(|r| r.kvs)
    }

    #[test]
    fn fresh_store_is_at_revision_one_and_each_write_makes_one() {
        let s = store();
        assert_eq!(s.current_revision(), 1);
        assert_eq!(put(&s, "a", "1"), 2);
        assert_eq!(put(&s, "a", "2"), 3);
        let kv = &get(&s, "a", 0).expect("read")[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(get(&s, "a", 2).expect("read")[0].value, b"1");
    }

    #[test]
    fn a_transaction_is_one_revision_and_a_delete_restarts_the_version() {
        let s = store();
        put(&s, "a", "1");
        let mut t = s.write();
        assert_eq!(t.delete_range(b"a", &RangeEnd::Single), 1);
        t.put(b"b", b"x".to_vec(), 0);
        t.commit(WriteBatch::default()).expect("commit");
        assert_eq!(s.current_revision(), 3);
        assert!(get(&s, "a", 0).expect("read").is_empty());
        assert_eq!(put(&s, "a", "again"), 4);
        let kv = &get(&s, "a", 0).expect("read")[0];
        assert_eq!((kv.create_revision, kv.version), (4, 1));
    }

    #[test]
    fn compaction_refuses_old_reads_and_survives_reopen() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let s = Store::open(engine.clone()).expect("open");
        put(&s, "a", "1");
        put(&s, "a", "2");
        put(&s, "b", "1");
        s.compact(3, WriteBatch::default()).expect("compact");
        assert!(matches!(get(&s, "a", 2), Err(MvccError::Compacted)));
        assert_eq!(get(&s, "a", 3).expect("read")[0].value, b"2");
        assert!(matches!(s.compact(3, WriteBatch::default()), Err(MvccError::Compacted)));
        assert!(matches!(s.compact(9, WriteBatch::default()), Err(MvccError::FutureRev)));
        let reopened = Store::open(engine).expect("reopen");
        assert_eq!(reopened.current_revision(), 4);
        assert_eq!(reopened.compacted_revision(), 3);
        let kv = &get(&reopened, "a", 0).expect("read")[0];
        assert_eq!((kv.version, kv.create_revision), (2, 2));
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;
    use crate::storage::mem::MemEngine;

    #[test]
    fn versions_count_every_put() {
        let s = Store::open(Arc::new(MemEngine::new())).expect("open");
        for i in 1..=4 {
            let mut t = s.write();
            t.put(b"h", vec![i], 0);
            t.commit(WriteBatch::default()).expect("commit");
            let kv = &s.range(b"h", &RangeEnd::Single, &RangeOptions::default()).expect("read").kvs[0];
            assert_eq!(kv.version, i as i64);
        }
    }
}
