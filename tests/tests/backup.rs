//! Backups to object storage and restores from it, with real stores on
//! loopback (versitygw for S3, fake-gcs-server for Google Cloud Storage,
//! Azurite for Azure Blob Storage, a directory): `raftkvctl snapshot save
//! URL` streams a member's snapshot into a multipart upload completed only
//! once its SHA-256 matched, and `raftkvctl snapshot restore URL` makes a
//! new cluster from it. This is what the operator's backup Jobs and restore
//! init containers run.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, CompactionOptions, PutOptions};
use raftkv_tests::objstores::{BUCKET, ObjectStore};
use raftkv_tests::{Cluster, Flavor, Server, binaries, describe};
use sha2::{Digest, Sha256};

fn text(out: &Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `raftkvctl snapshot save URL --report-file` against `endpoint`, with the
/// store's environment; the report it wrote.
fn save(store: &ObjectStore, endpoint: &str, url: &str) -> anyhow::Result<(Output, Option<serde_json::Value>)> {
    let dir = tempfile::tempdir()?;
    let report = dir.path().join("report.json");
    let out = store
        .command(&binaries::raftkvctl()?)
        .args(["--endpoints", endpoint, "snapshot", "save", url, "--report-file"])
        .arg(&report)
        .output()?;
    let parsed = match std::fs::read(&report) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).context("the report is not JSON")?),
        Err(_) => None,
    };
    Ok((out, parsed))
}

/// Keys with history, a deleted key, a compaction, and a lease with a key.
async fn fill(c: &mut Client) -> anyhow::Result<i64> {
    for i in 0..60 {
        c.put(format!("k/{:02}", i % 25), format!("v{i}"), None).await?;
    }
    c.delete("k/24", None).await?;
    let rev = c.put("k/00", "before-compaction", None).await?.header().map_or(0, |h| h.revision());
    // Physical: the old revisions are gone before anything is saved (a
    // snapshot taken while the compactor works holds those it has not
    // deleted yet, and two saves of the member would differ).
    c.compact(rev - 5, Some(CompactionOptions::new().with_physical())).await?;
    let lease = c.lease_grant(900, None).await?.id();
    c.put("leased", "x", Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

fn cluster_id(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| h.cluster_id())
}

/// The round trip: a three-member cluster with data and a lease,
/// backed up to S3 from a follower, restored into a new three-member
/// cluster with the same keys, values, revisions and lease, a new cluster
/// id, and equal HashKV on every member. The report says what the object is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_member_cluster_backed_up_to_s3_and_restored_into_a_new_one() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let source = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let mut c = source.client(0).await?;
    let lease = fill(&mut c).await?;
    let (rev, keys) = describe::keyspace(&mut c).await?;
    let source_id = cluster_id(c.status().await?.header());
    let follower = *source.followers().await?.first().context("no follower")?;

    let url = store.url("cluster-a/backup-1.snap");
    let (out, report) = save(&store, &source.member(follower).endpoint(), &url)?;
    ensure!(out.status.success(), "snapshot save to S3: {}\n{}", text(&out), store.log());
    ensure!(String::from_utf8_lossy(&out.stdout) == format!("Snapshot saved at {url}\n"), "{}", text(&out));
    let report = report.context("no report written")?;
    ensure!(report["location"] == url && report["revision"] == rev, "report {report} for {url} at revision {rev}");
    let on_disk = store.root().join(BUCKET).join("cluster-a/backup-1.snap");
    let bytes = std::fs::read(&on_disk).with_context(|| format!("the object is not at {}", on_disk.display()))?;
    let (payload, hash) = bytes.split_at(bytes.len() - 32);
    ensure!(report["size"] == bytes.len() as u64, "report {report}, object of {} bytes", bytes.len());
    ensure!(report["sha256"] == hex(hash) && Sha256::digest(payload).as_slice() == hash, "report {report}: the stored object's hash differs");
    drop(source);

    let restored = Cluster::start_restored_from(3, OsStr::new(&url), store.env()).await?;
    let mut hashes = Vec::new();
    for i in restored.members() {
        let mut m = restored.client(i).await?;
        let (got_rev, got) = describe::keyspace(&mut m).await?;
        ensure!(got_rev == rev && got == keys, "member {i} serves revision {got_rev} and {got:#?}\nnot {rev} and {keys:#?}");
        let id = cluster_id(m.status().await?.header());
        ensure!(id != source_id, "the restored cluster kept the source's id {id:x}");
        let hash = m.hash_kv(0).await?;
        hashes.push((hash.hash(), hash.compact_version()));
    }
    ensure!(hashes.windows(2).all(|w| w[0] == w[1]), "HashKV differs between the restored members: {hashes:?}");
    let mut c = restored.client(0).await?;
    let ttl = c.lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys())).await?;
    ensure!(ttl.ttl() > 0 && ttl.keys() == [b"leased".to_vec()], "lease {lease:x} after the restore: ttl {} keys {:?}", ttl.ttl(), ttl.keys());
    let next = c.put("after", "restore", None).await?.header().map_or(0, |h| h.revision());
    ensure!(next == rev + 1, "the first write after the restore is revision {next}, not {}", rev + 1);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every kind of store: a backup of the same idle member is byte for byte
