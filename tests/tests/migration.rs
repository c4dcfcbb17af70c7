//! Migration from etcd: a snapshot that real etcd wrote, restored into a
//! new 3-member raftkv cluster, answers every read as etcd did (values,
//! create and mod revisions, versions, at the current revision and at older
//! ones down to the compaction), keeps the leases and expires them when
//! their TTL runs out, and its users, roles and enabled authentication
//! (etcd's bcrypt hashes good for raftkv); `raftkvctl snapshot status` prints what etcdctl
//! prints for the file. And the live path: `etcdctl make-mirror` copies
//! etcd into raftkv and raftkv into etcd.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, PutOptions};
use raftkv_tests::binaries::{self, ETCDCTL};
use raftkv_tests::cluster::eventually;
use raftkv_tests::{Cluster, Flavor, Server, describe, with_etcd};

fn run(program: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(program)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every key, as of `rev` (0: now), one line each.
async fn dump_at(c: &mut Client, rev: i64) -> anyhow::Result<Vec<String>> {
    let r = c.get("", Some(GetOptions::new().with_all_keys().with_revision(rev))).await?;
    Ok(r.kvs().iter().map(describe::kv).collect())
}

/// Debian's etcd 3.4, then every etcd release built from Go modules (3.5
/// and 3.6): the snapshot of each, saved by Debian's etcdctl, restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_snapshot_restores_into_raftkv_with_its_revisions_and_leases() -> anyhow::Result<()> {
    if !with_etcd("an_etcd_snapshot_restores_into_raftkv_with_its_revisions_and_leases")? {
        return Ok(());
    }
    migrate(Server::start(Flavor::Etcd).await?).await.context("etcd 3.4 (Debian's)")?;
    for (version, program) in binaries::etcd_releases()? {
        migrate(Server::start_etcd_release(&program).await?).await.with_context(|| format!("etcd {version}"))?;
    }
    Ok(())
}

async fn migrate(etcd: Server) -> anyhow::Result<()> {
    let ctl = binaries::raftkvctl()?;
    let mut c = etcd.client().await?;
    let version = c.status().await?.version().to_owned();
    println!("migrating from etcd {version}");
    for i in 0..300 {
        c.put(format!("app/{:03}", i % 120), format!("value {i} {}", "x".repeat(i % 7 * 900)), None).await?;
    }
    c.delete("app/00", Some(etcd_client::DeleteOptions::new().with_prefix())).await?;
    let compacted = c.put("app/050", "at compaction", None).await?.header().map_or(0, |h| h.revision());
    c.compact(compacted, None).await?;
    let long = c.lease_grant(600, None).await?.id();
    c.put("session/long", "kept", Some(PutOptions::new().with_lease(long))).await?;
    let short = c.lease_grant(8, None).await?.id();
    c.put("session/short", "expires", Some(PutOptions::new().with_lease(short))).await?;
    let last = c.put("app/last", "1", None).await?.header().map_or(0, |h| h.revision());
    let mut expected = Vec::new();
    for rev in [compacted, compacted + 1, last - 1, last] {
        expected.push((rev, dump_at(&mut c, rev).await?));
    }

    // Users, roles and authentication enabled come along too.
    for args in [
        "user add root:rootpw",
        "user grant-role root root",
        "user add app:apppw",
        "role add app",
        "role grant-permission app --prefix=true readwrite app/",
        "user grant-role app app",
        "auth enable",
    ] {
        let out = run(Path::new(ETCDCTL), &[&["--endpoints", &etcd.endpoint()][..], &args.split(' ').collect::<Vec<_>>()].concat())?;
        ensure!(out.status.success(), "etcdctl {args}: {}", text(&out));
    }

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("etcd.db");
    let file_s = file.to_str().context("path")?;
    let out = run(Path::new(ETCDCTL), &["--endpoints", &etcd.endpoint(), "--user", "root:rootpw", "snapshot", "save", file_s])?;
    ensure!(out.status.success(), "etcdctl snapshot save: {}", text(&out));
    drop(etcd);

    for format in ["simple", "json", "table", "fields"] {
        let theirs = run(Path::new(ETCDCTL), &["snapshot", "status", file_s, "-w", format])?;
        let ours = run(&ctl, &["snapshot", "status", file_s, "-w", format])?;
        ensure!(theirs.status.success(), "etcdctl snapshot status: {}", text(&theirs));
        ensure!(ours.stdout == theirs.stdout, "snapshot status -w {format}:\nraftkvctl {}\netcdctl {}", text(&ours), text(&theirs));
    }

    let restored = Cluster::start_restored(3, &file).await?;
    let started = std::time::Instant::now();
    // etcd's users (their bcrypt hashes), roles and enabled authentication.
    let ep = restored.member(2).server().endpoint();
    for (args, want) in [
        (&["get", "app/050"][..], "Error: etcdserver: user name is empty"),
        (&["--user", "app:apppw", "get", "app/050", "--print-value-only"], "at compaction"),
        (&["--user", "app:apppw", "get", "session/long"], "Error: etcdserver: permission denied"),
        (&["--user", "app:wrong", "get", "app/050"], "Error: etcdserver: authentication failed, invalid user ID or password"),
        (&["--user", "root:rootpw", "auth", "disable"], "Authentication Disabled"),
    ] {
        let out = run(&ctl, &[&["--endpoints", ep.as_str()][..], args].concat())?;
        let got = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(got.trim() == want, "raftkvctl {args:?} after the restore: {}", text(&out));
    }
    for i in restored.members() {
        let mut m = restored.client(i).await?;
        for (rev, want) in &expected {
            let got = dump_at(&mut m, *rev).await?;
            ensure!(&got == want, "member {i} at revision {rev} serves {got:#?}\netcd served {want:#?}");
        }
        let below = m.get("app/050", Some(GetOptions::new().with_revision(compacted - 1))).await;
        ensure!(
            describe::outcome(&below, |_| "ok".into()).contains("required revision has been compacted"),
            "member {i}: a read below etcd's compaction: {below:?}"
        );
        let hash = m.hash_kv(0).await?;
        ensure!(hash.header().map_or(0, |h| h.revision()) == last, "member {i} is not at revision {last}");
    }

    let mut c = restored.client(0).await?;
    for (lease, key) in [(long, "session/long"), (short, "session/short")] {
        let ttl = c.lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys())).await?;
        ensure!(ttl.ttl() > 0 && ttl.keys() == [key.as_bytes().to_vec()], "lease {lease:x}: ttl {} keys {:?}", ttl.ttl(), ttl.keys());
    }
    // The short lease expires on raftkv once its TTL has run out, taking its key.
    eventually(Duration::from_secs(30), async || {
        let r = c.get("session/short", None).await?;
        ensure!(r.kvs().is_empty(), "session/short still there after {:?}", started.elapsed());
        Ok(())
    })
    .await?;
    ensure!(started.elapsed() >= Duration::from_secs(6), "the 8 s lease expired after {:?}", started.elapsed());
    ensure!(!c.get("session/long", None).await?.kvs().is_empty(), "the long lease's key went too");
    Ok(())
}

