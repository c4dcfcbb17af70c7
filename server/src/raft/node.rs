//! The Ready loop, in raft-rs's documented order: send messages, install
//! the snapshot, hand committed entries to the apply thread, append entries
//! and persist the hard state (one synced write: group commit), send
//! persisted messages, advance, hand over what the light ready committed.
//!
//! Everything proposed while a sync runs goes into the next Ready, so many
//! client writes share one fsync.
//!
//! Applying has a thread of its own (TiKV's split of raftstore and apply):
//! while the Ready loop persists and sends, the apply thread applies what
//! was committed before, in log order, and reports how far it got
//! (`Command::Applied`); raft learns the applied index from that report
//! (`advance_apply_to`), and so do reads waiting for it and the log's
//! truncation. A configuration change is applied to raft by the Ready loop
//! when it hands the entry over (raft may use a committed configuration at
//! once); the state machine applies it in order, with the conf state
//! persisted in the same write as the applied index. A snapshot from the
//! leader is installed by the apply thread after everything handed to it
//! before, while the Ready loop waits.

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
pub trait StateMachine: Send + 'static {
    /// Applies the entry at `index` (`data` None for raft's own entries).
    /// `progress` records raft's commit and applied index: it must be written
    /// in the same atomic batch as the state the entry produces, so that
    /// after a crash nothing is applied twice and nothing is lost.
    fn apply(&mut self, index: u64, data: Option<&[u8]>, progress: WriteBatch) -> Result<(), StorageError>;

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
    ReadIndex(oneshot::Sender<u64>),
    Step(Message),
    Unreachable(u64),
    SnapshotDone(u64, bool),
    TransferLeader(u64),
    Progress(oneshot::Sender<Progress>),
    /// The apply thread has applied every entry up to this index.
    Applied(u64),
    Stop,
}

/// A committed entry on its way to the apply thread.
enum Committed {
    Normal(Entry),
    /// A configuration change raft has taken (or refused), and the raft
    /// log's record of the conf state it produced, to be written with it.
    ConfChange { index: u64, cc: ConfChangeV2, outcome: Result<ConfState, String>, progress: WriteBatch },
}

/// Work for the apply thread, done in order.
enum ApplyTask {
    Entries(Vec<Committed>),
    /// Replace the state with a snapshot's; `batch` holds the raft log's
    /// side. The Ready loop waits for the outcome.
    Restore(Snapshot, WriteBatch, std::sync::mpsc::SyncSender<Result<(), StorageError>>),
}

/// A cheap, cloneable way to talk to the Ready loop.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Command>,
    pub status: Arc<RaftStatus>,
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
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::ReadIndex(tx)).map_err(|_| RaftError::Stopped)?;
        rx.await.map_err(|_| RaftError::Stopped)
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
    issued: Instant,
    waiters: Vec<oneshot::Sender<u64>>,
}

struct Loop<T: Transport> {
    node: RawNode<RaftLog>,
    engine: Arc<dyn Engine>,
    apply: Sender<ApplyTask>,
    transport: T,
    status: Arc<RaftStatus>,
    cfg: RaftConfig,
    read_seq: u64,
    /// Reads waiting for a ReadIndex answer, by request context.
    reads_in_flight: HashMap<u64, PendingRead>,
    /// Reads answered with an index, waiting to be applied up to it.
    reads_to_apply: Vec<(u64, Vec<oneshot::Sender<u64>>)>,
    new_reads: Vec<oneshot::Sender<u64>>,
    /// The last entry the apply thread reported applied.
    applied: u64,
    /// The last entry handed to the apply thread.
    handed: u64,
    last_truncation: u64,
}

fn apply_stopped() -> StorageError {
    StorageError::Engine("the apply thread stopped".into())
}

