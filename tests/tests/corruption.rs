//! Corruption checks (raftkv only: altering etcd's bbolt file needs a tool
//! of its own): a member whose data was altered while it was stopped
//! (`server/examples/corrupt_member.rs`, behind raft's back) refuses to
//! serve at start with `--experimental-initial-corrupt-check`, while a
//! healthy member restarts; with `--experimental-corrupt-check-time` the
//! leader finds the difference and raises CORRUPT, after which writes are
//! refused with etcd's error and reads still work.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{AlarmAction, AlarmType};
use raftkv_tests::binaries::workspace_binary;
use raftkv_tests::cluster::eventually;
use raftkv_tests::{Cluster, Flavor, describe};

fn corrupt(cluster: &Cluster, i: usize, key: &str) -> anyhow::Result<()> {
    let tool: PathBuf = workspace_binary("examples/corrupt_member")?;
    let dir = cluster.member(i).server().data_dir();
    let out = Command::new(&tool).arg(&dir).arg(key).output().context("cannot run corrupt_member")?;
    ensure!(out.status.success(), "corrupt_member: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

async fn fill(cluster: &Cluster) -> anyhow::Result<()> {
    let mut c = cluster.client(cluster.leader().await?).await?;
    for i in 0..20 {
        c.put(format!("key/{i}"), format!("value {i}"), None).await?;
    }
    // Every member has applied it before one is stopped.
    for i in cluster.members() {
        let mut m = cluster.client(i).await?;
        eventually(Duration::from_secs(10), async || {
            let r = m.get("key/19", Some(etcd_client::GetOptions::new().with_serializable())).await?;
            ensure!(r.count() == 1, "member {i} has not applied the writes yet");
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn altered_data_is_refused_at_start() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &["--experimental-initial-corrupt-check=true"]).await?;
    fill(&cluster).await?;
    let leader = cluster.leader().await?;
    let (bad, good) = ((leader + 1) % 3, (leader + 2) % 3);
    let id = cluster.member(bad).id();
    cluster.kill9(bad)?;
    corrupt(&cluster, bad, "key/7")?;
    cluster.spawn_only(bad)?;
    let status = cluster.exit_within(bad, Duration::from_secs(30)).await?.context("the altered member kept running")?;
    ensure!(!status.success(), "exited with {status}");
    let expected = format!("{id:x} found data inconsistency with peers");
    let log = cluster.member(bad).server().log();
    ensure!(log.contains(&expected), "no {expected:?} in:\n{}", cluster.member(bad).server().log_tail(20));
    // The check passes for a member whose data is intact.
    cluster.kill9(good)?;
    cluster.restart(good).await.context("an intact member did not pass the check")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_raises_corrupt_and_writes_are_refused() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &["--experimental-corrupt-check-time", "1s"]).await?;
    fill(&cluster).await?;
    let leader = cluster.leader().await?;
    let bad = (leader + 1) % 3;
    cluster.kill9(bad)?;
    corrupt(&cluster, bad, "key/7")?;
    if let Err(e) = cluster.restart(bad).await {
        anyhow::bail!("{e:#}\n{}", cluster.member(bad).server().log_tail(40));
    }
    let mut c = cluster.client(cluster.leader().await?).await?;
    eventually(Duration::from_secs(30), async || {
        let alarms = c.alarm(AlarmAction::Get, AlarmType::None, None).await?;
        let listed: Vec<(u64, AlarmType)> = alarms.alarms().iter().map(|a| (a.member_id(), a.alarm())).collect();
        ensure!(listed == [(0, AlarmType::Corrupt)], "alarms: {listed:?}");
        Ok(())
    })
    .await?;
    let put = c.put("after", "corrupt", None).await;
    ensure!(
        put.as_ref().err().map(describe::error).as_deref() == Some("DataLoss: etcdserver: corrupt cluster"),
        "a put under CORRUPT: {put:?}"
    );
    ensure!(c.get("key/3", None).await?.count() == 1, "reads stop under CORRUPT");
    Ok(())
}
