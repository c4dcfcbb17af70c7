//! The bodies of the fuzz targets (`fuzz/`, cargo-fuzz with libFuzzer),
//! kept in the library so that a normal test replays every input the
//! fuzzers found (`fuzz/regressions/`) and the seeds, without libFuzzer.
//!
//! Each target takes arbitrary bytes. Bad input must end in an error, never
//! a panic; what each target checks beyond that (its invariants) is said at
//! the target. A broken invariant panics, which libFuzzer reports as a crash.
//!
//! - `requests`: client requests as the API checks them (`api::validate`),
//!   then applied to a store through the state machine, or read: the store
//!   stays consistent, and a reopened store equals the running one.
//! - `peer_messages`: what a peer sends (raft batches, snapshot chunks),
//!   decoded as the peer service decodes it, the raft entries inside as
//!   raft and the applier decode them, and a snapshot chunk's records as a
//!   member's state. (Messages are not stepped into raft: raft-rs trusts
//!   its peers, as etcd's raft does, and panics on what no peer sends.)
//! - `snapshot`: a raftkv snapshot file (`backup`), loaded as `snapshot
//!   restore --skip-hash-check` loads it, and the member's state opened
//!   from it as a member starts.
//! - `etcd_snapshot`: the same for an etcd snapshot (a bbolt file).
//! - `gateway_json`: a JSON body of the HTTP gateway, for one of its routes.
//! - `raft_log_tail`: a member's RocksDB whose WAL tail was damaged (cut or
//!   overwritten) after a crash, reopened: the raft log and the state come
//!   back as a consistent prefix of what was written.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use etcd_client::proto::{
    PbCompare as Compare, PbDeleteRequest as DeleteRangeRequest, PbLeaseGrantRequest as LeaseGrantRequest,
    PbLeaseRevokeRequest as LeaseRevokeRequest, PbPutRequest as PutRequest, PbRangeRequest as RangeRequest,
    PbRangeResponse as RangeResponse, PbTxnOpRequest as TxnOp, PbTxnRequest as TxnRequest, PbTxnRequestOp as RequestOp,
    PbResponseHeader,
};
use prost::Message as _;

use crate::apply::request::{Op, RaftRequest};
use crate::apply::{self, Applier, Response, Waiters};
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::Membership;
use crate::mvcc::Store;
use crate::raft::StateMachine;
use crate::storage::mem::MemEngine;
use crate::storage::{Cf, Engine, WriteBatch};
use crate::watch::WatchHub;

/// The member id of the fuzzed state machine.
const ME: u64 = 1;

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// The next chunk of `data`: a little-endian u16 length, then that many
/// bytes (or what is left).
fn next_chunk<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    if data.is_empty() {
        return None;
    }
    let len = match data {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])),
        _ => 0,
    };
    let rest = data.get(2..).unwrap_or_default();
    let (chunk, tail) = rest.split_at(len.min(rest.len()));
    *data = tail;
    Some(chunk)
}

/// Frames `chunks` as `next_chunk` reads them (for seeds).
pub fn frame(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        let len = u16::try_from(c.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&c[..usize::from(len)]);
    }
    out
}

/// A scratch directory for a target: under `RAFTKV_FUZZ_DIR` (a tmpfs
/// makes `raft_log_tail` faster), else the system's temporary directory.
fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("RAFTKV_FUZZ_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new().prefix("raftkv-fuzz").tempdir_in(base).unwrap_or_else(|e| panic!("cannot make a scratch directory: {e}"))
}

/// One member's state machine on a memory engine, without raft.
struct Machine {
    engine: Arc<MemEngine>,
    store: Arc<Store>,
    lessor: Arc<Lessor>,
    waiters: Arc<Waiters>,
    applier: Applier,
    index: u64,
    next_lease: i64,
    _dir: tempfile::TempDir,
}

impl Machine {
    fn new(engine: Arc<MemEngine>) -> Result<Machine, String> {
        let dir = scratch();
        let dyn_engine: Arc<dyn Engine> = engine.clone();
        let snapshots = Arc::new(crate::snapshot::Snapshots::open(dir.path().join("snapshots"), dyn_engine.clone()).map_err(|e| e.to_string())?);
        let membership = Arc::new(Membership::default());
        membership.load(engine.as_ref()).map_err(|e| e.to_string())?;
        let store = Arc::new(Store::open(dyn_engine.clone()).map_err(|e| e.to_string())?);
        let lessor = Arc::new(Lessor::new(5));
        apply::load_leases(engine.as_ref(), &store, &lessor).map_err(|e| e.to_string())?;
        let alarms = Arc::new(crate::alarm::Alarms::default());
        alarms.load(engine.as_ref()).map_err(|e| e.to_string())?;
        let auth = Arc::new(crate::auth::AuthStore::default());
        auth.load(engine.as_ref()).map_err(|e| e.to_string())?;
        let header = Box::new(|revision| PbResponseHeader { member_id: ME, revision, ..Default::default() });
        let hub = Arc::new(WatchHub::new(store.clone(), header, 1 << 20));
        let waiters = Arc::new(Waiters::default());
        let applier = Applier::new(ME, dyn_engine, store.clone(), lessor.clone(), waiters.clone(), hub, membership, snapshots, alarms, auth)
            .map_err(|e| e.to_string())?;
        let index = applier.applied_index();
        Ok(Machine { engine, store, lessor, waiters, applier, index, next_lease: 1, _dir: dir })
    }

    /// Applies `op` as the next committed entry; its outcome.
    fn apply(&mut self, op: Op) -> Result<Response, Error> {
        self.index += 1;
        let id = self.index;
        let mut outcome = self.waiters.register(id).unwrap_or_else(|e| panic!("register: {e}"));
        let data = RaftRequest { id, op: Some(op), proposer: ME, auth_revision: 0 }.encode_to_vec();
        self.applier.apply(self.index, Some(&data), WriteBatch::default()).unwrap_or_else(|e| panic!("apply failed on a memory engine: {e}"));
        crate::raft::StateMachine::flush(&mut self.applier).unwrap_or_else(|e| panic!("flush failed on a memory engine: {e}"));
        match outcome.try_recv() {
            Ok(Some(result)) => result,
            other => panic!("no outcome for an applied request: {other:?}"),
        }
    }