fn slog_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// Starts the Ready loop on its own thread. A founding member's log must
/// have been bootstrapped (`RaftLog::bootstrap`) with its state machine's
/// first state; a joining member starts empty and waits for a snapshot.
pub fn start<S: StateMachine, T: Transport>(
    cfg: RaftConfig,
    engine: Arc<dyn Engine>,
    sm: S,
    transport: T,
    snapshots: Arc<dyn SnapshotSource>,
    status: Arc<RaftStatus>,
) -> Result<(RaftHandle, std::thread::JoinHandle<()>), StorageError> {
    let mut log = RaftLog::open(engine.clone())?;
    log.set_snapshot_source(snapshots);
    let applied = sm.applied_index();
    if log.hard_state().commit < applied {
        // Applying does not record the commit index (the Ready loop alone
        // writes the hard state); whatever was applied was committed.
        let mut batch = WriteBatch::default();
        log.commit_to(applied, &mut batch)?;
        engine.write(batch, true)?;
    }
    let raft_cfg = raft::Config {
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
    let (apply_tx, apply_rx) = channel();
    let applier = {
        let status = status.clone();
        let raft = tx.clone();
        std::thread::Builder::new()
            .name("apply".into())
            .spawn(move || {
                if let Err(e) = run_apply(sm, apply_rx, &status, &raft) {
                    // Nothing applied can be trusted to have been written:
                    // the member stops (see `RaftStatus::failed`).
                    tracing::error!(error = %e, "the apply thread stopped on a storage error");
                    status.failed.store(true, Ordering::Release);
                }
            })
            .map_err(|e| StorageError::Engine(e.to_string()))?
    };
    let mut lp = Loop {
        node,
        engine,
        apply: apply_tx,
        transport,
        status: status.clone(),
        read_seq: 0,
        reads_in_flight: HashMap::new(),
        reads_to_apply: Vec::new(),
        new_reads: Vec::new(),
        applied,
        handed: applied,
        last_truncation: applied,
        cfg,
    };
    if sole_voter {
        // A one-member cluster need not wait an election timeout.
        let _ = lp.node.campaign();
    }
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            if let Err(e) = lp.run(rx) {
                // Storage failed under raft: stopping is the only safe move
                // (the server then exits, see `RaftStatus::failed`).
                tracing::error!(error = %e, "raft loop stopped on a storage error");
                lp.status.failed.store(true, Ordering::Release);
            }
            // The apply thread ends once it has applied what it was given.
            drop(lp);
            let _ = applier.join();
        })
        .map_err(|e| StorageError::Engine(e.to_string()))?;
    Ok((RaftHandle { tx, status }, thread))
}

/// The apply thread: applies what the Ready loop hands over, in order, and
/// reports how far it got after each batch.
fn run_apply<S: StateMachine>(
    mut sm: S,
    tasks: Receiver<ApplyTask>,
    status: &RaftStatus,
    raft: &Sender<Command>,
) -> Result<(), StorageError> {
    while let Ok(first) = tasks.recv() {
        let mut applied = None;
        for task in std::iter::once(first).chain(std::iter::from_fn(|| tasks.try_recv().ok())) {
            match task {
                ApplyTask::Entries(entries) => {
                    for c in entries {
                        let index = match c {
                            Committed::Normal(e) => {
                                let data = if e.data.is_empty() { None } else { Some(&e.data[..]) };
                                sm.apply(e.index, data, WriteBatch::default())?;
                                e.index
                            }
                            Committed::ConfChange { index, cc, outcome, progress } => {
                                sm.apply_conf_change(index, &cc, outcome.as_ref().map_err(Clone::clone), progress)?;
                                index
                            }
                        };
                        status.applied.store(index, Ordering::Release);
                        applied = Some(index);
                    }
                }
                ApplyTask::Restore(snap, batch, done) => {
                    let outcome = sm.restore(&snap, batch);
                    let failure = outcome.as_ref().err().map(|e| e.to_string());
                    let _ = done.send(outcome);
                    if let Some(e) = failure {
                        return Err(StorageError::Engine(format!("installing a snapshot: {e}")));
                    }
                    status.applied.store(snap.get_metadata().index, Ordering::Release);
                    applied = None;
                }
            }
        }
        if let Some(index) = applied {
            let _ = raft.send(Command::Applied(index));
        }
    }
    Ok(())
}

