//! The deterministic simulation: a whole cluster of raftkv members in one
//! thread (`raftkv::sim::SimMember`: the real raft loop, state machine,
//! MVCC store and watch hub over the in-memory engine), simulated time in
//! milliseconds, a simulated network, and faults, all decided by one seed:
//! the same seed runs the same way, every time, so any failure replays.
//!
//! - Time: the driver moves it 1 ms a step; each member ticks raft every
//!   100 ms (its heartbeat) and has an election timeout of its own
//!   (10-19 ticks, from the seed).
//! - Network: every raft message travels 1-5 ms plus jitter; the faults
//!   drop (partitions, one-way cuts, loss), delay, duplicate and so
//!   reorder them. A raft snapshot's records travel with its message, as
//!   the peer transport streams them.
//! - Disk: the in-memory engine keeps what was synced; a power loss keeps
//!   a random prefix of what was not (RocksDB's WAL), a kill -9 keeps it
//!   all.
//! - Faults, one at a time, each healed after a while: power loss of one
//!   member or of all at once, kill -9, pause (SIGSTOP), isolation, a
//!   minority/majority split, a one-way cut, message loss, slow links,
//!   leadership transfer.
//! - Clients issue `history`'s operations (get, put, lease put, delete,
//!   compare-and-put txn, lease revoke, put on a revoked lease) on random
//!   members, with a 2 s timeout (indeterminate after it); watchers follow
//!   the keys with prev_kv and filters, resuming on another member.
//! - The same checkers as the fault runs on real processes decide each
//!   run: `lincheck` (porcupine) the history, `watchcheck` the store's own
//!   history and every watcher; all members must end with the same
//!   history and HashKV.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::proto::{
    PbCompare, PbDeleteRequest, PbLeaseGrantRequest, PbLeaseRevokeRequest, PbPutRequest, PbRangeRequest, PbTxnRequestOp,
    PbTargetUnion, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbWatchResponse,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use raft::eraftpb::{Message, MessageType};
use raftkv::apply::Response;
use raftkv::apply::request::Op as Request;
use raftkv::error::Error;
use raftkv::lease::Clock;
use raftkv::mvcc::RangeEnd;
use raftkv::peer::proto::Record as SnapshotRecord;
use raftkv::sim::{Proposed, SimMember, Timing};
use raftkv::storage::mem::MemEngine;
use raftkv::watch::WatchSpec;
use tokio::sync::{mpsc, oneshot};

use crate::history::{Answer, Op, Outcome, Record};
use crate::watchcheck::{Filter, Kv, Seen, TruthEvent, WatchLog};

/// Every key the clients use is under it.
const PREFIX: &str = "/sim/";
const KEYS: usize = 5;
const CLIENTS: usize = 5;
const WATCHERS: usize = 4;
/// How long the workload and the faults run, in simulated ms.
const RUN_MS: u64 = 12_000;
/// A client's request timeout.
const TIMEOUT_MS: u64 = 2_000;
/// raft's tick (the heartbeat interval).
const TICK_MS: u64 = 100;
/// How long the cluster may take to agree once healed.
const SETTLE_MS: u64 = 30_000;
const LEASE_TTL: i64 = 3600;
/// The leader's lease expiry duty runs this often (as the server's).
const EXPIRY_DUTY_MS: u64 = 500;

/// Failures on demand, for the simulation's own tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// Every member's disk acknowledges syncs and keeps nothing: power
    /// losses then lose acknowledged writes, which the checkers must see.
    pub lying_disks: bool,
}

/// What one seed ran.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub members: usize,
    /// Operations answered, and of unknown outcome.
    pub ops: usize,
    pub unknown: usize,
    pub watch_events: usize,
    pub revision: i64,
    pub snapshots_sent: usize,
    /// Short leases kept alive, then let expire, and checked.
    pub leases_expired: usize,
    pub faults: Vec<String>,
    /// A digest of everything observable: equal for equal seeds.
    pub digest: u64,
}

struct Packet {
    from: usize,
    to: usize,
    msg: Message,
    snapshot: Option<Arc<Vec<Vec<SnapshotRecord>>>>,
}

struct Slot {
    id: u64,
    engine: Arc<MemEngine>,
    dir: PathBuf,
    timing: Timing,
    member: Option<SimMember>,
    incarnation: u64,
    paused_until: u64,
    /// What reached it while paused, delivered when it resumes.
    held: Vec<Packet>,
    next_tick: u64,
}

