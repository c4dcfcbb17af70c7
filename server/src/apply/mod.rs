//! The state machine: applies committed requests to MVCC, one file per
//! request kind with the same shape (`check` what must hold, `apply`), and
//! hands each result to the member that proposed it.

pub mod delete;
pub mod lease;
pub mod member;
pub mod put;
pub mod range;
pub mod request;
pub mod txn;

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::proto::{
    PbCompactionResponse as CompactionResponse, PbDeleteResponse as DeleteRangeResponse, PbPutResponse as PutResponse,
    PbLeaseGrantResponse as LeaseGrantResponse, PbLeaseRevokeResponse as LeaseRevokeResponse, PbResponseHeader,
    PbTxnResponse as TxnResponse,
};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::oneshot;

use crate::alarm::{self, Alarms};
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{Member, Membership};
use crate::mvcc::{MvccError, Store};
use crate::raft::StateMachine;
use crate::snapshot::Snapshots;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};
use crate::watch::WatchHub;
use raft::eraftpb::{ConfChangeV2, ConfState, Snapshot};
use request::{ConfContext, Op, RaftRequest};

pub(crate) const META_APPLIED: &[u8] = b"raft/applied_index";

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// The member list after a membership change.
    Members(Vec<Member>),
    LeaseCheckpoint(PbResponseHeader),
    Alarm(etcd_client::proto::PbAlarmResponse),
    /// An auth store change applied: the auth revision it left.
    Auth(u64),
}

pub type ApplyResult = Result<Response, Error>;

/// What a proposer hears: the outcome of its request once applied, or None
/// when raft refused the proposal (no leader yet, or a leadership transfer
/// under way), so it never entered the log.
pub type Outcome = Option<ApplyResult>;

/// Proposals a member keeps in flight at most (proposed, not yet
/// applied): beyond it a request is refused at once with etcd's
/// "etcdserver: too many requests" instead of queueing without bound
/// while the cluster cannot commit.
pub const MAX_PENDING_PROPOSALS: usize = 8192;

/// Proposers waiting for the outcome of their request, by request id.
pub struct Waiters {
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    limit: usize,
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters::with_limit(MAX_PENDING_PROPOSALS)
    }
}

impl Waiters {
    pub fn with_limit(limit: usize) -> Waiters {
        Waiters { waiting: Mutex::new(HashMap::new()), limit }
    }

    /// Waits for proposal `id`; refused when `limit` proposals are in
    /// flight already.
    pub fn register(&self, id: u64) -> Result<oneshot::Receiver<Outcome>, Error> {
        let mut waiting = self.waiting.lock();
        if waiting.len() >= self.limit {
            return Err(Error::TooManyRequests);
        }
        let (tx, rx) = oneshot::channel();
        waiting.insert(id, tx);
        Ok(rx)
    }

    pub fn forget(&self, id: u64) {
        self.waiting.lock().remove(&id);
    }

    /// Raft refused proposal `id`: it will never be applied.
    pub fn refused(&self, id: u64) {
        if let Some(tx) = self.waiting.lock().remove(&id) {
            let _ = tx.send(None);
        }
    }

    fn complete(&self, id: u64, result: ApplyResult) {
        if let Some(tx) = self.waiting.lock().remove(&id) {
            let _ = tx.send(Some(result));
        }
    }
}

pub struct Applier {
    /// This member: it answers only the proposals it made.
    me: u64,
    engine: Arc<dyn Engine>,
    store: Arc<Store>,
    lessor: Arc<Lessor>,
    waiters: Arc<Waiters>,
    hub: Arc<WatchHub>,
    membership: Arc<Membership>,
    snapshots: Arc<Snapshots>,
    alarms: Arc<Alarms>,
    auth: Arc<crate::auth::AuthStore>,
    applied: u64,
    /// What the entries applied since the last flush produced, told once
    /// it is written: their outcomes (this member's proposals), and their
    /// changes (to watchers).
    answers: Vec<(u64, ApplyResult)>,
    published: Vec<(i64, Vec<crate::mvcc::Change>)>,
}

/// Writes the applied index a founding member starts from.
pub fn bootstrap(index: u64, batch: &mut WriteBatch) {
    batch.put(Cf::Meta, META_APPLIED, index.to_be_bytes().to_vec());
}

/// Loads the leases and the keys attached to them from the store.
pub fn load_leases(engine: &dyn Engine, store: &Store, lessor: &Lessor) -> Result<(), StorageError> {
    let attached = store
        .leased_keys()
        .map_err(|e| StorageError::Engine(format!("cannot read the keys attached to leases: {e}")))?;
    lessor.load(engine, attached)
}

