//! The HTTP endpoints on the client URL: `/health` answers
//! `{"health":"true"}` on a healthy member and `/version` names the server
//! and cluster versions, as etcd's do (load balancers and Kubernetes probes
//! read them).

use std::time::Duration;

use anyhow::{Context, ensure};
use raftkv_tests::cluster::{eventually, for_each_flavor};
use raftkv_tests::{Cluster, Flavor, Server, selected_flavors};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.0 GET on the server's client port: status code and body.
async fn http_get(server: &Server, path: &str) -> anyhow::Result<(u16, String)> {
    let address = server.endpoint().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address)
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .with_context(|| format!("GET {path} timed out"))??;
    let response = String::from_utf8(response).context("the response is not UTF-8")?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((status, body.trim().to_owned()))
}

#[tokio::test]
async fn health_and_version_answer_like_etcd() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let server = Server::start(flavor).await?;
        let (status, body) = http_get(&server, "/health").await?;
        ensure!(
            status == 200,
            "{}: /health answered {status}: {body}",
            flavor.name()
        );
        let health: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("/health body {body:?}"))?;
        ensure!(
            health["health"] == "true",
            "{}: /health body {body}",
            flavor.name()
        );

        let (status, body) = http_get(&server, "/version").await?;
        ensure!(
            status == 200,
            "{}: /version answered {status}: {body}",
            flavor.name()
        );
        let version: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("/version body {body:?}"))?;
        for field in ["etcdserver", "etcdcluster"] {
            ensure!(
                version[field].is_string(),
                "{}: /version has no {field:?}: {body}",
                flavor.name()
            );
        }
        // Status tells the same server version (raftkv adds its own as
        // semver build metadata, which version comparisons ignore).
        let status = server.client().await?.status().await?.version().to_owned();
        let server_version = version["etcdserver"].as_str().unwrap_or_default();
        let (core, build) = status.split_once('+').unwrap_or((status.as_str(), ""));
        ensure!(core == server_version, "{}: Status says {status:?}, /version {body}", flavor.name());
        if flavor == Flavor::Raftkv {
            let own = version["raftkv"].as_str().unwrap_or_default();
            ensure!(
                !own.is_empty() && build == format!("raftkv.{own}"),
                "raftkv's Status version {status:?} does not carry its own version from /version {body}"
            );
            // kube-apiserver enables watch progress requests from 3.4.31.
            let parts: Vec<u32> = core.split('.').map(|p| p.parse()).collect::<Result<_, _>>().with_context(|| format!("Status version {status:?}"))?;
            ensure!(parts.len() == 3 && parts >= vec![3, 4, 31], "raftkv tells etcd version {core}, below 3.4.31");
        }
    }
    Ok(())
}

/// `name{labels}` -> value for every sample of a Prometheus text page.
fn samples(page: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            Some((name.to_owned(), labels, value.parse().ok()?))
        })
        .collect()
}

