//! clientv3/concurrency's session, mutex and election recipes, built from
//! KV, Lease and Watch requests exactly as etcd 3.4's client builds them, so
//! raftkvctl's `lock` and `elect` and etcdctl's exclude each other on the
//! same name. It must not use the Lock or Election gRPC services: etcdctl
//! does not, and the keys they write would not be seen the same way.
//!
//! The recipe: a session is a lease kept alive in the background; a waiter
//! writes `<prefix>/<lease hex>` bound to that lease if it does not exist,
//! and owns the name once every key under the prefix created before its own
//! has been deleted.

use std::time::Duration;

use etcd_client::proto::{PbEvent, PbResponseHeader};
use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, WatchOptions,
};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use crate::error::CtlError;
use crate::gofmt::lease_id;

/// mvccpb's `Event_DELETE`.
const DELETE: i32 = 1;

/// A lease kept alive until the process ends, as `concurrency.NewSession`
/// keeps it. Like etcdctl, nothing revokes it: it expires on its own once
/// the keep-alives stop.
pub struct Session {
    pub client: Client,
    pub lease: i64,
    /// Turns true once the server no longer knows the lease.
    expired: watch::Receiver<bool>,
}

impl Session {
    pub async fn new(client: Client, ttl: i64) -> Result<Session, CtlError> {
        let lease = client.lease_client().grant(ttl, None).await?.id();
        let (tx, expired) = watch::channel(false);
        tokio::spawn(keep_alive(client.clone(), lease, ttl, tx));
        Ok(Session { client, lease, expired })
    }

    /// Resolves when the session's lease is gone (`Session.Done()`).
    pub async fn done(&self) {
        let mut expired = self.expired.clone();
        // An error means the keep-alive task ended, which it only does
        // after reporting the lease gone.
        let _ = expired.wait_for(|gone| *gone).await;
    }
}

/// clientv3's keep-alive loop: renew every third of the TTL, retry a broken
/// stream, give up once the lease would have expired without a renewal.
async fn keep_alive(client: Client, lease: i64, ttl: i64, expired: watch::Sender<bool>) {
    let ttl = Duration::from_secs(ttl.max(1).unsigned_abs());
    let mut deadline = Instant::now() + ttl;
    'stream: while Instant::now() < deadline {
        let (mut keeper, mut stream) = match client.lease_client().keep_alive(lease).await {
            Ok(opened) => opened,
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => break,
            Err(_) => {
                sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                continue 'stream;
            }
            match stream.message().await {
                Ok(Some(resp)) if resp.ttl() <= 0 => break 'stream,
                Ok(Some(resp)) => {
                    let granted = Duration::from_secs(resp.ttl().unsigned_abs());
                    deadline = Instant::now() + granted;
                    sleep(granted / 3).await;
                }
                Ok(None) | Err(_) => {
                    sleep(Duration::from_millis(500)).await;
                    continue 'stream;
                }
            }
        }
    }
    let _ = expired.send(true);
}

/// The key a session writes under `prefix` (`fmt.Sprintf("%s%x", ...)`).
fn own_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(lease_id(lease).as_bytes());
    key
}

/// `clientv3.WithFirstCreate()`: the oldest key under the prefix.
fn first_created() -> GetOptions {
    GetOptions::new().with_prefix().with_sort(SortTarget::Create, SortOrder::Ascend).with_limit(1)
}

/// `concurrency.Mutex`: `prefix` already ends in `/`.
pub struct Mutex {
    pub key: Vec<u8>,
    /// The header of the request that saw the lock free.
    pub header: PbResponseHeader,
}

