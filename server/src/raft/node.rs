//! The one Ready loop, in raft-rs's documented order: send messages, apply
//! the snapshot, apply committed entries, append entries and persist the
//! hard state (one synced write: group commit), send persisted messages,
//! advance, apply what the light ready committed, advance_apply.
//!
//! Everything proposed while a sync runs goes into the next Ready, so many
//! client writes share one fsync.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use slog::Drain;
use tokio::sync::oneshot;

use super::log::{RaftLog, SnapshotSource};
use crate::storage::{Engine, StorageError, WriteBatch};

/// The application side of raft: it applies committed entries.
/// Bytes of entries applied at most between two flushes of the state
/// machine (and announcements of the applied index).
const APPLY_BATCH_BYTES: usize = 4 << 20;

pub trait StateMachine: Send + 'static {
    /// Applies the entry at `index` (`data` None for raft's own entries).
    /// `progress` records raft's commit and applied index: it must be written
    /// in the same atomic batch as the state the entry produces, so that
    /// after a crash nothing is applied twice and nothing is lost.
    /// Its effects may be staged until [`StateMachine::flush`]: neither
    /// readers nor the proposer see them before.
    fn apply(&mut self, index: u64, data: Option<&[u8]>, progress: WriteBatch) -> Result<(), StorageError>;

    /// Writes what the entries applied since the last flush staged, in one
    /// atomic write, and makes it visible (called after each batch of
    /// committed entries, before the applied index is announced).
    fn flush(&mut self) -> Result<(), StorageError>;

    /// Applies a configuration change at `index`: `outcome` is the conf
    /// state it produced, or why raft refused it. `progress` as in `apply`.
    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChangeV2,
        outcome: Result<&ConfState, String>,
        progress: WriteBatch,
    ) -> Result<(), StorageError>;

    /// Replaces the whole state with a snapshot's; `batch` already holds the
    /// raft log's side and must be written with it, atomically and synced.
    fn restore(&mut self, snapshot: &Snapshot, batch: WriteBatch) -> Result<(), StorageError>;

    /// The index of the last applied entry, as persisted.
    fn applied_index(&self) -> u64;
}

/// Carries raft messages to the other members. `send` never blocks: a
/// message that cannot be queued is dropped, and raft sends it again.
pub trait Transport: Send + 'static {
    fn send(&mut self, msgs: Vec<Message>);
}

#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Entries applied between two truncations of the raft log.
    pub snapshot_count: u64,
    /// Entries kept behind the applied index for slow followers.
    pub catch_up_entries: u64,
    /// Election timeouts are drawn from `election_ticks` up to this (0:
    /// raft's default, twice `election_ticks`). The simulation fixes each
    /// member's with `election_ticks + 1`: raft-rs draws from a random
    /// source of its own that a seed cannot reach.
    pub max_election_ticks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftError {
    #[error("raft loop stopped")]
    Stopped,
    #[error("read index timed out")]
    Timeout,
}

/// What the rest of the server may read about raft without asking the loop.
#[derive(Debug, Default)]
pub struct RaftStatus {
    pub id: AtomicU64,
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: Arc<AtomicU64>,
    pub is_learner: AtomicBool,
    /// Set once this member has applied its own removal.
    pub removed: AtomicBool,
    /// Set when the raft loop (which also applies) stopped on a failure:
    /// the member can no longer persist, send or apply anything.
    pub failed: AtomicBool,
    /// Woken whenever `leader` changes: proposers waiting for an outcome
    /// wait on it instead of polling the leader.
    pub leader_changed: tokio::sync::Notify,
}

impl RaftStatus {
    pub fn leader(&self) -> u64 {
        self.leader.load(Ordering::Acquire)
    }
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
    pub fn commit(&self) -> u64 {
        self.commit.load(Ordering::Acquire)
    }
    pub fn is_learner(&self) -> bool {
        self.is_learner.load(Ordering::Acquire)
    }
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }
}

/// What the leader knows of one member's replication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    pub matched: u64,
}

/// The leader's view of replication (empty `peers` on a follower).
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub last_index: u64,
    pub peers: Vec<PeerProgress>,
}