impl<T: Transport> Loop<T> {
    fn run(&mut self, rx: Receiver<Command>) -> Result<(), StorageError> {
        let mut last_tick = Instant::now();
        loop {
            let wait = self.cfg.tick.saturating_sub(last_tick.elapsed());
            match rx.recv_timeout(wait) {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return Ok(());
                    }
                    // Take everything already queued: it shares one Ready.
                    while let Ok(cmd) = rx.try_recv() {
                        if !self.handle(cmd) {
                            return Ok(());
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if last_tick.elapsed() >= self.cfg.tick {
                self.node.tick();
                last_tick = Instant::now();
                self.retry_reads();
            }
            self.issue_reads();
            self.on_ready()?;
            self.note_applied()?;
        }
    }

    /// Tells raft, waiting reads and the log's truncation how far the apply
    /// thread got.
    fn note_applied(&mut self) -> Result<(), StorageError> {
        let log = &self.node.raft.raft_log;
        // Never past what raft counts as committed and persisted here (a
        // snapshot installed moves both before raft has advanced).
        let applied = self.applied.min(log.committed).min(log.persisted);
        if applied > log.applied {
            self.node.advance_apply_to(applied);
        }
        self.release_reads();
        self.maybe_truncate()
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
            Command::ReadIndex(done) => self.new_reads.push(done),
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
            // Reports from before a snapshot install are behind it.
            Command::Applied(index) => self.applied = self.applied.max(index),
            Command::Stop => return false,
        }
        true
    }

    /// Many waiting reads share one ReadIndex round, and one round is in
    /// flight at a time (as etcd's read loop): reads that arrive meanwhile
    /// wait for the next, so a read storm costs a heartbeat round per
    /// batch, not per read.
    fn issue_reads(&mut self) {
        if self.new_reads.is_empty() || !self.reads_in_flight.is_empty() {
            return;
        }
        self.read_seq += 1;
        let waiters = std::mem::take(&mut self.new_reads);
        self.node.read_index(self.read_seq.to_be_bytes().to_vec());
        self.reads_in_flight.insert(self.read_seq, PendingRead { issued: Instant::now(), waiters });
    }

    /// raft drops a ReadIndex silently without a leader or before the leader
    /// commits in its term: ask again after a while.
    fn retry_reads(&mut self) {
        let patience = self.cfg.tick * self.cfg.election_ticks as u32 / 2;
        let stale: Vec<u64> =
            self.reads_in_flight.iter().filter(|(_, p)| p.issued.elapsed() > patience).map(|(k, _)| *k).collect();
        for k in stale {
            if let Some(p) = self.reads_in_flight.remove(&k) {
                let alive: Vec<_> = p.waiters.into_iter().filter(|w| !w.is_closed()).collect();
                self.new_reads.extend(alive);
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

    /// Replaces the state with a snapshot from the leader, once the apply
    /// thread has applied everything handed to it before.
    fn restore(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let mut batch = WriteBatch::default();
        self.node.mut_store().apply_snapshot(meta, &mut batch)?;
        let (done, outcome) = std::sync::mpsc::sync_channel(1);
        self.apply.send(ApplyTask::Restore(snap.clone(), batch, done)).map_err(|_| apply_stopped())?;
        outcome.recv().map_err(|_| apply_stopped())??;
        self.applied = meta.index;
        self.handed = meta.index;
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
        self.hand_over_committed(ready.take_committed_entries())?;

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

        // Applying is the apply thread's: raft hears of it in `note_applied`.
        let mut light = self.node.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            // Persisted with each applied entry (see `apply`): a restart
            // re-learns any commit index beyond the last applied entry.
            self.status.commit.store(commit, Ordering::Release);
        }
        self.send(light.take_messages());
        self.hand_over_committed(light.take_committed_entries())
    }

    /// Hands committed entries to the apply thread; a configuration change
    /// is applied to raft here, in log order.
    fn hand_over_committed(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let mut committed = Vec::with_capacity(entries.len());
        for e in entries {
            if e.index <= self.handed {
                continue;
            }
            let index = e.index;
            match e.get_entry_type() {
                EntryType::EntryNormal => committed.push(Committed::Normal(e)),
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
                    let mut progress = WriteBatch::default();
                    let outcome = match self.node.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.node.mut_store().set_conf_state(cs.clone(), &mut progress)?;
                            self.note_conf_state(&cs);
                            if self.status.removed() {
                                self.hand_over();
                            }
                            Ok(cs)
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "conf change rejected");
                            Err(err.to_string())
                        }
                    };
                    committed.push(Committed::ConfChange { index, cc, outcome, progress });
                }
            }
            self.handed = index;
        }
        if !committed.is_empty() {
            self.apply.send(ApplyTask::Entries(committed)).map_err(|_| apply_stopped())?;
        }
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

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::raft::log::BOOTSTRAP_INDEX;
    use crate::storage::mem::MemEngine;