/// Runs `etcdctl make-mirror` from `source` to `dest` until `dest` has
/// every key of `source`, then stops it.
async fn mirror(source: &Server, dest: &Server) -> anyhow::Result<()> {
    let mut child = tokio::process::Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &source.endpoint(), "make-mirror", "--prefix", "m/", &dest.endpoint()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start etcdctl make-mirror")?;
    let mut s = source.client().await?;
    let mut d = dest.client().await?;
    // Before the mirror starts (copied by its initial sync) and after (by its watch).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..50 {
        s.put(format!("m/{i:02}"), format!("v{i}"), None).await?;
    }
    s.delete("m/07", None).await?;
    s.put("m/late", "last", None).await?;
    let values = |r: etcd_client::GetResponse| -> Vec<(Vec<u8>, Vec<u8>)> {
        r.kvs().iter().map(|kv| (kv.key().to_vec(), kv.value().to_vec())).collect()
    };
    let want = values(s.get("m/", Some(GetOptions::new().with_prefix())).await?);
    ensure!(want.len() == 50, "the source has {} keys", want.len());
    let mirrored = eventually(Duration::from_secs(20), async || {
        let got = values(d.get("m/", Some(GetOptions::new().with_prefix())).await?);
        ensure!(got == want, "the destination has {} of {} keys", got.len(), want.len());
        Ok(())
    })
    .await;
    if let Ok(Some(status)) = child.try_wait() {
        anyhow::bail!("make-mirror exited early with {status}");
    }
    child.kill().await.ok();
    mirrored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcdctl_make_mirror_copies_etcd_into_raftkv_and_back() -> anyhow::Result<()> {
    if !with_etcd("etcdctl_make_mirror_copies_etcd_into_raftkv_and_back")? {
        return Ok(());
    }
    let etcd = Server::start(Flavor::Etcd).await?;
    let raftkv = Server::start(Flavor::Raftkv).await?;
    mirror(&etcd, &raftkv).await.context("etcd -> raftkv")?;
    let etcd2 = Server::start(Flavor::Etcd).await?;
    let raftkv2 = Server::start(Flavor::Raftkv).await?;
    mirror(&raftkv2, &etcd2).await.context("raftkv -> etcd")
}