/// the file `snapshot save` writes locally, and a member restored from the
/// object serves the same data. Google Cloud Storage's emulator lacks the
/// multipart uploads object_store makes there, so on GCS only the restore is
/// shown, from the file put in the emulator's bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_store_holds_the_same_snapshot_and_restores_it() -> anyhow::Result<()> {
    let source = Server::start(Flavor::Raftkv).await?;
    let mut c = source.client().await?;
    fill(&mut c).await?;
    let (rev, keys) = describe::keyspace(&mut c).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("local.snap");
    let out = std::process::Command::new(binaries::raftkvctl()?)
        .args(["--endpoints", &source.endpoint(), "snapshot", "save"])
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "snapshot save to a file: {}", text(&out));
    let expected = std::fs::read(&file)?;

    let key = "nested/path/snap.db";
    for store in [ObjectStore::local()?, ObjectStore::s3().await?, ObjectStore::azure().await?, ObjectStore::gcs(&[(key, &file)]).await?] {
        let kind = store.kind();
        let url = store.url(key);
        if kind != "gcs" {
            let (out, report) = save(&store, &source.endpoint(), &url)?;
            ensure!(out.status.success(), "{kind}: snapshot save: {}\n{}", text(&out), store.log());
            let report = report.with_context(|| format!("{kind}: no report"))?;
            ensure!(
                report["size"] == expected.len() as u64 && report["sha256"] == hex(&expected[expected.len() - 32..]),
                "{kind}: report {report} differs from the local file ({} bytes)",
                expected.len()
            );
        }
        let restored = Cluster::start_restored_from(1, OsStr::new(&url), store.env()).await?;
        let mut m = restored.client(0).await?;
        let (got_rev, got) = describe::keyspace(&mut m).await?;
        ensure!(got_rev == rev && got == keys, "{kind}: the restored member serves revision {got_rev} and {got:#?}\nnot {rev} and {keys:#?}");
    }
    Ok(())
}

