//! The Lease service: grants and revocations through raft; keep-alives and
//! TimeToLive answered by the leader's lessor (a follower forwards them to
//! the leader over the peer service, as etcd does); the lease list from the
//! replicated state.

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbLeaseGrantRequest as LeaseGrantRequest, PbLeaseGrantResponse as LeaseGrantResponse,
    PbLeaseKeepAliveRequest as LeaseKeepAliveRequest, PbLeaseKeepAliveResponse as LeaseKeepAliveResponse,
    PbLeaseLeasesRequest as LeaseLeasesRequest, PbLeaseLeasesResponse as LeaseLeasesResponse, PbLeaseRevokeRequest as LeaseRevokeRequest,
    PbLeaseRevokeResponse as LeaseRevokeResponse, PbLeaseService, PbLeaseStatus as LeaseStatus,
    PbLeaseTimeToLiveRequest as LeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse as LeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{Reply, status};
use crate::apply::{self, request::Op};
use crate::error::Error;
use crate::lease::MAX_TTL;
use crate::node::Node;

pub struct LeaseService {
    node: Arc<Node>,
}

impl LeaseService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn peer_error(s: Status) -> Error {
    match s.code() {
        tonic::Code::FailedPrecondition => Error::LeaderChanged,
        tonic::Code::DeadlineExceeded => Error::Timeout,
        _ => Error::NoLeader,
    }
}

/// Renews a lease on the leader: the remaining TTL, 0 when unknown.
async fn renew(node: &Node, id: i64) -> Result<i64, Error> {
    if node.is_leader() {
        return node.renew_lease(id).await;
    }
    let mut leader = node.leader_peer()?;
    let r = crate::peer::proto::LeaseRequest { cluster_id: node.cluster_id, id, keys: false };
    leader.lease_renew(r).await.map(|r| r.into_inner().ttl).map_err(peer_error)
}

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        self.node.refuse_learner().map_err(status)?;
        let mut g = req.into_inner();
        if g.ttl > MAX_TTL {
            return Err(status(Error::LeaseTtlTooLarge));
        }
        g.ttl = g.ttl.max(self.node.lessor.min_ttl);
        if g.id == 0 {
            g.id = self.node.new_lease_id();
        }
        self.node.check_quota(crate::alarm::cost::LEASE).await.map_err(status)?;
        match self.node.propose(Op::LeaseGrant(g)).await.map_err(status)? {
            apply::Response::LeaseGrant(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(status(Error::Internal("unexpected apply result for lease grant".into()))),
        }
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Reply<LeaseRevokeResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let r = req.into_inner();
        // Revoking deletes the lease's keys: write on each (etcd).
        super::kv::check_lease_keys(&self.node, &caller, r.id).map_err(status)?;
        match self.node.propose_as(Op::LeaseRevoke(r), &caller).await.map_err(status)? {
            apply::Response::LeaseRevoke(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(status(Error::Internal("unexpected apply result for lease revoke".into()))),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(&self, req: Request<Streaming<LeaseKeepAliveRequest>>) -> Reply<Self::LeaseKeepAliveStream> {
        let node = self.node.clone();
        node.refuse_learner().map_err(status)?;
        let out = req.into_inner().then(move |r| {
            let node = node.clone();
            async move {
                let r = r?;
                // An unknown lease answers TTL 0, as etcd does.
                let ttl = renew(&node, r.id).await.map_err(status)?;
                Ok(LeaseKeepAliveResponse { header: Some(node.header(0)), id: r.id, ttl })
            }
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(&self, req: Request<LeaseTimeToLiveRequest>) -> Reply<LeaseTimeToLiveResponse> {
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        if !self.node.is_leader() {
            let mut leader = self.node.leader_peer().map_err(status)?;
            let q = crate::peer::proto::LeaseRequest { cluster_id: self.node.cluster_id, id: r.id, keys: r.keys };
            let a = leader.lease_time_to_live(q).await.map_err(|s| status(peer_error(s)))?.into_inner();
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(self.node.header(0)),
                id: r.id,
                ttl: a.ttl,
                granted_ttl: a.granted_ttl,
                keys: a.keys,
            }));
        }
        let resp = match self.node.lessor.info(r.id) {
            Some(info) => LeaseTimeToLiveResponse {
                header: Some(self.node.header(0)),
                id: r.id,
                ttl: info.remaining,
                granted_ttl: info.ttl,
                keys: if r.keys { info.keys } else { Vec::new() },
            },
            None => LeaseTimeToLiveResponse { header: Some(self.node.header(0)), id: r.id, ttl: -1, ..Default::default() },
        };
        Ok(Response::new(resp))
    }

    async fn lease_leases(&self, _req: Request<LeaseLeasesRequest>) -> Reply<LeaseLeasesResponse> {
        self.node.refuse_learner().map_err(status)?;
        let leases = self.node.lessor.ids().into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.node.header(0)), leases }))
    }
}
