//! The Lock service (v3lockpb), as etcd's: Lock waits until the caller's key
//! under the lock's name is the oldest; Unlock deletes the key.

use std::sync::Arc;

use etcd_client::proto::PbDeleteRequest;
use tonic::{Request, Response};

use super::recipes::{enqueue, wait_turn};
use super::v3lockpb::lock_server::Lock;
use super::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use super::{Reply, status};
use crate::apply::{self, request::Op};
use crate::error::Error;
use crate::node::Node;

pub struct LockService {
    node: Arc<Node>,
}

impl LockService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Reply<LockResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let r = req.into_inner();
        let mut prefix = r.name;
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", r.lease).as_bytes());
        super::recipes::check_queue(&self.node, &caller, &prefix, &key).map_err(status)?;
        let (kv, _) = enqueue(&self.node, &key, r.lease, b"").await.map_err(status)?;
        let header = wait_turn(&self.node, &prefix, kv.create_revision).await.map_err(status)?;
        Ok(Response::new(LockResponse { header: Some(header), key }))
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Reply<UnlockResponse> {
        self.node.refuse_learner().map_err(status)?;
        let caller = super::caller(&self.node, &req).await?;
        let del = PbDeleteRequest { key: req.into_inner().key, ..Default::default() };
        super::kv::check_delete(&self.node, &caller, &del).map_err(status)?;
        match self.node.propose(Op::DeleteRange(del)).await.map_err(status)? {
            apply::Response::DeleteRange(r) => {
                Ok(Response::new(UnlockResponse { header: Some(self.node.header(r.header.map_or(0, |h| h.revision))) }))
            }
            _ => Err(status(Error::Internal("unexpected apply result for unlock".into()))),
        }
    }
}
