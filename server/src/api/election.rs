//! The Election service (v3electionpb), as etcd's: Campaign waits to become
//! the oldest key under the election's name; Proclaim and Resign act only
//! while the given leader key still holds; Leader and Observe report the
//! holder. Errors that etcd returns as plain errors keep its texts.

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{PbDeleteRequest, PbPutRequest, PbTxnOpRequest as Op, PbTxnRequest, PbTxnRequestOp as RequestOp};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::recipes::{create_revision_is, enqueue, first_created, header, observe, txn, wait_turn};
use super::v3electionpb::election_server::Election;
use super::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use super::{Reply, status};
use crate::auth::Need;
use crate::node::Node;

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";

pub struct ElectionService {
    node: Arc<Node>,
}

impl ElectionService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Reply<CampaignResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let r = req.into_inner();
        let prefix = prefix_of(&r.name);
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", r.lease).as_bytes());
        super::recipes::check_queue(&self.node, &caller, &prefix, &key).map_err(status)?;
        let (kv, _) = enqueue(&self.node, &key, r.lease, &r.value).await.map_err(status)?;
        if kv.value != r.value {
            // Resuming an earlier campaign with a new value: proclaim it.
            let put = PbPutRequest { key: key.clone(), value: r.value.clone(), lease: r.lease, ..Default::default() };
            txn(&self.node, PbTxnRequest {
                compare: vec![create_revision_is(&key, kv.create_revision)],
                success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
                failure: vec![],
            })
            .await
            .map_err(status)?;
        }
        let h = wait_turn(&self.node, &prefix, kv.create_revision).await.map_err(status)?;
        let leader = LeaderKey { name: r.name, key, rev: kv.create_revision, lease: r.lease };
        Ok(Response::new(CampaignResponse { header: Some(h), leader: Some(leader) }))
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Reply<ProclaimResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let r = req.into_inner();
        let leader = r.leader.ok_or_else(|| Status::unknown(NOT_LEADER))?;
        self.node.auth.check(&caller, &leader.key, &[], Need::Write).map_err(status)?;
        self.node.auth.check(&caller, &leader.key, &[], Need::Read).map_err(status)?;
        let put = PbPutRequest { key: leader.key.clone(), value: r.value, lease: leader.lease, ..Default::default() };
        let resp = txn(&self.node, PbTxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp { request: Some(Op::RequestPut(put)) }],
            failure: vec![],
        })
        .await
        .map_err(status)?;
        if !resp.succeeded {
            return Err(Status::unknown(NOT_LEADER));
        }
        Ok(Response::new(ProclaimResponse { header: Some(header(&self.node, resp.header)) }))
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Reply<LeaderResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let prefix = prefix_of(&req.into_inner().name);
        self.node.auth.check(&caller, &prefix, &crate::api::recipes::prefix_end(&prefix), Need::Read).map_err(status)?;
        match first_created(&self.node, &prefix).await.map_err(status)? {
            (Some(kv), rev) => Ok(Response::new(LeaderResponse { header: Some(self.node.header(rev)), kv: Some(kv) })),
            (None, _) => Err(Status::unknown(NO_LEADER)),
        }
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

    async fn observe(&self, req: Request<LeaderRequest>) -> Reply<Self::ObserveStream> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let prefix = prefix_of(&req.into_inner().name);
        self.node.auth.check(&caller, &prefix, &crate::api::recipes::prefix_end(&prefix), Need::Read).map_err(status)?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(observe(self.node.clone(), prefix, tx, caller.map(|c| c.user)));
        let out = ReceiverStream::new(rx).map(|r| match r {
            Ok((kv, h)) => Ok(LeaderResponse { header: Some(h), kv: Some(kv) }),
            Err(e) => Err(status(e)),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Reply<ResignResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let leader = req.into_inner().leader.ok_or_else(|| Status::unknown(NOT_LEADER))?;
        let del = PbDeleteRequest { key: leader.key.clone(), ..Default::default() };
        super::kv::check_delete(&self.node, &caller, &del).map_err(status)?;
        self.node.auth.check(&caller, &leader.key, &[], Need::Read).map_err(status)?;
        // A stale leader key resigns nothing, without an error (etcd).
        let resp = txn(&self.node, PbTxnRequest {
            compare: vec![create_revision_is(&leader.key, leader.rev)],
            success: vec![RequestOp { request: Some(Op::RequestDeleteRange(del)) }],
            failure: vec![],
        })
        .await
        .map_err(status)?;
        Ok(Response::new(ResignResponse { header: Some(header(&self.node, resp.header)) }))
    }
}