/// The sum of the samples named `name` whose labels include `with`.
fn value(page: &str, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples(page)
        .into_iter()
        .filter(|(n, labels, _)| n == name && with.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// The metrics the community's etcd dashboards and alert rules read, on
/// the client URL and on `--listen-metrics-urls`, moving with load.
#[tokio::test]
async fn metrics_have_etcds_names_and_move_with_load() -> anyhow::Result<()> {
    const NAMES: &[&str] = &[
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_server_proposals_pending",
        "etcd_server_proposals_failed_total",
        "etcd_server_quota_backend_bytes",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_mvcc_db_total_size_in_use_in_bytes",
        "etcd_debugging_mvcc_keys_total",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "grpc_server_started_total",
        "grpc_server_handled_total",
    ];
    for flavor in selected_flavors()? {
        let metrics_port = raftkv_tests::ports::free_port()?;
        let metrics_url = format!("http://127.0.0.1:{metrics_port}");
        let server = Server::start_with(flavor, &["--listen-metrics-urls", &metrics_url]).await?;
        let mut c = server.client().await?;
        c.put("warm", "up", None).await?;
        let (code, before) = http_get(&server, "/metrics").await?;
        ensure!(code == 200, "{}: /metrics answered {code}", flavor.name());
        for name in NAMES {
            ensure!(value(&before, name, &[]).is_some(), "{}: no {name} in /metrics", flavor.name());
        }
        ensure!(value(&before, "etcd_server_has_leader", &[]) == Some(1.0), "{}: has_leader", flavor.name());
        for i in 0..20 {
            c.put(format!("k{i}"), "v", None).await?;
        }
        let (_, after) = http_get(&server, "/metrics").await?;
        let put = [("grpc_method", "Put"), ("grpc_code", "OK"), ("grpc_type", "unary"), ("grpc_service", "etcdserverpb.KV")];
        let moved = |name: &str, with: &[(&str, &str)]| value(&after, name, with).unwrap_or(0.0) - value(&before, name, with).unwrap_or(0.0);
        ensure!(moved("grpc_server_handled_total", &put) >= 20.0, "{}: Put handled moved {}", flavor.name(), moved("grpc_server_handled_total", &put));
        ensure!(moved("etcd_server_proposals_committed_total", &[]) >= 20.0, "{}: committed did not move", flavor.name());
        ensure!(moved("etcd_disk_wal_fsync_duration_seconds_count", &[]) >= 1.0, "{}: no fsync observed", flavor.name());
        ensure!(moved("etcd_debugging_mvcc_keys_total", &[]) == 20.0, "{}: 20 new keys counted as {}", flavor.name(), moved("etcd_debugging_mvcc_keys_total", &[]));

        // Streams are counted as handled when they end: a snapshot read
        // to its end (OK), a watch the client closed.
        let mut snap = c.snapshot().await?;
        while snap.message().await?.is_some() {}
        let mut watch_stream = c.watch("w", None).await?;
        watch_stream.message().await?.context("no created response")?;
        drop(watch_stream);
        let snapshot = [("grpc_method", "Snapshot"), ("grpc_code", "OK"), ("grpc_type", "server_stream")];
        let watch = [("grpc_method", "Watch"), ("grpc_type", "bidi_stream")];
        eventually(Duration::from_secs(10), async || {
            let (_, now) = http_get(&server, "/metrics").await?;
            let moved = |with: &[(&str, &str)]| value(&now, "grpc_server_handled_total", with).unwrap_or(0.0) - value(&before, "grpc_server_handled_total", with).unwrap_or(0.0);
            ensure!(moved(&snapshot) == 1.0 && moved(&watch) == 1.0, "handled streams: snapshot {}, watch {}", moved(&snapshot), moved(&watch));
            Ok(())
        })
        .await
        .with_context(|| flavor.name())?;

        // The same page on the metrics URL.
        let mut stream = TcpStream::connect(("127.0.0.1", metrics_port)).await?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n").await?;
        let mut page = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut page)).await??;
        let page = String::from_utf8(page)?;
        ensure!(page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"), "{}: metrics URL: {page:.200}", flavor.name());
        ensure!(value(&page, "etcd_server_has_leader", &[]) == Some(1.0), "{}: no metrics on {metrics_url}", flavor.name());
    }
    Ok(())
}

/// etcd's peer metrics on a 3-member cluster: bytes sent to and received
/// from each peer move with writes; raftkv also measures the round trip to
/// each peer at once (etcd observes its smoothed RTT every 30 s, too slow
/// to wait for here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_metrics_move_with_replication() -> anyhow::Result<()> {
    for_each_flavor(3, &[], async |cluster: &mut Cluster| {
        let leader = cluster.leader().await?;
        let peers: Vec<usize> = cluster.members().into_iter().filter(|&i| i != leader).collect();
        let page = |i: usize| {
            let server = cluster.member(i).server();
            async move { http_get(server, "/metrics").await.map(|(_, page)| page) }
        };
        let hex = |i: usize| format!("{:x}", cluster.member(i).id());
        let before = page(leader).await?;
        let mut c = cluster.client(leader).await?;
        for i in 0..50 {
            c.put(format!("k{i}"), vec![b'v'; 1000], None).await?;
        }
        let after = page(leader).await?;
        for &p in &peers {
            let to = hex(p);
            let sent = |page: &str| value(page, "etcd_network_peer_sent_bytes_total", &[("To", &to)]).unwrap_or(0.0);
            ensure!(
                sent(&after) - sent(&before) >= 50_000.0,
                "bytes sent to m{p} ({to}) moved by {} for 50 puts of 1000 bytes",
                sent(&after) - sent(&before)
            );
            let from = hex(leader);
            let received = value(&page(p).await?, "etcd_network_peer_received_bytes_total", &[("From", &from)]).unwrap_or(0.0);
            ensure!(received >= 50_000.0, "m{p} received {received} bytes from the leader ({from})");
        }
        if cluster.flavor() == Flavor::Raftkv {
            eventually(Duration::from_secs(15), async || {
                let page = page(leader).await?;
                for &p in &peers {
                    let to = hex(p);
                    let count = value(&page, "etcd_network_peer_round_trip_time_seconds_count", &[("To", &to)]).unwrap_or(0.0);
                    let sum = value(&page, "etcd_network_peer_round_trip_time_seconds_sum", &[("To", &to)]).unwrap_or(0.0);
                    ensure!(count >= 1.0 && sum > 0.0 && sum / count < 1.0, "round trip to m{p}: {count} probes, {sum} s in all");
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    })
    .await
}