enum Command {
    /// An entry, and what to do if raft refuses it.
    Propose(Vec<u8>, Box<dyn FnOnce() + Send>),
    /// A membership change, and what to do if raft refuses it.
    ProposeConfChange(ConfChangeV2, Box<dyn FnOnce() + Send>),
    /// Reads are queued (`ReadQueue`): the loop looks at them.
    Reads,
    Step(Message),
    Unreachable(u64),
    SnapshotDone(u64, bool),
    TransferLeader(u64),
    Progress(oneshot::Sender<Progress>),
    Stop,
}

/// A cheap, cloneable way to talk to the Ready loop.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Command>,
    reads: Arc<ReadQueue>,
    pub status: Arc<RaftStatus>,
}

/// Reads waiting for the next ReadIndex round. A reader queues itself and
/// wakes the loop only if no reader before it has since the loop last
/// looked (`asked`): a storm of reads wakes the loop once per round, not
/// once per read.
#[derive(Default)]
struct ReadQueue {
    waiters: parking_lot::Mutex<QueuedReads>,
    /// Set by the first reader to queue after the loop took the queue.
    asked: AtomicBool,
}

#[derive(Default)]
struct QueuedReads {
    waiters: Vec<oneshot::Sender<u64>>,
    /// The loop is gone: no one will answer.
    closed: bool,
}

impl ReadQueue {
    /// Whether the loop has reads to take.
    fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire)
    }

    /// Everything queued. The flag is cleared first: a reader that queues
    /// after it sets the flag again and wakes the loop.
    fn take(&self) -> Vec<oneshot::Sender<u64>> {
        self.asked.store(false, Ordering::SeqCst);
        std::mem::take(&mut self.waiters.lock().waiters)
    }

    /// Queues a reader; true if it is the first since the loop last took
    /// the queue, and must wake it.
    fn push(&self, waiter: oneshot::Sender<u64>) -> Result<bool, RaftError> {
        {
            let mut q = self.waiters.lock();
            if q.closed {
                return Err(RaftError::Stopped);
            }
            q.waiters.push(waiter);
        }
        Ok(!self.asked.swap(true, Ordering::SeqCst))
    }

    /// Drops every waiter (they see the loop stopped) and refuses new ones.
    fn close(&self) {
        let mut q = self.waiters.lock();
        q.closed = true;
        q.waiters.clear();
    }
}

impl RaftHandle {
    /// Hands `data` to raft without waiting: the state machine reports the
    /// outcome, and the Ready loop calls `refused` if raft refuses it (no
    /// leader, or a leadership transfer). Not waiting for raft to take it
    /// saves a wake-up of the proposer per write.
    pub fn propose(&self, data: Vec<u8>, refused: Box<dyn FnOnce() + Send>) -> Result<(), RaftError> {
        self.tx.send(Command::Propose(data, refused)).map_err(|_| RaftError::Stopped)
    }

    /// Waits until this member has applied everything committed when the
    /// call was made (ReadIndex); returns that index.
    pub async fn read_index(&self) -> Result<u64, RaftError> {
        self.ask_read_index()?.await.map_err(|_| RaftError::Stopped)
    }

    /// Asks for a ReadIndex without waiting: the index comes on the
    /// receiver once applied.
    pub fn ask_read_index(&self) -> Result<oneshot::Receiver<u64>, RaftError> {
        let (tx, rx) = oneshot::channel();
        if self.reads.push(tx)? {
            self.tx.send(Command::Reads).map_err(|_| RaftError::Stopped)?;
        }
        Ok(rx)
    }

    /// Proposes a membership change (forwarded to the leader by raft), as
    /// `propose` does an entry.
    pub fn propose_conf_change(&self, cc: ConfChangeV2, refused: Box<dyn FnOnce() + Send>) -> Result<(), RaftError> {
        self.tx.send(Command::ProposeConfChange(cc, refused)).map_err(|_| RaftError::Stopped)
    }