/// An upload cut short never becomes an object: raftkvctl killed -9 in the
/// middle, and the member killed -9 under it (raftkvctl then aborts the
/// upload and fails). Afterwards nothing is at either key, a restore from
/// them fails, and a later backup to the same key completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_interrupted_upload_is_never_a_complete_object() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let mut source = Server::start(Flavor::Raftkv).await?;
    let mut c = source.client().await?;
    // About 96 MiB, so that an upload takes a while.
    for i in 0..1536u64 {
        c.put(format!("big/{i:05}"), raftkv_tests::noise(i, 64 << 10), None).await?;
    }
    let ctl = binaries::raftkvctl()?;
    let object = |key: &str| store.root().join(BUCKET).join(key);

    // raftkvctl killed once the upload is under way (parts in flight).
    let mut killed = store
        .command(&ctl)
        .args(["--endpoints", &source.endpoint(), "snapshot", "save", &store.url("cut/client-killed.snap")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    wait_for_upload(&store).await?;
    killed.kill()?;
    killed.wait()?;

    // The member killed under a running upload.
    let url = store.url("cut/server-killed.snap");
    let running = {
        let mut cmd = store.command(&ctl);
        cmd.args(["--endpoints", &source.endpoint(), "snapshot", "save", &url]);
        tokio::task::spawn_blocking(move || cmd.output())
    };
    wait_for_upload(&store).await?;
    source.kill9()?;
    let out = running.await??;
    ensure!(!out.status.success(), "snapshot save succeeded with its member killed: {}", text(&out));

    for key in ["cut/client-killed.snap", "cut/server-killed.snap"] {
        ensure!(!object(key).exists(), "{key}: an interrupted upload left an object");
        let data = tempfile::tempdir()?;
        let out = store
            .command(&ctl)
            .args(["snapshot", "restore", &store.url(key), "--data-dir"])
            .arg(data.path().join("member"))
            .output()?;
        ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"), "restore of {key}: {}", text(&out));
        ensure!(!data.path().join("member").exists(), "a failed restore left a data dir");
    }

    // A backup to the same key then completes, in bounded memory: the
    // snapshot streams through without a local copy.
    source.restart().await?;
    let mut cmd = store.command(&ctl);
    cmd.args(["--endpoints", &source.endpoint(), "snapshot", "save", &url]);
    let (out, peak) = tokio::task::spawn_blocking(move || output_and_peak_rss(cmd)).await??;
    ensure!(out.status.success(), "a backup after the interrupted ones: {}", text(&out));
    let size = std::fs::metadata(object("cut/server-killed.snap")).context("the completed backup is not in the store")?.len();
    ensure!(size > 96 << 20, "the completed backup holds {size} bytes");
    ensure!(peak < 64 << 20, "raftkvctl peaked at {} MiB uploading {} MiB", peak >> 20, size >> 20);
    Ok(())
}

/// Runs `cmd` to its end, sampling its peak resident memory (VmHWM, which
/// only grows) until it exits.
fn output_and_peak_rss(mut cmd: std::process::Command) -> anyhow::Result<(Output, u64)> {
    use std::io::Read;
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())))
        {
            peak = peak.max(kib << 10);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child.stdout.take().context("stdout")?.read_to_end(&mut stdout)?;
    child.stderr.take().context("stderr")?.read_to_end(&mut stderr)?;
    Ok((Output { status, stdout, stderr }, peak))
}

/// Waits until the S3 gateway holds some uploaded part (its staging area
/// grows): the upload is under way.
async fn wait_for_upload(store: &ObjectStore) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if dir_bytes(&store.root().join(BUCKET)) >= 8 << 20 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("no part was uploaded within 60 s:\n{}", store.log())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Destinations and sources a store refuses: each error is the store's own
/// (a missing bucket, refused credentials, a missing object), and a
/// restore source that is not a snapshot is told by its hash; nothing is
/// left behind.
#[tokio::test]
async fn bad_destinations_and_sources_are_refused_with_the_stores_own_error() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let source = Server::start(Flavor::Raftkv).await?;
    source.client().await?.put("k", "v", None).await?;
    let ctl = binaries::raftkvctl()?;

    let (out, report) = save(&store, &source.endpoint(), &store.url_in("no-such-bucket", "a.snap"))?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NoSuchBucket"), "missing bucket: {}", text(&out));
    ensure!(report.is_none(), "a failed backup wrote a report");

    let out = store
        .command(&ctl)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["--endpoints", &source.endpoint(), "snapshot", "save", &store.url("refused.snap")])
        .output()?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"),
        "refused credentials: {}",
        text(&out)
    );
    ensure!(!store.root().join(BUCKET).join("refused.snap").exists(), "a refused backup left an object");

    let out = store.command(&ctl).args(["--endpoints", &source.endpoint(), "snapshot", "save", "s3://bucket-only"]).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not an object"), "no key: {}", text(&out));

    let data = tempfile::tempdir()?;
    let member = data.path().join("member");
    let restore = |url: &str| -> anyhow::Result<Output> {
        Ok(store.command(&ctl).args(["snapshot", "restore", url, "--data-dir"]).arg(&member).output()?)
    };
    let out = restore(&store.url("missing.snap"))?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not found"), "missing object: {}", text(&out));
    // An object that is no snapshot (the gateway serves what its directory
    // holds).
    std::fs::write(store.root().join(BUCKET).join("garbage.snap"), vec![7u8; 4096 + 32])?;
    let out = restore(&store.url("garbage.snap"))?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("expected sha256"), "not a snapshot: {}", text(&out));
    ensure!(!member.exists(), "a refused restore left a data dir");
    let leftovers: Vec<_> = std::fs::read_dir(data.path())?.flatten().map(|e| e.file_name()).collect();
    ensure!(leftovers.is_empty(), "a refused restore left {leftovers:?}");
    Ok(())
}