impl Slot {
    fn up(&self, now: u64) -> bool {
        self.member.is_some() && self.paused_until <= now
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    PowerLoss(usize),
    PowerLossAll,
    Kill(usize),
    Pause(usize),
    Isolate(usize),
    Split,
    OneWay(usize, usize),
    Loss,
    Slow,
    Transfer(usize),
}

enum Waiting {
    Write { p: Proposed, slot: usize },
    Read { rx: oneshot::Receiver<u64>, slot: usize },
    Grant { p: Proposed, slot: usize, key: String, lease: i64 },
}

struct InFlight {
    call: u64,
    deadline: u64,
    key: String,
    op: Op,
    waiting: Waiting,
}

struct Client {
    n: usize,
    history_id: usize,
    slot: usize,
    rng: StdRng,
    writes: u64,
    leases_granted: i64,
    seen_mod: BTreeMap<String, i64>,
    leases: Vec<(String, i64)>,
    revoked: Vec<(String, i64)>,
    next_at: u64,
    inflight: Option<InFlight>,
}

struct Watcher {
    log: WatchLog,
    rx: Option<mpsc::Receiver<PbWatchResponse>>,
    next_rev: i64,
    responses: usize,
    retry_at: u64,
    created_at: u64,
}

/// A short lease the session client keeps alive for a while, then lets
/// expire: it must never end before its TTL has run from the last
/// keep-alive answered, and must end once it has (and a leader has had
/// time to count it).
struct Kept {
    id: i64,
    ttl_ms: u64,
    /// When the grant was asked for, then when a keep-alive was last
    /// answered.
    last_ack: u64,
    keep_until: u64,
    next_renew: u64,
    /// The member incarnations that have held it.
    seen: BTreeSet<(usize, u64)>,
    revoked_at: Option<u64>,
}

struct Granting {
    p: Proposed,
    slot: usize,
    call: u64,
    id: i64,
    ttl: i64,
}

struct Sim {
    rng: StdRng,
    /// The members' lease clock reads the simulated time.
    clock_ms: Arc<AtomicU64>,
    clock: Clock,
    kept: Vec<Kept>,
    granting: Option<Granting>,
    next_lease: i64,
    next_grant: u64,
    /// Per member: when its expiry duty runs next.
    duty: Vec<u64>,
    last_promotion: u64,
    now: u64,
    /// The history's clock: strictly increasing, so that porcupine sees
    /// the order in which the driver saw things happen.
    stamp: u64,
    slots: Vec<Slot>,
    queue: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    cut: BTreeSet<(usize, usize)>,
    loss: f64,
    extra_delay: u64,
    fault: Option<(Fault, u64)>,
    next_fault: u64,
    clients: Vec<Client>,
    watchers: Vec<Watcher>,
    records: Vec<Record>,
    next_history_id: usize,
    report: Report,
    load: bool,
    /// `SIM_TRACE`: each member's raft state every 500 ms, on stderr.
    trace: bool,
}

fn member_err(what: &str, id: u64, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("member {id}: {what}: {e}")
}

impl Sim {
    fn new(seed: u64, dir: &Path, options: Options) -> anyhow::Result<Sim> {
        let mut rng = StdRng::seed_from_u64(seed);
        let members = if rng.random_bool(0.25) { 5 } else { 3 };
        let ids: Vec<u64> = (1..=members as u64).collect();
        let snapshot_count = rng.random_range(30..200);
        let clock_ms = Arc::new(AtomicU64::new(0));
        let base = Instant::now();
        let clock: Clock = {
            let ms = clock_ms.clone();
            Arc::new(move || base + Duration::from_millis(ms.load(Ordering::Relaxed)))
        };
        let mut slots = Vec::new();
        for &id in &ids {
            let engine = Arc::new(MemEngine::new());
            raftkv::sim::bootstrap(engine.as_ref(), &ids).map_err(|e| member_err("bootstrap", id, e))?;
            if options.lying_disks {
                engine.lie_about_syncs();
            }
            let timing = Timing { election_ticks: rng.random_range(10..20), snapshot_count, catch_up_entries: rng.random_range(5..30) };
            let dir = dir.join(format!("m{id}"));
            let member = SimMember::open(id, engine.clone(), dir.clone(), timing, 0, clock.clone()).map_err(|e| member_err("open", id, e))?;
            let next_tick = rng.random_range(0..TICK_MS);
            slots.push(Slot { id, engine, dir, timing, member: Some(member), incarnation: 0, paused_until: 0, held: Vec::new(), next_tick });
        }
        let clients = (0..CLIENTS)
            .map(|n| Client {
                n,
                history_id: n,
                slot: rng.random_range(0..members),
                rng: StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(n as u64)),
                writes: 0,
                leases_granted: 0,
                seen_mod: BTreeMap::new(),
                leases: Vec::new(),
                revoked: Vec::new(),
                next_at: rng.random_range(0..500),
                inflight: None,
            })
            .collect();
        let filters = [Filter::None, Filter::None, Filter::NoPut, Filter::NoDelete];
        let watchers = (0..WATCHERS)
            .map(|n| Watcher {
                log: WatchLog { name: format!("w{n}"), filter: filters[n % filters.len()], start_rev: 0, seen: Vec::new(), resumes: 0 },
                rx: None,
                next_rev: 0,
                responses: 0,
                retry_at: 0,
                created_at: rng.random_range(0..RUN_MS / 2),
            })
            .collect();
        let next_fault = rng.random_range(500..2000);
        let duty = (0..members).map(|_| rng.random_range(0..EXPIRY_DUTY_MS)).collect();
        Ok(Sim {
            rng,
            clock_ms,
            clock,
            kept: Vec::new(),
            granting: None,
            next_lease: 1 << 40,
            next_grant: 1000,
            duty,
            last_promotion: 0,
            now: 0,
            stamp: 0,
            slots,
            queue: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            loss: 0.0,
            extra_delay: 0,
            fault: None,
            next_fault,
            clients,
            watchers,
            records: Vec::new(),
            next_history_id: CLIENTS,
            report: Report { seed, members, ..Report::default() },
            load: true,
            trace: std::env::var_os("SIM_TRACE").is_some(),
        })
    }

    fn stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    fn note(&mut self, what: String) {
        if self.trace {
            eprintln!("{:>6} ms {what}", self.now);
        }
        self.report.faults.push(format!("{:>6} ms {what}", self.now));
    }

    /// One millisecond of the whole world.
    fn step(&mut self) -> anyhow::Result<()> {
        self.clock_ms.store(self.now, Ordering::Relaxed);
        self.deliver()?;
        for i in 0..self.slots.len() {
            self.run_member(i)?;
        }
        self.run_leases()?;
        self.run_clients()?;
        self.run_watchers();
        if self.trace && self.now.is_multiple_of(500) {
            let states: Vec<String> = self
                .slots
                .iter()
                .map(|s| match &s.member {
                    None => format!("{}: down", s.id),
                    Some(m) => {
                        let st = &m.status;
                        let paused = if s.paused_until > self.now { " paused" } else { "" };
                        format!("{}: leader {} term {} commit {} applied {} rev {}{paused}", s.id, st.leader(), st.term(), st.commit(), st.applied(), m.store.current_revision())
                    }
                })
                .collect();
            eprintln!("{:>6} ms | {}", self.now, states.join(" | "));
        }
        self.now += 1;
        Ok(())
    }

