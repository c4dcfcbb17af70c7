//! Snapshots of a running member and restores into new clusters: Debian's
//! `etcdctl snapshot save` and `raftkvctl snapshot save` against raftkv,
//! `raftkvctl snapshot status`, and `raftkvctl snapshot restore` of the file
//! into three members of a new cluster that serves the same keys, values,
//! revisions and leases, with a new cluster id and equal HashKV everywhere.
//! Bad files and data dirs are refused with etcd's messages, and nothing is
//! left behind.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, ensure};
use etcd_client::{Client, CompactionOptions, GetOptions, PutOptions};
use raftkv_tests::binaries::{self, ETCDCTL};
use raftkv_tests::{Cluster, Flavor, Server, describe, with_etcd};

fn run(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program).args(args).output().with_context(|| format!("cannot run {}", program.display()))
}

fn text(out: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Keys with history, a deleted key, a compaction and a lease with a key.
async fn fill(c: &mut Client) -> anyhow::Result<i64> {
    for i in 0..50 {
        c.put(format!("k/{:02}", i % 20), format!("v{i}"), None).await?;
    }
    c.delete("k/19", None).await?;
    let rev = c.put("k/00", "before-compaction", None).await?.header().map_or(0, |h| h.revision());
    // Physical: answered once the compaction has deleted what it drops,
    // so the member is idle for the byte-for-byte comparisons (compaction
    // runs in the background, as etcd's).
    c.compact(rev - 5, Some(CompactionOptions::new().with_physical())).await?;
    let lease = c.lease_grant(600, None).await?.id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_save_status_and_restore_into_a_new_cluster() -> anyhow::Result<()> {
    let ctl = binaries::raftkvctl()?;
    let mut source = Server::start(Flavor::Raftkv).await?;
    let mut c = source.client().await?;
    let lease = fill(&mut c).await?;
    let (rev, keys) = describe::keyspace(&mut c).await?;
    let source_cluster = c.status().await?.header().map_or(0, |h| h.cluster_id());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("raftkvctl.snap");
    let file_s = file.to_str().context("path")?;

    let out = run(&ctl, &["--endpoints", &source.endpoint(), "snapshot", "save", file_s])?;
    ensure!(out.status.success(), "raftkvctl snapshot save: {}", text(&out));
    ensure!(String::from_utf8_lossy(&out.stdout) == format!("Snapshot saved at {file_s}\n"), "{}", text(&out));
    ensure!(!dir.path().join("raftkvctl.snap.part").exists(), "the .part file is left behind");
    let size = std::fs::metadata(&file)?.len();
    ensure!(size % 512 == 32, "a snapshot file of {size} bytes lacks etcd's framing");

    if with_etcd("etcdctl snapshot save against raftkv")? {
        let by_etcdctl = dir.path().join("etcdctl.snap");
        let out = Command::new(ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &source.endpoint(), "snapshot", "save", by_etcdctl.to_str().context("path")?])
            .output()?;
        ensure!(out.status.success(), "etcdctl snapshot save: {}", text(&out));
        ensure!(
            std::fs::read(&by_etcdctl)? == std::fs::read(&file)?,
            "etcdctl and raftkvctl saved different snapshots of an idle member"
        );
    }

    let out = run(&ctl, &["snapshot", "status", file_s, "-w", "json"])?;
    ensure!(out.status.success(), "snapshot status: {}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(status["revision"] == rev && status["totalSize"] == size - 32, "status {status} for revision {rev}, size {size}");
    let out = run(&ctl, &["snapshot", "status", file_s])?;
    let simple = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        simple.starts_with(&format!("{:x}, {rev}, {}, ", status["hash"].as_u64().unwrap_or_default(), status["totalKey"])),
        "simple status {simple:?} disagrees with {status}"
    );

    source.stop().await?;
    let restored = Cluster::start_restored(3, &file).await?;

    let mut hashes = Vec::new();
    for i in restored.members() {
        let mut m = restored.client(i).await?;
        let (got_rev, got) = describe::keyspace(&mut m).await?;
        ensure!(got_rev == rev && got == keys, "member {i} serves revision {got_rev} and {got:#?}\nnot {rev} and {keys:#?}");
        let st = m.status().await?;
        let cluster = st.header().map_or(0, |h| h.cluster_id());
        ensure!(cluster != source_cluster, "the restored cluster kept the source's id {cluster:x}");
        let compacted = m.get("k/00", Some(GetOptions::new().with_revision(rev - 7))).await;
        ensure!(
            describe::outcome(&compacted, |_| "ok".into()).contains("required revision has been compacted"),
            "the compacted revision was not kept: {compacted:?}"
        );
        let hash = m.hash_kv(0).await?;
        hashes.push((hash.hash(), hash.compact_version()));
    }
    ensure!(hashes.windows(2).all(|w| w[0] == w[1]), "HashKV differs between the restored members: {hashes:?}");

    let mut c = restored.client(0).await?;
    let ttl = c.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await?;
    ensure!(ttl.ttl() > 0 && ttl.keys() == [b"leased".to_vec()], "lease {lease:x} after restore: ttl {} keys {:?}", ttl.ttl(), ttl.keys());
    let next = c.put("after", "restore", None).await?.header().map_or(0, |h| h.revision());
    ensure!(next == rev + 1, "the first write after the restore is revision {next}, not {}", rev + 1);
    Ok(())
}

#[tokio::test]
async fn bad_snapshots_and_data_dirs_are_refused_and_leave_nothing_behind() -> anyhow::Result<()> {
    let ctl = binaries::raftkvctl()?;
    let source = Server::start(Flavor::Raftkv).await?;
    let mut c = source.client().await?;
    c.put("k", "v", None).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("good.snap");
    let file_s = file.to_str().context("path")?;
    let out = run(&ctl, &["--endpoints", &source.endpoint(), "snapshot", "save", file_s])?;
    ensure!(out.status.success(), "snapshot save: {}", text(&out));
    let good = std::fs::read(&file)?;

    let restore = |snap: &Path, data: &Path, extra: &[&str]| -> anyhow::Result<Output> {
        let mut args = vec!["snapshot", "restore", snap.to_str().unwrap_or_default(), "--data-dir", data.to_str().unwrap_or_default()];
        args.extend_from_slice(extra);
        run(&ctl, &args)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("flipped", { let mut b = good.clone(); b[40] ^= 0xff; b }, "expected sha256 ["),
        ("truncated", good[..good.len() - 200].to_vec(), "snapshot missing hash but --skip-hash-check=false"),
        ("foreign", vec![7u8; 1024 + 32], "expected sha256 ["),
    ];
    for (name, bytes, error) in cases {
        let snap = dir.path().join(format!("{name}.snap"));
        std::fs::write(&snap, bytes)?;
        let data = dir.path().join(format!("{name}.data"));
        let out = restore(&snap, &data, &[])?;
        ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains(error), "{name}: {}", text(&out));
        ensure!(!data.exists() && !dir.path().join(format!("{name}.data.restoring")).exists(), "{name}: a data dir was left");
    }
    // With the hash check skipped, a file that is no raftkv snapshot is still refused.
    let snap = dir.path().join("foreign.snap");
    let out = restore(&snap, &dir.path().join("skip.data"), &["--skip-hash-check"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a raftkv snapshot"), "{}", text(&out));

    let occupied = dir.path().join("occupied");
    std::fs::create_dir(&occupied)?;
    std::fs::write(occupied.join("keep-me"), "precious")?;
    let out = restore(&file, &occupied, &[])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not empty or could not be read"),
        "{}",
        text(&out)
    );
    ensure!(std::fs::read_to_string(occupied.join("keep-me"))? == "precious", "the occupied dir was touched");

    let out = run(&ctl, &["--endpoints", &format!("{},{}", source.endpoint(), source.endpoint()), "snapshot", "save", file_s])?;
    ensure!(
        out.status.code() == Some(5) && String::from_utf8_lossy(&out.stderr).contains("snapshot must be requested to one selected node"),
        "{}",
        text(&out)
    );
    ensure!(std::fs::read(&file)? == good, "a refused save touched the existing file");
    Ok(())
}

/// A snapshot in flight when the member is told to stop (SIGTERM): the
/// member stops within a bounded time, the client's file is either absent
/// or a complete, verified snapshot (never a truncated one under the final
/// name), a request made once the member stops is refused, and the data
/// survives the restart. Both flavors, with the same client.
#[tokio::test]
async fn a_snapshot_during_shutdown_never_leaves_a_partial_file() -> anyhow::Result<()> {
    let ctl = binaries::raftkvctl()?;
    for flavor in raftkv_tests::selected_flavors()? {
        let mut server = Server::start(flavor).await?;
        let mut c = server.client().await?;
        // About 128 MiB, so that the snapshot takes a while.
        for i in 0..2048u64 {
            c.put(format!("big/{i:05}"), raftkv_tests::noise(i, 64 << 10), None).await?;
        }
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("snap.db");
        let endpoint = server.endpoint();
        let save = {
            let (ctl, file, endpoint) = (ctl.clone(), file.clone(), endpoint.clone());
            tokio::task::spawn_blocking(move || run(&ctl, &["--endpoints", &endpoint, "snapshot", "save", file.to_str().unwrap_or_default()]))
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        server.terminate()?;
        let status = server.exit_within(std::time::Duration::from_secs(30)).await?;
        ensure!(status.is_some(), "{}: still running 30 s after SIGTERM with a snapshot in flight", flavor.name());
        let out = save.await??;
        if file.exists() {
            let status = run(&ctl, &["snapshot", "status", file.to_str().unwrap_or_default(), "-w", "json"])?;
            ensure!(status.status.success(), "{}: the saved file does not verify: {}\nsave: {}", flavor.name(), text(&status), text(&out));
        } else {
            ensure!(!out.status.success(), "{}: save succeeded without a file: {}", flavor.name(), text(&out));
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())?.flatten().map(|e| e.file_name()).filter(|n| n != "snap.db").collect();
        ensure!(left.is_empty(), "{}: files left beside the snapshot: {left:?}", flavor.name());
        println!("{}: save {}", flavor.name(), if file.exists() { "completed" } else { "failed" });

        let refused = run(&ctl, &["--endpoints", &endpoint, "--dial-timeout", "1s", "snapshot", "save", dir.path().join("late.db").to_str().unwrap_or_default()])?;
        ensure!(!refused.status.success() && !dir.path().join("late.db").exists(), "{}: a snapshot of a stopped member: {}", flavor.name(), text(&refused));

        server.restart().await?;
        let mut c = server.client().await?;
        let count = c.get("big/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count();
        ensure!(count == 2048, "{}: {count} keys after the restart, not 2048", flavor.name());
    }
    Ok(())
}
