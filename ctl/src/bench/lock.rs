//! The lock workload: each request takes a lock through the Lock service
//! (v3lockpb, with the client's own lease, as etcd's concurrency recipes do)
//! and releases it. Clients share `--names` locks, request `seq` taking lock
//! `seq % names`; with fewer names than clients they queue for each other,
//! so the rate measures hand-over from one holder to the next.

use anyhow::bail;
use etcd_client::{Client, LockOptions};

use super::Workload;

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Number of distinct locks the clients share.
    #[arg(long, default_value_t = 1)]
    pub names: u64,
    /// TTL of each client's lease, in seconds.
    #[arg(long, default_value_t = 60)]
    pub ttl: i64,
}

impl LockArgs {
    pub(super) fn workload(&self) -> anyhow::Result<Lock> {
        if self.names == 0 {
            bail!("--names must be at least 1");
        }
        Ok(Lock {
            names: self.names,
            ttl: self.ttl,
        })
    }
}

pub(super) struct Lock {
    names: u64,
    ttl: i64,
}

impl Workload for Lock {
    /// The client's lease.
    type Session = i64;

    async fn open(&self, client: &mut Client) -> Result<i64, etcd_client::Error> {
        Ok(client.lease_grant(self.ttl, None).await?.id())
    }

    async fn request(
        &self,
        client: &mut Client,
        lease: &mut i64,
        seq: u64,
    ) -> Result<(), etcd_client::Error> {
        let name = format!("bench-lock/{}", seq % self.names);
        let held = client
            .lock(name, Some(LockOptions::new().with_lease(*lease)))
            .await?;
        client.unlock(held.key()).await.map(drop)
    }
}