    /// A client's write, checked as the API checks it before proposing;
    /// None when the API refuses it (or it is not a client's request).
    fn client_write(&mut self, op: Op) -> Option<Result<Response, Error>> {
        let op = self.checked(op)?;
        Some(self.apply(op))
    }

    /// `op` as the API would propose it, None when it refuses it.
    fn checked(&mut self, op: Op) -> Option<Op> {
        Some(match op {
            Op::Put(p) => {
                crate::api::validate::put(&p).ok()?;
                Op::Put(p)
            }
            Op::DeleteRange(d) => {
                crate::api::validate::delete(&d).ok()?;
                Op::DeleteRange(d)
            }
            Op::Txn(t) => {
                crate::api::validate::txn(&t, MAX_TXN_OPS).ok()?;
                Op::Txn(t)
            }
            Op::Compaction(c) => {
                self.store.check_compact(c.revision).ok()?;
                Op::Compaction(c)
            }
            Op::LeaseGrant(mut g) => {
                if g.ttl > crate::lease::MAX_TTL {
                    return None;
                }
                g.ttl = g.ttl.max(self.lessor.min_ttl);
                if g.id == 0 {
                    g.id = self.next_lease;
                    self.next_lease += 1;
                }
                Op::LeaseGrant(g)
            }
            Op::LeaseRevoke(r) => Op::LeaseRevoke(r),
            // Members' own requests: not a client's to send.
            _ => return None,
        })
    }
}

/// The same writes applied to a second state machine in batches, flushed
/// every few entries as the raft loop flushes after each batch raft hands
/// over: its answers and state must be those of the machine that flushes
/// after every entry.
struct Batched {
    m: Machine,
    /// Outcomes not yet heard (until the flush), with the answer the
    /// one-by-one machine gave.
    waiting: Vec<(tokio::sync::oneshot::Receiver<apply::Outcome>, String)>,
}

impl Batched {
    /// Stages `op`, which the one-by-one machine answered with `answer`;
    /// flushes once `batch` entries are staged.
    fn stage(&mut self, op: Op, answer: &Result<Response, Error>, batch: usize, one_by_one: &Machine) {
        self.m.index += 1;
        let id = self.m.index;
        let rx = self.m.waiters.register(id).unwrap_or_else(|e| panic!("register: {e}"));
        let data = RaftRequest { id, op: Some(op), proposer: ME, auth_revision: 0 }.encode_to_vec();
        self.m.applier.apply(id, Some(&data), WriteBatch::default()).unwrap_or_else(|e| panic!("apply failed on a memory engine: {e}"));
        self.waiting.push((rx, format!("{answer:?}")));
        if self.waiting.len() >= batch {
            self.flush(one_by_one);
        }
    }

    fn flush(&mut self, one_by_one: &Machine) {
        crate::raft::StateMachine::flush(&mut self.m.applier).unwrap_or_else(|e| panic!("flush failed on a memory engine: {e}"));
        for (mut rx, want) in self.waiting.drain(..) {
            match rx.try_recv() {
                Ok(Some(got)) => assert_eq!(format!("{got:?}"), want, "a batched entry answered otherwise than one applied alone"),
                other => panic!("no outcome for a flushed entry: {other:?}"),
            }
        }
        assert_eq!(self.m.store.current_revision(), one_by_one.store.current_revision(), "batched: another revision");
        assert_eq!(self.m.store.compacted_revision(), one_by_one.store.compacted_revision(), "batched: another compaction");
        assert_eq!(everything(&self.m.store).kvs, everything(&one_by_one.store).kvs, "batched: other key-values");
        // Every revision kept, not only the current one (the one-by-one
        // machine's compactor may be further on: the hash must agree).
        match (self.m.store.hash_kv(0), one_by_one.store.hash_kv(0)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "batched: another hash"),
            (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "batched: HashKV answers on one machine only"),
        }
    }
}

/// Everything at the current revision, in key order.
fn everything(store: &Store) -> RangeResponse {
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    crate::apply::range::range(store, &all).unwrap_or_else(|e| panic!("reading everything: {e}"))
}

/// What every range answer must be, whatever was asked. `written`: the
/// store's data came through its own writes (not a restored file, whose
/// key-values are taken as they are), so their revisions are possible ones.
fn check_range(r: &RangeRequest, resp: &RangeResponse, current: i64, written: bool) {
    let at = if r.revision > 0 { r.revision } else { current };
    if r.count_only {
        assert!(resp.kvs.is_empty(), "count_only returned key-values");
    } else {
        assert!(resp.count >= resp.kvs.len() as i64, "count {} below the {} key-values returned", resp.count, resp.kvs.len());
    }
    if r.limit > 0 {
        assert!(resp.kvs.len() as i64 <= r.limit, "{} key-values over the limit {}", resp.kvs.len(), r.limit);
    }
    for kv in resp.kvs.iter().filter(|_| written) {
        assert!(
            0 < kv.create_revision && kv.create_revision <= kv.mod_revision && kv.mod_revision <= at && kv.version >= 1,
            "a key-value with create {} mod {} version {} read at {at}",
            kv.create_revision,
            kv.mod_revision,
            kv.version
        );
    }
    if r.keys_only {
        assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()), "keys_only returned a value");
    }
    if r.sort_order == 0 && r.sort_target == 0 {
        assert!(resp.kvs.windows(2).all(|w| w[0].key < w[1].key), "an unsorted range is not in key order");
    }
}

