//! The MVCC store: reads at any revision since the last compaction, write
//! transactions that make one revision, and compaction.
//!
//! Readers and the single writer (the apply loop) share the index. A write
//! transaction updates the index in place with revisions above the current
//! one, writes the values to the engine, and only then advances the current
//! revision: a reader, which never looks past the current revision, sees a
//! transaction entirely or not at all (etcd's scheme).
//!
//! The applier stages the transactions of many entries (`WriteTxn::stage`)
//! and writes them to the engine in one batch (`Store::flush`), which only
//! then advances the current revision to the last of them: one engine write
//! per batch of entries instead of one per entry. The staged transactions
//! see each other's writes; readers see none of them until the flush.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::PbKeyValue as KeyValue;
use parking_lot::{Condvar, Mutex, RwLock};
use prost::Message;

use super::key_index::KeyIndex;
use super::{MvccError, Result, Revision};
use crate::storage::{Cf, Engine, WriteBatch};

const META_CURRENT_REV: &[u8] = b"mvcc/current_rev";
/// The compaction asked for last (etcd's scheduledCompactRev): reads
/// below it are refused.
const META_COMPACTED_REV: &[u8] = b"mvcc/compacted_rev";
/// The compaction whose deletions are all done (etcd's finishedCompactRev).
/// Absent in a data dir that never compacted in the background: the same as
/// the compacted revision there.
const META_FINISHED_COMPACT_REV: &[u8] = b"mvcc/finished_compact_rev";

