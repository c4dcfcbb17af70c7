//! Sending raft messages: one queue and one task per peer. The raft thread
//! only pushes onto a bounded queue (a full queue drops the message, and
//! raft sends again); the task takes everything queued as one batch, so
//! messages to a busy or slow peer batch up by themselves. A failed send is
//! reported to raft as unreachable. Snapshots go on a task of their own,
//! streamed in chunks from the checkpoint raft asked for.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::mpsc;
use tonic::Code;

use super::{Learned, PeerHealth};
use super::client::connect;
use super::proto::{RaftBatch, SnapshotChunk};
use crate::membership::Membership;
use crate::raft::{RaftHandle, Transport};
use crate::snapshot::Snapshots;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Messages sent in one batch at most.
const BATCH: usize = 512;
/// How long one batch may take to be delivered.
const SEND_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the round-trip time to a peer is measured (etcd's prober:
/// every 4 s).
const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// How long a snapshot transfer may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Who this member is, as its peers must see it.
#[derive(Clone)]
pub struct Identity {
    pub id: u64,
    pub cluster_id: u64,
    pub peer_urls: Vec<String>,
    /// Raised when a peer says this member was removed (while it was down,
    /// it could not apply its own removal): the server then stops.
    pub status: Arc<crate::raft::RaftStatus>,
    pub health: PeerHealth,
    /// How peers' URLs are reached (https:// ones with the peer CA and
    /// this member's peer certificate).
    pub tls: crate::tls::ClientTls,
}

/// What the peer service answers a removed member (see `service`).
pub const REMOVED: &str = "has been permanently removed from the cluster";

struct Peer {
    urls: Vec<String>,
    tx: mpsc::Sender<Message>,
}

pub struct PeerTransport {
    me: Identity,
    membership: Arc<Membership>,
    learned: Learned,
    snapshots: Arc<Snapshots>,
    /// Set once raft runs; tasks report failures through it.
    raft: Arc<OnceLock<RaftHandle>>,
    runtime: tokio::runtime::Handle,
    peers: HashMap<u64, Peer>,
    /// The registry version the queues' URLs were checked against.
    checked: u64,
}

impl PeerTransport {
    pub fn new(
        me: Identity,
        membership: Arc<Membership>,
        learned: Learned,
        snapshots: Arc<Snapshots>,
        raft: Arc<OnceLock<RaftHandle>>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self { me, membership, learned, snapshots, raft, runtime, peers: HashMap::new(), checked: 0 }
    }

    fn urls_of(&self, id: u64) -> Option<Vec<String>> {
        match self.membership.get(id) {
            Some(m) if !m.peer_urls.is_empty() => Some(m.peer_urls),
            _ => self.learned.lock().get(&id).cloned(),
        }
    }

    /// Drops the queues whose peer's URLs changed since the registry was
    /// last looked at (they restart on the next message).
    fn recheck_urls(&mut self) {
        let version = self.membership.version();
        if version == self.checked {
            return;
        }
        self.checked = version;
        let stale: Vec<u64> = self.peers.iter().filter(|(id, p)| self.urls_of(**id).as_ref() != Some(&p.urls)).map(|(id, _)| *id).collect();
        for id in stale {
            self.peers.remove(&id);
        }
    }

    /// The queue to `id`, started on first use (or after its task ended).
    fn queue(&mut self, id: u64) -> Option<&mpsc::Sender<Message>> {
        if self.peers.get(&id).is_none_or(|p| p.tx.is_closed()) {
            let urls = self.urls_of(id)?;
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = PeerTask { to: id, urls: urls.clone(), me: self.me.clone(), raft: self.raft.clone() };
            self.runtime.spawn(task.run(rx));
            self.peers.insert(id, Peer { urls, tx });
        }
        self.peers.get(&id).map(|p| &p.tx)
    }

    fn send_snapshot(&mut self, msg: Message) {
        let to = msg.to;
        let index = msg.get_snapshot().get_metadata().index;
        let (Some(urls), Some(checkpoint)) = (self.urls_of(to), self.snapshots.get(index)) else {
            tracing::warn!(to = %format!("{to:x}"), index, "cannot send a snapshot: peer or checkpoint unknown");
            if let Some(raft) = self.raft.get() {
                raft.report_snapshot(to, false);
            }
            return;
        };
        let me = self.me.clone();
        let raft = self.raft.clone();
        self.runtime.spawn(async move {
            let started = Instant::now();
            let result = send_snapshot(&me, &urls, msg, checkpoint).await;
            let ok = result.is_ok();
            match result {
                Ok(records) => {
                    crate::metrics::METRICS.snapshot_send_success.get_or_create(&crate::metrics::PeerTo::new(to)).inc();
                    tracing::info!(to = %format!("{to:x}"), index, records, took = ?started.elapsed(), "sent a snapshot")
                }
                Err(e) => {
                    crate::metrics::METRICS.snapshot_send_failures.get_or_create(&crate::metrics::PeerTo::new(to)).inc();
                    tracing::warn!(to = %format!("{to:x}"), index, error = %e, "sending a snapshot failed")
                }
            }
            if let Some(raft) = raft.get() {
                if !ok {
                    raft.report_unreachable(to);
                }
                raft.report_snapshot(to, ok);
            }
        });
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msgs: Vec<Message>) {
        self.recheck_urls();
        for msg in msgs {
            if msg.to == self.me.id {
                continue;
            }
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(msg);
                continue;
            }
            let to = msg.to;
            match self.queue(to) {
                Some(q) => {
                    if q.try_send(msg).is_err() {
                        tracing::debug!(to = %format!("{to:x}"), "peer queue full: message dropped");
                    }
                }
                None => tracing::debug!(to = %format!("{to:x}"), "no address for peer: message dropped"),
            }
        }
    }
}

