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
use crate::node::Node;

pub struct KvService {
    node: Arc<Node>,
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    async fn write(&self, op: Op) -> Result<apply::Response, tonic::Status> {
        self.node.refuse_learner().map_err(status)?;
        self.node.propose(op).await.map_err(status)
    }
}

fn unexpected(what: &str) -> tonic::Status {
    status(Error::Internal(format!("unexpected apply result for {what}")))
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Reply<RangeResponse> {
        let r = req.into_inner();
        validate::range(&r).map_err(status)?;
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
        let p = req.into_inner();
        validate::put(&p).map_err(status)?;
        self.node.check_quota(crate::alarm::cost::put(&p)).await.map_err(status)?;
        match self.write(Op::Put(p)).await? {
            apply::Response::Put(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Reply<DeleteRangeResponse> {
        let d = req.into_inner();
        validate::delete(&d).map_err(status)?;
        match self.write(Op::DeleteRange(d)).await? {
            apply::Response::DeleteRange(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Reply<TxnResponse> {
        let t = req.into_inner();
        validate::txn(&t, self.node.max_txn_ops).map_err(status)?;
        self.node.check_quota(crate::alarm::cost::txn(&t)).await.map_err(status)?;
        // Read-only transactions still go through raft, so that they are
        // linearizable and see one revision.
        match self.write(Op::Txn(t)).await? {
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
        match self.write(Op::Compaction(c)).await? {
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