    fn deliver(&mut self) -> anyhow::Result<()> {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (_, p) = entry.remove_entry();
            let slot = &self.slots[p.to];
            if slot.member.is_some() && slot.paused_until > self.now {
                // A stopped process: the bytes wait in its socket.
                self.slots[p.to].held.push(p);
                continue;
            }
            let Some(member) = &self.slots[p.to].member else {
                if p.snapshot.is_some()
                    && let Some(from) = &self.slots[p.from].member
                {
                    from.report_snapshot(p.msg.to, false);
                }
                continue;
            };
            if let Some(records) = &p.snapshot {
                let index = p.msg.get_snapshot().get_metadata().index;
                let received = member.receive_snapshot(index, records);
                let ok = received.is_ok();
                if ok {
                    member.step(p.msg);
                    self.report.snapshots_sent += 1;
                }
                if let Some(from) = &self.slots[p.from].member {
                    from.report_snapshot(self.slots[p.to].id, ok);
                }
                received.map_err(|e| member_err("receiving a snapshot", self.slots[p.to].id, e))?;
            } else {
                member.step(p.msg);
            }
        }
        Ok(())
    }

    fn run_member(&mut self, i: usize) -> anyhow::Result<()> {
        let now = self.now;
        if !self.slots[i].up(now) {
            return Ok(());
        }
        let slot = &mut self.slots[i];
        let id = slot.id;
        let Some(member) = slot.member.as_mut() else { return Ok(()) };
        if now >= slot.next_tick {
            member.tick();
            slot.next_tick = now + TICK_MS;
        }
        member.poll().map_err(|e| member_err("raft loop", id, e))?;
        let msgs = member.take_messages();
        for msg in msgs {
            self.send(i, msg);
        }
        Ok(())
    }

    fn send(&mut self, from: usize, msg: Message) {
        let Some(to) = self.slots.iter().position(|s| s.id == msg.to) else { return };
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let dropped = self.cut.contains(&(from, to)) || (self.loss > 0.0 && self.rng.random_bool(self.loss));
        let sender = self.slots[from].member.as_ref();
        if dropped {
            if let Some(sender) = sender {
                if snapshot {
                    sender.report_snapshot(msg.to, false);
                } else if self.cut.contains(&(from, to)) && self.rng.random_bool(0.1) {
                    // The connection is refused now and then, not only silent.
                    sender.report_unreachable(msg.to);
                }
            }
            return;
        }
        let records = if snapshot {
            let index = msg.get_snapshot().get_metadata().index;
            match sender.and_then(|s| s.snapshot_chunks(index)) {
                Some(r) => Some(Arc::new(r)),
                None => {
                    if let Some(sender) = sender {
                        sender.report_snapshot(msg.to, false);
                    }
                    return;
                }
            }
        } else {
            None
        };
        let delay = self.rng.random_range(1..=5) + self.rng.random_range(0..=3) * self.rng.random_range(0..=3) + self.extra_delay;
        // A duplicate, later: raft must not mind. Not of a forwarded
        // proposal: raft does not deduplicate those (nor does etcd's), and
        // the peer transport, one unary call per batch over TCP, never
        // sends a message twice.
        if records.is_none() && msg.get_msg_type() != MessageType::MsgPropose && self.rng.random_bool(0.005) {
            self.seq += 1;
            let later = self.now + delay + self.rng.random_range(1..50);
            self.queue.insert((later, self.seq), Packet { from, to, msg: msg.clone(), snapshot: None });
        }
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), Packet { from, to, msg, snapshot: records });
    }

    // ---- faults ----

    fn run_faults(&mut self) -> anyhow::Result<()> {
        if let Some((_, heal_at)) = self.fault {
            if self.now >= heal_at {
                self.heal()?;
                self.next_fault = self.now + self.rng.random_range(300..2000);
            }
            return Ok(());
        }
        if self.now < self.next_fault {
            return Ok(());
        }
        let n = self.slots.len();
        let a = self.rng.random_range(0..n);
        let b = (a + self.rng.random_range(1..n)) % n;
        let fault = match self.rng.random_range(0..10) {
            0 => Fault::PowerLoss(a),
            1 => Fault::PowerLossAll,
            2 => Fault::Kill(a),
            3 => Fault::Pause(a),
            4 => Fault::Isolate(a),
            5 => Fault::Split,
            6 => Fault::OneWay(a, b),
            7 => Fault::Loss,
            8 => Fault::Slow,
            _ => Fault::Transfer(a),
        };
        let lasts = self.rng.random_range(200..4000);
        self.inject(fault)?;
        self.fault = Some((fault, self.now + lasts));
        Ok(())
    }

    fn crash(&mut self, i: usize, power_loss: bool) {
        let slot = &mut self.slots[i];
        if slot.member.take().is_none() {
            return;
        }
        let unsynced = slot.engine.unsynced();
        let keep = if power_loss { self.rng.random_range(0..=unsynced) } else { unsynced };
        slot.engine.crash(keep);
        slot.paused_until = 0;
        slot.held.clear();
        let id = slot.id;
        let how = if power_loss { "power loss" } else { "kill -9" };
        self.note(format!("{how} of member {id}: kept {keep} of {unsynced} unsynced writes"));
    }

    fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        let slot = &mut self.slots[i];
        if slot.member.is_some() {
            return Ok(());
        }
        slot.incarnation += 1;
        let member = SimMember::open(slot.id, slot.engine.clone(), slot.dir.clone(), slot.timing, slot.incarnation, self.clock.clone())
            .map_err(|e| member_err("restart", slot.id, e))?;
        slot.member = Some(member);
        slot.next_tick = self.now + self.rng.random_range(0..TICK_MS);
        Ok(())
    }

    fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        let n = self.slots.len();
        let id = |i: usize| i as u64 + 1;
        match fault {
            Fault::PowerLoss(i) => self.crash(i, true),
            Fault::Kill(i) => self.crash(i, false),
            Fault::PowerLossAll => {
                for i in 0..n {
                    self.crash(i, true);
                }
            }
            Fault::Pause(i) => {
                self.slots[i].paused_until = u64::MAX;
                self.note(format!("pause of member {}", id(i)));
            }
            Fault::Isolate(i) => {
                for j in (0..n).filter(|&j| j != i) {
                    self.cut.insert((i, j));
                    self.cut.insert((j, i));
                }
                self.note(format!("isolation of member {}", id(i)));
            }
            Fault::Split => {
                let mut order: Vec<usize> = (0..n).collect();
                for k in (1..n).rev() {
                    order.swap(k, self.rng.random_range(0..=k));
                }
                let minority: Vec<usize> = order[..(n - 1) / 2].to_vec();
                for &i in &minority {
                    for j in (0..n).filter(|j| !minority.contains(j)) {
                        self.cut.insert((i, j));
                        self.cut.insert((j, i));
                    }
                }
                self.note(format!("split: {:?} apart", minority.iter().map(|&i| id(i)).collect::<Vec<_>>()));
            }
            Fault::OneWay(a, b) => {
                self.cut.insert((a, b));
                self.note(format!("one-way cut {} -> {}", id(a), id(b)));
            }
            Fault::Loss => {
                self.loss = self.rng.random_range(0.1..0.5);
                self.note(format!("loss of {:.0}% of messages", self.loss * 100.0));
            }
            Fault::Slow => {
                self.extra_delay = self.rng.random_range(20..400);
                self.note(format!("{} ms more on every link", self.extra_delay));
            }
            Fault::Transfer(to) => {
                let leader = self.slots.iter().filter_map(|s| s.member.as_ref()).map(|m| m.status.leader()).find(|&l| l != 0);
                if let Some(leader) = leader
                    && let Some(m) = self.slots[(leader - 1) as usize].member.as_ref()
                {
                    // To another member: `to` unless it leads already.
                    let to = if id(to) == leader { (to + 1) % n } else { to };
                    m.transfer_leader(id(to));
                    self.note(format!("leadership transfer {leader} -> {}", id(to)));
                }
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        self.fault = None;
        self.cut.clear();
        self.loss = 0.0;
        self.extra_delay = 0;
        for i in 0..self.slots.len() {
            if self.slots[i].paused_until > self.now {
                self.slots[i].paused_until = self.now;
                for p in std::mem::take(&mut self.slots[i].held) {
                    self.seq += 1;
                    self.queue.insert((self.now, self.seq), p);
                }
            }
            self.restart(i)?;
        }
        Ok(())
    }

    // ---- clients ----

    fn run_clients(&mut self) -> anyhow::Result<()> {
        for c in 0..self.clients.len() {
            if self.clients[c].inflight.is_some() {
                self.poll_client(c)?;
            } else if self.load && self.now >= self.clients[c].next_at {
                self.issue(c);
            }
        }
        Ok(())
    }

    fn value(&mut self, c: usize) -> String {
        let client = &mut self.clients[c];
        client.writes += 1;
        format!("c{}-{}", client.history_id, client.writes)
    }

    /// A new request from client `c`, on its member (if that one is down
    /// or stopped, the client cannot connect: it tries another later).
    fn issue(&mut self, c: usize) {
        let now = self.now;
        let slot = self.clients[c].slot;
        if !self.slots[slot].up(now) {
            self.reconnect(c, false);
            return;
        }
        let key = crate::history::key(PREFIX, self.clients[c].rng.random_range(0..KEYS));
        let roll = self.clients[c].rng.random_range(0..100);
        let (key, op) = match roll {
            0..40 => (key, Op::Get),
            40..60 => {
                let value = self.value(c);
                (key, Op::Put { value, lease: 0 })
            }
            60..80 => {
                let client = &mut self.clients[c];
                let expect_mod = if client.rng.random_bool(0.8) { client.seen_mod.get(&key).copied().unwrap_or(0) } else { 0 };
                let value = self.value(c);
                (key, Op::Txn { expect_mod, value })
            }
            80..86 => (key, Op::Delete),
            86..88 if !self.clients[c].revoked.is_empty() => {
                let client = &mut self.clients[c];
                let (key, lease) = client.revoked[client.rng.random_range(0..client.revoked.len())].clone();
                let value = self.value(c);
                (key, Op::Put { value, lease })
            }
            86..94 => {
                // A lease of its own for this key first (not an operation
                // on the key), then the put.
                let client = &mut self.clients[c];
                client.leases_granted += 1;
                let lease = ((client.n as i64 + 1) << 32) + client.leases_granted;
                let Some(member) = self.slots[slot].member.as_mut() else { return };
                match member.propose(Request::LeaseGrant(PbLeaseGrantRequest { ttl: LEASE_TTL, id: lease })) {
                    Ok(p) => {
                        let waiting = Waiting::Grant { p, slot, key: key.clone(), lease };
                        self.clients[c].inflight = Some(InFlight { call: 0, deadline: now + TIMEOUT_MS, key, op: Op::Get, waiting });
                    }
                    Err(_) => self.reconnect(c, false),
                }
                return;
            }
            _ => {
                let client = &mut self.clients[c];
                if client.leases.is_empty() {
                    client.next_at = now + 1;
                    return;
                }
                let (key, lease) = client.leases.swap_remove(client.rng.random_range(0..client.leases.len()));
                (key, Op::Revoke { lease })
            }
        };
        self.start(c, slot, key, op);
    }

    fn start(&mut self, c: usize, slot: usize, key: String, op: Op) {
        let now = self.now;
        let Some(member) = self.slots[slot].member.as_mut() else { return };
        let waiting = match &op {
            Op::Get => member.read_index().map(|rx| Waiting::Read { rx, slot }),
            _ => member.propose(request(&key, &op)).map(|p| Waiting::Write { p, slot }),
        };
        match waiting {
            Ok(waiting) => {
                let call = self.stamp();
                self.clients[c].inflight = Some(InFlight { call, deadline: now + TIMEOUT_MS, key, op, waiting });
            }
            Err(_) => self.reconnect(c, false),
        }
    }

    /// The client goes on with a new connection to a random member after
    /// a pause; after a request of unknown outcome, under a new id (its
    /// request may still be pending: porcupine needs each client's
    /// operations in sequence).
    fn reconnect(&mut self, c: usize, new_id: bool) {
        let n = self.slots.len();
        let now = self.now;
        let client = &mut self.clients[c];
        client.slot = client.rng.random_range(0..n);
        client.next_at = now + client.rng.random_range(100..300);
        if new_id {
            client.history_id = self.next_history_id;
            self.next_history_id += 1;
        }
    }

    fn poll_client(&mut self, c: usize) -> anyhow::Result<()> {
        let Some(mut f) = self.clients[c].inflight.take() else { return Ok(()) };
        let now = self.now;
        enum Done {
            Answer(Outcome),
            Refused,
            Pending,
        }
        let done = match &mut f.waiting {
            Waiting::Write { p, .. } | Waiting::Grant { p, .. } => match p.outcome.try_recv() {
                Ok(Some(Ok(resp))) => Done::Answer(Outcome::Ok(answer(&f.op, resp)?)),
                Ok(Some(Err(Error::LeaseNotFound))) => match f.op {
                    Op::Revoke { .. } => Done::Answer(Outcome::Ok(Answer::default())),
                    Op::Put { lease, .. } if lease != 0 => Done::Answer(Outcome::LeaseNotFound),
                    _ => bail!("{} on {} answered \"lease not found\"", op_name(&f.op), f.key),
                },
                Ok(Some(Err(e))) => bail!("{} on {}: unexpected error from the state machine: {e}", op_name(&f.op), f.key),
                Ok(None) => Done::Refused,
                Err(oneshot::error::TryRecvError::Empty) => Done::Pending,
                Err(oneshot::error::TryRecvError::Closed) => Done::Answer(Outcome::Unknown),
            },
            Waiting::Read { rx, slot } => match rx.try_recv() {
                Ok(_) => {
                    let Some(member) = self.slots[*slot].member.as_ref() else { bail!("a read answered by a member that is down") };
                    let r = member
                        .range(&PbRangeRequest { key: f.key.clone().into_bytes(), ..Default::default() })
                        .map_err(|e| anyhow::anyhow!("range of {}: {e}", f.key))?;
                    let rev = r.header.as_ref().map_or(0, |h| h.revision);
                    Done::Answer(Outcome::Ok(read(rev, r.kvs.first())))
                }
                Err(oneshot::error::TryRecvError::Empty) => Done::Pending,
                Err(oneshot::error::TryRecvError::Closed) => Done::Answer(Outcome::Unknown),
            },
        };
        let done = match done {
            Done::Pending if now >= f.deadline => {
                if let Waiting::Write { p, slot } | Waiting::Grant { p, slot, .. } = &f.waiting
                    && let Some(m) = self.slots[*slot].member.as_ref()
                {
                    m.forget(p.id);
                }
                Done::Answer(Outcome::Unknown)
            }
            d => d,
        };
        match done {
            Done::Pending => {
                self.clients[c].inflight = Some(f);
            }
            Done::Refused => self.reconnect(c, false),
            Done::Answer(outcome) => {
                if let Waiting::Grant { slot, key, lease, .. } = f.waiting {
                    // The grant is not an operation on the key: on to the put.
                    if matches!(outcome, Outcome::Ok(_)) {
                        self.clients[c].leases.push((key.clone(), lease));
                        let value = self.value(c);
                        if self.slots[slot].up(now) {
                            self.start(c, slot, key, Op::Put { value, lease });
                        }
                    } else {
                        self.reconnect(c, true);
                    }
                    return Ok(());
                }
                self.finish(c, f, outcome);
            }
        }
        Ok(())
    }

    fn finish(&mut self, c: usize, f: InFlight, outcome: Outcome) {
        let ret = self.stamp();
        let client = &mut self.clients[c];
        if let Outcome::Ok(a) = &outcome {
            match &f.op {
                Op::Get => {
                    client.seen_mod.insert(f.key.clone(), a.mod_rev);
                }
                Op::Put { .. } => {
                    client.seen_mod.insert(f.key.clone(), a.rev);
                }
                Op::Txn { .. } => {
                    client.seen_mod.insert(f.key.clone(), if a.succeeded { a.rev } else { a.mod_rev });
                }
                Op::Delete => {
                    client.seen_mod.insert(f.key.clone(), 0);
                }
                Op::Revoke { lease } => client.revoked.push((f.key.clone(), *lease)),
            }
        }
        let unknown = matches!(outcome, Outcome::Unknown);
        self.records.push(Record {
            client: client.history_id,
            call: f.call,
            ret: (!unknown).then_some(ret),
            key: f.key,
            op: f.op,
            outcome,
        });
        if unknown {
            self.reconnect(c, true);
        } else {
            let think = client.rng.random_range(0..40);
            client.next_at = self.now + think;
        }
    }

    // ---- watchers ----

    fn run_watchers(&mut self) {
        let now = self.now;
        let n = self.slots.len();
        for w in 0..self.watchers.len() {
            let watcher = &mut self.watchers[w];
            if now < watcher.created_at {
                continue;
            }
            if watcher.rx.is_none() {
                if now < watcher.retry_at {
                    continue;
                }
                let slot = self.rng.random_range(0..n);
                if !self.slots[slot].up(now) {
                    self.watchers[w].retry_at = now + 50;
                    continue;
                }
                let watcher = &mut self.watchers[w];
                let Some(member) = self.slots[slot].member.as_mut() else { continue };
                if watcher.next_rev == 0 {
                    // Its first start: anywhere in the history so far.
                    let current = member.store.current_revision();
                    watcher.next_rev = self.rng.random_range(1..=current + 1);
                    watcher.log.start_rev = watcher.next_rev;
                } else {
                    watcher.log.resumes += 1;
                }
                let spec = WatchSpec {
                    key: PREFIX.as_bytes().to_vec(),
                    end: RangeEnd::from_request(&prefix_end(PREFIX)),
                    start_rev: watcher.next_rev,
                    no_put: watcher.log.filter == Filter::NoPut,
                    no_delete: watcher.log.filter == Filter::NoDelete,
                    prev_kv: true,
                    progress_notify: false,
                    fragment: false,
                    user: None,
                };
                watcher.rx = Some(member.watch(spec).1);
            }
            let watcher = &mut self.watchers[w];
            let Some(rx) = watcher.rx.as_mut() else { continue };
            let mut lost = false;
            loop {
                match rx.try_recv() {
                    Ok(resp) => {
                        if resp.canceled {
                            lost = true;
                            break;
                        }
                        if resp.events.is_empty() {
                            continue;
                        }
                        for e in &resp.events {
                            let Some(kv) = e.kv.as_ref() else { continue };
                            watcher.log.seen.push(Seen {
                                response: watcher.responses,
                                delete: e.r#type == 1,
                                kv: Kv::of_pb(kv),
                                prev: e.prev_kv.as_ref().map(Kv::of_pb),
                            });
                            watcher.next_rev = kv.mod_revision + 1;
                        }
                        watcher.responses += 1;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        lost = true;
                        break;
                    }
                }
            }
            // Now and then a watcher drops its stream on purpose.
            if lost || self.rng.random_bool(0.0005) {
                let watcher = &mut self.watchers[w];
                watcher.rx = None;
                watcher.retry_at = now + self.rng.random_range(10..300);
            }
        }
    }

    // ---- leases in time ----

    /// The leader's expiry duty on every member (as `server::expire_leases`:
    /// a member that becomes leader first gives every lease its TTL plus
    /// an election timeout), and the session client: short leases granted,
    /// kept alive on whichever member thinks it leads (a deposed leader
    /// that has not noticed included), then let go; each checked.
    fn run_leases(&mut self) -> anyhow::Result<()> {
        let now = self.now;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if !slot.up(now) || now < self.duty[i] {
                continue;
            }
            let election = Duration::from_millis(slot.timing.election_ticks as u64 * TICK_MS);
            let Some(m) = self.slots[i].member.as_mut() else { continue };
            let leads = m.status.leader() == m.id;
            if m.lessor.lead(leads, election) {
                self.last_promotion = now;
            }
            self.duty[i] = now + EXPIRY_DUTY_MS;
            if leads {
                for id in m.lessor.expired() {
                    let _ = m.propose(Request::LeaseRevoke(PbLeaseRevokeRequest { id }));
                }
            }
        }
        self.grant_leases();
        // Keep-alives, on a member that thinks it leads.
        let leaders: Vec<usize> =
            (0..self.slots.len()).filter(|&i| self.slots[i].up(now) && self.slots[i].member.as_ref().is_some_and(|m| m.status.leader() == m.id)).collect();
        for k in 0..self.kept.len() {
            let kept = &self.kept[k];
            if kept.revoked_at.is_some() || now >= kept.keep_until || now < kept.next_renew || leaders.is_empty() {
                continue;
            }
            let i = leaders[self.rng.random_range(0..leaders.len())];
            // As `Node::renew_lease`: `Lessor::renew_as_leader`, with the
            // promotion it may make seen.
            let election = Duration::from_millis(self.slots[i].timing.election_ticks as u64 * TICK_MS);
            let Some(m) = self.slots[i].member.as_ref() else { continue };
            if m.lessor.lead(true, election) {
                self.last_promotion = now;
            }
            let renewed = m.lessor.renew(self.kept[k].id).is_some();
            let kept = &mut self.kept[k];
            if renewed {
                kept.last_ack = now;
            }
            // Now and then a client late with its keep-alive, past the TTL.
            let late = self.rng.random_bool(0.2);
            kept.next_renew = now + if late { self.rng.random_range(1000..kept.ttl_ms + 1500) } else { self.rng.random_range(300..1000) };
        }
        // When each lease ends: the first member that held it and no longer does.
        if now.is_multiple_of(5) {
            for k in 0..self.kept.len() {
                if self.kept[k].revoked_at.is_some() {
                    continue;
                }
                for i in 0..self.slots.len() {
                    let slot = &self.slots[i];
                    let Some(m) = slot.member.as_ref() else { continue };
                    let kept = &mut self.kept[k];
                    if m.lessor.exists(kept.id) {
                        kept.seen.insert((i, slot.incarnation));
                    } else if kept.seen.contains(&(i, slot.incarnation)) {
                        kept.revoked_at = Some(now);
                        let due = kept.last_ack + kept.ttl_ms;
                        ensure!(
                            now >= due,
                            "lease {:x} (TTL {} s) ended at {now} ms on member {}, {} ms early: its last keep-alive was answered at {} ms",
                            kept.id,
                            kept.ttl_ms / 1000,
                            slot.id,
                            due - now,
                            kept.last_ack
                        );
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn grant_leases(&mut self) {
        let now = self.now;
        if let Some(g) = self.granting.as_mut() {
            match g.p.outcome.try_recv() {
                Ok(Some(Ok(_))) => {
                    let (id, slot, ttl_ms) = (g.id, g.slot, g.ttl as u64 * 1000);
                    let keep_until = now + self.rng.random_range(0..5000);
                    let next_renew = now + self.rng.random_range(300..1000);
                    self.kept.push(Kept { id, ttl_ms, last_ack: g.call, keep_until, next_renew, seen: BTreeSet::new(), revoked_at: None });
                    self.granting = None;
                    // A key of its own, under the prefix the watchers follow.
                    if let Some(m) = self.slots[slot].member.as_mut() {
                        let put = PbPutRequest { key: format!("{PREFIX}lease{id:x}").into_bytes(), value: b"kept".to_vec(), lease: id, ..Default::default() };
                        let _ = m.propose(Request::Put(put));
                    }
                }
                Err(oneshot::error::TryRecvError::Empty) if now < g.call + TIMEOUT_MS => {}
                // Refused, lost with its member or timed out: if it was
                // granted after all, nobody keeps it and it expires.
                _ => self.granting = None,
            }
            return;
        }
        let live = self.kept.iter().filter(|k| k.revoked_at.is_none()).count();
        if !self.load || now < self.next_grant || live >= 3 {
            return;
        }
        self.next_grant = now + self.rng.random_range(500..1500);
        let slot = self.rng.random_range(0..self.slots.len());
        if !self.slots[slot].up(now) {
            return;
        }
        self.next_lease += 1;
        let (id, ttl) = (self.next_lease, self.rng.random_range(2..=4));
        let Some(m) = self.slots[slot].member.as_mut() else { return };
        if let Ok(p) = m.propose(Request::LeaseGrant(PbLeaseGrantRequest { ttl, id })) {
            self.granting = Some(Granting { p, slot, call: now, id, ttl });
        }
    }

    /// Every lease let go has ended once its TTL ran out after the last
    /// keep-alive and after the last leader took over, plus the duty's
    /// period and an election timeout.
    fn check_leases(&self) -> anyhow::Result<()> {
        for k in self.kept.iter().filter(|k| k.revoked_at.is_none()) {
            let due = k.last_ack.max(self.last_promotion) + k.ttl_ms + 2_000 + 2 * EXPIRY_DUTY_MS;
            ensure!(
                self.now < due,
                "lease {:x} (TTL {} s) outlived its TTL: last keep-alive answered at {} ms, last leader took over at {} ms, still there at {} ms",
                k.id,
                k.ttl_ms / 1000,
                k.last_ack,
                self.last_promotion,
                self.now
            );
        }
        Ok(())
    }

    // ---- the end ----

    /// Heals everything, lets requests finish, and waits until every member
    /// has applied the same history.
    fn settle(&mut self) -> anyhow::Result<()> {
        self.heal()?;
        self.load = false;
        self.agree()?;
        // Leases let go run out (their revocations are writes too), and
        // watchers catch up; then the members agree again.
        for _ in 0..8_000 {
            self.step()?;
        }
        // Done once a whole second passes without a write (a lease's
        // revocation comes when it comes) and the members still agree.
        for _ in 0..10 {
            self.agree()?;
            let rev = self.revision();
            for _ in 0..1_000 {
                self.step()?;
            }
            if self.agreed() && self.revision() == rev {
                return Ok(());
            }
        }
        bail!("the members kept writing or disagreeing after the faults healed")
    }

    fn revision(&self) -> i64 {
        self.slots.iter().filter_map(|s| s.member.as_ref()).map(|m| m.store.current_revision()).max().unwrap_or(0)
    }

    /// One leader, every member at the same applied index and revision.
    fn agreed(&self) -> bool {
        let members: Vec<&SimMember> = self.slots.iter().filter_map(|s| s.member.as_ref()).collect();
        let leader = members[0].status.leader();
        members.len() == self.slots.len()
            && leader != 0
            && members.iter().all(|m| {
                m.status.leader() == leader && m.status.applied() == members[0].status.applied() && m.store.current_revision() == members[0].store.current_revision()
            })
    }

    /// Runs until the clients' last requests ended and the members agree.
    fn agree(&mut self) -> anyhow::Result<()> {
        let deadline = self.now + SETTLE_MS;
        loop {
            self.step()?;
            let busy = self.clients.iter().any(|c| c.inflight.is_some());
            if !busy && self.agreed() {
                return Ok(());
            }
            if self.now > deadline {
                bail!("the cluster did not settle within {SETTLE_MS} ms of healing (busy clients: {busy})");
            }
        }
    }

    fn check(mut self, dir: &Path) -> anyhow::Result<Report> {
        self.check_leases()?;
        let mut truths = Vec::new();
        let mut hashes = Vec::new();
        for slot in &self.slots {
            let m = slot.member.as_ref().context("a member is down at the end")?;
            let current = m.store.current_revision();
            let (changes, _) = m.store.changes(1, current, PREFIX.as_bytes(), &RangeEnd::from_request(&prefix_end(PREFIX)), usize::MAX)?;
            let events: Vec<TruthEvent> = changes
                .iter()
                .map(|(rev, c)| {
                    let kv = Kv::of_pb(&c.kv);
                    TruthEvent { delete: c.deleted, key: kv.key.clone(), value: kv.value.clone(), mod_rev: *rev, kv }
                })
                .collect();
            let read = m.range(&PbRangeRequest { key: PREFIX.into(), range_end: prefix_end(PREFIX), ..Default::default() })?;
            let read: BTreeMap<String, Kv> = read.kvs.iter().map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), Kv::of_pb(kv))).collect();
            crate::watchcheck::check_truth(&events, current, &read).with_context(|| format!("member {}'s history", slot.id))?;
            truths.push((slot.id, current, events));
            hashes.push((slot.id, m.store.hash_kv(current)?.0));
        }
        let (first_id, last, truth) = truths.swap_remove(0);
        for (id, rev, events) in &truths {
            ensure!(
                *rev == last && events.len() == truth.len() && events.iter().zip(&truth).all(|(a, b)| a.kv == b.kv && a.delete == b.delete),
                "members {first_id} and {id} hold different histories (revisions {last} and {rev})"
            );
        }
        ensure!(hashes.iter().all(|(_, h)| *h == hashes[0].1), "the members' HashKV differ: {hashes:?}");
        for w in &self.watchers {
            crate::watchcheck::check(&w.log, &truth)?;
        }
        let records = crate::history::resolve(&self.records, &truth);
        crate::history::check(&records, &dir.join("history.json"))?;
        let r = &mut self.report;
        r.unknown = self.records.iter().filter(|r| matches!(r.outcome, Outcome::Unknown)).count();
        r.ops = self.records.len() - r.unknown;
        r.watch_events = self.watchers.iter().map(|w| w.log.seen.len()).sum();
        r.revision = last;
        r.leases_expired = self.kept.iter().filter(|k| k.revoked_at.is_some()).count();
        r.digest = digest(&self.records, &truth, &self.watchers);
        Ok(self.report)
    }
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Get => "get",
        Op::Put { .. } => "put",
        Op::Delete => "delete",
        Op::Txn { .. } => "txn",
        Op::Revoke { .. } => "revoke",
    }
}

