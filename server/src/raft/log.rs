//! `raft::Storage` over the engine: entries keyed by index, the hard state,
//! the conf state and the index/term where the log was last truncated.
//! Callers batch the writes this type prepares and decide when to sync.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};

use crate::storage::{Cf, Engine, StorageError, WriteBatch};

const ENTRY_PREFIX: u8 = b'e';
const HARD_STATE: &[u8] = b"hs";
const CONF_STATE: &[u8] = b"cs";
const TRUNCATED: &[u8] = b"truncated";

/// The newest entries are kept in memory too, up to this many and this many
/// bytes of data: raft reads each entry back right after persisting it (to
/// apply it, and to send it to followers), and a read from the engine costs
/// more than the rest of the apply.
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 8 << 20;

fn entry_key(index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ENTRY_PREFIX);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn truncated_value(index: u64, term: u64) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    v
}

fn corrupt(detail: impl ToString) -> StorageError {
    StorageError::Corrupt { path: "raft log".into(), detail: detail.to_string() }
}

fn other(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(e.to_string().into()))
}

/// The index and term a new cluster starts from: every founding member
/// starts as if it had applied a snapshot at this index, so a member added
/// later always starts from a snapshot (which carries the member registry
/// and the conf state) rather than from an empty log.
pub const BOOTSTRAP_INDEX: u64 = 1;
pub const BOOTSTRAP_TERM: u64 = 1;

/// The newest raft entries, contiguous, at most CACHE_ENTRIES of them and
/// CACHE_BYTES of data (one entry even if larger).
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// Entries appended to the log: they replace a suffix of the cache or
    /// follow it; anything else starts the cache anew.
    fn append(&mut self, new: &[Entry]) {
        let Some(at) = new.first().map(|e| e.index) else { return };
        match self.first() {
            Some(first) if at > first && at <= first + self.entries.len() as u64 => {
                while self.entries.back().is_some_and(|e| e.index >= at) {
                    self.pop_back();
                }
            }
            _ => self.clear(),
        }
        for e in new {
            self.bytes += e.data.len();
            self.entries.push_back(e.clone());
        }
        while self.entries.len() > CACHE_ENTRIES || (self.bytes > CACHE_BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    /// Drops the entries up to and including `index`.
    fn compact_to(&mut self, index: u64) {
        while self.first().is_some_and(|first| first <= index) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len();
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= e.data.len();
        }
    }

    /// The entries in `[low, high)`, if the cache holds all of them.
    fn get(&self, low: u64, high: u64) -> Option<Vec<Entry>> {
        let first = self.first()?;
        if low < first || high > first + self.entries.len() as u64 {
            return None;
        }
        Some(self.entries.range((low - first) as usize..(high - first) as usize).cloned().collect())
    }

    fn term(&self, index: u64) -> Option<u64> {
        let first = self.first()?;
        self.entries.get(index.checked_sub(first)? as usize).map(|e| e.term)
    }
}

/// Makes a point-in-time copy of the applied state for a raft snapshot.
pub trait SnapshotSource: Send + Sync {
    /// Copies the state as applied up to `index` (called on the raft thread,
    /// so nothing is applied meanwhile); returns the snapshot's data.
    fn create(&self, index: u64) -> Result<Vec<u8>, StorageError>;
}

pub struct RaftLog {
    engine: Arc<dyn Engine>,
    hs: HardState,
    cs: ConfState,
    /// Index and term of the last entry removed by truncation (0, 0 if none).
    truncated: (u64, u64),
    last: u64,
    /// The newest entries, contiguous and ending at `last` when not empty.
    cache: EntryCache,
    /// Where snapshots come from, and the applied index they copy.
    source: Option<(Arc<dyn SnapshotSource>, Arc<std::sync::atomic::AtomicU64>)>,
    /// The newest snapshot made, reused while the log still follows it.
    latest: Mutex<Option<Snapshot>>,
}