    /// Applying waits while the gate is shut; what was applied is recorded.
    #[derive(Default)]
    struct Gate {
        shut: Mutex<bool>,
        opened: Condvar,
        applied: Mutex<Vec<u64>>,
    }

    struct Gated {
        gate: Arc<Gate>,
        engine: Arc<dyn Engine>,
        applied: u64,
    }

    impl Gated {
        fn pass(&mut self, index: u64, progress: WriteBatch) -> Result<(), StorageError> {
            let mut shut = self.gate.shut.lock().expect("gate");
            while *shut {
                shut = self.gate.opened.wait(shut).expect("gate");
            }
            drop(shut);
            self.engine.write(progress, false)?;
            self.applied = index;
            self.gate.applied.lock().expect("applied").push(index);
            Ok(())
        }
    }

    impl StateMachine for Gated {
        fn apply(&mut self, index: u64, _data: Option<&[u8]>, progress: WriteBatch) -> Result<(), StorageError> {
            self.pass(index, progress)
        }

        fn apply_conf_change(
            &mut self,
            index: u64,
            _cc: &ConfChangeV2,
            _outcome: Result<&ConfState, String>,
            progress: WriteBatch,
        ) -> Result<(), StorageError> {
            self.pass(index, progress)
        }

        fn restore(&mut self, _snapshot: &Snapshot, _batch: WriteBatch) -> Result<(), StorageError> {
            Err(StorageError::Engine("a single member gets no snapshot".into()))
        }

        fn applied_index(&self) -> u64 {
            self.applied
        }
    }

    struct NoPeers;

    impl Transport for NoPeers {
        fn send(&mut self, _msgs: Vec<Message>) {}
    }

    struct NoSnapshots;

    impl SnapshotSource for NoSnapshots {
        fn create(&self) -> Result<(Vec<u8>, u64, ConfState), StorageError> {
            Err(StorageError::Engine("no snapshots here".into()))
        }
    }

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn entries_commit_while_the_apply_thread_is_busy_and_reads_wait_for_it() {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let mut batch = WriteBatch::default();
        RaftLog::bootstrap(&ConfState { voters: vec![1], ..Default::default() }, &mut batch).expect("bootstrap");
        engine.write(batch, true).expect("write");
        let gate = Arc::new(Gate::default());
        let sm = Gated { gate: gate.clone(), engine: engine.clone(), applied: BOOTSTRAP_INDEX };
        let cfg = RaftConfig {
            id: 1,
            tick: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_count: 10_000,
            catch_up_entries: 100,
        };
        let status = Arc::new(RaftStatus::default());
        let (raft, thread) = start(cfg, engine, sm, NoPeers, Arc::new(NoSnapshots), status.clone()).expect("start");
        until("a leader", || status.leader() == 1).await;
        until("the leader's first entry applied", || status.applied() > BOOTSTRAP_INDEX).await;

        // The apply thread is held up: proposals still commit (persisted
        // and counted by raft), which they could not if applying were a
        // step of the Ready loop.
        *gate.shut.lock().expect("gate") = true;
        let before = status.applied();
        for i in 0..20u8 {
            raft.propose(vec![i], Box::new(|| panic!("a sole voter's leader refused a proposal"))).expect("propose");
        }
        until("20 entries committed", || status.commit() >= before + 20).await;
        assert!(status.applied() <= before + 1, "applied {} while the apply thread is held", status.applied());

        // A linearizable read waits for the apply thread to reach the
        // commit index it was given.
        let read = raft.read_index();
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(Duration::from_millis(300), &mut read).await.is_err(),
            "a read was answered before its index was applied"
        );
        *gate.shut.lock().expect("gate") = false;
        gate.opened.notify_all();
        let index = tokio::time::timeout(Duration::from_secs(10), read).await.expect("read answered").expect("read index");
        assert!(index >= before + 20 && status.applied() >= index, "read at {index}, applied {}", status.applied());
        let applied = gate.applied.lock().expect("applied").clone();
        assert!(applied.windows(2).all(|w| w[1] == w[0] + 1), "applied in log order, each once: {applied:?}");

        raft.stop();
        thread.join().expect("the raft and apply threads stop");
    }
}