/// The `requests` target. Input: chunks (`frame`); a chunk's first byte
/// picks what the rest is:
/// - 0: a raft request (`RaftRequest`'s encoding): a client's write, checked
///   as the API checks it, then applied.
/// - 1: a `RangeRequest`, checked and read.
/// - 2: one step of the compaction in progress, as the compactor thread
///   takes them between writes.
/// - otherwise a put: the key is the first half of the rest, the value the
///   second (so that the fuzzer fills the store cheaply).
///
/// Invariants: the revision never goes back, and a refused write leaves it
/// where it was; a transaction answers one response per op of the branch
/// it took; range answers hold their limits, counts and order, and their
/// key-values' revisions are possible ones; the state read back from the
/// engine by a new store equals the running store's, before and after the
/// compaction in progress is finished. Every write is also applied to a
/// second machine that flushes only every 1 to 8 entries (the chunk's last
/// byte says how many), as the raft loop flushes a batch: same answers,
/// same state.
pub fn requests(mut data: &[u8]) {
    let engine = Arc::new(MemEngine::new());
    let mut m = Machine::new(engine.clone()).unwrap_or_else(|e| panic!("an empty state machine: {e}"));
    let batched_engine = Arc::new(MemEngine::new());
    let mut batched = Batched {
        m: Machine::new(batched_engine.clone()).unwrap_or_else(|e| panic!("an empty state machine: {e}")),
        waiting: Vec::new(),
    };
    while let Some(chunk) = next_chunk(&mut data) {
        let Some((&kind, rest)) = chunk.split_first() else { continue };
        let batch = 1 + usize::from(chunk.last().copied().unwrap_or_default() % 8);
        let before = m.store.current_revision();
        match kind {
            0 => {
                let Ok(req) = RaftRequest::decode(rest) else { continue };
                let Some(op) = req.op else { continue };
                let branches = match &op {
                    Op::Txn(t) => Some((t.success.len(), t.failure.len())),
                    _ => None,
                };
                let Some(op) = m.checked(op) else { continue };
                let result = m.apply(op.clone());
                batched.stage(op, &result, batch, &m);
                let after = m.store.current_revision();
                assert!(after >= before, "the revision went back from {before} to {after}");
                match result {
                    Err(_) => assert_eq!(after, before, "a refused write changed the revision"),
                    Ok(Response::Txn(t)) => {
                        let (success, failure) = branches.unwrap_or_default();
                        let want = if t.succeeded { success } else { failure };
                        assert_eq!(t.responses.len(), want, "a transaction's responses do not match its branch");
                        let header = t.header.map_or(0, |h| h.revision);
                        assert_eq!(header, after, "a transaction's header revision is not the store's");
                    }
                    Ok(Response::Put(p)) => assert_eq!(p.header.map_or(0, |h| h.revision), after),
                    Ok(_) => {}
                }
            }
            1 => {
                let Ok(r) = RangeRequest::decode(rest) else { continue };
                if crate::api::validate::range(&r).is_err() {
                    continue;
                }
                if let Ok(resp) = crate::apply::range::range(m.store.as_ref(), &r) {
                    check_range(&r, &resp, before, true);
                }
            }
            2 => {
                if let Err(e) = m.store.compaction_step() {
                    panic!("a compaction step on a memory engine: {e}");
                }
            }
            _ => {
                let (key, value) = rest.split_at(rest.len() / 2);
                let put = PutRequest { key: key.to_vec(), value: value.to_vec(), ..Default::default() };
                let Some(op) = m.checked(Op::Put(put)) else { continue };
                let result = m.apply(op.clone());
                batched.stage(op, &result, batch, &m);
            }
        }
    }
    batched.flush(&m);
    same_after_reopen(&batched.m.store, &batched_engine);
    // The state on the engine is the state served, with the compaction in
    // progress and once it is finished.
    same_after_reopen(&m.store, &engine);
    while m.store.compaction_step().unwrap_or_else(|e| panic!("a compaction step on a memory engine: {e}")) {}
    same_after_reopen(&m.store, &engine);
}

fn same_after_reopen(live: &Store, engine: &Arc<MemEngine>) {
    let reopened = Store::open(engine.clone()).unwrap_or_else(|e| panic!("reopening the store: {e}"));
    assert_eq!(reopened.current_revision(), live.current_revision(), "the revision differs after a reopen");
    assert_eq!(reopened.compacted_revision(), live.compacted_revision(), "the compacted revision differs after a reopen");
    assert_eq!(everything(live).kvs, everything(&reopened).kvs, "the key-values differ after a reopen");
    let (a, b) = (live.hash_kv(0), reopened.hash_kv(0));
    match (a, b) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "the hash differs after a reopen"),
        (a, b) => assert_eq!(a.is_ok(), b.is_ok(), "HashKV answers on one store and fails on the other"),
    }
}

fn raft_request(op: Op) -> Vec<u8> {
    let mut chunk = vec![0];
    chunk.extend(RaftRequest { id: 1, op: Some(op), proposer: ME, auth_revision: 0 }.encode_to_vec());
    chunk
}

fn put_op(key: &str, value: &str, lease: i64) -> Op {
    Op::Put(PutRequest { key: key.into(), value: value.into(), lease, prev_kv: true, ..Default::default() })
}

fn range_chunk(r: RangeRequest) -> Vec<u8> {
    let mut chunk = vec![1];
    chunk.extend(r.encode_to_vec());
    chunk
}

