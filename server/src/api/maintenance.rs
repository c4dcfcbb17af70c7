//! The Maintenance service: Status, Defragment, Alarm, Hash and HashKV
//! (equal on every member at the same revision), MoveLeader (on the leader).

use std::pin::Pin;
use std::sync::Arc;

use etcd_client::proto::{
    PbAlarmRequest as AlarmRequest, PbAlarmResponse as AlarmResponse, PbDefragmentRequest as DefragmentRequest,
    PbDefragmentResponse as DefragmentResponse, PbDowngradeRequest as DowngradeRequest, PbDowngradeResponse as DowngradeResponse,
    PbHashKvRequest as HashKvRequest, PbHashKvResponse as HashKvResponse, PbHashRequest as HashRequest, PbHashResponse as HashResponse,
    PbMaintenanceService, PbMoveLeaderRequest as MoveLeaderRequest, PbMoveLeaderResponse as MoveLeaderResponse,
    PbSnapshotRequest as SnapshotRequest, PbSnapshotResponse as SnapshotResponse, PbStatusRequest as StatusRequest,
    PbStatusResponse as StatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{Reply, status};
use crate::error::Error;
use crate::node::Node;
use crate::storage::Cf;

/// The etcd API version raftkv speaks; clients show it as the server version.
pub const API_VERSION: &str = "3.4.0";

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("raftkv does not implement {what} yet"))
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(&self, _req: Request<AlarmRequest>) -> Reply<AlarmResponse> {
        self.node.refuse_learner().map_err(status)?;
        Ok(Response::new(AlarmResponse { header: Some(self.node.header(0)), alarms: Vec::new() }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let node = &self.node;
        let s = &node.raft.status;
        let size = node.engine.size() as i64;
        Ok(Response::new(StatusResponse {
            header: Some(node.header(0)),
            version: API_VERSION.into(),
            db_size: size,
            db_size_in_use: size,
            leader: s.leader(),
            raft_index: s.commit(),
            raft_term: s.term(),
            raft_applied_index: s.applied(),
            errors: Vec::new(),
            is_learner: s.is_learner(),
            ..Default::default()
        }))
    }

    async fn defragment(&self, _req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        self.node.refuse_learner().map_err(status)?;
        let engine = self.node.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_cf(Cf::Kv))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(DefragmentResponse { header: Some(self.node.header(0)) }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Reply<HashResponse> {
        self.node.refuse_learner().map_err(status)?;
        let store = self.node.store.clone();
        let (hash, _, _) = tokio::task::spawn_blocking(move || store.hash_kv(0))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(HashResponse { header: Some(self.node.header(0)), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        self.node.refuse_learner().map_err(status)?;
        let rev = req.into_inner().revision;
        let store = self.node.store.clone();
        let (hash, compact_revision, _) = tokio::task::spawn_blocking(move || store.hash_kv(rev))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(HashKvResponse { header: Some(self.node.header(0)), hash, compact_revision, ..Default::default() }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Reply<MoveLeaderResponse> {
        let node = &self.node;
        node.refuse_learner().map_err(status)?;
        let target = req.into_inner().target_id;
        if !node.is_leader() {
            return Err(status(Error::NotLeader));
        }
        if node.membership.get(target).is_none_or(|m| m.is_learner) {
            return Err(status(Error::BadLeaderTransferee));
        }
        let deadline = tokio::time::Instant::now() + node.request_timeout;
        while node.raft.status.leader() != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(status(Error::Timeout));
            }
            node.raft.transfer_leader(target);
            tokio::time::sleep(node.election_timeout / 10).await;
        }
        tracing::info!(to = %format!("{target:x}"), "moved leadership");
        Ok(Response::new(MoveLeaderResponse { header: Some(node.header(0)) }))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        Err(unimplemented("Downgrade"))
    }
}