/// The request a write operation sends, as etcdctl's client builds it.
fn request(key: &str, op: &Op) -> Request {
    let key = key.as_bytes().to_vec();
    match op {
        Op::Put { value, lease } => Request::Put(PbPutRequest { key, value: value.clone().into_bytes(), lease: *lease, ..Default::default() }),
        Op::Delete => Request::DeleteRange(PbDeleteRequest { key, ..Default::default() }),
        Op::Txn { expect_mod, value } => Request::Txn(PbTxnRequest {
            compare: vec![PbCompare {
                // Equal, on the mod revision.
                result: 0,
                target: 2,
                key: key.clone(),
                target_union: Some(PbTargetUnion::ModRevision(*expect_mod)),
                ..Default::default()
            }],
            success: vec![PbTxnRequestOp {
                request: Some(PbTxnOpRequest::RequestPut(PbPutRequest { key: key.clone(), value: value.clone().into_bytes(), ..Default::default() })),
            }],
            failure: vec![PbTxnRequestOp { request: Some(PbTxnOpRequest::RequestRange(PbRangeRequest { key, ..Default::default() })) }],
        }),
        Op::Revoke { lease } => Request::LeaseRevoke(PbLeaseRevokeRequest { id: *lease }),
        Op::Get => unreachable!("reads are not proposed"),
    }
}