/// Seeds for `requests`: each kind of request, with the options that
/// change what the store does.
pub fn requests_seeds() -> Vec<Vec<u8>> {
    let compare = |key: &str, target: i32, result: i32, value: i64| Compare {
        key: key.into(),
        target,
        result,
        target_union: Some(match target {
            0 => etcd_client::proto::PbTargetUnion::Version(value),
            1 => etcd_client::proto::PbTargetUnion::CreateRevision(value),
            2 => etcd_client::proto::PbTargetUnion::ModRevision(value),
            3 => etcd_client::proto::PbTargetUnion::Value(value.to_string().into_bytes()),
            _ => etcd_client::proto::PbTargetUnion::Lease(value),
        }),
        ..Default::default()
    };
    let op = |r: TxnOp| RequestOp { request: Some(r) };
    let txn = TxnRequest {
        compare: vec![compare("a", 0, 0, 1), compare("b", 2, 2, 3)],
        success: vec![
            op(TxnOp::RequestPut(PutRequest { key: "c".into(), value: "3".into(), ..Default::default() })),
            op(TxnOp::RequestRange(RangeRequest { key: "a".into(), range_end: "z".into(), limit: 2, ..Default::default() })),
            op(TxnOp::RequestDeleteRange(DeleteRangeRequest { key: "b".into(), prev_kv: true, ..Default::default() })),
        ],
        failure: vec![op(TxnOp::RequestTxn(TxnRequest {
            compare: vec![compare("c", 3, 1, 3)],
            success: vec![op(TxnOp::RequestPut(PutRequest { key: "d".into(), ignore_value: true, ..Default::default() }))],
            failure: vec![],
        }))],
    };
    let sorted = RangeRequest { key: "a".into(), range_end: vec![0], sort_order: 2, sort_target: 3, limit: 2, ..Default::default() };
    let filtered = RangeRequest { key: "a".into(), range_end: "z".into(), min_mod_revision: 2, max_create_revision: 4, revision: 3, ..Default::default() };
    vec![
        frame(&[b"\x02keyvalue".to_vec(), raft_request(put_op("a", "1", 0)), raft_request(put_op("b", "2", 0)), raft_request(Op::Txn(txn))]),
        frame(&[
            raft_request(Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 7 })),
            raft_request(put_op("leased", "x", 7)),
            raft_request(put_op("a", "1", 0)),
            raft_request(put_op("a", "2", 0)),
            range_chunk(sorted),
            range_chunk(filtered),
            raft_request(Op::Compaction(etcd_client::proto::PbCompactionRequest { revision: 3, physical: false })),
            vec![2],
            range_chunk(RangeRequest { key: "a".into(), revision: 2, ..Default::default() }),
            vec![2],
            raft_request(Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })),
            raft_request(Op::DeleteRange(DeleteRangeRequest { key: vec![0], range_end: vec![0], prev_kv: true })),
            range_chunk(RangeRequest { key: vec![0], range_end: vec![0], count_only: true, ..Default::default() }),
        ]),
    ]
}

/// Checks a state machine opened on some state (a snapshot's, an
/// import's): reads, a write and a compaction work or fail with an error,
/// and a reopened store equals the running one.
fn exercise(mut m: Machine) {
    let current = m.store.current_revision();
    let all = RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    if let Ok(resp) = crate::apply::range::range(m.store.as_ref(), &all) {
        check_range(&all, &resp, current, false);
    }
    let _ = m.store.hash_kv(0);
    let _ = m.client_write(put_op("fuzz", "x", 0));
    let _ = m.client_write(Op::Compaction(etcd_client::proto::PbCompactionRequest { revision: m.store.current_revision(), physical: false }));
    while matches!(m.store.compaction_step(), Ok(true)) {}
    let reopened = match Store::open(m.engine.clone()) {
        Ok(s) => s,
        Err(e) => panic!("a store that opened once does not reopen: {e}"),
    };
    assert_eq!(reopened.current_revision(), m.store.current_revision(), "the revision differs after a reopen");
    if let (Ok(a), Ok(b)) = (crate::apply::range::range(m.store.as_ref(), &all), crate::apply::range::range(&reopened, &all)) {
        assert_eq!(a.kvs, b.kvs, "the key-values differ after a reopen");
    }
}

/// Snapshot records written as `snapshot restore` writes them: the
/// key-value records into a sorted file (which refuses keys out of order:
/// the restore fails), and the meta records it carries over.
#[derive(Default)]
struct Restored {
    batch: WriteBatch,
    last_kv: Option<Vec<u8>>,
}

impl Restored {
    /// False when the restore fails on this record.
    fn put(&mut self, r: crate::peer::proto::Record) -> bool {
        let Some(cf) = crate::backup::cf_of(r.cf) else { return true };
        if cf == Cf::Kv {
            if self.last_kv.as_ref().is_some_and(|last| r.key <= *last) {
                return false;
            }
            self.last_kv = Some(r.key.clone());
            self.batch.put(cf, r.key, r.value);
        } else if crate::restore::carried_over(&r.key) {
            self.batch.put(cf, r.key, r.value);
        }
        true
    }
}

/// A member's state restored from `batch`, opened and exercised.
fn open_restored(batch: WriteBatch) {
    let engine = Arc::new(MemEngine::new());
    engine.write(batch, true).unwrap_or_else(|e| panic!("a memory engine's write: {e}"));
    crate::sim::bootstrap(engine.as_ref(), &[ME]).unwrap_or_else(|e| panic!("bootstrap: {e}"));
    if let Ok(m) = Machine::new(engine) {
        exercise(m);
    }
}

