//! The lease-keepalive workload (etcd benchmark's `lease-keepalive`): each
//! client grants one lease, then every request is one keep-alive of it,
//! answered before the next. etcd's tool opens a stream per keep-alive
//! (`KeepAliveOnce`); here each client keeps one stream open, as clients
//! that keep leases alive do.

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};

use super::Workload;

#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// TTL of each client's lease, in seconds.
    #[arg(long, default_value_t = 100)]
    pub ttl: i64,
}

impl LeaseArgs {
    pub(super) fn workload(&self) -> KeepAlive {
        KeepAlive { ttl: self.ttl }
    }
}

pub(super) struct KeepAlive {
    ttl: i64,
}

impl Workload for KeepAlive {
    type Session = (LeaseKeeper, LeaseKeepAliveStream);

    async fn open(&self, client: &mut Client) -> Result<Self::Session, etcd_client::Error> {
        let id = client.lease_grant(self.ttl, None).await?.id();
        client.lease_keep_alive(id).await
    }

    async fn request(
        &self,
        _: &mut Client,
        (keeper, stream): &mut Self::Session,
        _seq: u64,
    ) -> Result<(), etcd_client::Error> {
        keeper.keep_alive().await?;
        match stream.message().await? {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            Some(_) => Err(etcd_client::Error::LeaseKeepAliveError(
                "the lease expired".into(),
            )),
            None => Err(etcd_client::Error::LeaseKeepAliveError(
                "the keep-alive stream ended".into(),
            )),
        }
    }
}
