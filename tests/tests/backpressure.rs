//! Backpressure: a member keeps at most 8192 proposals in flight. While a
//! leader cannot commit (both followers paused with SIGSTOP), the first
//! 8192 puts wait and every one beyond is refused at once with etcd's
//! "etcdserver: too many requests" (ResourceExhausted), instead of queueing
//! without bound. Once the followers resume, the waiting puts end (applied,
//! or "leader changed" if the leader stepped down), and every put
//! acknowledged is in the store. Raftkv's own bound: etcd keeps no such
//! count (its only "too many requests" is a commit/apply gap), so there is
//! no etcd side.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use raftkv_tests::{Cluster, Flavor, describe};

/// `apply::MAX_PENDING_PROPOSALS` in the server.
const LIMIT: usize = 8192;
const CONNECTIONS: usize = 64;
/// 64 x 132 = 8448: 256 past the limit.
const PER_CONNECTION: usize = 132;
const TOO_MANY: &str = "ResourceExhausted: etcdserver: too many requests";

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status()?;
    ensure!(status.success(), "kill {sig} {pid} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proposals_past_the_pending_limit_are_refused_at_once_and_the_rest_end() -> anyhow::Result<()> {
    // A long election timeout: the paused followers do not make the leader
    // step down before every put has arrived.
    let cluster = Cluster::start(Flavor::Raftkv, 3, &["--heartbeat-interval", "300", "--election-timeout", "3000"]).await?;
    let leader = cluster.leader().await?;
    let followers = cluster.followers().await?;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(cluster.client(leader).await?);
    }
    let pids: Vec<u32> = followers.iter().map(|&f| cluster.member(f).server().pid().context("a follower is not running")).collect::<anyhow::Result<_>>()?;
    for &pid in &pids {
        signal(pid, "-STOP")?;
    }
    let began = Instant::now();
    let mut tasks = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for i in 0..PER_CONNECTION {
            let mut kv = client.kv_client();
            tasks.push(tokio::spawn(async move {
                let key = format!("bp/{c:02}/{i:03}");
                let started = Instant::now();
                let outcome = kv.put(key.as_str(), "v", None).await;
                (key, outcome.map(|r| r.header().map(|h| h.revision()).unwrap_or_default()), started.elapsed())
            }));
        }
    }
    // Every put has reached the leader once the refusals are in: give them
    // a moment, then let the followers run again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for &pid in &pids {
        signal(pid, "-CONT")?;
    }
    let mut refused = Vec::new();
    let mut acked = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (key, outcome, took) = t.await?;
        match outcome {
            Ok(revision) => acked.push((key, revision)),
            Err(e) if describe::error(&e) == TOO_MANY => refused.push(took),
            Err(e) => other.push(describe::error(&e)),
        }
    }
    let total = CONNECTIONS * PER_CONNECTION;
    println!(
        "{total} puts with the followers paused for {:?}: {} refused, {} acknowledged, {} failed otherwise",
        began.elapsed(),
        refused.len(),
        acked.len(),
        other.len()
    );
    // A few slots may hold the member's own proposals (lease checkpoints).
    ensure!(
        refused.len() >= total - LIMIT && refused.len() <= total - LIMIT + 16,
        "{} of {total} puts refused as too many requests; expected {} (the limit is {LIMIT})",
        refused.len(),
        total - LIMIT
    );
    let slowest = refused.iter().max().copied().unwrap_or_default();
    ensure!(slowest < Duration::from_secs(2), "a refusal took {slowest:?}: it should come at once, not after waiting");
    for e in &other {
        ensure!(e.starts_with("Unavailable: etcdserver: leader changed") || e.contains("request timed out"), "a waiting put ended with {e:?}");
    }
    // Nothing acknowledged is lost.
    let mut client = cluster.client(leader).await?;
    for (key, revision) in &acked {
        let got = client.get(key.as_str(), None).await?;
        let kv = got.kvs().first().with_context(|| format!("{key}, acknowledged at revision {revision}, is missing"))?;
        ensure!(kv.mod_revision() == *revision, "{key} at revision {}, acknowledged at {revision}", kv.mod_revision());
    }
    // The member takes writes again.
    client.put("bp/after", "v", None).await.context("a put once the followers run again")?;
    Ok(())
}