/// Revisions a compaction deletes per engine write (etcd's compaction batch
/// limit).
const COMPACTION_BATCH: usize = 1000;
/// Revisions a compaction step looks at, kept or not: bounds a step over a
/// stretch of history where nearly everything is kept.
const COMPACTION_SCAN: usize = 10 * COMPACTION_BATCH;
/// Keys of the index compacted per hold of its write lock.
const COMPACTION_INDEX_CHUNK: usize = 5000;
/// The compactor's pause between two steps (etcd's compaction sleep
/// interval): writers and readers get the engine and the index between.
const COMPACTION_PAUSE: Duration = Duration::from_millis(10);

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

    /// The request's `range_end` this was decoded from.
    pub fn as_request(&self) -> &[u8] {
        match self {
            RangeEnd::Single => &[],
            RangeEnd::Infinity => &[0],
            RangeEnd::Until(end) => end,
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
    /// The key's revision before the transaction (a watcher's `prev_kv`,
    /// which etcd reads at the revision before the event's): known to the
    /// write transaction; None when the key did not exist then, and for
    /// changes read back from history, which do not know it.
    pub prev: Option<Revision>,
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

/// Where the compaction in progress is.
enum Phase {
    /// Compacting the index; the keys after this one are left (None: all).
    Index { after: Option<Vec<u8>> },
    /// Deleting from the engine the revisions not kept, from this key on.
    Disk { from: Vec<u8> },
}

/// The compactor's work, held by it for each step, and by whatever must
/// see the engine and the index without a step changing them under it
/// (`hash_kv`, installing a raft snapshot).
struct Compaction {
    /// The revision the compaction in progress compacts at.
    target: i64,
    /// The last compaction done entirely.
    finished: i64,
    phase: Phase,
    /// The revisions at or below `target` the compacted index keeps.
    keep: HashSet<Revision>,
}

impl Compaction {
    fn settled(finished: i64) -> Self {
        Self { target: finished, finished, phase: Phase::Index { after: None }, keep: HashSet::new() }
    }
}

/// Write transactions staged and not yet written to the engine.
#[derive(Default)]
struct Unwritten {
    batch: WriteBatch,
    /// Their values, by revision, for the transactions staged after them.
    values: HashMap<Revision, KeyValue>,
    /// The revision the last of them made (0: none made one).
    rev: i64,
}

pub struct Store {
    engine: Arc<dyn Engine>,
    index: RwLock<Index>,
    /// Only the writer (the apply loop) touches it.
    unwritten: Mutex<Unwritten>,
    compaction: Mutex<Compaction>,
    /// Set when a compaction is asked for; shared with the compactor
    /// thread, which waits on it without keeping the store (and its
    /// engine's lock on the data dir) alive.
    compaction_asked: Arc<(Mutex<bool>, Condvar)>,
    /// The last compaction finished, for callers of a physical compaction.
    finished: tokio::sync::watch::Sender<i64>,
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
        let finished = Self::load_finished(engine.as_ref(), idx.compacted)?;
        let pending = finished < idx.compacted;
        Ok(Self {
            engine,
            index: RwLock::new(idx),
            unwritten: Mutex::new(Unwritten::default()),
            compaction: Mutex::new(Compaction::settled(finished)),
            compaction_asked: Arc::new((Mutex::new(pending), Condvar::new())),
            finished: tokio::sync::watch::Sender::new(finished),
        })
    }

    fn load_finished(engine: &dyn Engine, compacted: i64) -> Result<i64> {
        match engine.get(Cf::Meta, META_FINISHED_COMPACT_REV)? {
            Some(b) => {
                let b: [u8; 8] = b.as_slice().try_into().map_err(|_| MvccError::Corrupt("meta revision".into()))?;
                Ok(i64::from_be_bytes(b).min(compacted))
            }
            None => Ok(compacted),
        }
    }

    /// Runs `install`, which replaces the engine's content (a raft snapshot
    /// from the leader), with the compactor held off, then rebuilds the
    /// index from the new content; a compaction the snapshot's sender had
    /// not finished resumes here.
    pub fn reload_after(&self, install: impl FnOnce() -> std::result::Result<(), crate::storage::StorageError>) -> Result<()> {
        // What came before the snapshot goes first.
        self.flush()?;
        let mut compaction = self.compaction.lock();
        install()?;
        let idx = Self::load_index(self.engine.as_ref())?;
        let finished = Self::load_finished(self.engine.as_ref(), idx.compacted)?;
        let pending = finished < idx.compacted;
        *self.index.write() = idx;
        *compaction = Compaction::settled(finished);
        self.finished.send_replace(finished);
        drop(compaction);
        if pending {
            self.wake_compactor();
        }
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
    /// the same revision, however far each one's compactor has got.
    /// Returns (hash, compacted revision, revision). Reads a point-in-time
    /// view of the engine: writes go on meanwhile; only the compactor waits.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64, i64)> {
        let compaction = self.compaction.lock();
        let (current, compacted) = {
            let idx = self.index.read();
            (idx.current, idx.compacted)
        };
        let rev = if rev <= 0 { current } else { rev };
        if rev > current {
            return Err(MvccError::FutureRev);
        }
        if rev < compacted {
            return Err(MvccError::Compacted);
        }
        // Until the compactor is done, the engine still holds revisions at
        // or below the compacted one that the compaction drops: only the
        // one visible at the compacted revision of each key counts.
        let settled = compaction.finished >= compacted;
        let mut crc = crate::mvcc::crc32c::Crc32c::new();
        let mut failure = None;
        self.engine.scan(Cf::Kv, &[], Some(&Revision::start_of(rev + 1)), &mut |k, v| {
            let Some((r, _)) = Revision::from_bytes(k) else { return true };
            if r.main <= compacted && !settled {
                match decode(v) {
                    Ok(kv) if self.visible_revision(&kv.key, compacted) == Some(r) => {}
                    Ok(_) => return true,
                    Err(e) => {
                        failure = Some(e);
                        return false;
                    }
                }
            }
            crc.update(k);
            crc.update(v);
            true
        })?;
        drop(compaction);
        match failure {
            Some(e) => Err(e),
            None => Ok((crc.finish(), compacted, rev)),
        }
    }

    fn visible_revision(&self, key: &[u8], at: i64) -> Option<Revision> {
        self.index.read().keys.get(key).and_then(|ki| ki.get(at)).map(|v| v.modified)
    }

    /// The value written at `rev`, if it is still there (a compaction may
    /// have removed it).
    pub fn value_at(&self, rev: Revision) -> Result<Option<KeyValue>> {
        match self.engine.get(Cf::Kv, &rev.to_bytes(false))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
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
        self.read(key, end, opts, None, &[])
    }

    /// The one range reader. `latest` is the newest readable revision (None:
    /// the current one); `staged` holds values write transactions have not
    /// written to the engine yet.
    fn read(
        &self,
        key: &[u8],
        end: &RangeEnd,
        opts: &RangeOptions,
        latest: Option<i64>,
        staged: &[&HashMap<Revision, KeyValue>],
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
            if let Some(kv) = staged.iter().find_map(|s| s.get(rev)) {
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
                        out.push((rev.main, Change { kv, deleted, prev: None }));
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

    /// Starts the write transaction of the next revision (after the staged
    /// ones). Only the apply loop writes, so there is never more than one.
    pub fn write(&self) -> WriteTxn<'_> {
        let staged = self.unwritten.lock().rev;
        let begin = if staged != 0 { staged } else { self.current_revision() };
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

    /// Compacts at `rev`, recorded with `extra` in one atomic write: reads
    /// below `rev` are refused from now on; the compactor removes what they
    /// could have read in the background.
    pub fn compact(&self, rev: i64, extra: WriteBatch) -> Result<()> {
        // Checked against what the entries before it made.
        self.flush()?;
        self.check_compact(rev)?;
        let mut batch = extra;
        batch.put(Cf::Meta, META_COMPACTED_REV, rev.to_be_bytes().to_vec());
        // Only the compactor moves the finished revision; written here once
        // so that a data dir from before background compaction (where the
        // two were the same) tells an unfinished compaction apart.
        if self.engine.get(Cf::Meta, META_FINISHED_COMPACT_REV)?.is_none() {
            batch.put(Cf::Meta, META_FINISHED_COMPACT_REV, self.compacted_revision().to_be_bytes().to_vec());
        }
        self.engine.write(batch, false)?;
        self.index.write().compacted = rev;
        self.wake_compactor();
        Ok(())
    }

    /// Adds `batch` to what the next [`Store::flush`] writes (the rest of
    /// an applied entry's effects, written atomically with its revision).
    pub fn stage(&self, batch: WriteBatch) {
        self.unwritten.lock().batch.append(batch);
    }

    /// Writes what was staged in one engine write (not synced: the raft
    /// log holds it durably), then makes its revisions visible; whether
    /// there was anything to write. After a failed write the store must
    /// not be written again (the member stops).
    pub fn flush(&self) -> Result<bool> {
        let mut unwritten = self.unwritten.lock();
        let wrote = !unwritten.batch.is_empty();
        if wrote {
            self.engine.write(std::mem::take(&mut unwritten.batch), false)?;
        }
        unwritten.values.clear();
        if unwritten.rev != 0 {
            self.index.write().current = unwritten.rev;
            unwritten.rev = 0;
        }
        Ok(wrote)
    }

    fn wake_compactor(&self) {
        let (asked, wake) = &*self.compaction_asked;
        *asked.lock() = true;
        wake.notify_one();
    }

    /// The last compaction done entirely, as it moves (a physical
    /// compaction's caller waits on it).
    pub fn compactions_finished(&self) -> tokio::sync::watch::Receiver<i64> {
        self.finished.subscribe()
    }

    /// Does one step of the compaction in progress: compacts a chunk of the
    /// index, or deletes a batch of revisions. False once none is left.
    pub fn compaction_step(&self) -> Result<bool> {
        let mut c = self.compaction.lock();
        let target = self.index.read().compacted;
        if target > c.target {
            // A later compaction covers the one in progress: start over.
            c.target = target;
            c.phase = Phase::Index { after: None };
            c.keep.clear();
        }
        if c.finished >= c.target {
            return Ok(false);
        }
        let c = &mut *c;
        match &mut c.phase {
            Phase::Index { after } => {
                let mut idx = self.index.write();
                let lower = match after {
                    Some(k) => Bound::Excluded(k.as_slice()),
                    None => Bound::Unbounded,
                };
                let keys: Vec<Vec<u8>> =
                    idx.keys.range::<[u8], _>((lower, Bound::Unbounded)).take(COMPACTION_INDEX_CHUNK).map(|(k, _)| k.clone()).collect();
                for k in &keys {
                    if let Some(ki) = idx.keys.get_mut(k) {
                        ki.compact(c.target, &mut c.keep);
                        if ki.is_empty() {
                            idx.keys.remove(k);
                        }
                    }
                }
                c.phase = match keys.into_iter().last() {
                    Some(last) => Phase::Index { after: Some(last) },
                    None => Phase::Disk { from: Vec::new() },
                };
                Ok(true)
            }
            Phase::Disk { from } => {
                let end = Revision::start_of(c.target + 1);
                let mut batch = WriteBatch::default();
                let (mut seen, mut next) = (0, None);
                self.engine.scan(Cf::Kv, from, Some(&end), &mut |k, _| {
                    if seen == COMPACTION_SCAN || batch.len() == COMPACTION_BATCH {
                        next = Some(k.to_vec());
                        return false;
                    }
                    seen += 1;
                    if let Some((r, _)) = Revision::from_bytes(k)
                        && !c.keep.contains(&r)
                    {
                        batch.delete(Cf::Kv, k.to_vec());
                    }
                    true
                })?;
                match next {
                    Some(next) => {
                        self.engine.write(batch, false)?;
                        c.phase = Phase::Disk { from: next };
                        Ok(true)
                    }
                    None => {
                        batch.put(Cf::Meta, META_FINISHED_COMPACT_REV, c.target.to_be_bytes().to_vec());
                        self.engine.write(batch, false)?;
                        c.finished = c.target;
                        c.keep = HashSet::new();
                        c.phase = Phase::Index { after: None };
                        self.finished.send_replace(c.finished);
                        Ok(false)
                    }
                }
            }
        }
    }

    /// Runs compactions to the end, now.
    #[cfg(test)]
    pub fn finish_compaction(&self) -> Result<()> {
        while self.compaction_step()? {}
        Ok(())
    }

    /// Starts the compactor thread, which runs compactions as they are
    /// asked for and stops once the store is dropped. `failed` is called if
    /// the engine fails under it (the member cannot go on).
    pub fn spawn_compactor(self: &Arc<Self>, failed: impl Fn() + Send + 'static) -> std::io::Result<std::thread::JoinHandle<()>> {
        let store = Arc::downgrade(self);
        let asked = self.compaction_asked.clone();
        std::thread::Builder::new().name("compactor".into()).spawn(move || {
            loop {
                {
                    let (asked, wake) = &*asked;
                    let mut asked = asked.lock();
                    if !*asked {
                        // Wakes now and then to notice the store is gone
                        // (dropping it also wakes this).
                        wake.wait_for(&mut asked, Duration::from_secs(1));
                    }
                    let work = std::mem::take(&mut *asked);
                    if store.strong_count() == 0 {
                        return;
                    }
                    if !work {
                        continue;
                    }
                }
                // The store is held for one step at a time: a member that
                // stops mid-compaction closes its engine at once.
                let started = std::time::Instant::now();
                let mut worked = false;
                loop {
                    let Some(s) = store.upgrade() else { return };
                    match s.compaction_step() {
                        Ok(true) => {
                            worked = true;
                            drop(s);
                            std::thread::sleep(COMPACTION_PAUSE);
                        }
                        Ok(false) => {
                            if worked {
                                tracing::info!(revision = *s.finished.borrow(), took = ?started.elapsed(), "finished a compaction");
                            }
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the compactor stopped on a storage error");
                            failed();
                            return;
                        }
                    }
                }
            }
        })
    }
}

impl Drop for Store {
    /// Lets the compactor thread see the store is gone.
    fn drop(&mut self) {
        let (asked, wake) = &*self.compaction_asked;
        *asked.lock() = true;
        wake.notify_one();
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
        let unwritten = self.store.unwritten.lock();
        self.store.read(key, end, opts, Some(self.rev()), &[&self.staged, &unwritten.values])
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
        let prev = ki.get(self.begin).map(|v| v.modified);
        ki.put(rev);
        drop(idx);
        let kv = KeyValue { key: key.to_vec(), value, create_revision, mod_revision: rev.main, version, lease };
        self.batch.put(Cf::Kv, rev.to_bytes(false), kv.encode_to_vec());
        self.staged.insert(rev, kv.clone());
        self.changes.push(Change { kv, deleted: false, prev });
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
            let mut prev = None;
            if let Some(ki) = self.store.index.write().keys.get_mut(k) {
                prev = ki.get(self.begin).map(|v| v.modified);
                ki.tombstone(rev);
            }
            let kv = KeyValue { key: k.clone(), mod_revision: rev.main, ..Default::default() };
            self.batch.put(Cf::Kv, rev.to_bytes(true), kv.encode_to_vec());
            self.changes.push(Change { kv, deleted: true, prev });
        }
        keys.len() as i64
    }

    /// Writes the revision and `extra` atomically with whatever was staged
    /// before (not synced: the raft log already holds the request
    /// durably), then makes it visible.
    pub fn commit(self, extra: WriteBatch) -> Result<Vec<Change>> {
        let store = self.store;
        let changes = self.stage(extra);
        store.flush()?;
        Ok(changes)
    }

    /// Stages the revision and `extra` for the store's next
    /// [`Store::flush`], which writes and shows them: later transactions
    /// see them at once, readers after the flush.
    pub fn stage(mut self, extra: WriteBatch) -> Vec<Change> {
        let changed = !self.changes.is_empty();
        if changed {
            self.batch.put(Cf::Meta, META_CURRENT_REV, (self.begin + 1).to_be_bytes().to_vec());
        }
        self.batch.append(extra);
        let mut unwritten = self.store.unwritten.lock();
        unwritten.batch.append(std::mem::take(&mut self.batch));
        unwritten.values.extend(self.staged.drain());
        if changed {
            unwritten.rev = self.begin + 1;
        }
        std::mem::take(&mut self.changes)
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

    fn revisions_on_disk(engine: &dyn Engine) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        engine
            .scan(Cf::Kv, &[], None, &mut |k, _| {
                out.push(k.to_vec());
                true
            })
            .expect("scan");
        out
    }

    /// A history over more keys than an index chunk and more revisions
    /// than a deletion batch: every key put three times, every third one
    /// deleted, some put again in one transaction twice.
    fn long_history(s: &Store) {
        let keys = COMPACTION_INDEX_CHUNK + 700;
        for round in 0..3 {
            for i in 0..keys {
                put(s, &format!("k{i:05}"), &format!("v{round}"));
            }
        }
        for i in (0..keys).step_by(3) {
            let mut t = s.write();
            t.delete_range(format!("k{i:05}").as_bytes(), &RangeEnd::Single);
            t.commit(WriteBatch::default()).expect("commit");
        }
        for i in (0..keys).step_by(6) {
            let mut t = s.write();
            t.put(format!("k{i:05}").as_bytes(), b"again".to_vec(), 0);
            t.put(format!("k{i:05}").as_bytes(), b"twice".to_vec(), 0);
            t.commit(WriteBatch::default()).expect("commit");
        }
    }

    #[test]
    fn background_compaction_agrees_with_reads_and_hashes_at_every_step() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let s = Store::open(engine.clone()).expect("open");
        long_history(&s);
        let target = s.current_revision() - 1000;
        let everything = |s: &Store, rev| s.range(&[0], &RangeEnd::Infinity, &RangeOptions { rev, ..Default::default() }).expect("read").kvs;
        let at_target = everything(&s, target);
        let (hash_before, _, _) = s.hash_kv(target).expect("hash");

        s.compact(target, WriteBatch::default()).expect("compact");
        assert!(matches!(get(&s, "k00001", target - 1), Err(MvccError::Compacted)), "reads below the target are refused at once");
        let (hash, compacted, _) = s.hash_kv(target).expect("hash while pending");
        assert_eq!(compacted, target);
        let mut steps = 0;
        let mut hashes = vec![hash];
        let mut rx = s.compactions_finished();
        while s.compaction_step().expect("step") {
            steps += 1;
            // Writes and reads go on between steps.
            put(&s, &format!("during{steps}"), "x");
            assert_eq!(everything(&s, target), at_target, "the view at the compacted revision, after step {steps}");
            hashes.push(s.hash_kv(target).expect("hash").0);
        }
        assert!(steps > 2 + 3, "the index in chunks and the deletions in batches: {steps} steps");
        assert!(rx.has_changed().expect("sender alive"));
        assert_eq!(*rx.borrow_and_update(), target);
        assert!(hashes.iter().all(|h| *h == hashes[0]), "one hash at the target whatever the compactor's progress");
        assert_ne!(hashes[0], hash_before, "the hash covers only what compaction keeps");
        assert_eq!(everything(&s, target), at_target);

        // What is left on disk: each key's value at the target, and every
        // revision above it, no more.
        let reference = Store::open(Arc::new(MemEngine::new())).expect("open");
        long_history(&reference);
        let mut expected: Vec<Vec<u8>> = {
            let idx = reference.index.read();
            idx.keys.values().filter_map(|ki| ki.get(target)).map(|v| v.modified.to_bytes(false)).collect()
        };
        expected.extend(revisions_on_disk(reference.engine.as_ref()).into_iter().filter(|k| Revision::from_bytes(k).expect("rev").0.main > target));
        expected.sort();
        let left: Vec<Vec<u8>> = revisions_on_disk(engine.as_ref())
            .into_iter()
            .filter(|k| !String::from_utf8_lossy(&decode(&engine.get(Cf::Kv, k).expect("get").expect("value")).expect("kv").key).starts_with("during"))
            .collect();
        assert_eq!(left.len(), expected.len());
        assert!(left == expected, "the revisions left on disk are the ones compaction keeps");
    }

    #[test]
    fn an_interrupted_compaction_resumes_on_reopen_and_after_a_later_one() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let s = Store::open(engine.clone()).expect("open");
        long_history(&s);
        let first = s.current_revision() / 2;
        s.compact(first, WriteBatch::default()).expect("compact");
        for _ in 0..4 {
            assert!(s.compaction_step().expect("step"));
        }
        // A later compaction while the first is half done.
        let second = s.current_revision() - 10;
        s.compact(second, WriteBatch::default()).expect("compact");
        for _ in 0..3 {
            assert!(s.compaction_step().expect("step"));
        }
        let (hash, _, _) = s.hash_kv(0).expect("hash");
        drop(s);

        // Stopped there: the reopened store knows the work is not done.
        let reopened = Store::open(engine.clone()).expect("reopen");
        assert_eq!(reopened.compacted_revision(), second);
        assert_eq!(*reopened.compactions_finished().borrow(), 0, "nothing finished yet");
        assert_eq!(reopened.hash_kv(0).expect("hash").0, hash);
        reopened.finish_compaction().expect("finish");
        assert_eq!(*reopened.compactions_finished().borrow(), second);
        assert_eq!(reopened.hash_kv(0).expect("hash").0, hash);
        let oldest = revisions_on_disk(engine.as_ref()).into_iter().map(|k| Revision::from_bytes(&k).expect("rev").0.main).min();
        let visible = reopened.range(&[0], &RangeEnd::Infinity, &RangeOptions { rev: second, ..Default::default() }).expect("read").kvs;
        assert_eq!(oldest, visible.iter().map(|kv| kv.mod_revision).min(), "nothing older than a kept value is left");
        let again = Store::open(engine).expect("reopen");
        assert_eq!(*again.compactions_finished().borrow(), second, "the finished compaction is on disk");
        assert!(!again.compaction_step().expect("step"), "and not done again");
    }

    #[test]
    fn a_data_dir_compacted_all_at_once_has_no_compaction_pending() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let s = Store::open(engine.clone()).expect("open");
        put(&s, "a", "1");
        put(&s, "a", "2");
        drop(s);
        // How compaction used to leave a data dir: only the compacted revision.
        let mut b = WriteBatch::default();
        b.put(Cf::Meta, META_COMPACTED_REV, 2i64.to_be_bytes().to_vec());
        engine.write(b, false).expect("write");
        let s = Store::open(engine).expect("open");
        assert_eq!(*s.compactions_finished().borrow(), 2);
        assert!(!s.compaction_step().expect("step"));
    }

    #[test]
    fn the_compactor_thread_runs_a_compaction_and_stops_with_the_store() {
        let s = Arc::new(store());
        for i in 0..50 {
            put(&s, "a", &i.to_string());
        }
        let thread = s.spawn_compactor(|| panic!("no storage error here")).expect("spawn");
        let mut finished = s.compactions_finished();
        s.compact(40, WriteBatch::default()).expect("compact");
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), finished.wait_for(|f| *f >= 40)).await })
            .expect("finished in time")
            .expect("sender alive");
        // Puts made revisions 2 to 51: the value at 40 and the ones after it stay.
        assert_eq!(revisions_on_disk(s.engine.as_ref()).len(), (40..=51).count());
        drop(s);
        thread.join().expect("the compactor stops once the store is dropped");
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
