//! One member for the deterministic simulation (`tests/src/sim.rs`): the
//! real raft loop, state machine, MVCC store, leases and watch hub of a
//! member, over the in-memory engine (`storage::mem`, with its power-loss
//! crash), with nothing of its own running: no thread, no timer, no
//! socket. The driver ticks it, polls it, and carries its raft messages
//! (and the records of its raft snapshots) through a simulated network, so
//! that a whole cluster runs in one thread and a seed decides everything.
//!
//! A client request goes the way `Node::propose` and a linearizable read
//! send it: a `RaftRequest` proposed on this member (raft forwards it to
//! the leader) whose outcome the state machine hands to this member's
//! waiter; a ReadIndex, then a range of the store. Leases count time on
//! the driver's clock; the driver does the leader's expiry duty (as
//! `server::expire_leases`) and keep-alives (as `Node::renew_lease`).
//! What the simulation leaves out: gRPC, the peer service's streams (the
//! driver moves the same records), request validation, lease checkpoints
//! and auto compaction.

use std::path::PathBuf;
use std::sync::Arc;

use etcd_client::proto::{PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse, PbResponseHeader, PbWatchResponse};
use parking_lot::Mutex;
use prost::Message as _;
use raft::eraftpb::{ConfState, Message};
use tokio::sync::{mpsc, oneshot};

use crate::alarm::Alarms;
use crate::apply::request::{Op, RaftRequest};
use crate::apply::{Applier, Outcome, Waiters};
use crate::error::Error;
use crate::lease::{Clock, Lessor};
use crate::membership::{Member, Membership};
use crate::mvcc::Store;
use crate::peer::proto::Record;
use crate::raft::log::{BOOTSTRAP_INDEX, RaftLog};
use crate::raft::node::{RaftConfig, RaftHandle, RaftStatus, Stepped, Transport, start};
use crate::snapshot::Snapshots;
use crate::storage::mem::MemEngine;
use crate::storage::{Engine, StorageError, WriteBatch};
use crate::watch::{WatchHub, WatchSpec, WatcherKey};

/// Raft's messages from one member, for the driver to carry.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<Vec<Message>>>);

impl Transport for Outbox {
    fn send(&mut self, msgs: Vec<Message>) {
        self.0.lock().extend(msgs);
    }
}

/// How a simulated member's raft runs: in ticks, as the real one.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// This member's election timeout in ticks (fixed: see
    /// `RaftConfig::max_election_ticks`).
    pub election_ticks: usize,
    pub snapshot_count: u64,
    pub catch_up_entries: u64,
}

/// A new cluster's first state on a member's engine, as `node::bootstrap`
/// writes it: the registry of `ids`, every one a voter, and the log and
/// applied index at the bootstrap position. Synced.
pub fn bootstrap(engine: &dyn Engine, ids: &[u64]) -> Result<(), StorageError> {
    let mut b = WriteBatch::default();
    let registry = Membership::default();
    for &id in ids {
        registry.put(Member { id, name: format!("m{id}"), peer_urls: vec![format!("sim://{id}")], ..Default::default() }, &mut b);
    }
    RaftLog::bootstrap(&ConfState { voters: ids.to_vec(), ..Default::default() }, &mut b)?;
    crate::apply::bootstrap(BOOTSTRAP_INDEX, &mut b);
    engine.write(b, true)
}

/// A proposal waiting for its outcome.
pub struct Proposed {
    pub id: u64,
    pub outcome: oneshot::Receiver<Outcome>,
}

pub struct SimMember {
    pub id: u64,
    pub store: Arc<Store>,
    pub hub: Arc<WatchHub>,
    pub status: Arc<RaftStatus>,
    pub lessor: Arc<Lessor>,
    raft: RaftHandle,
    stepped: Stepped<Applier, Outbox>,
    outbox: Outbox,
    snapshots: Arc<Snapshots>,
    waiters: Arc<Waiters>,
    next_id: u64,
    next_watch: i64,
}

impl SimMember {
    /// Opens member `id` on `engine` (bootstrapped, or the state a crash
    /// left), as `Node::start` does; `dir` holds its raft snapshots'
    /// files. `incarnation` makes its request ids unique across restarts;
    /// its leases count time on `clock`.
    pub fn open(id: u64, engine: Arc<MemEngine>, dir: PathBuf, timing: Timing, incarnation: u64, clock: Clock) -> Result<SimMember, StorageError> {
        let engine: Arc<dyn Engine> = engine;
        let snapshots = Arc::new(Snapshots::open(dir, engine.clone())?);
        let membership = Arc::new(Membership::default());
        membership.load(engine.as_ref())?;
        let store = Arc::new(Store::open(engine.clone()).map_err(|e| StorageError::Engine(format!("cannot load the store: {e}")))?);
        let lessor = Arc::new(Lessor::with_clock(2, clock));
        crate::apply::load_leases(engine.as_ref(), &store, &lessor)?;
        let waiters = Arc::new(Waiters::default());
        let status = Arc::new(RaftStatus::default());
        let header_status = status.clone();
        let header = Box::new(move |revision| PbResponseHeader { member_id: id, revision, raft_term: header_status.term(), ..Default::default() });
        let hub = Arc::new(WatchHub::new(store.clone(), header, 1 << 20));
        let alarms = Arc::new(Alarms::default());
        alarms.load(engine.as_ref())?;
        let applier = Applier::new(id, engine.clone(), store.clone(), lessor.clone(), waiters.clone(), hub.clone(), membership, snapshots.clone(), alarms, Arc::default())?;
        let cfg = RaftConfig {
            id,
            tick: std::time::Duration::from_millis(100),
            election_ticks: timing.election_ticks,
            heartbeat_ticks: 1,
            snapshot_count: timing.snapshot_count,
            catch_up_entries: timing.catch_up_entries,
            max_election_ticks: timing.election_ticks + 1,
        };
        let outbox = Outbox::default();
        let (raft, stepped) = start(cfg, engine, applier, outbox.clone(), snapshots.clone(), status.clone())?;
        Ok(SimMember { id, store, hub, status, lessor, raft, stepped, outbox, snapshots, waiters, next_id: incarnation << 40, next_watch: 0 })
    }