/// The `snapshot` target: a raftkv snapshot file. Its status and hash are
/// computed, its records loaded (as with `--skip-hash-check`), and a member
/// opened on them.
pub fn snapshot(data: &[u8]) {
    let size = data.len() as u64;
    // As restore reads it: the payload before the hash, when there is one.
    let payload = &data[..crate::backup::hashed_payload_len(size).unwrap_or(size) as usize];
    let _ = crate::backup::status(payload, payload.len() as u64);
    let _ = crate::backup::verify_hash(data, size, |_| {});
    let Ok(mut decoder) = crate::backup::Decoder::new(payload) else { return };
    let mut restored = Restored::default();
    loop {
        match decoder.next_record() {
            Ok(Some(r)) => {
                if !restored.put(r) {
                    return;
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    open_restored(restored.batch);
}

/// Seeds for `snapshot`: the snapshot file of a small store.
pub fn snapshot_seeds() -> Vec<Vec<u8>> {
    let engine = Arc::new(MemEngine::new());
    let mut m = Machine::new(engine.clone()).unwrap_or_else(|e| panic!("{e}"));
    for op in [
        Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 9 }),
        put_op("a", "1", 0),
        put_op("b", "2", 9),
        put_op("a", "3", 0),
        Op::DeleteRange(DeleteRangeRequest { key: "b".into(), ..Default::default() }),
    ] {
        let _ = m.client_write(op);
    }
    let mut enc = crate::backup::Encoder::new(Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    crate::snapshot::Snapshots::chunks(engine.as_ref(), |records| {
        records.iter().all(|r| enc.record(r).is_ok())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (mut file, hash) = enc.finish().unwrap_or_else(|e| panic!("{e}"));
    file.extend_from_slice(&hash);
    vec![file]
}

/// The `etcd_snapshot` target: an etcd snapshot (a bbolt file), read, its
/// status computed, imported as `snapshot restore` imports it, and a
/// member opened on the result.
pub fn etcd_snapshot(data: &[u8]) {
    let dir = scratch();
    let path = dir.path().join("etcd.db");
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let _ = crate::bbolt::looks_like_bbolt(data);
    let Ok(db) = crate::bbolt::Db::open(&path) else { return };
    let _ = db.status();
    if let Ok(buckets) = db.buckets() {
        for b in buckets {
            let _ = db.for_each(&b, &mut |_, _| true);
        }
    }
    let mut restored = Restored::default();
    let mut in_order = true;
    let imported = crate::etcd_import::import(&db, &mut |r| {
        in_order &= restored.put(r);
        Ok(())
    });
    if imported.is_ok() && in_order {
        open_restored(restored.batch);
    }
}

/// Seeds for `etcd_snapshot`: a bbolt file as etcd writes it, with keys,
/// a lease, a user and a role.
pub fn etcd_snapshot_seeds() -> Vec<Vec<u8>> {
    use crate::bbolt::image::{BUCKET, Elem, Image, bucket, inline_bucket};
    use crate::mvcc::revision::Revision;
    let kv = |key: &str, value: &str, create: i64, m: i64, version: i64, lease: i64| {
        etcd_client::proto::PbKeyValue { key: key.into(), value: value.into(), create_revision: create, mod_revision: m, version, lease }.encode_to_vec()
    };
    let (r2, r3, r4) = (Revision::new(2, 0).to_bytes(false), Revision::new(3, 0).to_bytes(false), Revision::new(4, 0).to_bytes(true));
    let (a2, b3, a4) = (kv("a", "1", 2, 2, 1, 0), kv("b", "2", 3, 3, 1, 7), kv("a", "", 0, 0, 0, 0));
    let (first, second): (Vec<Elem<'_>>, Vec<Elem<'_>>) = (vec![(0, &r2, &a2), (0, &r3, &b3)], vec![(0, &r4, &a4)]);
    let lease = crate::etcd_import::EtcdLease { id: 7, ttl: 60, remaining_ttl: 0 }.encode_to_vec();
    let lease_id = 7i64.to_be_bytes();
    let user = crate::api::authpb::User { name: b"root".to_vec(), password: b"$2a$10$x".to_vec(), roles: vec!["root".into()], ..Default::default() }.encode_to_vec();
    let role = crate::api::authpb::Role { name: b"root".to_vec(), ..Default::default() }.encode_to_vec();
    let compacted = Revision::new(2, 0).to_bytes(false);
    let mut img = Image::new(4096);
    let (left, right) = (img.leaf(&first), img.leaf(&second));
    let key_page = img.branch(&[(&r2, left), (&r4, right)]);
    let root = img.leaf(&[
        (BUCKET, b"alarm", &inline_bucket(&[])),
        (BUCKET, b"auth", &inline_bucket(&[(0, b"authEnabled", &[0]), (0, b"authRevision", &[0, 0, 0, 0, 0, 0, 0, 4])])),
        (BUCKET, b"authRoles", &inline_bucket(&[(0, b"root", &role)])),
        (BUCKET, b"authUsers", &inline_bucket(&[(0, b"root", &user)])),
        (BUCKET, b"key", &bucket(key_page)),
        (BUCKET, b"lease", &inline_bucket(&[(0, &lease_id, &lease)])),
        (BUCKET, b"members", &inline_bucket(&[(0, b"2e1259d415f2a040", b"{}")])),
        (BUCKET, b"meta", &inline_bucket(&[(0, b"consistent_index", &[0, 0, 0, 0, 0, 0, 0, 9]), (0, b"finishedCompactRev", &compacted)])),
    ]);
    vec![img.finish(root)]
}

/// The `peer_messages` target. Input: a first byte picking what the rest
/// is: 0, a `RaftBatch`; 1, a `SnapshotChunk`; otherwise a raft message.
/// Each raft message is decoded as the peer service decodes it, and each
/// entry in it as raft and the applier decode them; a snapshot chunk's
/// records are loaded as a received snapshot, and a member opened on them.
/// Invariant: what decodes encodes, and decodes back to the same message
/// (the same known fields).
pub fn peer_messages(data: &[u8]) {
    use crate::peer::proto::{RaftBatch, SnapshotChunk};
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind {
        0 => {
            if let Ok(batch) = RaftBatch::decode(rest) {
                batch.messages.iter().for_each(|m| drop(raft_message(m)));
            }
        }
        1 => {
            let Ok(chunk) = SnapshotChunk::decode(rest) else { return };
            let Some(msg) = raft_message(&chunk.message) else { return };
            let _ = msg.get_snapshot().get_metadata().index;
            let mut batch = WriteBatch::default();
            let mut last: std::collections::HashMap<Cf, Vec<u8>> = std::collections::HashMap::new();
            for r in chunk.records {
                // What `Incoming::write` keeps, into one sorted file per
                // column family (keys out of order fail the transfer).
                match crate::backup::cf_of(r.cf) {
                    Some(Cf::Meta) if r.key.starts_with(crate::snapshot::LOCAL_PREFIX) => {}
                    Some(cf @ (Cf::Kv | Cf::Meta)) => {
                        if last.get(&cf).is_some_and(|l| r.key <= *l) {
                            return;
                        }
                        last.insert(cf, r.key.clone());
                        batch.put(cf, r.key, r.value);
                    }
                    _ => {}
                }
            }
            open_restored(batch);
        }
        _ => {
            raft_message(rest);
        }
    }
}

/// A raft message as a peer sends it; its entries decoded as raft and the
/// applier decode them.
fn raft_message(bytes: &[u8]) -> Option<raft::eraftpb::Message> {
    use protobuf::Message as _;
    let msg = crate::peer::service::decode(bytes).ok()?;
    let again = msg.write_to_bytes().unwrap_or_else(|e| panic!("a decoded raft message does not encode: {e}"));
    let back = raft::eraftpb::Message::parse_from_bytes(&again).unwrap_or_else(|e| panic!("an encoded raft message does not decode: {e}"));
    // Compared by their known fields (protobuf's text format, which leaves
    // unknown ones out): rust-protobuf's equality tells an empty set of
    // unknown fields from none, and it writes unknown fields in a hash
    // map's order (the first two things `peer_messages` found).
    assert_eq!(format!("{back:?}"), format!("{msg:?}"), "a raft message changed through an encode and a decode");
    for e in msg.get_entries() {
        match e.get_entry_type() {
            raft::eraftpb::EntryType::EntryNormal => {
                if let Ok(req) = RaftRequest::decode(e.get_data()) {
                    let back = RaftRequest::decode(req.encode_to_vec().as_slice()).unwrap_or_else(|e| panic!("a raft request's encoding does not decode: {e}"));
                    assert_eq!(back, req, "a raft request changed through an encode and a decode");
                }
            }
            raft::eraftpb::EntryType::EntryConfChange => {
                let _ = raft::eraftpb::ConfChange::parse_from_bytes(e.get_data());
            }
            raft::eraftpb::EntryType::EntryConfChangeV2 => {
                if let Ok(cc) = raft::eraftpb::ConfChangeV2::parse_from_bytes(e.get_data()) {
                    let _ = crate::apply::request::ConfContext::decode(cc.get_context());
                }
            }
        }
    }
    Some(msg)
}

/// Seeds for `peer_messages`: a batch with an append of a put, and a
/// snapshot chunk.
pub fn peer_messages_seeds() -> Vec<Vec<u8>> {
    use crate::peer::proto::{RaftBatch, Record, SnapshotChunk};
    use protobuf::Message as _;
    let mut append = raft::eraftpb::Message::default();
    append.set_msg_type(raft::eraftpb::MessageType::MsgAppend);
    append.set_to(2);
    append.set_from(1);
    append.set_term(3);
    append.set_log_term(3);
    append.set_index(10);
    append.set_commit(10);
    let mut entry = raft::eraftpb::Entry::default();
    entry.set_index(11);
    entry.set_term(3);
    entry.set_data(RaftRequest { id: 1, op: Some(put_op("a", "1", 0)), proposer: 1, auth_revision: 0 }.encode_to_vec().into());
    append.set_entries(vec![entry].into());
    let append = append.write_to_bytes().unwrap_or_default();
    let mut snap = raft::eraftpb::Message::default();
    snap.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    snap.mut_snapshot().mut_metadata().set_index(20);
    snap.mut_snapshot().mut_metadata().set_term(3);
    let snap = snap.write_to_bytes().unwrap_or_default();
    let batch = RaftBatch { cluster_id: 7, from: 1, to: 2, from_peer_urls: vec!["http://127.0.0.1:2380".into()], messages: vec![append.clone()] };
    let mut seeds = vec![[vec![0], batch.encode_to_vec()].concat(), [vec![2], append].concat()];
    for snapshot in snapshot_seeds() {
        let Ok(mut d) = crate::backup::Decoder::new(snapshot.as_slice()) else { continue };
        let mut records: Vec<Record> = Vec::new();
        while let Ok(Some(r)) = d.next_record() {
            records.push(r);
        }
        let chunk = SnapshotChunk { cluster_id: 7, from: 1, from_peer_urls: vec![], message: snap.clone(), records };
        seeds.push([vec![1], chunk.encode_to_vec()].concat());
    }
    seeds
}

/// The `gateway_json` target. Input: a first byte picking one of the
/// gateway's routes (in path order), then a JSON body. Invariants: a body
/// the gateway takes encodes to protobuf that decodes back to the same
/// message (what the gRPC service receives); and gives JSON that the
/// gateway takes back as the same message (the same JSON again).
pub fn gateway_json(data: &[u8]) {
    let Some((&pick, json)) = data.split_first() else { return };
    let mut paths: Vec<&String> = crate::api::gateway::ROUTES.keys().collect();
    paths.sort();
    let Some(route) = paths.get(usize::from(pick) % paths.len().max(1)).and_then(|p| crate::api::gateway::ROUTES.get(*p)) else { return };
    let Ok(msg) = crate::api::gateway::from_json(&route.input, json) else { return };
    let wire = prost::Message::encode_to_vec(&msg);
    let received = prost_reflect::DynamicMessage::decode(route.input.clone(), wire.as_slice())
        .unwrap_or_else(|e| panic!("the protobuf the gateway makes of a body does not decode: {e}"));
    assert_eq!(prost::Message::encode_to_vec(&received), wire, "a message changed through its protobuf encoding");
    let out = crate::api::gateway::to_json(&msg).unwrap_or_else(|e| panic!("a message the gateway took gives no JSON: {e}"));
    let back = crate::api::gateway::from_json(&route.input, &out).unwrap_or_else(|e| panic!("the gateway's own JSON is refused: {e}: {}", String::from_utf8_lossy(&out)));
    // Fields set to their defaults are not written: the JSON is compared.
    let again = crate::api::gateway::to_json(&back).unwrap_or_else(|e| panic!("a message the gateway took gives no JSON: {e}"));
    assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&out), "a message changed through the gateway's JSON");
}

/// Seeds for `gateway_json`: one body per route, as curl users send them.
pub fn gateway_json_seeds() -> Vec<Vec<u8>> {
    let mut paths: Vec<&String> = crate::api::gateway::ROUTES.keys().collect();
    paths.sort();
    let body = |path: &str| -> &'static str {
        match path {
            p if p.ends_with("/kv/put") => r#"{"key":"Zm9v","value":"YmFy","lease":"0","prev_kv":true}"#,
            p if p.ends_with("/kv/range") => r#"{"key":"Zm9v","range_end":"AA==","limit":"10","sort_order":"DESCEND","sort_target":"MOD"}"#,
            p if p.ends_with("/kv/txn") => {
                r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"VALUE","value":"YmFy"}],"success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#
            }
            p if p.ends_with("/watch") => r#"{"create_request":{"key":"Zm9v","start_revision":"1","filters":["NOPUT"]}}"#,
            p if p.contains("/lease/") => r#"{"TTL":"30","ID":"7"}"#,
            p if p.contains("/auth/") => r#"{"name":"alice","password":"pw","role":"reader","perm":{"permType":"READWRITE","key":"Zm9v"}}"#,
            _ => "{}",
        }
    };
    paths.iter().enumerate().map(|(i, p)| [vec![i as u8], body(p).as_bytes().to_vec()].concat()).collect()
}