/// Reads the applied index persisted with the state.
pub fn applied_index(engine: &dyn Engine) -> Result<u64, StorageError> {
    match engine.get(Cf::Meta, META_APPLIED)? {
        Some(b) => Ok(u64::from_be_bytes(b.as_slice().try_into().map_err(|_| StorageError::Corrupt {
            path: "meta".into(),
            detail: "applied index".into(),
        })?)),
        None => Ok(0),
    }
}

impl Applier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: u64,
        engine: Arc<dyn Engine>,
        store: Arc<Store>,
        lessor: Arc<Lessor>,
        waiters: Arc<Waiters>,
        hub: Arc<WatchHub>,
        membership: Arc<Membership>,
        snapshots: Arc<Snapshots>,
        alarms: Arc<Alarms>,
        auth: Arc<crate::auth::AuthStore>,
    ) -> Result<Self, StorageError> {
        let applied = applied_index(engine.as_ref())?;
        Ok(Self { me, engine, store, lessor, waiters, hub, membership, snapshots, alarms, auth, applied, answers: Vec::new(), published: Vec::new() })
    }

    /// What an active alarm refuses, as etcd's capped (NOSPACE) and corrupt
    /// appliers: with NOSPACE, whatever adds data; with CORRUPT, every write.
    fn refused_by_alarm(&self, op: &Op) -> Option<Error> {
        let corrupt = matches!(op, Op::Put(_) | Op::DeleteRange(_) | Op::Txn(_) | Op::Compaction(_) | Op::LeaseGrant(_) | Op::LeaseRevoke(_));
        if corrupt && self.alarms.has(alarm::CORRUPT) {
            return Some(Error::Corrupt);
        }
        let adds = match op {
            Op::Put(_) | Op::LeaseGrant(_) => true,
            Op::Txn(t) => alarm::cost::txn(t) > 0,
            _ => false,
        };
        (adds && self.alarms.has(alarm::NOSPACE)).then_some(Error::NoSpace)
    }

    /// Runs one request; `progress` is staged atomically with its effects.
    fn execute(&mut self, op: Op, mut progress: WriteBatch) -> Result<ApplyResult, StorageError> {
        if let Some(refusal) = self.refused_by_alarm(&op) {
            self.store.stage(progress);
            return Ok(Err(refusal));
        }
        if let Op::Alarm(a) = &op {
            let resp = self.alarms.apply(a, &mut progress);
            self.store.stage(progress);
            return Ok(Ok(Response::Alarm(resp)));
        }
        if let Op::Auth(a) = &op {
            // What came before it is written and sent first: a watcher
            // whose user loses access gets the events from before.
            self.flush()?;
            let Some(change) = &a.change else {
                self.store.stage(progress);
                return Ok(Err(Error::Internal("an auth request without a change".into())));
            };
            let result = self.auth.apply(change, &mut progress);
            self.store.stage(progress);
            if result.is_ok() {
                // Open watches lose what their users may no longer read.
                self.hub.recheck_access(|user, key, end| self.auth.may_read(user, key, end));
            }
            return Ok(result.map(Response::Auth));
        }
        if let Op::Compaction(c) = op {
            // Checked against, and written after, the entries before it.
            self.flush()?;
            return match self.store.compact(c.revision, progress.clone()) {
                Ok(()) => Ok(Ok(Response::Compaction(CompactionResponse {
                    header: Some(PbResponseHeader { revision: self.store.current_revision(), ..Default::default() }),
                }))),
                Err(MvccError::Storage(e)) => Err(e),
                Err(e) => {
                    self.engine.write(progress, false)?;
                    Ok(Err(e.into()))
                }
            };
        }
        let mut txn = self.store.write();
        let result = match op {
            Op::Put(p) => put::apply(&mut txn, &self.lessor, p).map(Response::Put),
            Op::DeleteRange(d) => delete::apply(&mut txn, d).map(Response::DeleteRange),
            Op::Txn(t) => txn::apply(&mut txn, &self.lessor, t).map(Response::Txn),
            Op::LeaseGrant(g) => lease::grant(&txn, &self.lessor, g, &mut progress).map(Response::LeaseGrant),
            Op::LeaseRevoke(r) => lease::revoke(&mut txn, &self.lessor, r, &mut progress).map(Response::LeaseRevoke),
            Op::MemberAttributes(m) => member::attributes(&self.membership, m, &mut progress).map(Response::Members),
            Op::MemberPeerUrls(m) => member::peer_urls(&self.membership, m, &mut progress).map(Response::Members),
            Op::LeaseCheckpoint(c) => lease::checkpoint(&txn, &self.lessor, c, &mut progress).map(Response::LeaseCheckpoint),
            Op::Compaction(_) | Op::Alarm(_) | Op::Auth(_) => unreachable!("handled above"),
        };
        // A failed request left no change in `txn` (checks run first), but
        // raft's progress is still recorded.
        let changes = txn.stage(progress);
        for c in &changes {
            self.lessor.attach(&c.kv.key, if c.deleted { 0 } else { c.kv.lease });
        }
        if let Some(first) = changes.first() {
            self.published.push((first.kv.mod_revision, changes));
        }
        Ok(result)
    }

    /// Writes what the entries applied since the last flush staged, in one
    /// engine write, makes their revisions visible, then tells watchers
    /// and answers the proposers.
    fn flush(&mut self) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        let wrote = self.store.flush().map_err(|e| match e {
            MvccError::Storage(e) => e,
            other => StorageError::Engine(other.to_string()),
        })?;
        if wrote {
            crate::metrics::METRICS.backend_commit.observe(crate::metrics::since(started));
        }
        self.hub.publish_all(std::mem::take(&mut self.published));
        for (id, result) in self.answers.drain(..) {
            self.waiters.complete(id, result);
        }
        Ok(())
    }
}

