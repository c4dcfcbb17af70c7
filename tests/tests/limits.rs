//! Limits against abuse (issue 17, part 4), against etcd and raftkv alike:
//! `--max-concurrent-streams` caps the streams of one connection (a call
//! beyond waits for a free one; other connections are served), and
//! `--grpc-keepalive-interval`/`--grpc-keepalive-timeout` drop a client
//! that no longer answers pings, its watchers with it; and raftkv's own
//! `--max-watchers-per-stream`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use raftkv_tests::binaries::ETCDCTL;
use raftkv_tests::cluster::eventually;
use raftkv_tests::{Server, selected_flavors};

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_gets_no_more_streams_than_max_concurrent_streams() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let name = flavor.name();
        let server = Server::start_with(flavor, &["--max-concurrent-streams", "2"]).await?;
        let mut client = server.client().await?;
        client.put("k", "v", None).await?;
        let mut s1 = client.watch("a", None).await?;
        let mut s2 = client.watch("b", None).await?;
        for s in [&mut s1, &mut s2] {
            let created = tokio::time::timeout(Duration::from_secs(5), s.message()).await.context("a watch was not created")??;
            anyhow::ensure!(created.is_some_and(|r| r.created()), "{name}: a watch was not created");
        }
        // Both streams of the connection are open: a third call waits.
        let mut waiting = client.clone();
        let third = tokio::spawn(async move { waiting.get("k", None).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!third.is_finished(), "{name}: a third stream on a connection allowed two");
        // Another connection is served meanwhile: the server is healthy.
        let mut other = server.client().await?;
        let r = tokio::time::timeout(Duration::from_secs(5), other.get("k", None)).await.context("another connection")??;
        assert_eq!(r.kvs().len(), 1, "{name}");
        // A stream ends: the waiting call goes through.
        drop(s1);
        let r = tokio::time::timeout(Duration::from_secs(10), third).await.with_context(|| format!("{name}: the waiting call never got a stream"))???;
        assert_eq!(r.kvs().len(), 1, "{name}");
    }
    Ok(())
}

/// The server's `etcd_debugging_mvcc_watcher_total`.
fn watchers(server: &Server) -> anyhow::Result<u64> {
    let out = Command::new("curl").args(["-sS", &format!("{}/metrics", server.endpoint())]).output().context("cannot run curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no etcd_debugging_mvcc_watcher_total in /metrics: {}", text.lines().count()))
}

/// A child killed on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_answering_pings_is_dropped_with_its_watchers() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let name = flavor.name();
        let server = Server::start_with(flavor, &["--grpc-keepalive-interval", "1s", "--grpc-keepalive-timeout", "1s"]).await?;
        let before = watchers(&server)?;
        let child = Command::new(ETCDCTL)
            .args(["--endpoints", &server.endpoint(), "watch", "k"])
            .env("ETCDCTL_API", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run etcdctl")?;
        let child = Child(child);
        eventually(Duration::from_secs(10), async || { anyhow::ensure!(watchers(&server)? == before + 1, "the watch is not there yet"); Ok(()) }).await?;
        // Stopped: its kernel still acknowledges, but nobody answers pings.
        let stopped = Command::new("kill").args(["-STOP", &child.0.id().to_string()]).status()?;
        anyhow::ensure!(stopped.success(), "cannot stop etcdctl");
        eventually(Duration::from_secs(15), async || {
            anyhow::ensure!(watchers(&server)? == before, "{name}: the silent client's watcher is still there");
            Ok(())
        })
        .await?;
        // The server serves on.
        server.client().await?.put("k", "v", None).await?;
    }
    Ok(())
}

/// The next response on a watch stream within a few seconds.
async fn next(stream: &mut etcd_client::WatchStream) -> anyhow::Result<etcd_client::WatchResponse> {
    tokio::time::timeout(Duration::from_secs(5), stream.message()).await.context("no watch response")??.context("the watch stream ended")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_stream_holds_no_more_watchers_than_its_bound() -> anyhow::Result<()> {
    // raftkv's own bound (etcd has none): a client cannot pile watchers on
    // one stream without end.
    let server = Server::start_with(raftkv_tests::Flavor::Raftkv, &["--max-watchers-per-stream", "3"]).await?;
    let mut client = server.client().await?;
    let mut stream = client.watch("k0", None).await?;
    let mut ids = vec![next(&mut stream).await?.watch_id()];
    for key in ["k1", "k2"] {
        stream.watch(key, None).await?;
        let r = next(&mut stream).await?;
        anyhow::ensure!(r.created() && !r.canceled(), "{r:?}");
        ids.push(r.watch_id());
    }
    stream.watch("k3", None).await?;
    let r = next(&mut stream).await?;
    assert!(r.created() && r.canceled(), "a fourth watcher: {r:?}");
    assert_eq!(r.cancel_reason(), "etcdserver: too many requests");
    // Another stream has a bound of its own; one canceled makes room.
    let mut other = client.watch("k4", None).await?;
    assert!(next(&mut other).await?.created());
    stream.cancel(ids[0]).await?;
    let r = next(&mut stream).await?;
    assert!(r.canceled() && r.watch_id() == ids[0], "{r:?}");
    stream.watch("k5", None).await?;
    let r = next(&mut stream).await?;
    assert!(r.created() && !r.canceled(), "after a cancel: {r:?}");
    // The watchers still deliver.
    client.put("k5", "v", None).await?;
    let r = next(&mut stream).await?;
    assert_eq!(r.events().len(), 1, "{r:?}");
    Ok(())
}
