//! Watchers, as etcd's watchable store: a watcher is *synced* when it has
//! seen every revision up to the current one and then gets each new
//! revision's events as the applier publishes them; otherwise it is
//! *unsynced* and catches up from MVCC history. A slow client never blocks
//! writes: when its stream is full, its watchers fall back to unsynced and
//! catch up later. Every watcher's `next_rev` says which revision it needs
//! next, so events are delivered exactly once, in revision order, however a
//! watcher moves between the two sets.
//!
//! The applier only hands the changes of each batch of revisions it wrote
//! to a bounded queue ([`WatchHub::publish_all`]); a fan-out thread of its
//! own builds and sends the events, so neither many watchers nor `prev_kv`
//! reads slow applying. A queue that is full (or over
//! [`PUBLISH_QUEUE_BYTES`]) drops the batch and every watcher falls back to catch-up from history, which
//! sends it: a slow fan-out costs latency, never an event or memory.
//! `prev_kv` comes from the revision the write transaction saw for the key
//! (read once per change, whatever the number of watchers).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use etcd_client::proto::{PbEvent as Event, PbKeyValue as KeyValue, PbResponseHeader, PbWatchResponse as WatchResponse};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::mvcc::{Change, RangeEnd, RangeOptions, Store};

const EVENT_PUT: i32 = 0;
const EVENT_DELETE: i32 = 1;
/// Changes read from history for one watcher in one catch-up round.
const CATCH_UP_BATCH: usize = 1000;
/// Batches of revisions the applier may have handed to the fan-out and not
/// yet sent.
pub const PUBLISH_QUEUE: usize = 1024;
/// Bytes of values those revisions may hold.
pub const PUBLISH_QUEUE_BYTES: usize = 64 << 20;

/// The changes of a batch of revisions on their way to the fan-out, and
/// their size.
type Published = (Vec<(i64, Vec<Change>)>, usize);

/// What a client asked to watch.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub key: Vec<u8>,
    pub end: RangeEnd,
    /// The first revision to deliver.
    pub start_rev: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub prev_kv: bool,
    pub progress_notify: bool,
    pub fragment: bool,
    /// The user whose rights the watch reads with, checked again after
    /// every auth change ("" for none: a watch made while authentication
    /// was disabled ends when it is enabled); None for the internal
    /// watches of lock and election calls, which check at the call.
    pub user: Option<String>,
}

/// Why a watcher that lost its user's read right is canceled, in the
/// words of a watch refused at its creation.
pub const ACCESS_LOST: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

struct Watcher {
    spec: WatchSpec,
    next_rev: i64,
    synced: bool,
    /// Its user lost the right to read what it watches: it gets no more
    /// events, only its cancellation (retried while its stream is full).
    denied: bool,
    tx: mpsc::Sender<WatchResponse>,
}

/// The previous values of one batch of changes, each read once, when a
/// watcher first asks for it: from the revision the write transaction saw,
/// or for changes read back from history, at the revision before theirs
/// (what etcd reads in both cases).
struct PrevValues(Vec<Option<Option<KeyValue>>>);

impl PrevValues {
    fn new(n: usize) -> Self {
        Self(vec![None; n])
    }

    fn get(&mut self, store: &Store, i: usize, rev: i64, c: &Change) -> Option<KeyValue> {
        self.0[i]
            .get_or_insert_with(|| match c.prev {
                Some(p) => store.value_at(p).ok().flatten(),
                None if c.kv.create_revision == rev && !c.deleted => None,
                None => {
                    let opts = RangeOptions { rev: rev - 1, ..Default::default() };
                    store.range(&c.kv.key, &RangeEnd::Single, &opts).ok().and_then(|r| r.kvs.into_iter().next())
                }
            })
            .clone()
    }
}

/// Identifies a watcher: the stream it belongs to and its id there.
pub type WatcherKey = (u64, i64);