impl StateMachine for Applier {
    fn apply(&mut self, index: u64, data: Option<&[u8]>, mut progress: WriteBatch) -> Result<(), StorageError> {
        progress.put(Cf::Meta, META_APPLIED, index.to_be_bytes().to_vec());
        self.applied = index;
        let Some(data) = data else {
            self.store.stage(progress);
            return Ok(());
        };
        let req = match RaftRequest::decode(data) {
            Ok(req) => req,
            Err(e) => {
                tracing::error!(index, error = %e, "undecodable raft entry skipped");
                self.store.stage(progress);
                return Ok(());
            }
        };
        let Some(op) = req.op else {
            self.store.stage(progress);
            return Ok(());
        };
        // etcd's auth revision check: rights read before an auth change
        // applied in between are not used (the client asks again).
        let result = if req.auth_revision != 0 && self.auth.enabled() && req.auth_revision < self.auth.revision() {
            self.store.stage(progress);
            Err(Error::AuthOldRevision)
        } else {
            self.execute(op, progress)?
        };
        if req.proposer == self.me {
            self.answers.push((req.id, result));
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        Applier::flush(self)
    }

    fn apply_conf_change(
        &mut self,
        index: u64,
        cc: &ConfChangeV2,
        outcome: Result<&ConfState, String>,
        mut progress: WriteBatch,
    ) -> Result<(), StorageError> {
        // Written after the entries before it, and answered at once.
        Applier::flush(self)?;
        progress.put(Cf::Meta, META_APPLIED, index.to_be_bytes().to_vec());
        self.applied = index;
        let ctx = ConfContext::decode(&cc.context[..]).unwrap_or_default();
        let result = match outcome {
            Ok(_) => {
                member::conf_change(&self.membership, cc, ctx.member, &mut progress);
                Ok(Response::Members(self.membership.list()))
            }
            Err(e) => Err(Error::Internal(format!("membership change refused: {e}"))),
        };
        self.engine.write(progress, false)?;
        if ctx.proposer == self.me {
            self.waiters.complete(ctx.request_id, result);
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: &Snapshot, raft: WriteBatch) -> Result<(), StorageError> {
        Applier::flush(self)?;
        let index = snapshot.get_metadata().index;
        let snapshots = &self.snapshots;
        self.store.reload_after(|| snapshots.install(index, raft)).map_err(|e| match e {
            MvccError::Storage(e) => e,
            e => StorageError::Engine(format!("reloading the store after a snapshot: {e}")),
        })?;
        self.applied = index;
        load_leases(self.engine.as_ref(), &self.store, &self.lessor)?;
        self.membership.load(self.engine.as_ref())?;
        self.alarms.load(self.engine.as_ref())?;
        self.auth.load(self.engine.as_ref())?;
        self.hub.recheck_access(|user, key, end| self.auth.may_read(user, key, end));
        // Watchers catch up from the new state (or learn it was compacted).
        self.hub.resync();
        Ok(())
    }

    fn applied_index(&self) -> u64 {
        self.applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::mem::MemEngine;
    use etcd_client::proto::PbPutRequest;

    fn put(proposer: u64, id: u64, key: &str) -> Vec<u8> {
        let op = Op::Put(PbPutRequest { key: key.into(), value: b"v".to_vec(), ..Default::default() });
        RaftRequest { id, op: Some(op), proposer, auth_revision: 0 }.encode_to_vec()
    }

    /// An applier on a memory engine, with its store and waiters.
    fn machine(dir: &std::path::Path) -> (Applier, Arc<Store>, Arc<Waiters>, Arc<dyn Engine>) {
        let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
        let store = Arc::new(Store::open(engine.clone()).expect("store"));
        let hub = Arc::new(WatchHub::new(store.clone(), Box::new(|revision| PbResponseHeader { revision, ..Default::default() }), 1 << 20));
        let waiters = Arc::new(Waiters::default());
        let snapshots = Arc::new(Snapshots::open(dir.join("snap"), engine.clone()).expect("snapshots"));
        let applier = Applier::new(
            1,
            engine.clone(),
            store.clone(),
            Arc::new(Lessor::new(1)),
            waiters.clone(),
            hub,
            Arc::new(Membership::default()),
            snapshots,
            Arc::new(Alarms::default()),
            Arc::default(),
        )
        .expect("applier");
        (applier, store, waiters, engine)
    }

    /// Requests whose outcome depends on the entries before them: reads of
    /// keys written earlier (prev_kv, ignore_value, compares, ranges in a
    /// txn, at an earlier revision), a lease's keys revoked, a compaction
    /// in the middle, and refusals.
    fn dependent_requests() -> Vec<Op> {
        use etcd_client::proto::{
            PbCompactionRequest, PbCompare, PbDeleteRequest, PbLeaseGrantRequest, PbLeaseRevokeRequest, PbRangeRequest, PbTargetUnion,
            PbTxnOpRequest as TxnOp, PbTxnRequest, PbTxnRequestOp,
        };
        let put = |k: &str, v: &str| PbPutRequest { key: k.into(), value: v.into(), prev_kv: true, ..Default::default() };
        let op = |r: TxnOp| PbTxnRequestOp { request: Some(r) };
        let value_is = |k: &str, v: &str| PbCompare {
            key: k.into(),
            target: 3,
            target_union: Some(PbTargetUnion::Value(v.into())),
            ..Default::default()
        };
        let txn = |compare: PbCompare, success: Vec<PbTxnRequestOp>, failure: Vec<PbTxnRequestOp>| {
            Op::Txn(PbTxnRequest { compare: vec![compare], success, failure })
        };
        vec![
            Op::Put(put("a", "1")),
            Op::Put(put("b", "2")),
            txn(
                value_is("a", "1"),
                vec![
                    op(TxnOp::RequestPut(put("c", "3"))),
                    op(TxnOp::RequestRange(PbRangeRequest { key: "a".into(), range_end: "z".into(), ..Default::default() })),
                ],
                vec![op(TxnOp::RequestDeleteRange(PbDeleteRequest { key: "a".into(), ..Default::default() }))],
            ),
            Op::Put(put("a", "4")),
            txn(value_is("a", "1"), vec![op(TxnOp::RequestPut(put("x", "never")))], vec![op(TxnOp::RequestPut(put("b", "5")))]),
            Op::LeaseGrant(PbLeaseGrantRequest { ttl: 100, id: 9 }),
            Op::Put(PbPutRequest { key: "d".into(), value: "6".into(), lease: 9, ..Default::default() }),
            Op::Put(PbPutRequest { key: "d".into(), ignore_value: true, prev_kv: true, ..Default::default() }),
            Op::Put(PbPutRequest { key: "nokey".into(), ignore_value: true, ..Default::default() }),
            Op::LeaseRevoke(PbLeaseRevokeRequest { id: 9 }),
            Op::DeleteRange(PbDeleteRequest { key: "b".into(), range_end: "c\0".into(), prev_kv: true }),
            txn(
                value_is("a", "4"),
                vec![op(TxnOp::RequestRange(PbRangeRequest { key: "a".into(), revision: 2, ..Default::default() }))],
                vec![],
            ),
            Op::Compaction(PbCompactionRequest { revision: 4, physical: false }),
            Op::Compaction(PbCompactionRequest { revision: 1000, physical: false }),
            Op::Put(put("a", "7")),
            txn(
                value_is("a", "7"),
                vec![op(TxnOp::RequestRange(PbRangeRequest { key: "a".into(), revision: 3, ..Default::default() }))],
                vec![],
            ),
            Op::Put(put("e", "8")),
        ]
    }

    fn everything(store: &Store) -> Vec<etcd_client::proto::PbKeyValue> {
        store.range(&[0], &crate::mvcc::RangeEnd::Infinity, &Default::default()).expect("range").kvs
    }

    #[test]
    fn entries_applied_as_one_batch_end_where_entries_applied_one_by_one_do() {
        let (one_dir, batch_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
        let (mut one, one_store, one_waiters, one_engine) = machine(one_dir.path());
        let (mut batch, batch_store, batch_waiters, batch_engine) = machine(batch_dir.path());
        let ops = dependent_requests();
        let mut one_answers = Vec::new();
        let mut batch_waiting = Vec::new();
        let mut seen = Vec::new();
        for (i, op) in ops.into_iter().enumerate() {
            let (id, index) = (i as u64 + 1, i as u64 + 2);
            let data = RaftRequest { id, op: Some(op.clone()), proposer: 1, auth_revision: 0 }.encode_to_vec();
            let mut rx = one_waiters.register(id).expect("room");
            one.apply(index, Some(&data), WriteBatch::default()).expect("apply");
            one.flush().expect("flush");
            one_answers.push(rx.try_recv().expect("answered").expect("applied"));
            let before = batch_store.current_revision();
            batch_waiting.push(batch_waiters.register(id).expect("room"));
            batch.apply(index, Some(&data), WriteBatch::default()).expect("apply");
            if !matches!(op, Op::Compaction(_)) {
                // Neither readers nor the proposer see a staged entry.
                assert_eq!(batch_store.current_revision(), before, "a staged revision is visible");
                assert!(batch_waiting.last_mut().expect("waiting").try_recv().is_err(), "answered before the flush");
            }
            seen.push(everything(&batch_store));
        }
        batch.flush().expect("flush");
        let batch_answers: Vec<ApplyResult> =
            batch_waiting.iter_mut().map(|rx| rx.try_recv().expect("answered").expect("applied")).collect();
        assert_eq!(format!("{batch_answers:?}"), format!("{one_answers:?}"));
        assert!(one_answers.iter().filter(|a| a.is_err()).count() >= 2, "the requests include refusals");
        assert_eq!(batch_store.current_revision(), one_store.current_revision());
        assert_eq!(batch_store.compacted_revision(), one_store.compacted_revision());
        assert_eq!(everything(&batch_store), everything(&one_store));
        assert_eq!(batch_store.hash_kv(0).expect("hash"), one_store.hash_kv(0).expect("hash"));
        assert_eq!(applied_index(batch_engine.as_ref()).expect("applied"), applied_index(one_engine.as_ref()).expect("applied"));
        // What is on the engine is what was served.
        let reopened = Store::open(batch_engine).expect("reopen");
        assert_eq!(everything(&reopened), everything(&one_store));
        assert_eq!(reopened.current_revision(), one_store.current_revision());
        // A reader saw the state before the batch until the compaction
        // (which writes what came before it), then that state until the end.
        assert!(seen[0].is_empty());
        assert_eq!(seen[11], seen[0]);
        assert_eq!(seen[12], seen[13]);
        assert_ne!(seen[12], seen[0]);
        assert_eq!(seen[16], seen[12]);
    }

    #[test]
    fn only_the_proposing_member_hears_the_outcome_of_its_request_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut applier, _store, waiters, _engine) = machine(dir.path());
        let mut mine = waiters.register(7).expect("room for a proposal");
        // Another member's request with the same id must not answer ours.
        applier.apply(2, Some(&put(2, 7, "theirs")), WriteBatch::default()).expect("apply");
        applier.flush().expect("flush");
        assert!(mine.try_recv().is_err(), "answered with another member's outcome");
        applier.apply(3, Some(&put(1, 7, "mine")), WriteBatch::default()).expect("apply");
        assert!(mine.try_recv().is_err(), "answered before the entry is written");
        applier.flush().expect("flush");
        match mine.try_recv().expect("answered").expect("applied").expect("ok") {
            Response::Put(p) => assert_eq!(p.header.expect("header").revision, 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn proposals_beyond_the_limit_are_refused_as_too_many_requests() {
        let waiters = Waiters::with_limit(2);
        let _a = waiters.register(1).expect("first");
        let _b = waiters.register(2).expect("second");
        assert!(matches!(waiters.register(3), Err(Error::TooManyRequests)));
        assert_eq!(Error::TooManyRequests.to_string(), "etcdserver: too many requests");
        // An outcome frees a slot.
        waiters.refused(1);
        assert!(waiters.register(3).is_ok());
    }
}
