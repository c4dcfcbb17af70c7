//! The HTTP endpoints on the client URL: `/health` answers
//! `{"health":"true"}` on a healthy member and `/version` names the server
//! and cluster versions, as etcd's do (load balancers and Kubernetes probes
//! read them).

use std::time::Duration;

use anyhow::{Context, ensure};
use raftkv_tests::{Server, selected_flavors};
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
    }
    Ok(())
}
