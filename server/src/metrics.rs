//! Prometheus metrics with etcd's names, so the community's etcd dashboards
//! and alert rules work on raftkv. The instruments that count events are
//! process-wide (one member per process); values that are state (leader,
//! indexes, sizes) are read at scrape time from the node. It measures and
//! encodes; it decides nothing.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcHandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// The peer a member sends to, as etcd labels it (its id in hex).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerTo {
    To: String,
}

impl PeerTo {
    pub fn new(id: u64) -> Self {
        Self { To: format!("{id:x}") }
    }
}

/// The peer a member receives from.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerFrom {
    From: String,
}

impl PeerFrom {
    pub fn new(id: u64) -> Self {
        Self { From: format!("{id:x}") }
    }
}

type PeerHistograms = Family<PeerTo, Histogram, fn() -> Histogram>;

/// The event-counting instruments.
pub struct Instruments {
    pub leader_changes: Counter<u64, AtomicU64>,
    pub proposals_failed: Counter<u64, AtomicU64>,
    pub watch_fanout_dropped: Counter<u64, AtomicU64>,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    grpc_started: Family<GrpcLabels, Counter>,
    grpc_handled: Family<GrpcHandledLabels, Counter>,
    pub peer_rtt: PeerHistograms,
    pub peer_sent_bytes: Family<PeerTo, Counter>,
    pub peer_sent_failures: Family<PeerTo, Counter>,
    pub peer_received_bytes: Family<PeerFrom, Counter>,
    pub snapshot_send_success: Family<PeerTo, Counter>,
    pub snapshot_send_failures: Family<PeerTo, Counter>,
}

pub static METRICS: LazyLock<Instruments> = LazyLock::new(|| Instruments {
    leader_changes: Counter::default(),
    proposals_failed: Counter::default(),
    watch_fanout_dropped: Counter::default(),
    // etcd's buckets: 1 ms to 8 s.
    wal_fsync: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
    backend_commit: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
    grpc_started: Family::default(),
    grpc_handled: Family::default(),
    // etcd's buckets: 0.1 ms to 3.2 s.
    peer_rtt: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))),
    peer_sent_bytes: Family::default(),
    peer_sent_failures: Family::default(),
    peer_received_bytes: Family::default(),
    snapshot_send_success: Family::default(),
    snapshot_send_failures: Family::default(),
});

/// Seconds since `start`, for the histograms.
pub fn since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// The streaming RPCs, by method path (the rest are unary).
fn grpc_type(path: &str) -> &'static str {
    match path {
        "/etcdserverpb.Watch/Watch" | "/etcdserverpb.Lease/LeaseKeepAlive" => "bidi_stream",
        "/etcdserverpb.Maintenance/Snapshot" | "/v3electionpb.Election/Observe" => "server_stream",
        _ => "unary",
    }
}

/// gRPC status codes by number, as go-grpc-prometheus names them.
fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "Canceled",
        "2" => "Unknown",
        "3" => "InvalidArgument",
        "4" => "DeadlineExceeded",
        "5" => "NotFound",
        "6" => "AlreadyExists",
        "7" => "PermissionDenied",
        "8" => "ResourceExhausted",
        "9" => "FailedPrecondition",
        "10" => "Aborted",
        "11" => "OutOfRange",
        "12" => "Unimplemented",
        "13" => "Internal",
        "14" => "Unavailable",
        "15" => "DataLoss",
        "16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Counts gRPC calls as go-grpc-prometheus does: started for every call;
/// handled, with its code, when the call ends. A unary call's status is
/// known when its response starts (tonic sends a failure as a
/// trailers-only response, with `grpc-status` in the headers, and success
/// in the trailers); a stream's when its trailers go out, or, when the
/// client goes away first, Canceled.
pub struct GrpcCall {
    /// None for a path that names no service and method.
    labels: Option<GrpcLabels>,
}

impl GrpcCall {
    /// A gRPC call comes in: counted as started.
    pub fn start(req: &Request) -> Self {
        let path = req.uri().path();
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Self { labels: None };
        };
        let labels = GrpcLabels { grpc_type: grpc_type(path), grpc_service: service.to_owned(), grpc_method: method.to_owned() };
        METRICS.grpc_started.get_or_create(&labels).inc();
        Self { labels: Some(labels) }
    }

    /// Its response starts: a unary call, or a stream refused before it
    /// began, is counted as handled now; a stream's body counts it when
    /// it ends.
    pub fn answered(self, resp: Response) -> Response {
        let Some(labels) = self.labels else { return resp };
        let header_code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(code_name);
        match header_code {
            Some(code) => handled(labels, code),
            None if labels.grpc_type == "unary" => handled(labels, "OK"),
            None => return resp.map(|body| axum::body::Body::new(CountedStream { inner: body, labels: Some(labels) })),
        }
        resp
    }
}

