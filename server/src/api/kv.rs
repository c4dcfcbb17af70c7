//! The KV service: Range served locally (after ReadIndex unless
//! serializable), writes through raft.

use std::sync::Arc;

use etcd_client::proto::{
    PbCompactionRequest as CompactionRequest, PbCompactionResponse as CompactionResponse, PbDeleteRequest as DeleteRangeRequest,
    PbDeleteResponse as DeleteRangeResponse, PbKvService, PbPutRequest as PutRequest, PbPutResponse as PutResponse,
    PbRangeRequest as RangeRequest, PbRangeResponse as RangeResponse, PbRangeStreamResponse as RangeStreamResponse, PbTxnRequest as TxnRequest, PbTxnResponse as TxnResponse,
};
use tonic::{Request, Response};

use super::{Reply, status, validate};
use crate::apply::request::Op;
use crate::apply::{self, range};
use crate::error::Error;
use crate::auth::{Caller, Need};
use crate::node::Node;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn write(&self, op: Op, caller: &Option<Caller>) -> Result<apply::Response, tonic::Status> {
        self.node.refuse_learner().map_err(status)?;
        self.node.propose_as(op, caller).await.map_err(status)
    }
}

/// etcd's permission checks of a put: write on the key, read too for its
/// previous value, and write on every key of the lease it attaches to.
pub fn check_put(node: &Node, caller: &Option<Caller>, p: &PutRequest) -> Result<(), Error> {
    let auth = &node.auth;
    auth.check(caller, &p.key, &[], Need::Write)?;
    if p.prev_kv {
        auth.check(caller, &p.key, &[], Need::Read)?;
    }
    check_lease_keys(node, caller, p.lease)
}

/// Write on every key attached to `lease` (etcd's checkLeasePuts).
pub fn check_lease_keys(node: &Node, caller: &Option<Caller>, lease: i64) -> Result<(), Error> {
    if caller.is_none() || lease == 0 || node.auth.check_admin(caller).is_ok() {
        return Ok(());
    }
    if let Some(info) = node.lessor.info(lease) {
        for key in &info.keys {
            node.auth.check(caller, key, &[], Need::Write)?;
        }
    }
    Ok(())
}

/// etcd's checks of a delete: write on the range, read too for the
/// previous values.
pub fn check_delete(node: &Node, caller: &Option<Caller>, d: &DeleteRangeRequest) -> Result<(), Error> {
    node.auth.check(caller, &d.key, &d.range_end, Need::Write)?;
    if d.prev_kv {
        node.auth.check(caller, &d.key, &d.range_end, Need::Read)?;
    }
    Ok(())
}

/// etcd's checkTxnAuth: read on every compared key, and every operation of
/// both branches (nested transactions included) allowed.
pub fn check_txn(node: &Node, caller: &Option<Caller>, t: &TxnRequest) -> Result<(), Error> {
    if caller.is_none() {
        return Ok(());
    }
    for c in &t.compare {
        node.auth.check(caller, &c.key, &[], Need::Read)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        use etcd_client::proto::PbTxnOpRequest as R;
        match &op.request {
            Some(R::RequestRange(r)) => node.auth.check(caller, &r.key, &r.range_end, Need::Read)?,
            Some(R::RequestPut(p)) => check_put(node, caller, p)?,
            Some(R::RequestDeleteRange(d)) => check_delete(node, caller, d)?,
            Some(R::RequestTxn(t)) => check_txn(node, caller, t)?,
            None => {}
        }
    }
    Ok(())
}

fn unexpected(what: &str) -> tonic::Status {
    status(Error::Internal(format!("unexpected apply result for {what}")))
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Reply<RangeResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let r = req.into_inner();
        validate::range(&r).map_err(status)?;
        self.node.auth.check(&caller, &r.key, &r.range_end, Need::Read).map_err(status)?;
        if !r.serializable {
            self.node.refuse_learner().map_err(status)?;
            self.node.linearizable_read().await.map_err(status)?;
        }
        let resp = range::range(self.node.store.as_ref(), &r).map_err(status)?;
        Ok(Response::new(self.node.complete(resp)))
    }

    type RangeStreamStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RangeStreamResponse, tonic::Status>> + Send>>;

    /// etcd 3.6's chunked range: served as one chunk holding the whole range.
    async fn range_stream(&self, req: Request<RangeRequest>) -> Reply<Self::RangeStreamStream> {
        let resp = self.range(req).await?.into_inner();
        let chunk = RangeStreamResponse { range_response: Some(resp) };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(chunk)]))))
    }

    async fn put(&self, req: Request<PutRequest>) -> Reply<PutResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let p = req.into_inner();
        validate::put(&p).map_err(status)?;
        check_put(&self.node, &caller, &p).map_err(status)?;
        self.node.check_quota(crate::alarm::cost::put(&p)).await.map_err(status)?;
        match self.write(Op::Put(p), &caller).await? {
            apply::Response::Put(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Reply<DeleteRangeResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let d = req.into_inner();
        validate::delete(&d).map_err(status)?;
        check_delete(&self.node, &caller, &d).map_err(status)?;
        match self.write(Op::DeleteRange(d), &caller).await? {
            apply::Response::DeleteRange(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Reply<TxnResponse> {
        let caller = super::caller(&self.node, &req).await?;
        let t = req.into_inner();
        validate::txn(&t, self.node.max_txn_ops).map_err(status)?;
        check_txn(&self.node, &caller, &t).map_err(status)?;
        self.node.check_quota(crate::alarm::cost::txn(&t)).await.map_err(status)?;
        // Read-only transactions still go through raft, so that they are
        // linearizable and see one revision.
        match self.write(Op::Txn(t), &caller).await? {
            apply::Response::Txn(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Reply<CompactionResponse> {
        let c = req.into_inner();
        // Refuse early what would fail anyway, without a raft round.
        self.node.store.check_compact(c.revision).map_err(|e| status(e.into()))?;
        let (revision, physical) = (c.revision, c.physical);
        let mut finished = self.node.store.compactions_finished();
        match self.write(Op::Compaction(c), &None).await? {
            apply::Response::Compaction(resp) => {
                // Physical: answered once this member's compactor has
                // removed the compacted revisions, as etcd does.
                if physical {
                    finished.wait_for(|f| *f >= revision).await.map_err(|_| status(Error::Internal("the store closed during a compaction".into())))?;
                }
                Ok(Response::new(self.node.complete(resp)))
            }
            _ => Err(unexpected("compaction")),
        }
    }
}