fn answer(op: &Op, resp: Response) -> anyhow::Result<Answer> {
    let rev = |h: &Option<etcd_client::proto::PbResponseHeader>| h.as_ref().map_or(0, |h| h.revision);
    Ok(match (op, resp) {
        (Op::Get, Response::LeaseGrant(g)) => Answer { rev: rev(&g.header), ..Answer::default() },
        (Op::Put { .. }, Response::Put(p)) => Answer { rev: rev(&p.header), ..Answer::default() },
        (Op::Delete, Response::DeleteRange(d)) => Answer { rev: rev(&d.header), deleted: d.deleted, ..Answer::default() },
        (Op::Revoke { .. }, Response::LeaseRevoke(r)) => Answer { rev: rev(&r.header), ..Answer::default() },
        (Op::Txn { .. }, Response::Txn(t)) => {
            let r = rev(&t.header);
            if t.succeeded {
                Answer { rev: r, succeeded: true, ..Answer::default() }
            } else {
                match t.responses.first().and_then(|o| o.response.as_ref()) {
                    Some(PbTxnOpResponse::ResponseRange(get)) => read(r, get.kvs.first()),
                    _ => bail!("a failed txn answered without its get"),
                }
            }
        }
        (op, resp) => bail!("{} answered with {resp:?}", op_name(op)),
    })
}

