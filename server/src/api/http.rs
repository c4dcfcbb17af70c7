//! HTTP on the client port, beside gRPC: `/health` and `/version` as etcd
//! serves them.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use super::maintenance::{ETCD_CLUSTER_VERSION, ETCD_VERSION, RAFTKV_VERSION};
use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new().route("/health", get(health)).route("/version", get(version)).route("/metrics", get(metrics)).with_state(node)
}

/// What `--listen-metrics-urls` serves: metrics and health only.
pub fn metrics_router(node: Arc<Node>) -> Router {
    Router::new().route("/health", get(health)).route("/metrics", get(metrics)).with_state(node)
}

/// A request that is not gRPC for a path nothing serves: 404, as etcd's
/// HTTP mux answers (the gRPC router's fallback answers Unimplemented in a
/// gRPC response, status 200, which means nothing to an HTTP client).
pub async fn not_found_unless_grpc(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let resp = next.run(req).await;
    if !grpc && resp.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"12") {
        return (StatusCode::NOT_FOUND, [("content-type", "text/plain; charset=utf-8")], "Not Found\n").into_response();
    }
    resp
}

async fn metrics(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> impl IntoResponse {
    match crate::metrics::render(&node) {
        Ok(text) => (StatusCode::OK, [("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", "text/plain")], e.to_string()),
    }
}

async fn health(axum::extract::State(node): axum::extract::State<Arc<Node>>) -> impl IntoResponse {
    // As etcd 3.4: any active alarm makes a member unhealthy.
    let healthy = node.alarms.list(crate::alarm::NONE).is_empty()
        && node.raft.status.leader() != 0
        && tokio::time::timeout(Duration::from_secs(1), node.raft.read_index()).await.is_ok_and(|r| r.is_ok());
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [("content-type", "application/json")], format!("{{\"health\":\"{healthy}\"}}"))
}

async fn version() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        format!("{{\"etcdserver\":\"{ETCD_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\",\"raftkv\":\"{RAFTKV_VERSION}\"}}"),
    )
}
