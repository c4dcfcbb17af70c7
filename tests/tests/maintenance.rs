//! Maintenance, against real etcd and raftkv: every RPC's response header
//! filled exactly as etcd fills it (which fields are set, field by field);
//! defragmentation after deleting and compacting most of the data shrinks
//! the database, as `raftkvctl defrag` and Status show, on both servers.

use std::process::Command;

use anyhow::{Context, ensure};
use etcd_client::{Client, Compare, CompareOp, DeleteOptions, GetOptions, ResponseHeader, Txn, TxnOp, WatchOptions};
use raftkv_tests::both::for_both;
use raftkv_tests::{Server, binaries, noise, selected_flavors};

/// Which header fields are set: what etcd fills does not depend on the
/// cluster, the values do.
fn shape(rpc: &str, h: Option<&ResponseHeader>) -> String {
    match h {
        None => format!("{rpc}: no header"),
        Some(h) => format!(
            "{rpc}: cluster_id {} member_id {} revision {} raft_term {}",
            h.cluster_id() != 0,
            h.member_id() != 0,
            h.revision() != 0,
            h.raft_term() != 0
        ),
    }
}

#[tokio::test]
async fn every_rpc_fills_its_header_as_etcd_does() -> anyhow::Result<()> {
    for_both(|mut c: Client| async move {
        let mut seen = Vec::new();
        seen.push(shape("Put", c.put("k", "v", None).await?.header()));
        seen.push(shape("Range", c.get("k", None).await?.header()));
        let txn = Txn::new().when([Compare::value("k", CompareOp::Equal, "v")]).and_then([TxnOp::put("k", "w", None)]);
        seen.push(shape("Txn", c.txn(txn).await?.header()));
        seen.push(shape("DeleteRange", c.delete("nothing", Some(DeleteOptions::new())).await?.header()));
        let rev = c.put("k", "x", None).await?.header().map_or(0, |h| h.revision());
        seen.push(shape("Compact", c.compact(rev - 1, None).await?.header()));
        let lease = c.lease_grant(60, None).await?;
        seen.push(shape("LeaseGrant", lease.header()));
        let (mut keeper, mut responses) = c.lease_keep_alive(lease.id()).await?;
        keeper.keep_alive().await?;
        let kept = responses.message().await?.context("no keep-alive answer")?;
        seen.push(shape("LeaseKeepAlive", kept.header()));
        seen.push(shape("LeaseTimeToLive", c.lease_time_to_live(lease.id(), None).await?.header()));
        seen.push(shape("LeaseLeases", c.leases().await?.header()));
        seen.push(shape("LeaseRevoke", c.lease_revoke(lease.id()).await?.header()));
        let mut stream = c.watch("k", Some(WatchOptions::new())).await?;
        let created = stream.message().await?.context("no watch created answer")?;
        seen.push(shape("Watch", created.header()));
        seen.push(shape("MemberList", c.member_list().await?.header()));
        let status = c.status().await?;
        seen.push(shape("Status", status.header()));
        seen.push(shape("Hash", c.hash().await?.header()));
        seen.push(shape("HashKV", c.hash_kv(0).await?.header()));
        seen.push(shape("Alarm", c.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None).await?.header()));
        seen.push(shape("Defragment", c.defragment().await?.header()));
        let me = status.header().map_or(0, |h| h.member_id());
        seen.push(shape("MoveLeader to itself", c.move_leader(me).await?.header()));
        let mut snapshot = c.snapshot().await?;
        let first = snapshot.message().await?.context("no snapshot message")?;
        seen.push(shape("Snapshot", first.header()));
        Ok(seen)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_after_deleting_and_compacting_shrinks_the_database() -> anyhow::Result<()> {
    let ctl = binaries::raftkvctl()?;
    for flavor in selected_flavors()? {
        let server = Server::start(flavor).await?;
        let mut c = server.client().await?;
        for i in 0..400u64 {
            c.put(format!("big/{i:03}"), noise(i, 64 * 1024), None).await?;
        }
        let full = c.status().await?;
        ensure!(full.db_size() > 20 << 20, "{}: 25 MiB written, db size {}", flavor.name(), full.db_size());
        let rev = c.delete("big/", Some(DeleteOptions::new().with_prefix())).await?.header().map_or(0, |h| h.revision());
        c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical())).await?;
        let out = Command::new(&ctl).args(["--endpoints", &server.endpoint(), "--command-timeout", "60s", "defrag"]).output()?;
        ensure!(
            out.status.success() && String::from_utf8_lossy(&out.stdout) == format!("Finished defragmenting etcd member[{}]\n", server.endpoint()),
            "{}: raftkvctl defrag: {:?} {}",
            flavor.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // etcd-client does not show dbSizeInUse: etcdctl's JSON does.
        let out = Command::new(&ctl).args(["--endpoints", &server.endpoint(), "endpoint", "status", "-w", "json"]).output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("endpoint status -w json")?;
        let status = &json[0]["Status"];
        let (size, in_use) = (status["dbSize"].as_i64().unwrap_or(-1), status["dbSizeInUse"].as_i64().unwrap_or(-1));
        ensure!(
            size > 0 && size < full.db_size() / 4 && (0..=size).contains(&in_use),
            "{}: db size {size} (in use {in_use}) after defragmenting, {} before: {json}",
            flavor.name(),
            full.db_size()
        );
        ensure!(c.get("big/", Some(GetOptions::new().with_prefix().with_count_only())).await?.count() == 0, "keys came back");
    }
    Ok(())
}