    /// Hands a message from a peer to raft.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(Command::Step(msg));
    }

    /// Tells raft that the last message to `id` did not get through.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(Command::Unreachable(id));
    }

    /// Tells raft how sending a snapshot to `id` ended.
    pub fn report_snapshot(&self, id: u64, ok: bool) {
        let _ = self.tx.send(Command::SnapshotDone(id, ok));
    }

    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Command::TransferLeader(to));
    }

    /// The leader's replication progress of every member.
    pub async fn progress(&self) -> Result<Progress, RaftError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Progress(tx)).map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)
    }

    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

struct PendingRead {
    /// The tick it was issued at.
    issued: u64,
    waiters: Vec<oneshot::Sender<u64>>,
}

struct Loop<S: StateMachine, T: Transport> {
    node: RawNode<RaftLog>,
    engine: Arc<dyn Engine>,
    sm: S,
    transport: T,
    status: Arc<RaftStatus>,
    cfg: RaftConfig,
    read_seq: u64,
    /// Reads waiting for a ReadIndex answer, by request context.
    reads_in_flight: HashMap<u64, PendingRead>,
    /// Reads answered with an index, waiting to be applied up to it.
    reads_to_apply: Vec<(u64, Vec<oneshot::Sender<u64>>)>,
    /// Reads queued by clients, and the flag that wakes the loop for them.
    reads: Arc<ReadQueue>,
    /// Reads of a round that got no answer, for the next round.
    retried_reads: Vec<oneshot::Sender<u64>>,
    applied: u64,
    last_truncation: u64,
    /// Ticks so far: the loop's only clock.
    ticks: u64,
}

fn slog_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// The Ready loop, ready to run: on a thread of its own (`spawn`, a
/// member), or one step at a time by a driver that calls `tick` and `poll`
/// (the deterministic simulation), the same steps the thread takes.
pub struct Stepped<S: StateMachine, T: Transport> {
    lp: Loop<S, T>,
    rx: Receiver<Command>,
}

/// Opens the raft log and prepares the Ready loop. A founding member's log
/// must have been bootstrapped (`RaftLog::bootstrap`) with its state
/// machine's first state; a joining member starts empty and waits for a
/// snapshot.
pub fn start<S: StateMachine, T: Transport>(
    cfg: RaftConfig,
    engine: Arc<dyn Engine>,
    sm: S,
    transport: T,
    snapshots: Arc<dyn SnapshotSource>,
    status: Arc<RaftStatus>,
) -> Result<(RaftHandle, Stepped<S, T>), StorageError> {
    let mut log = RaftLog::open(engine.clone())?;
    log.set_snapshot_source(snapshots, status.applied.clone());
    let applied = sm.applied_index();
    let mut raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    if cfg.max_election_ticks != 0 {
        raft_cfg.min_election_tick = cfg.election_ticks;
        raft_cfg.max_election_tick = cfg.max_election_ticks;
    }
    let sole_voter = log.conf_state().voters == vec![cfg.id];
    status.is_learner.store(log.conf_state().learners.contains(&cfg.id), Ordering::Release);
    status.term.store(log.hard_state().term, Ordering::Release);
    // The commit index persisted before a restart: a follower of an idle
    // cluster hears no higher one (heartbeats carry the same), so without
    // it the member would wait for the next write to call itself ready.
    status.commit.store(log.hard_state().commit, Ordering::Release);
    let node = RawNode::new(&raft_cfg, log, &slog_logger()).map_err(|e| StorageError::Engine(format!("raft: {e}")))?;
    status.id.store(cfg.id, Ordering::Release);
    status.applied.store(applied, Ordering::Release);
    let (tx, rx) = channel();
    let reads = Arc::new(ReadQueue::default());
    let mut lp = Loop {
        node,
        engine,
        sm,
        transport,
        status: status.clone(),
        read_seq: 0,
        reads_in_flight: HashMap::new(),
        reads_to_apply: Vec::new(),
        reads: reads.clone(),
        retried_reads: Vec::new(),
        applied,
        last_truncation: applied,
        ticks: 0,
        cfg,
    };
    if sole_voter {
        // A one-member cluster need not wait an election timeout.
        let _ = lp.node.campaign();
    }
    Ok((RaftHandle { tx, reads, status }, Stepped { lp, rx }))
}

