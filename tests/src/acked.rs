//! What the durability and failover tests hold a server to: every put it
//! acknowledged is there afterwards, with the value and at the revision it
//! was acknowledged at. Writers here record the acknowledgements; the whole
//! keyspace is read back page by page and checked against them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use etcd_client::{Client, GetOptions};

use crate::describe;

/// Keys per page when reading the whole store back.
const PAGE: i64 = 5000;

/// A put the server acknowledged: key, value, the header revision, and
/// when the acknowledgement arrived.
#[derive(Debug, Clone)]
pub struct Ack {
    pub key: String,
    pub value: String,
    pub revision: i64,
    pub at: Instant,
}

/// Every key with its value and mod revision, as of one revision.
pub type Store = BTreeMap<Vec<u8>, (Vec<u8>, i64)>;

/// Sequential puts of distinct keys `{prefix}/{i:08}` = `i` until `stop` is
/// set. A failed put is an error while `fault` is unset; once it is set (a
/// server was killed, a leader is being elected) failures are expected and
/// the writer pauses briefly and goes on with the next key: only what was
/// acknowledged is recorded, and a failed put may or may not have happened.
pub async fn put_until(
    mut client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
    fault: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Ack>> {
    let mut acks = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("{prefix}/{i:08}");
        let value = i.to_string();
        i += 1;
        match client.put(key.as_str(), value.as_str(), None).await {
            Ok(resp) => acks.push(Ack {
                key,
                value,
                revision: describe::revision(resp.header()),
                at: Instant::now(),
            }),
            Err(_) if fault.load(Ordering::SeqCst) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => bail!(
                "put {key} failed before any fault: {}",
                describe::error(&err)
            ),
        }
    }
    Ok(acks)
}

/// The whole keyspace and the revision it was read at. `serializable`
/// reads are answered from the member's own state, without asking the
/// leader: what a member holds, not what the cluster committed.
pub async fn whole_store(client: &mut Client, serializable: bool) -> anyhow::Result<(i64, Store)> {
    let options = |options: GetOptions| {
        if serializable {
            options.with_serializable()
        } else {
            options
        }
    };
    let mut store = BTreeMap::new();
    let first = client
        .get(
            "",
            Some(options(GetOptions::new().with_all_keys().with_limit(1))),
        )
        .await?;
    let revision = describe::revision(first.header());
    let mut from = vec![0u8];
    loop {
        let page = GetOptions::new()
            .with_from_key()
            .with_limit(PAGE)
            .with_revision(revision);
        let resp = client.get(from.clone(), Some(options(page))).await?;
        for kv in resp.kvs() {
            store.insert(kv.key().to_vec(), (kv.value().to_vec(), kv.mod_revision()));
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((revision, store))
}

/// Fails, naming the first one, unless every acknowledged put is in `store`
/// with its value at its revision.
pub fn all_present(store: &Store, acks: &[Ack]) -> anyhow::Result<()> {
    for ack in acks {
        let Some((value, mod_revision)) = store.get(ack.key.as_bytes()) else {
            bail!(
                "acknowledged put {} (revision {}) is lost",
                ack.key,
                ack.revision
            );
        };
        ensure!(
            value == ack.value.as_bytes(),
            "{} = {:?}, acknowledged {:?}",
            ack.key,
            describe::bytes(value),
            ack.value
        );
        ensure!(
            *mod_revision == ack.revision,
            "{} has mod_revision {mod_revision}, acknowledged at {}",
            ack.key,
            ack.revision
        );
    }
    Ok(())
}