fn handled(labels: GrpcLabels, code: &'static str) {
    let handled = GrpcHandledLabels {
        grpc_type: labels.grpc_type,
        grpc_service: labels.grpc_service,
        grpc_method: labels.grpc_method,
        grpc_code: code,
    };
    METRICS.grpc_handled.get_or_create(&handled).inc();
}

/// A streaming response's body, counted as handled when its trailers pass
/// (with their code), or when it is dropped unfinished (Canceled).
struct CountedStream {
    inner: axum::body::Body,
    /// Taken once counted.
    labels: Option<GrpcLabels>,
}

impl http_body::Body for CountedStream {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Some(labels) = self.labels.take()
        {
            handled(labels, trailers.get("grpc-status").and_then(|v| v.to_str().ok()).map_or("Unknown", code_name));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            handled(labels, "Canceled");
        }
    }
}

/// The node's state, read at scrape time.
#[derive(Debug)]
struct State {
    has_leader: bool,
    is_leader: bool,
    member_id: u64,
    committed: u64,
    applied: u64,
    db_total: u64,
    db_in_use: u64,
    quota: u64,
    keys: u64,
    watchers: u64,
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

impl Collector for State {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut enc;
        gauge(e, "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", i64::from(self.has_leader))?;
        gauge(e, "etcd_server_is_leader", "Whether or not this member is a leader. 1 if is, 0 otherwise.", i64::from(self.is_leader))?;
        gauge(e, "etcd_server_proposals_committed_total", "The total number of consensus proposals committed.", self.committed as i64)?;
        gauge(e, "etcd_server_proposals_applied_total", "The total number of consensus proposals applied.", self.applied as i64)?;
        gauge(
            e,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.committed.saturating_sub(self.applied) as i64,
        )?;
        gauge(e, "etcd_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes.", self.db_total as i64)?;
        gauge(e, "etcd_mvcc_db_total_size_in_use_in_bytes", "Total size of the underlying database logically in use in bytes.", self.db_in_use as i64)?;
        gauge(e, "etcd_server_quota_backend_bytes", "Current backend storage quota size in bytes.", self.quota as i64)?;
        gauge(e, "etcd_debugging_mvcc_keys_total", "Total number of keys.", self.keys as i64)?;
        gauge(e, "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", self.watchers as i64)?;
        let mut m = e.encode_descriptor(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(m.encode_family(&[("server_id", format!("{:x}", self.member_id))])?)?;
        let mut m = e.encode_descriptor(
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64).encode(m.encode_family(&[("server_version", crate::api::maintenance::ETCD_VERSION)])?)?;
        Ok(())
    }
}

/// The Prometheus text of everything, for `/metrics`.
pub fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let s = &node.raft.status;
    let size = node.engine.state_size();
    let state = State {
        has_leader: s.leader() != 0,
        is_leader: node.is_leader(),
        member_id: node.member.id,
        committed: s.commit(),
        applied: s.applied(),
        db_total: size.total,
        db_in_use: size.live,
        quota: node.quota.unwrap_or(0),
        keys: node.store.key_count() as u64,
        watchers: node.hub.len() as u64,
    };
    let m = &*METRICS;
    let mut reg = Registry::default();
    // `register` adds the period etcd's help texts end with, and counters
    // get their `_total` suffix when encoded.
    reg.register("etcd_server_leader_changes_seen", "The number of leader changes seen", m.leader_changes.clone());
    reg.register("etcd_server_proposals_failed", "The total number of failed proposals seen", m.proposals_failed.clone());
    reg.register(
        "raftkv_watch_fanout_dropped",
        "Revisions the watch fan-out queue had no room for (their watchers caught up from history instead)",
        m.watch_fanout_dropped.clone(),
    );
    reg.register("etcd_disk_wal_fsync_duration_seconds", "The latency distributions of fsync called by WAL", m.wal_fsync.clone());
    reg.register(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend",
        m.backend_commit.clone(),
    );
    reg.register("grpc_server_started", "Total number of RPCs started on the server", m.grpc_started.clone());
    reg.register(
        "grpc_server_handled",
        "Total number of RPCs completed on the server, regardless of success or failure",
        m.grpc_handled.clone(),
    );
    reg.register(
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        m.peer_rtt.clone(),
    );
    reg.register("etcd_network_peer_sent_bytes", "The total number of bytes sent to peers", m.peer_sent_bytes.clone());
    reg.register("etcd_network_peer_sent_failures", "The total number of send failures from peers", m.peer_sent_failures.clone());
    reg.register("etcd_network_peer_received_bytes", "The total number of bytes received from peers", m.peer_received_bytes.clone());
    reg.register("etcd_network_snapshot_send_success", "Total number of successful snapshot sends", m.snapshot_send_success.clone());
    reg.register("etcd_network_snapshot_send_failures", "Total number of snapshot send failures", m.snapshot_send_failures.clone());
    reg.register_collector(Box::new(state));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}