/// What `raft_log_tail` damages: a member's data dir as a kill -9 leaves
/// it (its files copied while RocksDB had it open), and what was written.
struct CrashImage {
    /// The files RocksDB needs to recover, by name: its manifest, options,
    /// tables, and the live WAL cut to its first WAL_KEPT bytes (the
    /// workload's records and older ones after them, which recovery
    /// ignores: the WAL is a recycled file).
    files: Vec<DbFile>,
    /// The live WAL's name.
    wal: std::ffi::OsString,
    /// The same first bytes of the live WAL before the workload wrote over
    /// them: what a write that never reached the disk leaves there.
    wal_before: Vec<u8>,
    /// Every entry appended, by index (from BOOTSTRAP_INDEX + 1 on).
    entries: Vec<raft::eraftpb::Entry>,
    /// The store's revision once index `BOOTSTRAP_INDEX + 1 + i` was
    /// applied.
    revisions: Vec<i64>,
}

/// A file of a data dir: its name and contents.
type DbFile = (std::ffi::OsString, Vec<u8>);

/// Steps of the workload: each appends a few entries and a hard state
/// (synced, as raft's Ready loop does), then applies what is committed
/// (not synced, as the applier does).
const TAIL_STEPS: u64 = 24;

/// Bytes of the live WAL kept in the image; the workload writes about
/// 30 KiB.
const WAL_KEPT: usize = 128 << 10;

