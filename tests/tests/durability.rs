//! Durability across kill -9: every put the server acknowledged survives a
//! SIGKILL and restart on the same data dir, with the revision it was
//! acknowledged at, and revisions continue without gap or repeat.
//!
//! Eight clients put distinct keys as fast as they can; the server is killed
//! mid-stream, restarted, and the whole store is checked; three rounds. The
//! same test runs against real etcd to prove the test itself. A graceful
//! stop (SIGTERM) keeps the data too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use raftkv_tests::with_etcd;
use raftkv_tests::{Flavor, Server};
use raftkv_tests::{acked, describe};

const CLIENTS: usize = 8;
const ROUNDS: usize = 3;
const WRITE_FOR: Duration = Duration::from_secs(2);

async fn acknowledged_puts_survive_kill9(
    flavor: Flavor,
    server_args: &[&str],
) -> anyhow::Result<()> {
    let mut server = Server::start_with(flavor, server_args).await?;
    let mut all_acks: Vec<acked::Ack> = Vec::new();
    for round in 0..ROUNDS {
        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for id in 0..CLIENTS {
            let client = server.client().await?;
            writers.push(tokio::spawn(acked::put_until(
                client,
                format!("round{round}/client{id}"),
                killed.clone(),
                killed.clone(),
            )));
        }
        tokio::time::sleep(WRITE_FOR).await;
        killed.store(true, Ordering::SeqCst);
        server.kill9()?;
        let mut round_acks = 0;
        for writer in writers {
            let acks = writer.await.context("a writer task panicked")??;
            round_acks += acks.len();
            all_acks.extend(acks);
        }
        ensure!(
            round_acks > 0,
            "round {round}: no put was acknowledged in {WRITE_FOR:?}"
        );

        server.restart().await?;
        let mut client = server.client().await?;
        let (revision, store) = acked::whole_store(&mut client, false).await?;
        acked::all_present(&store, &all_acks).with_context(|| format!("round {round}"))?;

        // Each put made its own revision, from 2 on, and nothing else wrote:
        // the mod revisions are exactly 2..=N.
        let mut revisions: Vec<i64> = store
            .values()
            .map(|(_, mod_revision)| *mod_revision)
            .collect();
        revisions.sort_unstable();
        let expected: Vec<i64> = (2..=revision).collect();
        if revisions != expected {
            let gaps: Vec<i64> = expected
                .iter()
                .copied()
                .filter(|r| revisions.binary_search(r).is_err())
                .collect();
            let repeats: Vec<i64> = revisions
                .windows(2)
                .filter(|w| w[0] == w[1])
                .map(|w| w[0])
                .collect();
            bail!(
                "round {round}: {} keys at revision {revision}; missing revisions {:?}, repeated {:?}",
                store.len(),
                &gaps[..gaps.len().min(20)],
                &repeats[..repeats.len().min(20)]
            );
        }

        let next = client
            .put(format!("round{round}/after-restart"), "x", None)
            .await?;
        ensure!(
            describe::revision(next.header()) == revision + 1,
            "round {round}: the first put after restart got revision {}, expected {}",
            describe::revision(next.header()),
            revision + 1
        );
        eprintln!(
            "{} round {round}: {round_acks} acknowledged puts, store at revision {}",
            flavor.name(),
            revision + 1
        );
    }
    server.stop().await?;
    Ok(())
}

/// SIGTERM stops the server within the harness's timeout, and what was
/// written before is there after a restart. The exit status is not compared:
/// etcd re-raises SIGTERM after its cleanup instead of exiting 0.
async fn graceful_stop_keeps_data(flavor: Flavor) -> anyhow::Result<()> {
    let mut server = Server::start(flavor).await?;
    let mut client = server.client().await?;
    let put = client.put("before-stop", "kept", None).await?;
    let status = server.stop().await?;
    eprintln!("{} exited with {status} on SIGTERM", flavor.name());
    server.restart().await?;
    let mut client = server.client().await?;
    let resp = client.get("before-stop", None).await?;
    let kv = resp
        .kvs()
        .first()
        .context("the put before SIGTERM is lost")?;
    ensure!(
        kv.value() == b"kept" && kv.mod_revision() == describe::revision(put.header()),
        "after restart: {}",
        describe::kv(kv)
    );
    Ok(())
}

#[tokio::test]
async fn raftkv_stops_on_sigterm_and_keeps_its_data() -> anyhow::Result<()> {
    graceful_stop_keeps_data(Flavor::Raftkv).await
}

#[tokio::test]
async fn etcd_stops_on_sigterm_and_keeps_its_data() -> anyhow::Result<()> {
    if !with_etcd("etcd_stops_on_sigterm_and_keeps_its_data")? {
        return Ok(());
    }
    graceful_stop_keeps_data(Flavor::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raftkv_keeps_acknowledged_puts_across_kill9() -> anyhow::Result<()> {
    acknowledged_puts_survive_kill9(Flavor::Raftkv, &[]).await
}

/// With a snapshot every 100 entries, the restarts recover from a snapshot
/// plus a short log instead of the whole log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raftkv_keeps_acknowledged_puts_across_kill9_with_frequent_snapshots() -> anyhow::Result<()>
{
    acknowledged_puts_survive_kill9(Flavor::Raftkv, &["--snapshot-count", "100"]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_keeps_acknowledged_puts_across_kill9() -> anyhow::Result<()> {
    if !with_etcd("etcd_keeps_acknowledged_puts_across_kill9")? {
        return Ok(());
    }
    acknowledged_puts_survive_kill9(Flavor::Etcd, &["--snapshot-count", "100"]).await
}