impl Mutex {
    /// `Mutex.Lock`: on failure (a cancelled wait included) the waiting key
    /// is removed again, as clientv3 does.
    pub async fn lock(session: &Session, prefix: &[u8]) -> Result<Mutex, CtlError> {
        let client = &session.client;
        let key = own_key(prefix, session.lease);
        let put = TxnOp::put(key.clone(), "", Some(PutOptions::new().with_lease(session.lease)));
        let get_owner = TxnOp::get(prefix.to_vec(), Some(first_created()));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put, get_owner.clone()])
            .or_else([TxnOp::get(key.clone(), None), get_owner]);
        let resp = client.kv_client().txn(txn).await?.0;
        let header = resp.header.unwrap_or_default();
        let ranges = range_responses(&resp.responses);
        let mut my_rev = header.revision;
        if !resp.succeeded {
            my_rev = ranges.first().and_then(|r| r.kvs.first()).map_or(0, |kv| kv.create_revision);
        }
        let owner = ranges.get(1).and_then(|r| r.kvs.first());
        if owner.is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok(Mutex { key, header });
        }
        let guard = DeleteOnDrop { client: client.clone(), key: Some(key.clone()) };
        let header = wait_deletes(client, prefix, my_rev - 1).await?;
        guard.disarm();
        Ok(Mutex { key, header })
    }

    /// `Mutex.Unlock`.
    pub async fn unlock(&self, client: &Client) -> Result<(), CtlError> {
        client.kv_client().delete(self.key.clone(), None).await?;
        Ok(())
    }
}

/// Removes a waiter's key if its wait is abandoned (an error, or the future
/// dropped by a signal), the way clientv3's `Lock` and `Campaign` clean up.
struct DeleteOnDrop {
    client: Client,
    key: Option<Vec<u8>>,
}

impl DeleteOnDrop {
    fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut kv = self.client.kv_client();
            // The signal path awaits `settle()` before exiting so this runs.
            tokio::spawn(async move {
                let _ = kv.delete(key, Some(DeleteOptions::new())).await;
            });
        }
    }
}

/// Lets spawned clean-ups (`DeleteOnDrop`) reach the server before the
/// process exits.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    sleep(Duration::from_millis(200)).await;
}

fn range_responses(
    responses: &[etcd_client::proto::PbResponseOp],
) -> Vec<etcd_client::proto::PbRangeResponse> {
    use etcd_client::proto::PbTxnOpResponse;
    responses
        .iter()
        .map(|r| match &r.response {
            Some(PbTxnOpResponse::ResponseRange(range)) => range.clone(),
            _ => Default::default(),
        })
        .collect()
}

/// `waitDeletes`: waits until no key under `prefix` has a create revision
/// at or below `max_create_rev`, watching the newest of them each time.
async fn wait_deletes(
    client: &Client,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<PbResponseHeader, CtlError> {
    let options = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(1)
        .with_max_create_revision(max_create_rev);
    loop {
        let resp = client.kv_client().get(prefix.to_vec(), Some(options.clone())).await?.0;
        let header = resp.header.unwrap_or_default();
        let Some(last) = resp.kvs.first() else {
            return Ok(header);
        };
        wait_delete(client, &last.key, header.revision).await?;
    }
}

/// `waitDelete`: watches `key` from `rev` until it is deleted.
async fn wait_delete(client: &Client, key: &[u8], rev: i64) -> Result<(), CtlError> {
    let options = WatchOptions::new().with_start_revision(rev);
    let mut stream = client.watch_client().watch(key.to_vec(), Some(options)).await?;
    while let Some(resp) = stream.message().await? {
        if resp.0.events.iter().any(|ev| ev.r#type == DELETE) {
            return Ok(());
        }
        if resp.0.canceled {
            return Err(CtlError::error(watch_cancel_error(&resp.0)));
        }
    }
    Err(CtlError::error("lost watcher waiting for delete"))
}

/// clientv3's `WatchResponse.Err()` for a cancelled watch.
pub fn watch_cancel_error(resp: &etcd_client::proto::PbWatchResponse) -> String {
    if resp.compact_revision != 0 {
        "etcdserver: mvcc: required revision has been compacted".to_string()
    } else if !resp.cancel_reason.is_empty() {
        resp.cancel_reason.clone()
    } else {
        "etcdserver: mvcc: required revision is a future revision".to_string()
    }
}

/// `concurrency.Election`: `prefix` already ends in `/`.
pub struct Election {
    pub key: Vec<u8>,
    create_revision: i64,
}

impl Election {
    /// `Election.Campaign`: the session's key holds `value`; returns once
    /// every older candidate is gone. A fresh session never finds its key
    /// already written, so clientv3's `Proclaim` branch cannot arise here.
    pub async fn campaign(session: &Session, prefix: &[u8], value: &[u8]) -> Result<Election, CtlError> {
        let client = &session.client;
        let key = own_key(prefix, session.lease);
        let put = TxnOp::put(key.clone(), value.to_vec(), Some(PutOptions::new().with_lease(session.lease)));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([put])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = client.kv_client().txn(txn).await?.0;
        let mut create_revision = resp.header.unwrap_or_default().revision;
        if !resp.succeeded {
            let ranges = range_responses(&resp.responses);
            create_revision =
                ranges.first().and_then(|r| r.kvs.first()).map_or(0, |kv| kv.create_revision);
        }
        let guard = DeleteOnDrop { client: client.clone(), key: Some(key.clone()) };
        wait_deletes(client, prefix, create_revision - 1).await?;
        guard.disarm();
        Ok(Election { key, create_revision })
    }

    /// `Election.Resign`: deletes the key if it is still this campaign's.
    pub async fn resign(&self, client: &Client) -> Result<(), CtlError> {
        let txn = Txn::new()
            .when([Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)])
            .and_then([TxnOp::delete(self.key.clone(), None)]);
        client.kv_client().txn(txn).await?;
        Ok(())
    }
}