/// A stopped loop answers no read: queued ones see it stopped.
impl<S: StateMachine, T: Transport> Drop for Stepped<S, T> {
    fn drop(&mut self) {
        self.lp.reads.close();
    }
}

impl<S: StateMachine, T: Transport> Stepped<S, T> {
    /// The same loop with another tick (a test's: one that never comes).
    #[cfg(test)]
    pub(crate) fn with_tick(mut self, tick: Duration) -> Self {
        self.lp.cfg.tick = tick;
        self
    }

    /// Runs the loop on its own thread until told to stop.
    pub fn spawn(mut self) -> Result<std::thread::JoinHandle<()>, StorageError> {
        std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                if let Err(e) = self.run() {
                    // Storage failed under raft: stopping is the only safe
                    // move (the server then exits, see `RaftStatus::failed`).
                    tracing::error!(error = %e, "raft loop stopped on a storage error");
                    self.lp.status.failed.store(true, Ordering::Release);
                }
            })
            .map_err(|e| StorageError::Engine(e.to_string()))
    }

    /// The thread of `spawn`: commands as they come, a tick every
    /// `cfg.tick`, a Ready after each wake-up.
    fn run(&mut self) -> Result<(), StorageError> {
        let mut last_tick = Instant::now();
        loop {
            // Reads queued while a round was in flight sent no wake-up:
            // once that round is answered, the next goes out at once.
            let wait = if self.lp.reads_waiting() {
                Duration::ZERO
            } else {
                self.lp.cfg.tick.saturating_sub(last_tick.elapsed())
            };
            match self.rx.recv_timeout(wait) {
                Ok(cmd) => {
                    if !self.lp.handle(cmd) {
                        return Ok(());
                    }
                    // Take everything already queued: it shares one Ready.
                    if !self.take_queued() {
                        return Ok(());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if last_tick.elapsed() >= self.lp.cfg.tick {
                self.lp.tick();
                last_tick = Instant::now();
            }
            self.lp.issue_reads();
            self.lp.on_ready()?;
        }
    }

    /// Handles every queued command; false once told to stop.
    fn take_queued(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            if !self.lp.handle(cmd) {
                return false;
            }
        }
        true
    }

    /// One tick of raft's logical clock (a heartbeat interval).
    pub fn tick(&mut self) {
        self.lp.tick();
    }

    /// Handles what was queued (proposals, reads, peer messages) and runs
    /// a Ready; false once told to stop.
    pub fn poll(&mut self) -> Result<bool, StorageError> {
        if !self.take_queued() {
            return Ok(false);
        }
        self.lp.issue_reads();
        self.lp.on_ready()?;
        Ok(true)
    }
}

impl<S: StateMachine, T: Transport> Loop<S, T> {
    fn tick(&mut self) {
        self.node.tick();
        self.ticks += 1;
        self.retry_reads();
    }

    /// False when the loop must stop.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Propose(data, refused) => {
                if self.node.propose(Vec::new(), data).is_err() {
                    refused();
                }
            }
            Command::ProposeConfChange(cc, refused) => {
                if self.node.propose_conf_change(Vec::new(), cc).is_err() {
                    refused();
                }
            }
            Command::Reads => {}
            Command::Step(msg) => {
                if let Err(e) = self.node.step(msg) {
                    tracing::debug!(error = %e, "raft refused a peer message");
                }
            }
            Command::Unreachable(id) => self.node.report_unreachable(id),
            Command::SnapshotDone(id, ok) => {
                let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                self.node.report_snapshot(id, status);
            }
            Command::TransferLeader(to) => self.node.transfer_leader(to),
            Command::Progress(done) => {
                let _ = done.send(self.progress());
            }
            Command::Stop => return false,
        }
        true
    }

    /// Reads to issue as soon as no round is in flight.
    fn reads_waiting(&self) -> bool {
        self.reads_in_flight.is_empty() && (self.reads.asked() || !self.retried_reads.is_empty())
    }

    /// Many waiting reads share one ReadIndex round, and one round is in
    /// flight at a time (as etcd's read loop): reads that arrive meanwhile
    /// wait for the next, so a read storm costs a heartbeat round per
    /// batch, not per read.
    fn issue_reads(&mut self) {
        if !self.reads_in_flight.is_empty() {
            return;
        }
        let mut waiters = std::mem::take(&mut self.retried_reads);
        if self.reads.asked() {
            waiters.extend(self.reads.take());
        }
        if waiters.is_empty() {
            return;
        }
        self.read_seq += 1;
        self.node.read_index(self.read_seq.to_be_bytes().to_vec());
        self.reads_in_flight.insert(self.read_seq, PendingRead { issued: self.ticks, waiters });
    }

    /// raft drops a ReadIndex silently without a leader or before the leader
    /// commits in its term: ask again after a while.
    fn retry_reads(&mut self) {
        let patience = (self.cfg.election_ticks as u64 / 2).max(1);
        let now = self.ticks;
        let mut stale: Vec<u64> =
            self.reads_in_flight.iter().filter(|(_, p)| now - p.issued > patience).map(|(k, _)| *k).collect();
        stale.sort_unstable();
        for k in stale {
            if let Some(p) = self.reads_in_flight.remove(&k) {
                let alive: Vec<_> = p.waiters.into_iter().filter(|w| !w.is_closed()).collect();
                self.retried_reads.extend(alive);
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            self.transport.send(msgs);
        }
    }

    fn progress(&self) -> Progress {
        let raft = &self.node.raft;
        let mut p = Progress { last_index: raft.raft_log.last_index(), peers: Vec::new() };
        if raft.state != StateRole::Leader {
            return p;
        }
        for (id, pr) in raft.prs().iter() {
            p.peers.push(PeerProgress {
                id: *id,
                matched: pr.matched,
            });
        }
        p.peers.sort_by_key(|p| p.id);
        p
    }

    /// Replaces the state with a snapshot from the leader.
    fn restore(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let mut batch = WriteBatch::default();
        self.node.mut_store().apply_snapshot(meta, &mut batch)?;
        self.sm.restore(snap, batch)?;
        self.applied = meta.index;
        self.last_truncation = meta.index;
        self.status.applied.store(meta.index, Ordering::Release);
        self.status.commit.store(self.status.commit().max(meta.index), Ordering::Release);
        self.note_conf_state(meta.get_conf_state());
        tracing::info!(index = meta.index, term = meta.term, "applied a snapshot from the leader");
        Ok(())
    }

    fn note_conf_state(&self, cs: &ConfState) {
        let id = self.cfg.id;
        self.status.is_learner.store(cs.learners.contains(&id), Ordering::Release);
        let member = cs.voters.contains(&id) || cs.learners.contains(&id);
        let joining = cs.voters.is_empty() && cs.learners.is_empty();
        if !member && !joining {
            self.status.removed.store(true, Ordering::Release);
        }
    }

    /// A leader that removed itself hands leadership to the most up-to-date
    /// voter before it goes, so the cluster need not wait for an election.
    fn hand_over(&mut self) {
        if self.node.raft.state != StateRole::Leader {
            return;
        }
        let me = self.cfg.id;
        let voters = self.node.raft.prs().conf().voters().ids();
        let best = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(**id))
            .max_by_key(|(_, pr)| pr.matched)
            .map(|(id, _)| *id);
        if let Some(to) = best {
            tracing::info!(to = %format!("{to:x}"), "removed from the cluster: handing leadership over");
            self.node.transfer_leader(to);
        }
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        self.send(ready.take_messages());
        if let Some(ss) = ready.ss() {
            let before = self.status.leader.swap(ss.leader_id, Ordering::AcqRel);
            if ss.leader_id != before {
                self.status.leader_changed.notify_waiters();
            }
            if ss.leader_id != 0 && ss.leader_id != before {
                crate::metrics::METRICS.leader_changes.inc();
            }
            if ss.raft_state == StateRole::Leader {
                tracing::info!(id = %format!("{:x}", self.cfg.id), term = self.node.raft.term, "became leader");
            } else if ss.leader_id != 0 {
                tracing::info!(leader = %format!("{:x}", ss.leader_id), term = self.node.raft.term, "following a leader");
            }
        }
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.restore(&snap)?;
        }
        self.apply(ready.take_committed_entries())?;

        let mut batch = WriteBatch::default();
        let store = self.node.mut_store();
        store.append(ready.entries(), &mut batch)?;
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs.clone(), &mut batch)?;
            self.status.term.store(hs.term, Ordering::Release);
            self.status.commit.store(hs.commit, Ordering::Release);
        }
        if !batch.is_empty() {
            let started = Instant::now();
            self.engine.write(batch, ready.must_sync())?;
            if ready.must_sync() {
                crate::metrics::METRICS.wal_fsync.observe(crate::metrics::since(started));
            }
        }
        for rs in ready.take_read_states() {
            let ctx: [u8; 8] = rs.request_ctx.as_slice().try_into().unwrap_or_default();
            if let Some(p) = self.reads_in_flight.remove(&u64::from_be_bytes(ctx)) {
                self.reads_to_apply.push((rs.index, p.waiters));
            }
        }
        self.send(ready.take_persisted_messages());

        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            // Persisted with each applied entry (see `apply`): a restart
            // re-learns any commit index beyond the last applied entry.
            self.status.commit.store(commit, Ordering::Release);
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.node.advance_apply();
        self.release_reads();
        self.maybe_truncate()
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut staged_bytes = 0;
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            // A member catching up gets many entries at once: they are
            // written, shown and answered in batches of bounded size.
            if staged_bytes >= APPLY_BATCH_BYTES {
                self.flush_applied()?;
                staged_bytes = 0;
            }
            staged_bytes += e.data.len().max(1);
            let mut progress = WriteBatch::default();
            self.node.mut_store().commit_to(e.index, &mut progress)?;
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let data = if e.data.is_empty() { None } else { Some(&e.data[..]) };
                    self.sm.apply(e.index, data, progress)?;
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let bad = |err: protobuf::ProtobufError| StorageError::Engine(format!("conf change: {err}"));
                    let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChange {
                        let cc: raft::eraftpb::ConfChange = protobuf::Message::parse_from_bytes(&e.data).map_err(bad)?;
                        {
                            let mut v2 = ConfChangeV2::default();
                            let mut single = raft::eraftpb::ConfChangeSingle::default();
                            single.set_change_type(cc.get_change_type());
                            single.node_id = cc.node_id;
                            v2.mut_changes().push(single);
                            v2.context = cc.context;
                            v2
                        }
                    } else {
                        protobuf::Message::parse_from_bytes(&e.data).map_err(bad)?
                    };
                    match self.node.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.node.mut_store().set_conf_state(cs.clone(), &mut progress)?;
                            self.sm.apply_conf_change(e.index, &cc, Ok(&cs), progress)?;
                            self.note_conf_state(&cs);
                            if self.status.removed() {
                                self.hand_over();
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "conf change rejected");
                            self.sm.apply_conf_change(e.index, &cc, Err(err.to_string()), progress)?;
                        }
                    }
                }
            }
            self.applied = e.index;
        }
        self.flush_applied()
    }

    /// Writes what the state machine staged, then announces the applied
    /// index: only once written and visible, since a linearizable read
    /// waits for the applied index, then reads.
    fn flush_applied(&mut self) -> Result<(), StorageError> {
        self.sm.flush()?;
        self.status.applied.store(self.applied, Ordering::Release);
        Ok(())
    }

    fn release_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_to_apply).into_iter().partition(|(idx, _)| *idx <= applied);
        self.reads_to_apply = waiting;
        for (idx, waiters) in ready {
            for w in waiters {
                let _ = w.send(idx);
            }
        }
    }

    /// Keeps the raft log bounded (etcd's --snapshot-count).
    fn maybe_truncate(&mut self) -> Result<(), StorageError> {
        if self.applied < self.last_truncation + self.cfg.snapshot_count {
            return Ok(());
        }
        self.last_truncation = self.applied;
        let upto = self.applied.saturating_sub(self.cfg.catch_up_entries);
        if upto == 0 {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        self.node.mut_store().truncate(upto, &mut batch)?;
        self.engine.write(batch, false)
    }
}
