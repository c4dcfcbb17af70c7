//! A member whose disk fills up: its data dir on a small tmpfs the test
//! mounts (root only), writers putting 64 KiB values until the disk is
//! full. The member must not carry on as if nothing happened: etcd panics
//! on the failed write, and raftkv's raft loop stops on the storage error
//! and the process exits with a clear log line, so that a supervisor
//! restarts it. Once the disk has room again (the tmpfs grown), the member
//! restarts with every acknowledged put. Run on etcd first, then raftkv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use etcd_client::GetOptions;
use raftkv_tests::{Flavor, Server, selected_flavors};

/// Room for etcd to start: it preallocates 64 MiB for its first WAL file
/// and, in the background, 64 MiB for the next one; with less, its
/// first backend commit can meet a full disk while that second
/// preallocation holds the space (it failed so at startup, now and then,
/// with 100 MiB).
const DISK_MB: u64 = 160;
const VALUE: usize = 64 << 10;

/// A tmpfs mounted on a directory, lazily unmounted on drop.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    fn mount(at: &Path, megabytes: u64) -> anyhow::Result<SmallDisk> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={megabytes}m,mode=0700"), "tmpfs"]).arg(at))
            .context("mounting a tmpfs needs root (the tests run as root on the project's machines and in CI)")?;
        Ok(SmallDisk { at: at.to_path_buf() })
    }

    fn grow(&self, megabytes: u64) -> anyhow::Result<()> {
        run(Command::new("mount").args(["-o", &format!("remount,size={megabytes}m")]).arg(&self.at))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn fill_until_the_member_stops(flavor: Flavor) -> anyhow::Result<()> {
    let mut disk = None;
    let mut server = Server::start_on(flavor, &[], |data_dir| {
        disk = Some(SmallDisk::mount(data_dir, DISK_MB)?);
        Ok(())
    })
    .await?;
    let disk = disk.context("the disk was mounted")?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = server.client().await?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut failures = 0;
            for n in 0.. {
                if stop.load(Ordering::Relaxed) || failures >= 5 {
                    break;
                }
                let key = format!("w{w}/{n:05}");
                let value = raftkv_tests::noise((w << 32) + n, VALUE);
                let put = tokio::time::timeout(Duration::from_secs(5), client.put(key.clone(), value.clone(), None)).await;
                match put {
                    Ok(Ok(_)) => {
                        acked.insert(key, value);
                    }
                    _ => failures += 1,
                }
            }
            acked
        }));
    }
    // The disk holds about DISK_MB / 64 KiB values (less for the WAL and
    // its compactions): the member must stop within a minute.
    let exited = server.exit_within(Duration::from_secs(90)).await?;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await?);
    }
    let status = exited.with_context(|| {
        format!("{} still runs 90 s after its disk filled:\n{}", flavor.name(), server.log_tail(20))
    })?;
    ensure!(!status.success(), "{} exited successfully on a full disk", flavor.name());
    ensure!(!acked.is_empty(), "no put was acknowledged before the disk filled");
    if flavor == Flavor::Raftkv {
        let log = server.log();
        ensure!(
            log.contains("raft loop stopped on a storage error") && log.contains("exiting so that it is restarted"),
            "raftkv's log does not say why it stopped:\n{}",
            server.log_tail(20)
        );
    }

    disk.grow(DISK_MB * 8)?;
    server.restart().await.context("the member did not start again once its disk had room")?;
    let mut client = server.client().await?;
    let mut missing = Vec::new();
    for (key, value) in &acked {
        let got = client.get(key.as_str(), Some(GetOptions::new().with_serializable())).await?;
        if got.kvs().first().map(|kv| kv.value()) != Some(value.as_slice()) {
            missing.push(key.clone());
        }
    }
    ensure!(missing.is_empty(), "{} of {} acknowledged puts are lost: {:?}", missing.len(), acked.len(), &missing[..missing.len().min(5)]);
    client.put("after", "the disk had room", None).await.context("a put once the disk had room")?;
    eprintln!("{}: {} puts acknowledged before the disk filled, all there after the restart", flavor.name(), acked.len());
    drop(disk);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_disk_fills_stops_and_restarts_with_every_acknowledged_put() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        fill_until_the_member_stops(flavor).await.with_context(|| format!("on {}", flavor.name()))?;
    }
    Ok(())
}