struct PeerTask {
    to: u64,
    urls: Vec<String>,
    me: Identity,
    raft: Arc<OnceLock<RaftHandle>>,
}

impl PeerTask {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut client = match connect(&self.urls, SEND_TIMEOUT, &self.me.tls) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(to = %format!("{:x}", self.to), error = %e, "cannot reach peer");
                return;
            }
        };
        // Measures the round trip while this task runs.
        let _probe = AbortOnDrop(tokio::spawn(probe(client.clone(), self.to)).abort_handle());
        let peer = crate::metrics::PeerTo::new(self.to);
        let mut failing_since: Option<Instant> = None;
        let mut last_report = Instant::now() - Duration::from_secs(60);
        while let Some(first) = rx.recv().await {
            let mut queued = vec![first];
            while queued.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => queued.push(m),
                    Err(_) => break,
                }
            }
            let messages: Vec<Vec<u8>> = queued
                .iter()
                .filter_map(|m| m.write_to_bytes().map_err(|e| tracing::error!(error = %e, "cannot encode a raft message")).ok())
                .collect();
            let bytes: usize = messages.iter().map(Vec::len).sum();
            let batch = RaftBatch {
                cluster_id: self.me.cluster_id,
                from: self.me.id,
                to: self.to,
                from_peer_urls: self.me.peer_urls.clone(),
                messages,
            };
            let sent = client.raft(batch).await;
            {
                let mut health = self.me.health.lock();
                let since = health.entry(self.to).or_insert(None);
                match (&sent, *since) {
                    (Ok(_), None) => *since = Some(Instant::now()),
                    (Err(_), _) => *since = None,
                    _ => {}
                }
            }
            match sent {
                Ok(_) => {
                    crate::metrics::METRICS.peer_sent_bytes.get_or_create(&peer).inc_by(bytes as u64);
                    if failing_since.take().is_some() {
                        tracing::info!(peer = %format!("{:x}", self.to), "peer reachable again");
                    }
                }
                Err(status) => {
                    crate::metrics::METRICS.peer_sent_failures.get_or_create(&peer).inc();
                    if let Some(raft) = self.raft.get() {
                        raft.report_unreachable(self.to);
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if last_report.elapsed() > Duration::from_secs(5) {
                        last_report = Instant::now();
                        if status.code() == Code::FailedPrecondition && status.message().contains(REMOVED) {
                            tracing::error!(peer = %format!("{:x}", self.to), "this member {REMOVED}");
                            self.me.status.removed.store(true, std::sync::atomic::Ordering::Release);
                        } else if status.code() == Code::FailedPrecondition {
                            tracing::error!(peer = %format!("{:x}", self.to), error = %status.message(), "peer refused raft messages");
                        } else {
                            tracing::warn!(peer = %format!("{:x}", self.to), error = %status.message(), down_for = ?since.elapsed(), "peer unreachable");
                        }
                    }
                    // Do not spin on a dead peer: what queued meanwhile is
                    // mostly stale, raft sends what still matters again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Measures the round-trip time to a peer every PROBE_INTERVAL, into
/// `etcd_network_peer_round_trip_time_seconds`.
async fn probe(mut client: super::proto::peer_client::PeerClient<tonic::transport::Channel>, to: u64) {
    let peer = crate::metrics::PeerTo::new(to);
    loop {
        let started = Instant::now();
        if let Ok(Ok(_)) = tokio::time::timeout(SEND_TIMEOUT, client.probe(super::proto::Ack {})).await {
            crate::metrics::METRICS.peer_rtt.get_or_create(&peer).observe(crate::metrics::since(started));
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Streams the checkpoint behind `msg` to a peer; returns the records sent.
async fn send_snapshot(
    me: &Identity,
    urls: &[String],
    msg: Message,
    checkpoint: Arc<dyn crate::storage::Engine>,
) -> Result<u64, String> {
    let mut client = connect(urls, SNAPSHOT_TIMEOUT, &me.tls)?;
    let header = SnapshotChunk {
        cluster_id: me.cluster_id,
        from: me.id,
        from_peer_urls: me.peer_urls.clone(),
        message: msg.write_to_bytes().map_err(|e| e.to_string())?,
        records: Vec::new(),
    };
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let _ = tx.send(header).await;
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = counted.clone();
    let producer = tokio::task::spawn_blocking(move || {
        Snapshots::chunks(checkpoint.as_ref(), |records| {
            count.fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tx.blocking_send(SnapshotChunk { records, ..Default::default() }).is_ok()
        })
    });
    let sent = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    let produced = producer.await.map_err(|e| e.to_string())?;
    produced.map_err(|e| e.to_string())?;
    sent.map_err(|s| s.message().to_owned())?;
    Ok(counted.load(std::sync::atomic::Ordering::Relaxed))
}