pub struct WatchHub {
    store: Arc<Store>,
    watchers: Mutex<HashMap<WatcherKey, Watcher>>,
    /// Filled by the node: header fields other than the revision.
    header: Box<dyn Fn(i64) -> PbResponseHeader + Send + Sync>,
    max_response_bytes: usize,
    wake: tokio::sync::Notify,
    /// Streams whose progress request waits until their watchers have
    /// caught up (etcd's deferred progress), with where to answer.
    deferred: Mutex<HashMap<u64, mpsc::Sender<WatchResponse>>>,
    /// The applier's end of the fan-out queue, and the fan-out's until its
    /// thread starts.
    published: std_mpsc::SyncSender<Published>,
    fanout: Mutex<Option<std_mpsc::Receiver<Published>>>,
    queued_bytes: AtomicUsize,
    /// Set when a revision did not fit in the queue.
    dropped: AtomicBool,
    /// Set while watchers that lost access wait for their cancellation.
    denied: AtomicBool,
}

impl WatchHub {
    pub fn new(store: Arc<Store>, header: Box<dyn Fn(i64) -> PbResponseHeader + Send + Sync>, max_response_bytes: usize) -> Self {
        let (published, fanout) = std_mpsc::sync_channel(PUBLISH_QUEUE);
        Self {
            store,
            watchers: Mutex::new(HashMap::new()),
            header,
            max_response_bytes,
            wake: tokio::sync::Notify::new(),
            deferred: Mutex::new(HashMap::new()),
            published,
            fanout: Mutex::new(Some(fanout)),
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicBool::new(false),
            denied: AtomicBool::new(false),
        }
    }

    /// [`WatchHub::publish_all`] of one revision (tests).
    #[cfg(test)]
    fn publish(&self, rev: i64, changes: Vec<Change>) {
        self.publish_all(vec![(rev, changes)]);
    }

    /// Hands the changes of revisions made visible together, in revision
    /// order, to the fan-out: one hand-off (and one wake-up of the fan-out
    /// thread) for the whole batch. Never waits.
    pub fn publish_all(&self, revisions: Vec<(i64, Vec<Change>)>) {
        if revisions.is_empty() {
            return;
        }
        // Nobody to tell (most puts of most clusters): a watcher added from
        // now on reads the current revision, these or later, under this
        // lock, so it starts past them or catches up from history. Only
        // tried: the fan-out holds the lock while it builds events, and
        // the applier must not wait for it (a busy lock means watchers).
        if self.watchers.try_lock().is_some_and(|w| w.is_empty()) {
            return;
        }
        let bytes: usize = revisions.iter().flat_map(|(_, changes)| changes).map(|c| c.kv.key.len() + c.kv.value.len()).sum();
        if self.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > PUBLISH_QUEUE_BYTES
            || self.published.try_send((revisions, bytes)).is_err()
        {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.dropped.store(true, Ordering::Release);
            crate::metrics::METRICS.watch_fanout_dropped.inc();
        }
    }