/// One leader as `Election.Observe` reports it: a header and a key-value.
pub type Leader = etcd_client::proto::PbRangeResponse;

/// `Election.Observe`: calls `report` with the current leader and each
/// change of it (a new leader, or the leader's value changing) until the
/// cluster cannot be reached; then returns.
pub async fn observe(client: &Client, prefix: &[u8], mut report: impl FnMut(Leader) -> Result<(), CtlError>) -> Result<(), CtlError> {
    loop {
        let Ok(resp) = client.kv_client().get(prefix.to_vec(), Some(first_created())).await else {
            return Ok(());
        };
        let resp = resp.0;
        let (header, kv) = match resp.kvs.first() {
            Some(kv) => (resp.header.unwrap_or_default(), kv.clone()),
            None => {
                let rev = resp.header.map_or(0, |h| h.revision);
                match first_put(client, prefix, rev).await {
                    Some(found) => found,
                    None => return Ok(()),
                }
            }
        };
        report(leader(header, kv.clone()))?;
        let options = WatchOptions::new().with_start_revision(header.revision + 1);
        let Ok(mut stream) = client.watch_client().watch(kv.key.clone(), Some(options)).await else {
            return Ok(());
        };
        'leader: loop {
            let Ok(Some(wr)) = stream.message().await else {
                return Ok(());
            };
            for ev in &wr.0.events {
                if ev.r#type == DELETE {
                    break 'leader;
                }
                report(leader(wr.0.header.unwrap_or_default(), ev.kv.clone().unwrap_or_default()))?;
            }
        }
    }
}

fn leader(header: PbResponseHeader, kv: etcd_client::proto::PbKeyValue) -> Leader {
    Leader { header: Some(header), kvs: vec![kv], ..Default::default() }
}

/// Waits for the first key put under `prefix` from `rev`; its header's
/// revision is the key's, as clientv3 sets it.
async fn first_put(
    client: &Client,
    prefix: &[u8],
    rev: i64,
) -> Option<(PbResponseHeader, etcd_client::proto::PbKeyValue)> {
    let options = WatchOptions::new().with_start_revision(rev).with_prefix();
    let mut stream = client.watch_client().watch(prefix.to_vec(), Some(options)).await.ok()?;
    loop {
        let wr = stream.message().await.ok()??.0;
        if wr.canceled {
            return None;
        }
        let put = wr.events.iter().find(|ev: &&PbEvent| ev.r#type != DELETE);
        if let Some(kv) = put.and_then(|ev| ev.kv.clone()) {
            let mut header = wr.header.unwrap_or_default();
            header.revision = kv.mod_revision;
            return Some((header, kv));
        }
    }
}
