//! `--auto-compaction-mode periodic --auto-compaction-retention 1s`: old
//! revisions are compacted on their own, reads of them then fail with etcd's
//! compaction error, and the latest values stay readable.
//!
//! Revision mode is not tested here: etcd 3.4 applies it only every five
//! minutes.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::GetOptions;
use raftkv_tests::{Server, describe, selected_flavors};

/// Far above the one-second retention; only a bound for a broken server.
const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn periodic_auto_compaction_compacts_old_revisions() -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let args = [
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ];
        let server = Server::start_with(flavor, &args).await?;
        let mut client = server.client().await?;
        for v in ["v1", "v2", "v3"] {
            client.put("k", v, None).await?; // revisions 2, 3, 4
        }
        let started = Instant::now();
        loop {
            // Keep writing so that there is always something newer to keep.
            client.put("tick", "x", None).await?;
            match client
                .get("k", Some(GetOptions::new().with_revision(2)))
                .await
            {
                Ok(_) if started.elapsed() > DEADLINE => {
                    bail!(
                        "{}: revision 2 still readable after {DEADLINE:?}",
                        flavor.name()
                    )
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(err) => {
                    let status = describe::grpc_status(&err);
                    ensure!(
                        status
                            == Some((
                                "OutOfRange".to_owned(),
                                "etcdserver: mvcc: required revision has been compacted".to_owned()
                            )),
                        "{}: reading revision 2 failed with {}",
                        flavor.name(),
                        describe::error(&err)
                    );
                    break;
                }
            }
        }
        let latest = client.get("k", None).await?;
        let kv = latest
            .kvs()
            .first()
            .context("the latest value was compacted away")?;
        ensure!(
            kv.value() == b"v3" && kv.version() == 3,
            "{}: after compaction: {}",
            flavor.name(),
            describe::kv(kv)
        );
    }
    Ok(())
}