    /// Starts the fan-out thread, which sends what `publish` queued to the
    /// synced watchers and stops once the hub is dropped.
    pub fn spawn_fanout(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let queue = self.fanout.lock().take().ok_or_else(|| std::io::Error::other("the watch fan-out runs already"))?;
        let hub = Arc::downgrade(self);
        std::thread::Builder::new().name("watch-fanout".into()).spawn(move || {
            loop {
                // Wakes now and then to notice a dropped revision with none
                // after it, and a hub gone.
                let next = queue.recv_timeout(Duration::from_millis(100));
                let Some(hub) = hub.upgrade() else { return };
                if hub.dropped.swap(false, Ordering::AcqRel) {
                    // A revision never reached the synced watchers: all of
                    // them catch up from history, which has it.
                    hub.resync();
                }
                match next {
                    Ok((revisions, bytes)) => {
                        hub.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                        for (rev, changes) in &revisions {
                            hub.notify(*rev, changes);
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })
    }

    /// What the fan-out thread and the catch-up task do, done now on the
    /// caller's thread, for a driver without them (the simulation): sends
    /// what `publish` queued, then catches unsynced watchers up and
    /// answers deferred progress requests. Does nothing for the queue
    /// once the fan-out thread runs.
    pub fn run_now(&self) {
        let queued: Vec<Published> = match self.fanout.lock().as_ref() {
            Some(queue) => queue.try_iter().collect(),
            None => Vec::new(),
        };
        if self.dropped.swap(false, Ordering::AcqRel) {
            self.resync();
        }
        for (revisions, bytes) in queued {
            self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            for (rev, changes) in &revisions {
                self.notify(*rev, changes);
            }
        }
        self.catch_up();
        self.answer_deferred();
    }

    /// Registers a watcher; the caller has already sent its "created"
    /// response on `tx`, so nothing can overtake it.
    pub fn add(&self, key: WatcherKey, spec: WatchSpec, tx: mpsc::Sender<WatchResponse>) {
        let mut watchers = self.watchers.lock();
        let current = self.store.current_revision();
        let next_rev = if spec.start_rev <= 0 { current + 1 } else { spec.start_rev };
        let synced = next_rev > current;
        watchers.insert(key, Watcher { spec, next_rev, synced, denied: false, tx });
        if !synced {
            self.wake.notify_one();
        }
    }

    /// After the state was replaced by a snapshot, every watcher catches
    /// up from the store again (or learns its revision was compacted).
    pub fn resync(&self) {
        for w in self.watchers.lock().values_mut() {
            w.synced = false;
        }
        self.wake.notify_one();
    }

    /// After an auth change (applied, or brought by a raft snapshot): every
    /// watcher whose user may no longer read all it watches is canceled
    /// with [`ACCESS_LOST`] before any later revision reaches it (etcd 3.4
    /// checks a watch only when it is created; its client would keep
    /// reading what it may no longer read). `may_read(user, key, end)`.
    pub fn recheck_access(&self, may_read: impl Fn(&str, &[u8], &RangeEnd) -> bool) {
        let mut denied = false;
        for w in self.watchers.lock().values_mut() {
            if let Some(user) = &w.spec.user
                && !w.denied
                && !may_read(user, &w.spec.key, &w.spec.end)
            {
                w.denied = true;
                w.synced = false;
                denied = true;
            }
        }
        if denied {
            self.denied.store(true, Ordering::Release);
            self.cancel_denied();
        }
    }

    /// Sends their cancellation to the watchers that lost access; those
    /// whose stream is full are tried again by the next catch-up round.
    fn cancel_denied(&self) {
        if !self.denied.swap(false, Ordering::AcqRel) {
            return;
        }
        let mut watchers = self.watchers.lock();
        let mut waiting = false;
        watchers.retain(|(_, id), w| {
            if !w.denied {
                return true;
            }
            let r = WatchResponse {
                header: Some((self.header)(self.store.current_revision())),
                watch_id: *id,
                canceled: true,
                cancel_reason: ACCESS_LOST.into(),
                ..Default::default()
            };
            let kept = !w.tx.is_closed() && w.tx.try_send(r).is_err();
            waiting |= kept;
            kept
        });
        if waiting {
            self.denied.store(true, Ordering::Release);
        }
    }

    pub fn remove(&self, key: WatcherKey) -> bool {
        self.watchers.lock().remove(&key).is_some()
    }

    /// Of `ids`, those still watching on `stream` (the others are dropped
    /// from the set): how many watchers the stream holds.
    pub fn live_on_stream(&self, stream: u64, ids: &mut std::collections::HashSet<i64>) -> usize {
        let watchers = self.watchers.lock();
        ids.retain(|id| watchers.contains_key(&(stream, *id)));
        ids.len()
    }

    pub fn exists(&self, key: WatcherKey) -> bool {
        self.watchers.lock().contains_key(&key)
    }

    /// The revision a progress notification may tell `stream`: every event
    /// up to it has been sent to the stream's watchers. None while one of
    /// them is catching up. Not simply the current revision: the applier
    /// makes a revision current before it publishes its events, and a
    /// progress notification must never get ahead of an event.
    fn stream_progress(&self, watchers: &HashMap<WatcherKey, Watcher>, stream: u64) -> Option<i64> {
        let mut rev = self.store.current_revision();
        for ((s, _), w) in watchers {
            if *s == stream {
                if !w.synced {
                    return None;
                }
                rev = rev.min(w.next_rev - 1);
            }
        }
        Some(rev)
    }

    fn progress_response(&self, rev: i64) -> WatchResponse {
        // etcd answers a progress request with watch id -1.
        WatchResponse { header: Some((self.header)(rev)), watch_id: -1, ..Default::default() }
    }

    /// A client's progress request on `stream`: answered at once when its
    /// watchers have sent everything, otherwise as soon as they have (as
    /// etcd does from 3.4.31 and 3.5.13; before, it dropped the request,
    /// and a client waiting for the answer waited for ever). Requests made
    /// while one is deferred are answered by the same response.
    pub fn request_progress(&self, stream: u64, tx: &mpsc::Sender<WatchResponse>) {
        let watchers = self.watchers.lock();
        if let Some(rev) = self.stream_progress(&watchers, stream)
            && tx.try_send(self.progress_response(rev)).is_ok()
        {
            return;
        }
        self.deferred.lock().insert(stream, tx.clone());
        self.wake.notify_one();
    }

    /// Answers the deferred progress requests of streams now caught up.
    fn answer_deferred(&self) {
        // Most rounds have none: the watcher set (which the applier takes
        // to publish every revision) is then left alone.
        if self.deferred.lock().is_empty() {
            return;
        }
        let watchers = self.watchers.lock();
        self.deferred.lock().retain(|stream, tx| match self.stream_progress(&watchers, *stream) {
            _ if tx.is_closed() => false,
            // Kept while the stream is full.
            Some(rev) => tx.try_send(self.progress_response(rev)).is_err(),
            None => true,
        });
    }

    pub fn remove_stream(&self, stream: u64) {
        self.watchers.lock().retain(|(s, _), _| *s != stream);
        self.deferred.lock().remove(&stream);
    }

    pub fn len(&self) -> usize {
        self.watchers.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The events of `changes` from `first` on that `w` wants; `prev` gives the previous
    /// value of the change at an index, read at most once per change.
    fn to_events(&self, w: &Watcher, changes: &[(i64, Change)], first: usize, prev: &mut PrevValues) -> Vec<Event> {
        changes
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, (_, c))| w.spec.end.contains(&w.spec.key, &c.kv.key))
            .filter(|(_, (_, c))| if c.deleted { !w.spec.no_delete } else { !w.spec.no_put })
            .map(|(i, (rev, c))| Event {
                r#type: if c.deleted { EVENT_DELETE } else { EVENT_PUT },
                kv: Some(c.kv.clone()),
                prev_kv: if w.spec.prev_kv { prev.get(&self.store, i, *rev, c) } else { None },
            })
            .collect()
    }

    /// Sends events in responses no larger than the limit when the watcher
    /// asked for fragments; false when the stream is full or gone.
    fn send(&self, id: i64, w: &Watcher, rev: i64, events: Vec<Event>) -> bool {
        let header = Some((self.header)(rev));
        let whole = WatchResponse { header, watch_id: id, events, ..Default::default() };
        if !w.spec.fragment || prost::Message::encoded_len(&whole) <= self.max_response_bytes {
            return w.tx.try_send(whole).is_ok();
        }
        let mut parts: Vec<Vec<Event>> = vec![Vec::new()];
        let mut size = 0;
        for e in whole.events {
            let n = prost::Message::encoded_len(&e);
            if size + n > self.max_response_bytes && parts.last().is_some_and(|p| !p.is_empty()) {
                parts.push(Vec::new());
                size = 0;
            }
            size += n;
            if let Some(p) = parts.last_mut() {
                p.push(e);
            }
        }
        if w.tx.capacity() < parts.len() {
            return false;
        }
        let last = parts.len() - 1;
        parts.into_iter().enumerate().all(|(i, events)| {
            let r = WatchResponse { header, watch_id: id, events, fragment: i < last, ..Default::default() };
            w.tx.try_send(r).is_ok()
        })
    }

    /// Publishes the changes of revision `rev` (called by the applier after
    /// the revision is visible).
    pub fn notify(&self, rev: i64, changes: &[Change]) {
        let mut watchers = self.watchers.lock();
        if watchers.is_empty() {
            return;
        }
        let changes: Vec<(i64, Change)> = changes.iter().map(|c| (rev, c.clone())).collect();
        let mut prev = PrevValues::new(changes.len());
        let mut fell_behind = false;
        watchers.retain(|(_, id), w| {
            if !w.synced || w.next_rev > rev {
                return !w.tx.is_closed();
            }
            if w.next_rev < rev {
                // A revision this watcher has not seen: never skip it, let
                // catch-up send it from history.
                w.synced = false;
                fell_behind = true;
                return !w.tx.is_closed();
            }
            let events = self.to_events(w, &changes, 0, &mut prev);
            if events.is_empty() || self.send(*id, w, rev, events) {
                w.next_rev = rev + 1;
            } else if w.tx.is_closed() {
                return false;
            } else {
                w.synced = false;
                fell_behind = true;
            }
            true
        });
        if fell_behind {
            self.wake.notify_one();
        }
    }

    /// Catches unsynced watchers up from history; run by a background task.
    pub async fn run_catch_up(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.catch_up();
            self.answer_deferred();
        }
    }

    /// One round of catch-up, as etcd's syncWatchers: one read of history
    /// from the oldest revision an unsynced watcher needs, shared by all of
    /// them, made without holding the watcher set (the applier publishes new
    /// revisions to synced watchers meanwhile, so writes never wait for it).
    fn catch_up(&self) {
        self.cancel_denied();
        let (from, current) = {
            let mut watchers = self.watchers.lock();
            // Read under the lock, as `notify` runs under it after the
            // revision is current: a watcher that fell back in `notify`
            // for revision R must not be found "ahead" of a current
            // revision read before R was published (it would be marked
            // synced and R never sent).
            let compacted = self.store.compacted_revision();
            let current = self.store.current_revision();
            let mut from: Option<i64> = None;
            watchers.retain(|(_, id), w| {
                if w.synced || w.denied {
                    return true;
                }
                if w.tx.is_closed() {
                    return false;
                }
                if w.next_rev < compacted {
                    // etcd sends this one with a zero header revision.
                    let r = WatchResponse {
                        header: Some((self.header)(0)),
                        watch_id: *id,
                        compact_revision: compacted,
                        canceled: true,
                        ..Default::default()
                    };
                    // Retry next round if the stream is full; the watcher ends once told.
                    return w.tx.try_send(r).is_err();
                }
                if w.next_rev > current {
                    w.synced = true;
                    return true;
                }
                from = Some(from.map_or(w.next_rev, |f| f.min(w.next_rev)));
                true
            });
            (from, current)
        };
        let Some(from) = from else { return };
        let (changes, read_through) = match self.store.changes(from, current, &[], &RangeEnd::Infinity, CATCH_UP_BATCH) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "watch catch-up read failed");
                self.wake.notify_one();
                return;
            }
        };

