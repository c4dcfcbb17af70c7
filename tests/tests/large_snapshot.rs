//! A member that falls far behind catches up through a raft snapshot of
//! about 1 GiB while its peak memory (VmHWM, read from /proc) stays well
//! below that: the snapshot streams to disk as sorted files that RocksDB
//! ingests, and is never held in memory. Raftkv's own behaviour: there is
//! no etcd side to compare.

use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::GetOptions;
use raftkv_tests::cluster::eventually;
use raftkv_tests::{Cluster, Flavor, describe, noise};

/// 1024 values of 1 MiB: a 1 GiB store.
const VALUE_BYTES: usize = 1 << 20;
const KEYS: usize = 1024;
const WRITERS: usize = 4;

/// Peak memory allowed to the member that receives the snapshot: a fifth
/// of the data. A member that assembled the snapshot in memory (as raftkv
/// did before) peaks above the data size.
const PEAK_LIMIT: u64 = (KEYS * VALUE_BYTES / 5) as u64;

/// The disk the test needs: the store on three members, with room for
/// the raft logs and the snapshot files alongside.
const NEEDS_FREE: u64 = 5 * (KEYS * VALUE_BYTES) as u64;

const CATCH_UP: Duration = Duration::from_secs(300);

/// A value that does not compress, so the store is as large on disk as
/// in values.
fn value(i: usize) -> Vec<u8> {
    noise(i as u64, VALUE_BYTES)
}

/// A process's peak resident memory in bytes, from /proc/PID/status.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("cannot read /proc/PID/status")?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM in /proc/PID/status")?;
    let kib: u64 = line.split_whitespace().nth(1).context("VmHWM without a value")?.parse().context("VmHWM")?;
    Ok(kib * 1024)
}

/// Bytes free on the filesystem of the system's temporary directory,
/// where the members' data directories go, from `df`.
fn free_temp_bytes() -> anyhow::Result<u64> {
    let dir = std::env::temp_dir();
    let out = std::process::Command::new("df").arg("-Pk").arg(&dir).output().context("cannot run df")?;
    ensure!(out.status.success(), "df {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).context("df printed no free space")?.parse().context("df's free space")?;
    Ok(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_catches_up_through_a_1gib_snapshot_in_bounded_memory() -> anyhow::Result<()> {
    // Two members hold the store, its raft log and their snapshots: on a
    // nearly full disk a member fails its writes and exits, which reads
    // as an unrelated failure (a leader change) unless said here.
    let free = free_temp_bytes()?;
    ensure!(
        free >= NEEDS_FREE,
        "{} has {} MiB free; this test writes about {} MiB: free some space (an old cargo target directory's incremental/ is a usual culprit)",
        std::env::temp_dir().display(),
        free >> 20,
        NEEDS_FREE >> 20
    );

    // The leader truncates its log every 64 entries and keeps 16 behind:
    // a member that misses 1024 writes can only catch up from a snapshot.
    let mut cluster = Cluster::start(
        Flavor::Raftkv,
        3,
        &["--snapshot-count", "64", "--snapshot-catchup-entries", "16", "--quota-backend-bytes", "8589934592"],
    )
    .await?;
    let lagging = *cluster.followers().await?.first().context("no follower")?;
    cluster.kill9(lagging)?;

    let leader = cluster.leader().await?;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = cluster.client(leader).await?;
        writers.push(tokio::spawn(async move {
            for i in (w..KEYS).step_by(WRITERS) {
                let key = format!("big/{i:05}");
                client.put(key.as_str(), value(i), None).await.with_context(|| format!("put {key}"))?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await.context("a writer panicked")??;
    }
    let mut client = cluster.client(leader).await?;
    let revision = describe::revision(client.get("big/", Some(GetOptions::new().with_prefix().with_count_only())).await?.header());

    cluster.restart(lagging).await?;
    let mut lagging_client = cluster.client(lagging).await?;
    let count = eventually(CATCH_UP, async || {
        let r = lagging_client.get("big/", Some(GetOptions::new().with_prefix().with_count_only().with_serializable())).await?;
        let applied = describe::revision(r.header());
        ensure!(applied >= revision, "m{lagging} is at revision {applied}, not {revision}");
        Ok(r.count())
    })
    .await
    .with_context(|| format!("m{lagging} did not catch up\n{}", cluster.log_tails(20)))?;
    ensure!(count == KEYS as i64, "m{lagging} holds {count} keys, not {KEYS}");

    // Serving the keys comes before the install's last steps (the leases
    // are loaded after the store): the raft node logs the end.
    let server = cluster.member(lagging).server();
    eventually(Duration::from_secs(60), async || {
        ensure!(server.log().contains("applied a snapshot from the leader"), "no snapshot applied");
        Ok(())
    })
    .await
    .with_context(|| format!("m{lagging} caught up without installing a snapshot, or never finished: the test proves nothing\n{}", cluster.log_tails(20)))?;

    // The same content everywhere, and a value read back whole.
    let mut hashes = Vec::new();
    for i in cluster.running() {
        hashes.push((i, cluster.client(i).await?.hash_kv(revision).await?.hash()));
    }
    ensure!(hashes.windows(2).all(|w| w[0].1 == w[1].1), "HashKV at revision {revision} differs (member, hash): {hashes:?}");
    let got = lagging_client.get("big/00777", Some(GetOptions::new().with_serializable())).await?;
    ensure!(got.kvs().first().map(|kv| kv.value()) == Some(value(777).as_slice()), "m{lagging} has another value for big/00777");

    let pid = cluster.member(lagging).server().pid().context("the lagging member is not running")?;
    let peak = peak_rss(pid)?;
    println!("m{lagging}: peak RSS {} MiB after installing a {} MiB snapshot", peak >> 20, (KEYS * VALUE_BYTES) >> 20);
    ensure!(
        peak < PEAK_LIMIT,
        "m{lagging} peaked at {} MiB of resident memory installing a {} MiB snapshot (limit {} MiB)",
        peak >> 20,
        (KEYS * VALUE_BYTES) >> 20,
        PEAK_LIMIT >> 20
    );
    Ok(())
}
