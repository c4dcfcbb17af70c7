//! Receiving from peers: raft messages go to raft; a snapshot is written to
//! disk as it streams in and handed to raft once complete; the member list
//! lease calls and HashKV are answered from this member's state. A request from
//! another cluster, or from a removed member, is refused.

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::Message;
use tonic::{Request, Response, Status, Streaming};

use super::proto::peer_server::Peer;
use super::proto::{
    Ack, HashKvRequest, HashKvResponse, LeaseRenewResponse, LeaseRequest, LeaseTimeToLiveResponse, MembersRequest, MembersResponse, RaftBatch, SnapshotChunk,
};
use crate::error::Error;
use crate::node::Node;

pub struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn check(&self, cluster_id: u64, from: u64, from_urls: &[String]) -> Result<(), Status> {
        let node = &self.node;
        if cluster_id != node.cluster_id {
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {:x} belongs to cluster {:x}, the request comes from cluster {cluster_id:x} \
                 (check --initial-cluster-token and --initial-cluster)",
                node.member.id, node.cluster_id
            )));
        }
        if node.membership.is_removed(from) {
            return Err(Status::failed_precondition(format!("member {from:x} {}", super::transport::REMOVED)));
        }
        if node.membership.get(from).is_none() && !from_urls.is_empty() {
            node.learned.lock().insert(from, from_urls.to_vec());
        }
        Ok(())
    }

    fn lease_leader(&self, cluster_id: u64) -> Result<(), Status> {
        self.check(cluster_id, 0, &[])?;
        if !self.node.is_leader() {
            return Err(crate::api::status(Error::NotLeader));
        }
        Ok(())
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(bytes).map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<Ack>, Status> {
        let b = req.into_inner();
        self.check(b.cluster_id, b.from, &b.from_peer_urls)?;
        if b.to != self.node.member.id {
            return Err(Status::failed_precondition(format!(
                "member ID mismatch: this is member {:x}, the message is for {:x}",
                self.node.member.id, b.to
            )));
        }
        let bytes: usize = b.messages.iter().map(Vec::len).sum();
        crate::metrics::METRICS.peer_received_bytes.get_or_create(&crate::metrics::PeerFrom::new(b.from)).inc_by(bytes as u64);
        for m in &b.messages {
            self.node.raft.step(decode(m)?);
        }
        Ok(Response::new(Ack {}))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<Ack>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        self.check(first.cluster_id, first.from, &first.from_peer_urls)?;
        let msg = decode(&first.message)?;
        let index = msg.get_snapshot().get_metadata().index;
        let internal = |e: crate::storage::StorageError| Status::internal(e.to_string());
        let mut incoming = self.node.snapshots.incoming(index).map_err(internal)?;
        incoming.write(&first.records).map_err(internal)?;
        let mut records = first.records.len();
        while let Some(chunk) = stream.message().await? {
            records += chunk.records.len();
            incoming.write(&chunk.records).map_err(internal)?;
        }
        incoming.finish().map_err(internal)?;
        tracing::info!(from = %format!("{:x}", first.from), index, records, "received a snapshot");
        self.node.raft.step(msg);
        Ok(Response::new(Ack {}))
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        let r = req.into_inner();
        // A member that joins does not know the cluster id yet (0).
        if r.cluster_id != 0 {
            self.check(r.cluster_id, 0, &[])?;
        }
        let node = &self.node;
        Ok(Response::new(MembersResponse {
            cluster_id: node.cluster_id,
            leader: node.raft.status.leader(),
            members: node.membership.list(),
        }))
    }

    async fn lease_renew(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseRenewResponse>, Status> {
        let r = req.into_inner();
        self.lease_leader(r.cluster_id)?;
        let ttl = self.node.renew_lease(r.id).await.map_err(crate::api::status)?;
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn probe(&self, _req: Request<Ack>) -> Result<Response<Ack>, Status> {
        Ok(Response::new(Ack {}))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let r = req.into_inner();
        self.check(r.cluster_id, 0, &[])?;
        let store = self.node.store.clone();
        let (hash, compact_revision, revision) = tokio::task::spawn_blocking(move || store.hash_kv(r.revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| crate::api::status(e.into()))?;
        Ok(Response::new(HashKvResponse { hash, compact_revision, revision }))
    }

    async fn lease_time_to_live(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let r = req.into_inner();
        self.lease_leader(r.cluster_id)?;
        let resp = match self.node.lessor.info(r.id) {
            Some(info) => LeaseTimeToLiveResponse {
                ttl: info.remaining,
                granted_ttl: info.ttl,
                keys: if r.keys { info.keys } else { Vec::new() },
            },
            None => LeaseTimeToLiveResponse { ttl: -1, ..Default::default() },
        };
        Ok(Response::new(resp))
    }
}
