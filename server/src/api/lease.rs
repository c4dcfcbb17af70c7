//! The Lease service: grants and revocations through raft; keep-alives,
//! TimeToLive and the lease list answered by the leader's lessor.

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

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        let mut g = req.into_inner();
        if g.ttl > MAX_TTL {
            return Err(status(Error::LeaseTtlTooLarge));
        }
        g.ttl = g.ttl.max(self.node.lessor.min_ttl);
        if g.id == 0 {
            g.id = self.node.new_lease_id();
        }
        match self.node.propose(Op::LeaseGrant(g)).await.map_err(status)? {
            apply::Response::LeaseGrant(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(status(Error::Internal("unexpected apply result for lease grant".into()))),
        }
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Reply<LeaseRevokeResponse> {
        match self.node.propose(Op::LeaseRevoke(req.into_inner())).await.map_err(status)? {
            apply::Response::LeaseRevoke(resp) => Ok(Response::new(self.node.complete(resp))),
            _ => Err(status(Error::Internal("unexpected apply result for lease revoke".into()))),
        }
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(&self, req: Request<Streaming<LeaseKeepAliveRequest>>) -> Reply<Self::LeaseKeepAliveStream> {
        let node = self.node.clone();
        let out = req.into_inner().map(move |r| {
            let r = r?;
            // An unknown lease answers TTL 0, as etcd does.
            let ttl = node.lessor.renew(r.id).unwrap_or(0);
            Ok(LeaseKeepAliveResponse { header: Some(node.header(0)), id: r.id, ttl })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_time_to_live(&self, req: Request<LeaseTimeToLiveRequest>) -> Reply<LeaseTimeToLiveResponse> {
        let r = req.into_inner();
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
        let leases = self.node.lessor.ids().into_iter().map(|id| LeaseStatus { id }).collect();
        Ok(Response::new(LeaseLeasesResponse { header: Some(self.node.header(0)), leases }))
    }
}