    /// One tick of raft's clock.
    pub fn tick(&mut self) {
        self.stepped.tick();
    }

    /// Handles what was handed to raft, runs a Ready (persisting, applying,
    /// answering), then the watch fan-out and catch-up.
    pub fn poll(&mut self) -> Result<(), StorageError> {
        self.stepped.poll()?;
        self.hub.run_now();
        Ok(())
    }

    /// The raft messages sent since the last call.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut *self.outbox.0.lock())
    }

    /// A message from a peer (handled at the next poll).
    pub fn step(&self, msg: Message) {
        self.raft.step(msg);
    }

    pub fn report_unreachable(&self, id: u64) {
        self.raft.report_unreachable(id);
    }

    pub fn report_snapshot(&self, id: u64, ok: bool) {
        self.raft.report_snapshot(id, ok);
    }

    pub fn transfer_leader(&self, to: u64) {
        self.raft.transfer_leader(to);
    }

    /// Proposes `op` as `Node::propose` does, without waiting: the outcome
    /// comes on the receiver (None: raft refused it, it never entered the
    /// log). Refused at once with "too many requests" past the limit.
    pub fn propose(&mut self, op: Op) -> Result<Proposed, Error> {
        self.next_id += 1;
        let id = self.next_id;
        let data = RaftRequest { id, op: Some(op), proposer: self.id, auth_revision: 0 }.encode_to_vec();
        let outcome = self.waiters.register(id)?;
        let waiters = self.waiters.clone();
        if self.raft.propose(data, Box::new(move || waiters.refused(id))).is_err() {
            self.waiters.forget(id);
            return Err(Error::Stopped);
        }
        Ok(Proposed { id, outcome })
    }

    /// Stops waiting for proposal `id` (its client gave up).
    pub fn forget(&self, id: u64) {
        self.waiters.forget(id);
    }

    /// A ReadIndex: the index comes once this member has applied it.
    pub fn read_index(&self) -> Result<oneshot::Receiver<u64>, Error> {
        self.raft.ask_read_index().map_err(|_| Error::Stopped)
    }

    /// A range of the store as it is now, as the KV service serves it.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, Error> {
        crate::apply::range::range(self.store.as_ref(), r)
    }

    /// A watcher as the watch service adds one; its responses come on the
    /// receiver.
    pub fn watch(&mut self, spec: WatchSpec) -> (WatcherKey, mpsc::Receiver<PbWatchResponse>) {
        self.next_watch += 1;
        let key = (0, self.next_watch);
        let (tx, rx) = mpsc::channel(64);
        self.hub.add(key, spec, tx);
        (key, rx)
    }

    /// The records of the raft snapshot this member made for `index`, in
    /// the chunks the peer transport would stream (None if it has none).
    pub fn snapshot_chunks(&self, index: u64) -> Option<Vec<Vec<Record>>> {
        let checkpoint = self.snapshots.get(index)?;
        let mut chunks = Vec::new();
        Snapshots::chunks(checkpoint.as_ref(), |c| {
            chunks.push(c);
            true
        })
        .ok()?;
        Some(chunks)
    }

    /// Receives the records of the raft snapshot at `index`, as the peer
    /// service does before it hands the message to raft.
    pub fn receive_snapshot(&self, index: u64, chunks: &[Vec<Record>]) -> Result<(), StorageError> {
        let mut incoming = self.snapshots.incoming(index)?;
        for c in chunks {
            incoming.write(c)?;
        }
        incoming.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use etcd_client::proto::PbPutRequest;

    use super::*;
    use crate::raft::node::RaftError;

    /// On its own thread, the loop answers reads from many tasks at once
    /// with no tick to fall back on: a read queued while the loop works
    /// goes out in a later round without waking it again, and none is left
    /// behind. Once the loop has stopped, a read is refused at once.
    #[test]
    fn reads_are_answered_on_wake_ups_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let engine = Arc::new(MemEngine::new());
        bootstrap(engine.as_ref(), &[1])?;
        let clock: Clock = Arc::new(Instant::now);
        let timing = Timing { election_ticks: 10, snapshot_count: 10_000, catch_up_entries: 5 };
        let mut member = SimMember::open(1, engine, dir.path().to_path_buf(), timing, 0, clock)?;
        // A write first: a leader serves ReadIndex once it has committed in its term.
        let put = member.propose(Op::Put(PbPutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }))?;
        let SimMember { raft, stepped, .. } = member;
        let thread = stepped.with_tick(Duration::from_secs(3600)).spawn()?;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
        let answered = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), put.outcome).await??;
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let raft = raft.clone();
                tasks.push(tokio::spawn(async move {
                    let mut answered = 0;
                    for _ in 0..200 {
                        raft.read_index().await?;
                        answered += 1;
                    }
                    Ok::<_, RaftError>(answered)
                }));
            }
            let mut answered = 0;
            for t in tasks {
                answered += tokio::time::timeout(Duration::from_secs(60), t).await???;
            }
            anyhow::Ok(answered)
        })?;
        assert_eq!(answered, 16 * 200);
        raft.stop();
        thread.join().map_err(|_| anyhow::anyhow!("the raft thread panicked"))?;
        assert!(matches!(raft.ask_read_index(), Err(RaftError::Stopped)));
        Ok(())
    }
}