/// Bytes of the live WAL that damage lands in.
const TAIL_WINDOW: usize = 64 << 10;

/// The files of a RocksDB directory, the live WAL (the highest-numbered
/// `.log`) cut to WAL_KEPT bytes and the older WALs (recycled, or already
/// flushed) left out; and the live WAL's name.
fn db_files(dir: &Path) -> std::io::Result<(Vec<DbFile>, std::ffi::OsString)> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)?.flatten().filter(|e| e.path().is_file()).map(|e| e.file_name()).collect();
    names.sort();
    let is_wal = |n: &std::ffi::OsString| Path::new(n).extension().is_some_and(|x| x == "log");
    let wal = names.iter().rfind(|n| is_wal(n)).cloned().ok_or_else(|| std::io::Error::other("no WAL"))?;
    let mut files = Vec::new();
    for name in names {
        if name == wal {
            let mut bytes = std::fs::read(dir.join(&name))?;
            // The live WAL is the recycled one `RocksEngine::open` primed:
            // a fresh one would make the damage land elsewhere.
            if bytes.len() < 32 << 20 {
                return Err(std::io::Error::other(format!("the live WAL is {} bytes: not the primed, recycled one", bytes.len())));
            }
            bytes.truncate(WAL_KEPT);
            files.push((name, bytes));
        } else if !is_wal(&name) && name != "LOCK" {
            files.push((name.clone(), std::fs::read(dir.join(&name))?));
        }
    }
    Ok((files, wal))
}

fn crash_image() -> &'static CrashImage {
    static IMAGE: OnceLock<CrashImage> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let fail = |what: &str, e: &dyn std::fmt::Display| -> ! { panic!("making the crash image: {what}: {e}") };
        let live = scratch();
        let db = live.path().join("db");
        let engine: Arc<dyn Engine> = Arc::new(crate::storage::rocks::RocksEngine::open(&db).unwrap_or_else(|e| fail("open", &e)));
        let (_, first_wal) = db_files(&db).unwrap_or_else(|e| fail("files", &e));
        let mut wal_before = std::fs::read(db.join(&first_wal)).unwrap_or_else(|e| fail("WAL", &e));
        wal_before.truncate(WAL_KEPT);
        crate::sim::bootstrap(engine.as_ref(), &[ME]).unwrap_or_else(|e| fail("bootstrap", &e));
        let mut log = crate::raft::log::RaftLog::open(engine.clone()).unwrap_or_else(|e| fail("log", &e));
        let store = Store::open(engine.clone()).unwrap_or_else(|e| fail("store", &e));
        let (mut entries, mut revisions) = (Vec::new(), Vec::new());
        let mut applied = crate::raft::log::BOOTSTRAP_INDEX;
        for step in 0..TAIL_STEPS {
            let term = 2 + step / 8;
            let mut batch = WriteBatch::default();
            let new: Vec<raft::eraftpb::Entry> = (0..1 + step % 3)
                .map(|k| {
                    let mut e = raft::eraftpb::Entry::default();
                    e.set_index(log.last() + 1 + k);
                    e.set_term(term);
                    e.set_data(vec![step as u8; 64 + 29 * step as usize].into());
                    e
                })
                .collect();
            log.append(&new, &mut batch).unwrap_or_else(|e| fail("append", &e));
            entries.extend(new);
            // The commit lags the log by an entry every other step.
            let commit = log.last() - step % 2;
            let hs = raft::eraftpb::HardState { term, vote: ME, commit, ..Default::default() };
            log.set_hard_state(hs, &mut batch).unwrap_or_else(|e| fail("hard state", &e));
            engine.write(batch, true).unwrap_or_else(|e| fail("write", &e));
            while applied < commit {
                applied += 1;
                let mut txn = store.write();
                txn.put(format!("k{applied}").as_bytes(), vec![step as u8; 40], 0);
                let mut progress = WriteBatch::default();
                progress.put(Cf::Meta, crate::apply::META_APPLIED, applied.to_be_bytes().to_vec());
                txn.commit(progress).unwrap_or_else(|e| fail("apply", &e));
                revisions.push(store.current_revision());
            }
        }
        let (files, wal) = db_files(&db).unwrap_or_else(|e| fail("files", &e));
        if wal != first_wal {
            fail("the live WAL", &format!("{} became {} during the workload", first_wal.to_string_lossy(), wal.to_string_lossy()));
        }
        drop((log, store, engine));
        CrashImage { files, wal, wal_before, entries, revisions }
    })
}

