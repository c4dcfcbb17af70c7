//! The whole server: start the node, wait until it can serve, serve gRPC
//! and HTTP on every client URL, compact on schedule, stop on `shutdown`.

use std::future::Future;
use std::sync::Arc;

use etcd_client::proto::{PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbWatchServer};
use futures::TryStreamExt;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

use crate::api::coalesce::Coalesced;
use crate::api::v3electionpb::election_server::ElectionServer;
use crate::api::auth::AuthService;
use crate::api::etcdserverpb::auth_server::AuthServer;
use crate::api::v3lockpb::lock_server::LockServer;
use crate::api::{cluster::ClusterService, election::ElectionService, lock::LockService, http, kv::KvService, lease::LeaseService, maintenance::MaintenanceService, watch::WatchService};
use crate::config::{Config, split_urls, url_addr};
use crate::node::{Node, StartError};
use crate::peer::proto::peer_server::PeerServer;
use crate::peer::service::PeerService;

/// gRPC allows this much above --max-request-bytes, as etcd does, so that
/// an oversized request gets etcd's "request is too large".
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

fn routes(node: &Arc<Node>, max_msg: usize, access: http::AccessControl) -> Routes {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    drop(health_reporter); // The default "" service reports SERVING.
    let mut routes = Routes::new(health)
        .add_service(PbKvServer::new(KvService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(PbMaintenanceServer::new(MaintenanceService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(PbClusterServer::new(ClusterService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(PbLeaseServer::new(LeaseService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(PbWatchServer::new(WatchService::new(node.clone(), node.hub.clone())).max_decoding_message_size(max_msg))
        .add_service(LockServer::new(LockService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(ElectionServer::new(ElectionService::new(node.clone())).max_decoding_message_size(max_msg))
        .add_service(AuthServer::new(AuthService::new(node.clone())).max_decoding_message_size(max_msg));
    let grpc = std::mem::take(routes.axum_router_mut());
    // The JSON gateway calls the same services; its bodies hold base64 (a
    // third larger) in JSON. (gRPC calls pass the front, which refuses one
    // requiring a leader when there is none; the gateway's pass this.)
    let gateway_grpc = grpc.clone().layer(axum::middleware::from_fn_with_state(node.clone(), crate::api::require_leader));
    let gateway = crate::api::gateway::router(gateway_grpc, 2 * max_msg);
    // Made ready here (tonic prepares only the router it is given, the
    // front's): a route whose handler was never given a state is rebuilt
    // for every request.
    let router = grpc.merge(http::router(node.clone())).merge(gateway).with_state(());
    let front = crate::api::front::Front::new(node.clone(), router, access);
    Routes::from(axum::Router::new().fallback_service(front))
}

/// Runs until `shutdown` resolves, then stops gracefully.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), StartError> {
    let auto_compaction = cfg.auto_compaction().map_err(StartError::Config)?;
    cfg.validate().map_err(StartError::Config)?;
    // Certificate files are read before anything starts: a member must not
    // join a cluster it cannot serve clients of. A generated one goes into
    // the data dir, once that is checked and made.
    let generate = cfg.auto_tls && cfg.cert_file.is_empty();
    let mut client_tls = if generate { None } else { client_tls_config(&cfg)? };
    let generate_peer = cfg.peer_auto_tls && cfg.peer_cert_file.is_empty();
    let mut peer_tls = if generate_peer { None } else { peer_tls_config(&cfg)? };
    // etcd checks a member's data against its peers' only if it had data.
    let had_data = std::path::Path::new(&cfg.data_dir()).join("member").exists();
    let (node, raft_thread) = Node::start(&cfg).await?;
    if generate {
        client_tls = client_tls_config(&cfg)?;
    }
    if generate_peer {
        peer_tls = peer_tls_config(&cfg)?;
    }
    tracing::info!(name = %cfg.name, member_id = %format!("{:x}", node.member.id), data_dir = %cfg.data_dir(), "raftkv starting");

    // Peers first: without them there is no leader to wait for.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut peer_servers = Vec::new();
    for url in split_urls(&cfg.listen_peer_urls) {
        let addr = url_addr(&url).map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Listen { url: url.clone(), error })?;
        let tls = if url.starts_with("https://") { peer_tls.clone() } else { None };
        tracing::info!(%url, tls = tls.is_some(), "serving peer traffic");
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // The Cluster service too: followers forward membership changes to
        // the leader's peer port (etcd's peer handlers), with the peer
        // port's certificates.
        let builder = tonic::transport::Server::builder()
            .add_service(
                PeerServer::new(PeerService::new(node.clone()))
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20),
            )
            .add_service(PbClusterServer::new(ClusterService::for_peers(node.clone())));
        let server = match tls {
            None => tokio::spawn(builder.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), stopped)),
            Some(config) => {
                // etcd's peer listener: a client certificate's addresses
                // must include the address it connects from.
                let check = (!cfg.experimental_peer_skip_client_san_verification).then_some(crate::tls::ClientCheck::SanMatchesRemote);
                tokio::spawn(builder.serve_with_incoming_shutdown(crate::tls::incoming(listener, config, check), stopped))
            }
        };
        peer_servers.push(server);
    }

    tokio::pin!(shutdown);
    tokio::select! {
        _ = node.wait_ready() => {}
        _ = raft_failed(node.clone()) => {
            let _ = stop_tx.send(true);
            return Err(StartError::RaftFailed);
        }
        _ = removed(node.clone()) => {
            tracing::warn!("this member has been permanently removed from the cluster; shutting down");
            let _ = stop_tx.send(true);
            node.stop();
            let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
            return Ok(());
        }
        _ = &mut shutdown => {
            tracing::info!("stopped before the member was ready");
            let _ = stop_tx.send(true);
            node.stop();
            let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
            return Ok(());
        }
    }
    if cfg.experimental_initial_corrupt_check
        && had_data
        && let Err(e) = crate::corrupt::initial_check(&node).await
    {
        tracing::error!(error = %e, "initial corruption check failed");
        let _ = stop_tx.send(true);
        node.stop();
        let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
        return Err(StartError::DataDir(e));
    }
    tracing::info!(revision = node.store.current_revision(), "ready to serve client requests");
    let publisher = tokio::spawn({
        let node = node.clone();
        async move { node.publish().await }
    });

    let mut listeners = Vec::new();
    for url in split_urls(&cfg.listen_client_urls) {
        let addr = url_addr(&url).map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Listen { url: url.clone(), error })?;
        let tls = if url.starts_with("https://") { client_tls.clone() } else { None };
        if tls.is_some() {
            tracing::info!(%url, client_cert_auth = cfg.client_cert_auth, "serving client traffic over TLS");
        } else {
            tracing::info!(%url, "serving client traffic");
        }
        listeners.push((listener, tls));
    }

    for url in split_urls(&cfg.listen_metrics_urls) {
        let addr = url_addr(&url).map_err(StartError::Config)?;
        let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Listen { url: url.clone(), error })?;
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let router = http::metrics_router(node.clone());
        // As etcd: an https:// metrics URL is served with the client port's
        // TLS (its certificate, and client certificates if it asks for them).
        match client_tls.clone().filter(|_| url.starts_with("https://")) {
            Some(config) => {
                tracing::info!(%url, "serving metrics over TLS");
                let server = tonic::transport::Server::builder().accept_http1(true).add_routes(Routes::from(router));
                tokio::spawn(server.serve_with_incoming_shutdown(crate::tls::incoming(listener, config, None), stopped));
            }
            None => {
                tracing::info!(%url, "serving metrics");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, router).with_graceful_shutdown(stopped).await;
                });
            }
        }
    }
    let compactor = tokio::spawn(crate::compactor::run(node.clone(), auto_compaction, stop_rx.clone()));
    let expiry = tokio::spawn(expire_leases(node.clone(), stop_rx.clone()));
    let checkpoints = cfg
        .experimental_enable_lease_checkpoint
        .then(|| tokio::spawn(checkpoint_leases(node.clone(), cfg.experimental_lease_checkpoint_interval, stop_rx.clone())));
    let catch_up = tokio::spawn(node.hub.clone().run_catch_up(stop_rx.clone()));
    let corrupt_check = (!cfg.experimental_corrupt_check_time.is_zero())
        .then(|| tokio::spawn(crate::corrupt::run_periodic(node.clone(), cfg.experimental_corrupt_check_time, stop_rx.clone())));
    let progress = tokio::spawn(notify_progress(node.clone(), stop_rx.clone()));
    let max_msg = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let mut servers = Vec::new();
    for (listener, tls) in listeners {
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // etcd's --max-concurrent-streams and --grpc-keepalive-*: a client
        // silent past interval + timeout is dropped, its streams with it.
        let nonzero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let builder = tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .http2_keepalive_interval(nonzero(cfg.grpc_keepalive_interval))
            .http2_keepalive_timeout(nonzero(cfg.grpc_keepalive_timeout))
            .add_routes(routes(&node, max_msg, http::AccessControl::new(&cfg.cors, &cfg.host_whitelist)));
        let server = match tls {
            // Nagle's algorithm would hold each response's trailer until the
            // client's delayed ACK (about 40 ms a request): off, as in etcd
            // (the TLS acceptor turns it off too). Responses ready together
            // leave in one write (api::coalesce).
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).map_ok(Coalesced::new);
                tokio::spawn(builder.serve_with_incoming_shutdown(incoming, stopped))
            }
            Some(config) => {
                let incoming = crate::tls::incoming(listener, config, None).map_ok(Coalesced::new);
                tokio::spawn(builder.serve_with_incoming_shutdown(incoming, stopped))
            }
        };
        servers.push(server);
    }

    tokio::select! {
        _ = &mut shutdown => tracing::info!("shutting down"),
        _ = removed(node.clone()) => tracing::warn!("this member has been permanently removed from the cluster; shutting down"),
        _ = raft_failed(node.clone()) => {
            // Nothing can be persisted: no graceful stop (it would wait on
            // the raft loop), the process exits and its supervisor restarts it.
            tracing::error!("the raft loop or the compactor stopped; exiting");
            return Err(StartError::RaftFailed);
        }
    }
    publisher.abort();
    let _ = stop_tx.send(true);
    // etcd's stopServers: a graceful stop for up to the request timeout,
    // then the connections still open are dropped (watch streams and
    // requests that wait on a raft this member no longer takes part in
    // would hold a graceful stop forever).
    let deadline = tokio::time::Instant::now() + cfg.request_timeout();
    for s in peer_servers {
        stop_server(s, deadline, "peer").await;
    }
    for s in servers {
        stop_server(s, deadline, "client").await;
    }
    let _ = compactor.await;
    let _ = expiry.await;
    if let Some(c) = checkpoints {
        let _ = c.await;
    }
    let _ = catch_up.await;
    if let Some(c) = corrupt_check {
        let _ = c.await;
    }
    let _ = progress.await;
    node.stop();
    let _ = tokio::task::spawn_blocking(move || raft_thread.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// The client port's TLS, when a client or metrics URL is https://.
fn client_tls_config(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    let urls = [split_urls(&cfg.listen_client_urls), split_urls(&cfg.listen_metrics_urls)].concat();
    if !urls.iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let hosts = url_hosts(&[&cfg.listen_client_urls, &cfg.advertise_client_urls, &cfg.listen_metrics_urls]);
    let dir = std::path::Path::new(&cfg.data_dir()).join("fixtures").join("client");
    crate::tls::server_config(&cfg.client_tls(), &dir, &hosts).map(Some).map_err(StartError::Config)
}

/// The peer port's TLS, when a peer URL is https://.
fn peer_tls_config(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, StartError> {
    if !split_urls(&cfg.listen_peer_urls).iter().any(|u| u.starts_with("https://")) {
        return Ok(None);
    }
    let hosts = url_hosts(&[&cfg.listen_peer_urls, &cfg.initial_advertise_peer_urls]);
    let dir = std::path::Path::new(&cfg.data_dir()).join("fixtures").join("peer");
    crate::tls::server_config(&cfg.peer_tls(), &dir, &hosts).map(Some).map_err(StartError::Config)
}

/// The host names of every URL of the given lists (for a generated
/// certificate).
fn url_hosts(lists: &[&str]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for list in lists {
        for url in split_urls(list) {
            let rest = url.split("://").nth(1).unwrap_or(&url);
            let hostport = rest.split('/').next().unwrap_or(rest);
            let host = match hostport.rsplit_once(':') {
                Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
                _ => hostport,
            };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            if !host.is_empty() && !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

/// Waits for a server's graceful stop until `deadline`, then drops it with
/// the connections it still holds.
async fn stop_server(server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, deadline: tokio::time::Instant, kind: &str) {
    let abort = server.abort_handle();
    match tokio::time::timeout_at(deadline, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "{kind} server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "{kind} server task failed"),
        Err(_) => {
            tracing::warn!("{kind} connections still open at the stop deadline; closing them");
            abort.abort();
        }
    }
}

/// Resolves once the raft loop has stopped on a failure.
async fn raft_failed(node: Arc<Node>) {
    while !node.raft.status.failed() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Resolves once this member knows it was removed from the cluster, after
/// leaving time for the hand-over of leadership and the last messages.
async fn removed(node: Arc<Node>) {
    while !node.raft.status.removed() {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(node.election_timeout).await;
}

/// The leader revokes expired leases through raft; a member that becomes
/// leader first gives every lease its checkpointed remaining TTL (or its
/// full TTL), plus an election timeout, as etcd does.
async fn expire_leases(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = node.is_leader();
        node.lessor.lead(leader, node.election_timeout);
        if !leader {
            continue;
        }
        for id in node.lessor.expired() {
            let revoke = etcd_client::proto::PbLeaseRevokeRequest { id };
            match node.propose(crate::apply::request::Op::LeaseRevoke(revoke)).await {
                Ok(_) | Err(crate::error::Error::LeaseNotFound) => tracing::info!(lease = %format!("{id:x}"), "lease expired"),
                Err(e) => tracing::warn!(lease = %format!("{id:x}"), error = %e, "revoking an expired lease failed"),
            }
        }
    }
}

/// etcd's maxLeaseCheckpointBatchSize.
const MAX_CHECKPOINT_BATCH: usize = 1000;

/// The leader checkpoints the remaining TTL of every lease with more than
/// an interval left, through raft, once per interval (etcd's lease
/// checkpointing), so that a new leader counts from it.
async fn checkpoint_leases(node: Arc<Node>, interval: std::time::Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    use crate::apply::request::{LeaseCheckpoint, LeaseCheckpointRequest, Op};
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.is_leader() {
            continue;
        }
        let due = node.lessor.due_checkpoints(interval);
        for batch in due.chunks(MAX_CHECKPOINT_BATCH) {
            let checkpoints = batch.iter().map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl }).collect();
            if let Err(e) = node.propose(Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints })).await {
                tracing::warn!(error = %e, "checkpointing leases failed");
                break;
            }
        }
    }
}

/// etcd's default progress notification interval for watchers that ask.
const PROGRESS_NOTIFY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

async fn notify_progress(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_NOTIFY_INTERVAL) => node.hub.notify_progress(),
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
