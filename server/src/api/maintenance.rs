//! The Maintenance service: Status, Defragment and Alarm; the rest of it
//! (hashes, snapshots, leadership) arrives with clustering.

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
            is_learner: false,
            ..Default::default()
        }))
    }

    async fn defragment(&self, _req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        let engine = self.node.engine.clone();
        tokio::task::spawn_blocking(move || engine.compact_cf(Cf::Kv))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(DefragmentResponse { header: Some(self.node.header(0)) }))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Reply<HashResponse> {
        Err(unimplemented("Hash"))
    }

    async fn hash_kv(&self, _req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        Err(unimplemented("HashKV"))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(&self, _req: Request<SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        Err(unimplemented("Snapshot"))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Reply<MoveLeaderResponse> {
        // One member: it is the leader, and moving to itself is a no-op.
        if req.into_inner().target_id != self.node.member.id {
            return Err(status(Error::MemberNotFound));
        }
        Ok(Response::new(MoveLeaderResponse { header: Some(self.node.header(0)) }))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        Err(unimplemented("Downgrade"))
    }
}