/// `snapshot delete` (what the operator's retention runs): the object goes,
/// a second delete of it succeeds (a retried Job), refused credentials are
/// the store's own error and leave the object; a local file the same.
#[tokio::test]
async fn snapshot_delete_removes_objects_and_files_idempotently() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let source = Server::start(Flavor::Raftkv).await?;
    source.client().await?.put("k", "v", None).await?;
    let ctl = binaries::raftkvctl()?;
    let url = store.url("to-prune.snap");
    let (out, _) = save(&store, &source.endpoint(), &url)?;
    ensure!(out.status.success(), "snapshot save: {}", text(&out));
    let object = store.root().join(BUCKET).join("to-prune.snap");
    ensure!(object.is_file(), "no object to delete");

    let out = store.command(&ctl).env("AWS_SECRET_ACCESS_KEY", "wrong").args(["snapshot", "delete", &url]).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"), "refused: {}", text(&out));
    ensure!(object.is_file(), "a refused delete removed the object");
    for round in ["first", "again"] {
        let out = store.command(&ctl).args(["snapshot", "delete", &url]).output()?;
        ensure!(out.status.success(), "{round}: {}", text(&out));
        ensure!(String::from_utf8_lossy(&out.stdout) == format!("Snapshot deleted at {url}\n"), "{round}: {}", text(&out));
        ensure!(!object.exists(), "{round}: the object is still there");
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("local.snap");
    std::fs::write(&file, b"x")?;
    for round in ["first", "again"] {
        let out = std::process::Command::new(&ctl).args(["snapshot", "delete"]).arg(&file).output()?;
        ensure!(out.status.success() && !file.exists(), "{round}: {}", text(&out));
    }
    Ok(())
}

/// The migration path through a store: a snapshot etcd wrote (Debian's
/// etcd 3.4, `etcdctl snapshot save`), put in S3, restored from its URL
/// into raftkv with every key, value and revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_snapshot_in_s3_restores_into_raftkv() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let etcd = Server::start(Flavor::Etcd).await?;
    let mut c = etcd.client().await?;
    for i in 0..30 {
        c.put(format!("etcd/{:02}", i % 12), format!("v{i}"), None).await?;
    }
    let (rev, keys) = describe::keyspace(&mut c).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("etcd.db");
    let out = std::process::Command::new(binaries::ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint(), "snapshot", "save"])
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "etcdctl snapshot save: {}", text(&out));
    let key = "migration/etcd.db";
    let object = store.root().join(BUCKET).join(key);
    std::fs::create_dir_all(object.parent().context("a parent")?)?;
    std::fs::copy(&file, &object)?;
    drop(etcd);

    let restored = Cluster::start_restored_from(1, OsStr::new(&store.url(key)), store.env()).await?;
    let mut m = restored.client(0).await?;
    let (got_rev, got) = describe::keyspace(&mut m).await?;
    ensure!(got_rev == rev && got == keys, "raftkv serves revision {got_rev} and {got:#?}\nnot etcd's {rev} and {keys:#?}");
    Ok(())
}