fn read(rev: i64, kv: Option<&etcd_client::proto::PbKeyValue>) -> Answer {
    match kv {
        Some(kv) => Answer {
            rev,
            found: true,
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            mod_rev: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
            ..Answer::default()
        },
        None => Answer { rev, ..Answer::default() },
    }
}

/// FNV-1a over what a run observed.
fn digest(records: &[Record], truth: &[TruthEvent], watchers: &[Watcher]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |s: &str| {
        for b in s.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for r in records {
        eat(&format!("{} {} {:?} {} {:?} {:?};", r.client, r.call, r.ret, r.key, r.op, r.outcome));
    }
    for e in truth {
        eat(&format!("{:?};", e.kv));
    }
    for w in watchers {
        eat(&format!("{:?};", w.log.seen));
    }
    h
}

/// Runs seed `seed` in `dir` (members' snapshot files, the history for
/// lincheck) and checks it. An error says what broke (a panic included)
/// and which faults were injected; the seed replays it.
pub fn run(seed: u64, dir: &Path) -> anyhow::Result<Report> {
    run_with(seed, dir, Options::default())
}

pub fn run_with(seed: u64, dir: &Path, options: Options) -> anyhow::Result<Report> {
    let mut sim = Sim::new(seed, dir, options)?;
    let driven = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&mut sim)));
    let faults = sim.report.faults.clone();
    let failed = |e: anyhow::Error| anyhow::anyhow!("seed {seed}: {e:#}\nfaults injected:\n{}", faults.join("\n"));
    match driven {
        Ok(driven) => driven.map_err(failed)?,
        Err(panic) => {
            let what = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
            return Err(failed(anyhow::anyhow!("panicked: {}", what.unwrap_or_default())));
        }
    }
    sim.check(dir).map_err(failed)
}

fn drive(sim: &mut Sim) -> anyhow::Result<()> {
    while sim.now < RUN_MS {
        sim.run_faults()?;
        sim.step()?;
    }
    sim.settle()
}