        let mut prev = PrevValues::new(changes.len());
        let mut watchers = self.watchers.lock();
        // Revisions published since the read are not in it: a watcher is
        // synced only if the read reached what is current now.
        let now = self.store.current_revision();
        let (mut behind, mut advanced) = (false, false);
        for ((_, id), w) in watchers.iter_mut() {
            if w.synced || w.denied {
                continue;
            }
            // Added during the read, from a revision older than it covers.
            if w.next_rev < from || w.next_rev > read_through {
                behind |= w.next_rev <= now;
                continue;
            }
            // Its stream is full (its client reads slower than history
            // comes): no events are built that could not be sent.
            if w.tx.capacity() == 0 {
                behind = true;
                continue;
            }
            let first = changes.partition_point(|(rev, _)| *rev < w.next_rev);
            let events = self.to_events(w, &changes, first, &mut prev);
            if events.is_empty() || self.send(*id, w, read_through, events) {
                w.next_rev = read_through + 1;
                w.synced = read_through >= now;
                advanced = true;
            }
            behind |= !w.synced;
        }
        // Straight on while watchers move; when none could (their streams
        // full), the next round waits for the tick rather than spin.
        if behind && advanced {
            self.wake.notify_one();
        }
    }

    /// An event-less response to every synced watcher that asked for
    /// progress notifications.
    pub fn notify_progress(&self) {
        let watchers = self.watchers.lock();
        let current = self.store.current_revision();
        for ((_, id), w) in watchers.iter() {
            if w.synced && w.spec.progress_notify {
                // Never ahead of an event this watcher has yet to get.
                let rev = current.min(w.next_rev - 1);
                let _ = w.tx.try_send(WatchResponse { header: Some((self.header)(rev)), watch_id: *id, ..Default::default() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::WriteBatch;
    use crate::storage::mem::MemEngine;

    fn hub() -> (Arc<Store>, WatchHub) {
        let store = Arc::new(Store::open(Arc::new(MemEngine::new())).expect("store"));
        let hub = WatchHub::new(store.clone(), Box::new(|revision| PbResponseHeader { revision, ..Default::default() }), 1 << 20);
        (store, hub)
    }

    fn put(store: &Store, hub: &WatchHub, key: &str) -> i64 {
        let mut txn = store.write();
        txn.put(key.as_bytes(), b"v".to_vec(), 0);
        let changes = txn.commit(WriteBatch::default()).expect("commit");
        let rev = changes[0].kv.mod_revision;
        hub.notify(rev, &changes);
        rev
    }

    fn spec(key: &str) -> WatchSpec {
        WatchSpec {
            key: key.as_bytes().to_vec(),
            end: RangeEnd::from_request(&[0]),
            start_rev: 0,
            no_put: false,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
            user: None,
        }
    }

    fn revisions(rx: &mut mpsc::Receiver<WatchResponse>) -> Vec<i64> {
        let mut revs = Vec::new();
        while let Ok(r) = rx.try_recv() {
            revs.extend(r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
        }
        revs
    }

    #[test]
    fn a_watcher_whose_stream_was_full_gets_every_revision_once_in_order() {
        let (store, hub) = hub();
        let (tx, mut rx) = mpsc::channel(2);
        hub.add((1, 0), spec("a"), tx);
        let written: Vec<i64> = (0..5).map(|i| put(&store, &hub, &format!("k{i}"))).collect();
        // Two fitted; the rest fell back to catch-up, which sends them once
        // the stream has room, however many rounds that takes.
        let mut seen = revisions(&mut rx);
        for _ in 0..10 {
            hub.catch_up();
            seen.extend(revisions(&mut rx));
        }
        written.iter().for_each(|r| assert!(seen.contains(r), "revision {r} never sent: {seen:?}"));
        assert_eq!(seen, written);
        // Synced again: the next revision comes straight from notify.
        let next = put(&store, &hub, "k5");
        assert_eq!(revisions(&mut rx), vec![next]);
    }

    #[test]
    fn a_synced_watcher_that_missed_a_revision_gets_it_from_history() {
        let (store, hub) = hub();
        let (tx, mut rx) = mpsc::channel(16);
        hub.add((1, 0), spec("a"), tx);
        // A revision published while the watcher was not looking (what a
        // catch-up round that read a stale current revision used to leave).
        let mut txn = store.write();
        txn.put(b"k0", b"v".to_vec(), 0);
        let missed = txn.commit(WriteBatch::default()).expect("commit")[0].kv.mod_revision;
        let next = put(&store, &hub, "k1");
        hub.catch_up();
        assert_eq!(revisions(&mut rx), vec![missed, next]);
    }

    /// The progress responses (no events, watch id -1) and their revisions.
    fn progress(rx: &mut mpsc::Receiver<WatchResponse>) -> (Vec<i64>, Vec<i64>) {
        let (mut events, mut progress) = (Vec::new(), Vec::new());
        while let Ok(r) = rx.try_recv() {
            if r.events.is_empty() && r.watch_id == -1 {
                progress.push(r.header.map_or(0, |h| h.revision));
            }
            events.extend(r.events.iter().filter_map(|e| e.kv.as_ref()).map(|kv| kv.mod_revision));
        }
        (events, progress)
    }

    #[test]
    fn a_progress_request_waits_for_a_catching_up_watcher_then_follows_its_events() {
        let (store, hub) = hub();
        let written: Vec<i64> = (0..3).map(|i| put(&store, &hub, &format!("k{i}"))).collect();
        let (tx, mut rx) = mpsc::channel(16);
        let mut from_start = spec("k");
        from_start.start_rev = written[0];
        hub.add((1, 0), from_start, tx.clone());
        hub.request_progress(1, &tx);
        assert_eq!(progress(&mut rx), (vec![], vec![]), "answered before the watcher caught up");
        hub.catch_up();
        hub.answer_deferred();
        // The events first, then the progress at the last of them.
        assert_eq!(progress(&mut rx), (written.clone(), vec![written[2]]));
        // Caught up: answered at once, and only once.
        hub.answer_deferred();
        hub.request_progress(1, &tx);
        assert_eq!(progress(&mut rx), (vec![], vec![written[2]]));
    }

    #[test]
    fn progress_never_gets_ahead_of_a_revision_not_yet_published() {
        let (store, hub) = hub();
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = spec("k");
        w.progress_notify = true;
        hub.add((1, 0), w, tx.clone());
        let published = put(&store, &hub, "k0");
        // The applier made the next revision current and has not published
        // its events yet.
        let mut txn = store.write();
        txn.put(b"k1", b"v".to_vec(), 0);
        let changes = txn.commit(WriteBatch::default()).expect("commit");
        hub.request_progress(1, &tx);
        let (events, revs) = progress(&mut rx);
        assert_eq!(events, vec![published]);
        assert_eq!(revs, vec![published], "the progress request told a revision whose event was not sent");
        // The periodic notification (the watcher's own id) neither.
        hub.notify_progress();
        let periodic: Vec<i64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|r| r.header.map_or(0, |h| h.revision)).collect();
        assert_eq!(periodic, vec![published]);
        hub.notify(changes[0].kv.mod_revision, &changes);
        hub.request_progress(1, &tx);
        assert_eq!(progress(&mut rx), (vec![published + 1], vec![published + 1]));
    }

    fn prev_values(rx: &mut mpsc::Receiver<WatchResponse>) -> Vec<(i64, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            for e in r.events {
                out.push((e.kv.map_or(0, |kv| kv.mod_revision), e.prev_kv.map(|p| p.value)));
            }
        }
        out
    }

    #[test]
    fn prev_kv_is_the_value_before_the_transaction_from_notify_and_from_history() {
        let (store, hub) = hub();
        let mut t = store.write();
        t.put(b"a", b"old".to_vec(), 0);
        t.commit(WriteBatch::default()).expect("commit");
        let mut w = spec("a");
        w.end = RangeEnd::Single;
        w.prev_kv = true;
        let (tx, mut rx) = mpsc::channel(16);
        hub.add((1, 0), w.clone(), tx);
        // One transaction: two puts and a delete of one key, as etcd reads
        // prev_kv at the revision before the event's: "old" for each.
        let mut t = store.write();
        t.put(b"a", b"new".to_vec(), 0);
        t.put(b"a", b"newer".to_vec(), 0);
        t.delete_range(b"a", &RangeEnd::Single);
        let changes = t.commit(WriteBatch::default()).expect("commit");
        let rev = changes[0].kv.mod_revision;
        assert!(changes.iter().all(|c| c.prev.is_some()), "the write transaction knows each change's previous revision");
        hub.notify(rev, &changes);
        let old = Some(b"old".to_vec());
        let live = prev_values(&mut rx);
        assert_eq!(live, vec![(rev, old.clone()), (rev, old.clone()), (rev, old.clone())]);
        // The same events read back from history carry the same prev_kv.
        w.start_rev = rev;
        let (tx, mut rx) = mpsc::channel(16);
        hub.add((2, 0), w, tx);
        hub.catch_up();
        assert_eq!(prev_values(&mut rx), live);
    }

    #[test]
    fn with_no_watcher_nothing_is_queued_and_a_later_watcher_reads_history() {
        let (store, hub) = hub();
        let mut t = store.write();
        t.put(b"k", b"v".to_vec(), 0);
        let changes = t.commit(WriteBatch::default()).expect("commit");
        let rev = changes[0].kv.mod_revision;
        hub.publish(rev, changes);
        let queued = hub.fanout.lock().as_ref().map(|q| q.try_iter().count());
        assert_eq!(queued, Some(0), "no watcher: the fan-out is not woken");
        assert_eq!(hub.queued_bytes.load(Ordering::Acquire), 0);
        // A watcher from that revision gets it from history.
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = spec("k");
        w.start_rev = rev;
        hub.add((1, 0), w, tx);
        hub.catch_up();
        assert_eq!(revisions(&mut rx), vec![rev]);
        // One from now on is synced, and the next revision is queued for it.
        let (tx, _rx) = mpsc::channel(16);
        hub.add((2, 0), spec("k"), tx);
        let mut t = store.write();
        t.put(b"k", b"v2".to_vec(), 0);
        let changes = t.commit(WriteBatch::default()).expect("commit");
        hub.publish(changes[0].kv.mod_revision, changes);
        let queued = hub.fanout.lock().as_ref().map(|q| q.try_iter().count());
        assert_eq!(queued, Some(1));
    }

    #[test]
    fn revisions_the_fanout_queue_had_no_room_for_reach_watchers_from_history() {
        let (store, hub) = hub();
        let hub = Arc::new(hub);
        let (tx, mut rx) = mpsc::channel(PUBLISH_QUEUE * 2);
        hub.add((1, 0), spec("k"), tx);
        // No fan-out running yet: the queue fills, and the rest is dropped.
        let mut written = Vec::new();
        for i in 0..PUBLISH_QUEUE + 10 {
            let mut t = store.write();
            t.put(format!("k{i}").as_bytes(), b"v".to_vec(), 0);
            let changes = t.commit(WriteBatch::default()).expect("commit");
            written.push(changes[0].kv.mod_revision);
            hub.publish(changes[0].kv.mod_revision, changes);
        }
        assert!(hub.dropped.load(Ordering::Acquire), "revisions past the queue's bound are dropped, not queued");
        let fanout = hub.spawn_fanout().expect("fan-out");
        let mut seen = Vec::new();
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(20));
            hub.catch_up();
            seen.extend(revisions(&mut rx));
            if seen.len() >= written.len() {
                break;
            }
        }
        assert_eq!(seen, written, "every revision once, in order");
        // Synced again: a new revision comes through the fan-out.
        let mut t = store.write();
        t.put(b"k-last", b"v".to_vec(), 0);
        let changes = t.commit(WriteBatch::default()).expect("commit");
        let last = changes[0].kv.mod_revision;
        hub.publish(last, changes);
        let mut got = Vec::new();
        for _ in 0..100 {
            got.extend(revisions(&mut rx));
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(got, vec![last]);
        drop(hub);
        fanout.join().expect("the fan-out stops once the hub is dropped");
    }


    #[test]
    fn a_watcher_whose_user_lost_access_is_canceled_and_gets_no_later_event() {
        let (store, hub) = hub();
        let (tx, mut rx) = mpsc::channel(16);
        let (internal_tx, mut internal_rx) = mpsc::channel(16);
        let (kept_tx, mut kept_rx) = mpsc::channel(16);
        hub.add((1, 0), WatchSpec { user: Some("app".into()), ..spec("a") }, tx);
        hub.add((1, 1), spec("a"), internal_tx);
        hub.add((2, 0), WatchSpec { user: Some("other".into()), ..spec("a") }, kept_tx);
        let first = put(&store, &hub, "a1");
        hub.run_now();
        hub.recheck_access(|user, key, end| {
            assert_eq!((key, end), (&b"a"[..], &RangeEnd::Infinity));
            user != "app"
        });
        let later = put(&store, &hub, "a2");
        hub.run_now();
        let got: Vec<WatchResponse> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].events.len(), 1);
        assert!(got[1].canceled && got[1].cancel_reason == ACCESS_LOST && got[1].events.is_empty(), "{:?}", got[1]);
        assert!(!hub.exists((1, 0)));
        assert_eq!(revisions(&mut internal_rx), vec![first, later], "an internal watch is not checked");
        assert_eq!(revisions(&mut kept_rx), vec![first, later], "a user who may still read");
    }
}
