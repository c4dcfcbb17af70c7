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

/// An HTTP request (not gRPC: [`super::front::Front`] sends only those
/// here) for a path nothing serves: 404, as etcd's HTTP mux answers (the
/// gRPC router's fallback answers Unimplemented in a gRPC response, status
/// 200, which means nothing to an HTTP client).
pub async fn not_found(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let resp = next.run(req).await;
    if resp.headers().get("grpc-status").is_some_and(|v| v.as_bytes() == b"12") {
        return (StatusCode::NOT_FOUND, [("content-type", "text/plain; charset=utf-8")], "Not Found\n").into_response();
    }
    resp
}

/// etcd's access controller for the client port's HTTP requests (gRPC
/// calls never reach it, see [`super::front::Front`]): `--host-whitelist`
/// for plaintext connections, the CORS headers of `--cors`, and OPTIONS (a
/// CORS preflight) answered 200 on any path.
#[derive(Debug, Clone, Default)]
pub struct AccessControl {
    /// None: every origin.
    origins: Option<std::collections::HashSet<String>>,
    /// None: every host.
    hosts: Option<std::collections::HashSet<String>>,
}

impl AccessControl {
    pub fn new(cors: &str, host_whitelist: &str) -> Self {
        let set = |s: &str| {
            let items: std::collections::HashSet<String> = s.split(',').filter(|i| !i.is_empty()).map(str::to_string).collect();
            (!items.is_empty() && !items.contains("*")).then_some(items)
        };
        Self { origins: set(cors), hosts: set(host_whitelist) }
    }
}

/// etcd's answer to a plaintext request for a host not whitelisted (its
/// errCVE20185702 text, and the newline Go's http.Error adds).
fn misdirected(host: &str) -> String {
    format!(
        "\netcd received your request, but the Host header was unrecognized.\n\nTo fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n- Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\nThis requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    )
}

/// The host a request names, without its port (Go's GetHostname).
fn request_host(req: &axum::extract::Request) -> String {
    let host = req.headers().get("host").and_then(|h| h.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str())).unwrap_or_default();
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && (!h.contains(':') || h.starts_with('[')) => {
            h.trim_start_matches('[').trim_end_matches(']').to_string()
        }
        _ => host.to_string(),
    }
}

pub async fn access_control(
    axum::extract::State(ac): axum::extract::State<Arc<AccessControl>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let tls = req.extensions().get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>().is_some();
    if !tls && let Some(hosts) = &ac.hosts {
        let host = request_host(&req);
        if !hosts.contains(&host) {
            tracing::warn!(%host, "an HTTP request for a host not in --host-whitelist refused");
            let headers = [("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")];
            return (StatusCode::MISDIRECTED_REQUEST, headers, misdirected(&host)).into_response();
        }
    }
    let origin = match &ac.origins {
        None => Some("*".to_string()),
        Some(allowed) => req.headers().get("origin").and_then(|o| o.to_str().ok()).filter(|o| allowed.contains(*o)).map(str::to_string),
    };
    let mut resp = if req.method() == axum::http::Method::OPTIONS { StatusCode::OK.into_response() } else { next.run(req).await };
    if let Some(origin) = origin.and_then(|o| axum::http::HeaderValue::from_str(&o).ok()) {
        let h = resp.headers_mut();
        h.insert("access-control-allow-methods", axum::http::HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"));
        h.insert("access-control-allow-origin", origin);
        h.insert("access-control-allow-headers", axum::http::HeaderValue::from_static("accept, content-type, authorization"));
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
