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

/// The etcd server version whose API and behaviour raftkv has: etcd 3.4,
/// at the first patch release whose watch progress requests raftkv answers
/// as it does (deferred until the watchers have caught up, never ahead of
/// an event). kube-apiserver turns on its watch-progress features (and
/// with them consistent reads from its watch cache) from 3.4.31; raftkv
/// has nothing of 3.5 that 3.4 lacks (no Downgrade).
pub const ETCD_VERSION: &str = "3.4.31";

/// The cluster version, as etcd tells it (major.minor.0).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// raftkv's own version.
pub const RAFTKV_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Status's version: the etcd version, with raftkv's own as semver build
/// metadata (`3.4.31+raftkv.0.1.0`). Version comparisons ignore build
/// metadata (semver; kube-apiserver's parser), so clients see etcd 3.4.31,
/// and people and the operator read raftkv's version from the same field.
pub fn status_version() -> String {
    format!("{ETCD_VERSION}+raftkv.{RAFTKV_VERSION}")
}

pub struct MaintenanceService {
    node: Arc<Node>,
}

impl MaintenanceService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// etcd's authMaintenanceServer: Defragment, Hash, HashKV and Snapshot
    /// take the root role once authentication is enabled.
    fn admin<T>(&self, req: &Request<T>) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        let caller = super::caller(&self.node, req);
        async move { super::maintenance_admin(&self.node, &caller.await?) }
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("raftkv does not implement {what} yet"))
}

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    /// GET lists the alarms (MemberID ignored, NONE: every type); ACTIVATE
    /// and DEACTIVATE go through raft. etcd answers without a header.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Reply<AlarmResponse> {
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        if r.action == crate::alarm::GET {
            // Linearizable, as etcd's (which puts every alarm request
            // through raft): a member that has not yet applied an alarm
            // raised elsewhere must not answer without it.
            self.node.linearizable_read().await.map_err(status)?;
            return Ok(Response::new(AlarmResponse { header: None, alarms: self.node.alarms.list(r.alarm) }));
        }
        match self.node.propose(crate::apply::request::Op::Alarm(r)).await.map_err(status)? {
            crate::apply::Response::Alarm(resp) => Ok(Response::new(resp)),
            _ => Err(status(Error::Internal("unexpected apply result for alarm".into()))),
        }
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Reply<StatusResponse> {
        let node = &self.node;
        let s = &node.raft.status;
        let size = node.engine.state_size();
        Ok(Response::new(StatusResponse {
            header: Some(node.header(0)),
            version: status_version(),
            db_size: size.total as i64,
            db_size_in_use: size.live as i64,
            leader: s.leader(),
            raft_index: s.commit(),
            raft_term: s.term(),
            raft_applied_index: s.applied(),
            errors: node.alarms.errors(),
            is_learner: s.is_learner(),
            ..Default::default()
        }))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let engine = self.node.engine.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || Cf::ALL.into_iter().try_for_each(|cf| engine.compact_cf(cf)))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        tracing::info!(took = ?started.elapsed(), db_size = self.node.engine.state_size().total, "defragmented");
        // etcd answers Defragment without a header.
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Reply<HashResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let store = self.node.store.clone();
        let (hash, _, _) = tokio::task::spawn_blocking(move || store.hash_kv(0))
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(HashResponse { header: Some(self.node.header(0)), hash }))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        self.admin(&req).await?;
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

    /// A checkpoint of the state now, streamed in etcd's framing: blobs of
    /// the snapshot file with the bytes still to come, then its SHA-256 in
    /// a message of its own. Learners serve it too, as in etcd. Memory is
    /// bounded by a few blobs in flight whatever the data size.
    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        self.admin(&req).await?;
        let snapshots = self.node.snapshots.clone();
        let checkpoint = tokio::task::spawn_blocking(move || snapshots.client_checkpoint())
            .await
            .map_err(|e| status(Error::Internal(e.to_string())))?
            .map_err(|e| status(e.into()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match stream_snapshot(checkpoint.engine(), &tx) {
                Ok(size) => tracing::info!(size, took = ?started.elapsed(), "sent a snapshot to a client"),
                Err(SendError::Gone) => tracing::info!("a client left before its snapshot was sent"),
                Err(SendError::Failed(e)) => {
                    tracing::warn!(error = %e, "snapshot to a client failed");
                    let _ = tx.blocking_send(Err(status(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
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
        // etcd answers MoveLeader without a header.
        Ok(Response::new(MoveLeaderResponse { header: None }))
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        Err(unimplemented("Downgrade"))
    }
}

/// Blob size of the snapshot stream, as etcd's.
const SNAPSHOT_BLOB: usize = 32 * 1024;

enum SendError {
    Gone,
    Failed(Error),
}

impl From<std::io::Error> for SendError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe { SendError::Gone } else { SendError::Failed(Error::Internal(e.to_string())) }
    }
}

impl From<crate::storage::StorageError> for SendError {
    fn from(e: crate::storage::StorageError) -> Self {
        SendError::Failed(e.into())
    }
}

type SnapshotSender = tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>;

/// Sends what is written to it as blobs, each with the bytes left after it.
struct Blobs<'a> {
    tx: &'a SnapshotSender,
    buf: Vec<u8>,
    remaining: u64,
}

impl Blobs<'_> {
    fn send(&mut self) -> std::io::Result<()> {
        let blob = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_BLOB));
        self.remaining = self.remaining.saturating_sub(blob.len() as u64);
        let msg = SnapshotResponse { remaining_bytes: self.remaining, blob, ..Default::default() };
        self.tx.blocking_send(Ok(msg)).map_err(|_| std::io::ErrorKind::BrokenPipe.into())
    }
}

impl std::io::Write for Blobs<'_> {
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len();
        while !bytes.is_empty() {
            let take = (SNAPSHOT_BLOB - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == SNAPSHOT_BLOB {
                self.send()?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() { Ok(()) } else { self.send() }
    }
}

/// Streams a checkpoint as a snapshot file: one pass to size it (etcd's
/// `remaining_bytes` counts down from the total), one to send it. Returns
/// the bytes sent.
fn stream_snapshot(engine: &dyn crate::storage::Engine, tx: &SnapshotSender) -> Result<u64, SendError> {
    use crate::backup;
    use crate::snapshot::Snapshots;
    let mut records_len = 0;
    Snapshots::chunks(engine, |records| {
        records_len += records.iter().map(backup::record_len).sum::<u64>();
        true
    })?;
    let total = backup::payload_len(records_len);
    let mut encoder = backup::Encoder::new(Blobs { tx, buf: Vec::with_capacity(SNAPSHOT_BLOB), remaining: total })?;
    let mut failed = None;
    Snapshots::chunks(engine, |records| {
        for r in &records {
            if let Err(e) = encoder.record(r) {
                failed = Some(e);
                return false;
            }
        }
        true
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let (blobs, hash) = encoder.finish()?;
    if blobs.remaining != 0 {
        return Err(SendError::Failed(Error::Internal(format!("snapshot changed while sent ({} bytes unaccounted)", blobs.remaining))));
    }
    tx.blocking_send(Ok(SnapshotResponse { remaining_bytes: 0, blob: hash.to_vec(), ..Default::default() }))
        .map_err(|_| SendError::Gone)?;
    Ok(total + hash.len() as u64)
}