/// The `raft_log_tail` target. Input: a first byte picking the damage to
/// the live WAL of a member killed mid-stream (see `CrashImage`), then its
/// places, each a little-endian u16 within the WAL's first 64 KiB:
/// - 0: the WAL cut at a place (a torn write at the end of a new file);
/// - 1: bytes changed, each a place and a byte xored in;
/// - 2: zeros from a place, 16 times the next byte long;
/// - 3: from a place on, what the file held before the workload (writes
///   that never reached the disk, in a recycled file).
///
/// Invariants: a WAL cut, or one whose tail holds its older contents,
/// always opens; whatever opens holds a raft log that is a prefix of the
/// one written (every entry it has is the one written at its index;
/// nothing at all when the damage reached the bootstrap), a hard state
/// whose commit it has, an applied index no further than that commit, and
/// the store's revision of that applied index.
pub fn raft_log_tail(data: &[u8]) {
    let image = crash_image();
    let Some((&mode, places)) = data.split_first() else { return };
    let dir = scratch();
    let mut wal = Vec::new();
    for (name, bytes) in &image.files {
        if *name == image.wal {
            wal = bytes.clone();
        } else {
            std::fs::write(dir.path().join(name), bytes).unwrap_or_else(|e| panic!("writing the crash image: {e}"));
        }
    }
    let window = wal.len().clamp(1, TAIL_WINDOW);
    let place = |b: &[u8]| usize::from(u16::from_le_bytes([b.first().copied().unwrap_or(0), b.get(1).copied().unwrap_or(0)])) % window;
    let must_open = matches!(mode % 4, 0 | 3);
    match mode % 4 {
        0 => wal.truncate(place(places)),
        1 => {
            for pair in places.chunks(3) {
                let at = place(pair);
                wal[at] ^= pair.get(2).copied().unwrap_or(0xff);
            }
        }
        2 => {
            let at = place(places);
            let len = usize::from(places.get(2).copied().unwrap_or(0)) * 16;
            let end = (at + len).min(wal.len());
            wal[at..end].fill(0);
        }
        _ => {
            let at = place(places).min(image.wal_before.len());
            let end = image.wal_before.len().min(wal.len());
            if at < end {
                wal[at..end].copy_from_slice(&image.wal_before[at..end]);
            }
        }
    }
    std::fs::write(dir.path().join(&image.wal), &wal).unwrap_or_else(|e| panic!("writing the damaged WAL: {e}"));

    let engine: Arc<dyn Engine> = match crate::storage::rocks::RocksEngine::recover(dir.path()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            assert!(!must_open, "a WAL with a torn tail (damage {mode}) does not open: {e}");
            return;
        }
    };
    let log = match crate::raft::log::RaftLog::open(engine.clone()) {
        Ok(log) => log,
        Err(e) => {
            assert!(!must_open, "the raft log of a WAL with a torn tail (damage {mode}) does not open: {e}");
            return;
        }
    };
    let base = crate::raft::log::BOOTSTRAP_INDEX;
    let last = log.last();
    let applied = crate::apply::applied_index(engine.as_ref()).unwrap_or_else(|e| panic!("the applied index: {e}"));
    let commit = log.hard_state().commit;
    if last == 0 {
        // The damage reached the bootstrap: nothing of it may be left.
        assert_eq!((applied, commit), (0, 0), "the bootstrap is gone from the log but not from the state");
        return;
    }
    assert!(last >= base && last - base <= image.entries.len() as u64, "the log ends at {last}, past what was written");
    for index in log.first()..=last {
        let got = raft::Storage::entries(&log, index, index + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_else(|e| panic!("entry {index} of a log ending at {last}: {e}"));
        let want = &image.entries[(index - base - 1) as usize];
        assert!(got.len() == 1 && got[0] == *want, "entry {index} is not the one written");
    }
    assert!(commit <= last, "the hard state commits {commit}, the log ends at {last}");
    assert!(base <= applied && applied <= commit, "applied {applied}, committed {commit}");
    let store = Store::open(engine.clone()).unwrap_or_else(|e| panic!("the store after recovery: {e}"));
    let want = if applied == base { 1 } else { image.revisions[(applied - base - 1) as usize] };
    assert_eq!(store.current_revision(), want, "the store's revision after applying up to {applied}");
}

/// Seeds for `raft_log_tail`: each kind of damage, early and late.
pub fn raft_log_tail_seeds() -> Vec<Vec<u8>> {
    vec![
        vec![0, 0x00, 0x10],
        vec![0, 0x00, 0x60],
        vec![1, 0x00, 0x20, 0x01],
        vec![1, 0x80, 0x50, 0x40, 0x00, 0x51, 0x02],
        vec![2, 0x00, 0x40, 0x20],
        vec![2, 0x10, 0x70, 0xff],
        vec![3, 0x00, 0x30],
        vec![3, 0x40, 0x68],
    ]
}

/// A fuzz target: its name (the `fuzz/` binary's), its body and its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    Target { name: "requests", run: requests, seeds: requests_seeds },
    Target { name: "peer_messages", run: peer_messages, seeds: peer_messages_seeds },
    Target { name: "snapshot", run: snapshot, seeds: snapshot_seeds },
    Target { name: "etcd_snapshot", run: etcd_snapshot, seeds: etcd_snapshot_seeds },
    Target { name: "gateway_json", run: gateway_json, seeds: gateway_json_seeds },
    Target { name: "raft_log_tail", run: raft_log_tail, seeds: raft_log_tail_seeds },
];