impl RaftLog {
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self, StorageError> {
        let hs = match engine.get(Cf::Raft, HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(corrupt)?,
            None => HardState::default(),
        };
        let cs = match engine.get(Cf::Raft, CONF_STATE)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(corrupt)?,
            None => ConfState::default(),
        };
        let truncated = match engine.get(Cf::Raft, TRUNCATED)? {
            Some(b) if b.len() == 16 => (
                u64::from_be_bytes(b[..8].try_into().map_err(corrupt)?),
                u64::from_be_bytes(b[8..].try_into().map_err(corrupt)?),
            ),
            Some(_) => return Err(corrupt("truncated state")),
            None => (0, 0),
        };
        let last = match engine.last_in(Cf::Raft, &[ENTRY_PREFIX], &[ENTRY_PREFIX + 1])? {
            Some((k, _)) => u64::from_be_bytes(k[1..].try_into().map_err(corrupt)?),
            None => truncated.0,
        };
        Ok(Self { engine, hs, cs, truncated, last, cache: EntryCache::default(), source: None, latest: Mutex::new(None) })
    }

    /// Writes the initial state of a founding member into `batch`: the
    /// founding conf state, and a log that starts after BOOTSTRAP_INDEX.
    pub fn bootstrap(cs: &ConfState, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let hs = HardState { term: BOOTSTRAP_TERM, commit: BOOTSTRAP_INDEX, ..Default::default() };
        batch.put(Cf::Raft, HARD_STATE, hs.write_to_bytes().map_err(corrupt)?);
        batch.put(Cf::Raft, CONF_STATE, cs.write_to_bytes().map_err(corrupt)?);
        batch.put(Cf::Raft, TRUNCATED, truncated_value(BOOTSTRAP_INDEX, BOOTSTRAP_TERM));
        Ok(())
    }

    /// Lets raft ask for snapshots of the state applied up to `applied`.
    pub fn set_snapshot_source(&mut self, source: Arc<dyn SnapshotSource>, applied: Arc<std::sync::atomic::AtomicU64>) {
        self.source = Some((source, applied));
    }

    /// Replaces the whole log with a snapshot's position: entries go, the
    /// log restarts after the snapshot's index, with its conf state.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata, batch: &mut WriteBatch) -> Result<(), StorageError> {
        batch.delete_range(Cf::Raft, entry_key(0), entry_key(u64::MAX));
        batch.put(Cf::Raft, TRUNCATED, truncated_value(meta.index, meta.term));
        self.truncated = (meta.index, meta.term);
        self.last = meta.index;
        self.cache.clear();
        let mut hs = self.hs.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(hs, batch)?;
        self.set_conf_state(meta.get_conf_state().clone(), batch)
    }

    /// etcd's `--force-new-cluster` on the log: the entries past the commit
    /// index go (never committed, they never will be), and `entries` (the
    /// caller's conf changes) follow the commit index, committed, at the
    /// current term. Returns the new commit index.
    pub fn force_commit(&mut self, mut entries: Vec<Entry>, batch: &mut WriteBatch) -> Result<u64, StorageError> {
        let commit = self.hs.commit.max(self.truncated.0);
        if self.last > commit {
            batch.delete_range(Cf::Raft, entry_key(commit + 1), entry_key(self.last + 1));
            self.last = commit;
        }
        self.cache.clear();
        for (i, e) in entries.iter_mut().enumerate() {
            e.index = commit + 1 + i as u64;
            e.term = self.hs.term;
        }
        self.append(&entries, batch)?;
        let last = self.last;
        self.commit_to(last, batch)?;
        Ok(last)
    }

    pub fn is_initialized(&self) -> bool {
        !self.cs.voters.is_empty() || !self.cs.learners.is_empty()
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.cs
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    /// Appends entries, replacing any conflicting suffix.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        for e in entries {
            batch.put(Cf::Raft, entry_key(e.index), e.write_to_bytes().map_err(corrupt)?);
        }
        let new_last = first.index + entries.len() as u64 - 1;
        if new_last < self.last {
            batch.delete_range(Cf::Raft, entry_key(new_last + 1), entry_key(self.last + 1));
        }
        self.last = new_last;
        self.cache.append(entries);
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState, batch: &mut WriteBatch) -> Result<(), StorageError> {
        batch.put(Cf::Raft, HARD_STATE, hs.write_to_bytes().map_err(corrupt)?);
        self.hs = hs;
        Ok(())
    }

    /// Records that entries up to `index` are committed (never moving back).
    pub fn commit_to(&mut self, index: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let mut hs = self.hs.clone();
        hs.commit = hs.commit.max(index);
        self.set_hard_state(hs, batch)
    }

    pub fn set_conf_state(&mut self, cs: ConfState, batch: &mut WriteBatch) -> Result<(), StorageError> {
        batch.put(Cf::Raft, CONF_STATE, cs.write_to_bytes().map_err(corrupt)?);
        self.cs = cs;
        Ok(())
    }

    /// Drops entries up to and including `index` (already applied).
    pub fn truncate(&mut self, index: u64, batch: &mut WriteBatch) -> Result<(), StorageError> {
        if index <= self.truncated.0 || index > self.last {
            return Ok(());
        }
        let term = match self.cache.term(index) {
            Some(term) => term,
            None => self.entry(index)?.map(|e| e.term).ok_or_else(|| corrupt(format!("entry {index} missing")))?,
        };
        batch.delete_range(Cf::Raft, entry_key(0), entry_key(index + 1));
        batch.put(Cf::Raft, TRUNCATED, truncated_value(index, term));
        self.truncated = (index, term);
        self.cache.compact_to(index);
        Ok(())
    }

    fn entry(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        match self.engine.get(Cf::Raft, &entry_key(index))? {
            Some(b) => Entry::parse_from_bytes(&b).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hs.clone(), self.cs.clone()))
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if let Some(mut entries) = self.cache.get(low, high) {
            raft::util::limit_size(&mut entries, max_size.into());
            return Ok(entries);
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let mut failure = None;
        self.engine
            .scan(Cf::Raft, &entry_key(low), Some(&entry_key(high)), &mut |_, v| match Entry::parse_from_bytes(v) {
                Ok(e) => {
                    entries.push(e);
                    true
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            })
            .map_err(other)?;
        if let Some(e) = failure {
            return Err(other(e));
        }
        if entries.len() as u64 != high - low {
            return Err(other(format!("raft log has a hole in [{low}, {high})")));
        }
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if let Some(term) = self.cache.term(idx) {
            return Ok(term);
        }
        match self.entry(idx).map_err(other)? {
            Some(e) => Ok(e.term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let Some((source, applied)) = &self.source else {
            return Err(raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable));
        };
        let mut latest = self.latest.lock();
        if let Some(snap) = latest.as_ref() {
            let index = snap.get_metadata().index;
            // Still good while the log holds every entry after it, and only
            // for a member its configuration names: raft refuses to restore
            // a snapshot taken before the receiver was added, so a member
            // added after it would be sent it forever.
            let cs = snap.get_metadata().get_conf_state();
            let names_to = cs.voters.contains(&to) || cs.learners.contains(&to) || cs.learners_next.contains(&to);
            if index >= request_index && index >= self.truncated.0 && names_to {
                return Ok(snap.clone());
            }
        }
        let index = applied.load(std::sync::atomic::Ordering::Acquire);
        let term = self.term(index)?;
        let data = source.create(index).map_err(other)?;
        let mut snap = Snapshot { data: data.into(), ..Default::default() };
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.cs.clone());
        *latest = Some(snap.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn entries_survive_reopen_and_a_conflict_replaces_the_suffix() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b).expect("append");
        log.append(&[entry(2, 2)], &mut b).expect("append");
        log.commit_to(2, &mut b).expect("commit");
        engine.write(b, true).expect("write");
        let log = RaftLog::open(engine).expect("reopen");
        assert_eq!(log.last_index().expect("last"), 2);
        assert_eq!(log.term(2).expect("term"), 2);
        assert_eq!(log.hard_state().commit, 2);
        assert_eq!(log.entries(1, 3, None, GetEntriesContext::empty(false)).expect("entries").len(), 2);
    }

    #[test]
    fn forcing_drops_the_uncommitted_entries_and_commits_the_given_ones() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 2), entry(4, 2), entry(5, 2)], &mut b).expect("append");
        log.commit_to(3, &mut b).expect("commit");
        let mut hs = log.hard_state().clone();
        hs.term = 3;
        log.set_hard_state(hs, &mut b).expect("term");
        let forced = vec![Entry { data: b"remove a".to_vec().into(), ..Default::default() }, Entry::default()];
        assert_eq!(log.force_commit(forced, &mut b).expect("force"), 5);
        engine.write(b, true).expect("write");
        let log = RaftLog::open(engine).expect("reopen");
        assert_eq!(log.hard_state().commit, 5);
        assert_eq!(log.last_index().expect("last"), 5);
        assert_eq!(terms(&log, 1, 6), vec![1, 1, 2, 3, 3], "the forced entries at the current term replace 4 and 5");
        let e4 = log.entries(4, 5, None, GetEntriesContext::empty(false)).expect("entries");
        assert_eq!(&e4[0].data[..], b"remove a");

        // Nothing to add: the uncommitted entries still go.
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b).expect("append");
        log.commit_to(1, &mut b).expect("commit");
        assert_eq!(log.force_commit(Vec::new(), &mut b).expect("force"), 1);
        engine.write(b, true).expect("write");
        let log = RaftLog::open(engine).expect("reopen");
        assert_eq!(log.last_index().expect("last"), 1);
    }

    fn terms(log: &RaftLog, low: u64, high: u64) -> Vec<u64> {
        log.entries(low, high, None, GetEntriesContext::empty(false)).expect("entries").iter().map(|e| e.term).collect()
    }

    #[test]
    fn the_entry_cache_agrees_with_the_engine() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let mut b = WriteBatch::default();
        let many: Vec<Entry> = (1..=CACHE_ENTRIES as u64 + 500).map(|i| entry(i, 1)).collect();
        log.append(&many, &mut b).expect("append");
        // A conflicting suffix replaces the cached one; a follower may be
        // sent entries that are partly cached, partly not.
        log.append(&[entry(1400, 2), entry(1401, 2)], &mut b).expect("append");
        log.append(&[entry(1402, 3)], &mut b).expect("append");
        engine.write(b, true).expect("write");
        assert_eq!(log.last(), 1402);
        let reopened = RaftLog::open(engine.clone()).expect("reopen");
        for (low, high) in [(1, 1403), (1395, 1403), (1400, 1402), (1402, 1403), (300, 400)] {
            assert_eq!(terms(&log, low, high), terms(&reopened, low, high), "entries [{low}, {high})");
        }
        assert_eq!(terms(&log, 1398, 1403), vec![1, 1, 2, 2, 3]);
        for idx in [1, 5, 1399, 1400, 1402] {
            assert_eq!(log.term(idx).expect("term"), reopened.term(idx).expect("term"), "term of {idx}");
        }
        assert!(matches!(log.term(1403), Err(raft::Error::Store(RaftStorageError::Unavailable))));

        // Truncation drops cached entries too.
        let mut b = WriteBatch::default();
        log.truncate(1400, &mut b).expect("truncate");
        engine.write(b, true).expect("write");
        assert!(matches!(
            log.entries(1400, 1402, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(RaftStorageError::Compacted))
        ));
        assert_eq!(terms(&log, 1401, 1403), vec![2, 3]);
        assert_eq!(log.term(1400).expect("term at the truncation point"), 2);
    }

    struct CountingSource(std::sync::atomic::AtomicU64);

    impl SnapshotSource for CountingSource {
        fn create(&self, _index: u64) -> Result<Vec<u8>, StorageError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Vec::new())
        }
    }

    #[test]
    fn a_cached_snapshot_is_not_sent_to_a_member_added_after_it() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let source = Arc::new(CountingSource(Default::default()));
        let applied = Arc::new(std::sync::atomic::AtomicU64::new(2));
        log.set_snapshot_source(source.clone(), applied.clone());
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], &mut b).expect("append");
        log.set_conf_state(ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() }, &mut b)
            .expect("conf state");
        engine.write(b, true).expect("write");
        let mut b = WriteBatch::default();
        let first = log.snapshot(0, 4).expect("snapshot for learner 4");
        assert_eq!(first.get_metadata().get_conf_state().learners, vec![4]);
        // Reused for a member it names.
        log.snapshot(0, 4).expect("again");
        assert_eq!(source.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Member 5 was added after it: a new snapshot that names 5.
        applied.store(3, std::sync::atomic::Ordering::SeqCst);
        log.set_conf_state(ConfState { voters: vec![1, 2, 3, 4], learners: vec![5], ..Default::default() }, &mut b)
            .expect("conf state");
        let second = log.snapshot(0, 5).expect("snapshot for learner 5");
        assert_eq!(second.get_metadata().get_conf_state().learners, vec![5]);
        assert_eq!(second.get_metadata().index, 3);
        assert_eq!(source.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn truncation_keeps_the_term_of_the_last_removed_entry() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut log = RaftLog::open(engine.clone()).expect("open");
        let mut b = WriteBatch::default();
        log.append(&[entry(1, 1), entry(2, 3), entry(3, 3)], &mut b).expect("append");
        engine.write(b, true).expect("write");
        let mut b = WriteBatch::default();
        log.truncate(2, &mut b).expect("truncate");
        engine.write(b, true).expect("write");
        let log = RaftLog::open(engine).expect("reopen");
        assert_eq!(log.first_index().expect("first"), 3);
        assert_eq!(log.term(2).expect("term"), 3);
        assert!(log.entries(1, 3, None, GetEntriesContext::empty(false)).is_err());
    }
}
