//! Compaction in the background, on a real 3-member raftkv cluster: the
//! Compact RPC returns once the compaction is recorded; each member's
//! compactor then removes the old revisions in batches. A member killed
//! (kill -9) while its compactor works resumes the compaction after a
//! restart, and every member answers the same HashKV at the compacted
//! revision whether its compactor is done or not.

use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use raftkv_tests::cluster::eventually;
use raftkv_tests::{Cluster, Flavor, describe};

/// Keys written, 128 to a transaction (etcd's default `--max-txn-ops`).
const KEYS: usize = 12_800;
/// Times each key is written: all but the last are compacted away, some
/// 90 000 revisions, about 90 batches of the compactor.
const ROUNDS: usize = 8;

const FINISHED: &str = "finished a compaction";

async fn write_history(client: &mut Client) -> anyhow::Result<i64> {
    let mut revision = 0;
    for round in 0..ROUNDS {
        for chunk in 0..KEYS / 128 {
            let ops: Vec<TxnOp> = (chunk * 128..(chunk + 1) * 128)
                .map(|i| TxnOp::put(format!("k{i:05}"), format!("round {round}"), None))
                .collect();
            let resp = client.txn(Txn::new().and_then(ops)).await?;
            revision = describe::revision(resp.header());
        }
    }
    Ok(revision)
}

async fn hash_at(cluster: &Cluster, i: usize, revision: i64) -> anyhow::Result<u32> {
    let mut client = cluster.client(i).await?;
    // A member answers once it has applied the revision.
    eventually(Duration::from_secs(30), async || {
        let local = client.get("k00000", Some(GetOptions::new().with_serializable())).await?;
        ensure!(describe::revision(local.header()) >= revision, "m{i} has not applied {revision} yet");
        Ok(())
    })
    .await?;
    let resp = client.hash_kv(revision).await.with_context(|| format!("HashKV of m{i}"))?;
    ensure!(
        resp.compact_version() == revision,
        "m{i} reports compacted revision {}, not {revision}",
        resp.compact_version()
    );
    Ok(resp.hash())
}

fn finished(cluster: &Cluster, i: usize) -> usize {
    cluster.member(i).server().log().matches(FINISHED).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_during_a_compaction_resumes_it_and_every_hash_agrees() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let leader = cluster.leader().await?;
    let killed = cluster.followers().await?[0];
    let mut client = cluster.client(leader).await?;
    let revision = write_history(&mut client).await?;
    let before: Vec<usize> = cluster.members().iter().map(|&i| finished(&cluster, i)).collect();

    // Recorded, not yet carried out: the answer does not wait for it.
    client.compact(revision, None).await?;
    cluster.kill9(killed)?;
    ensure!(
        finished(&cluster, killed) == before[killed],
        "m{killed} finished the compaction before it was killed: the history is too short to test a resumption"
    );
    let err = client
        .get("k00000", Some(GetOptions::new().with_revision(revision - 1)))
        .await
        .err()
        .context("a read below the compacted revision succeeded")?;
    ensure!(
        describe::error(&err) == "OutOfRange: etcdserver: mvcc: required revision has been compacted",
        "a read below the compacted revision answered {}",
        describe::error(&err)
    );

    // The surviving members agree while their compactors work and after.
    let running = cluster.running();
    let mut during = Vec::new();
    for &i in &running {
        during.push(hash_at(&cluster, i, revision).await?);
    }
    ensure!(during.iter().all(|h| *h == during[0]), "HashKV during the compaction differs: {during:x?}");
    for &i in &running {
        eventually(Duration::from_secs(120), async || {
            ensure!(finished(&cluster, i) > before[i], "m{i} has not finished the compaction");
            Ok(())
        })
        .await?;
        let after = hash_at(&cluster, i, revision).await?;
        ensure!(after == during[0], "m{i}'s HashKV after the compaction {after:x} differs from before {:x}", during[0]);
    }

    // The killed member finishes what it started once back.
    cluster.restart(killed).await?;
    eventually(Duration::from_secs(120), async || {
        ensure!(finished(&cluster, killed) > before[killed], "m{killed} has not resumed the compaction");
        Ok(())
    })
    .await
    .with_context(|| cluster.member(killed).server().log_tail(30))?;
    let resumed = hash_at(&cluster, killed, revision).await?;
    ensure!(resumed == during[0], "m{killed}'s HashKV after resuming {resumed:x} differs from the others' {:x}", during[0]);
    let mut restarted = cluster.client(killed).await?;
    let last = restarted.get("k12799", Some(GetOptions::new().with_serializable())).await?;
    ensure!(
        last.kvs().first().map(|kv| kv.value()) == Some(format!("round {}", ROUNDS - 1).as_bytes()),
        "m{killed} lost the last value of k12799: {:?}",
        last.kvs()
    );
    Ok(())
}
