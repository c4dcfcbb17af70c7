//! etcd's `concurrency` recipes, run inside the server for the Lock and
//! Election services: a contender writes `<name>/<lease hex>` under its
//! lease; the key with the oldest create revision holds the lock or the
//! leadership; the others wait until every older key is deleted (released,
//! resigned or expired with its lease).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::proto::{
    PbCompare as Compare, PbKeyValue as KeyValue, PbPutRequest as PutRequest, PbRangeRequest as RangeRequest, PbResponseHeader,
    PbTargetUnion as TargetUnion, PbTxnOpRequest as Op, PbTxnOpResponse as OpResponse, PbTxnRequest as TxnRequest,
    PbTxnRequestOp as RequestOp,
};
use tokio::sync::mpsc;

use crate::apply::{self, range::range, request};
use crate::error::Error;
use crate::mvcc::RangeEnd;
use crate::node::Node;
use crate::watch::WatchSpec;

const TARGET_CREATE: i32 = 1;
const RESULT_EQUAL: i32 = 0;
const SORT_ASCEND: i32 = 1;
const SORT_DESCEND: i32 = 2;
const SORT_BY_CREATE: i32 = 2;

/// Watch streams of the recipes, numbered apart from clients' streams.
static RECIPE_STREAMS: AtomicU64 = AtomicU64::new(u64::MAX / 2);

pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What joining a lock's or election's queue takes, as the client
/// recipes' own requests would be checked: write on the caller's key and
/// read on the whole queue.
pub fn check_queue(node: &Node, caller: &Option<crate::auth::Caller>, prefix: &[u8], key: &[u8]) -> Result<(), Error> {
    use crate::auth::Need;
    node.auth.check(caller, key, &[], Need::Write)?;
    node.auth.check(caller, prefix, &prefix_end(prefix), Need::Read)
}

pub fn create_revision_is(key: &[u8], rev: i64) -> Compare {
    Compare {
        result: RESULT_EQUAL,
        target: TARGET_CREATE,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(rev)),
        range_end: Vec::new(),
    }
}

pub async fn txn(node: &Node, t: TxnRequest) -> Result<etcd_client::proto::PbTxnResponse, Error> {
    match node.propose(request::Op::Txn(t)).await? {
        apply::Response::Txn(r) => Ok(r),
        _ => Err(Error::Internal("unexpected apply result for txn".into())),
    }
}

pub fn header(node: &Node, h: Option<PbResponseHeader>) -> PbResponseHeader {
    node.header(h.map_or(0, |h| h.revision))
}

/// The holder: the oldest key under `prefix`, if any.
pub async fn first_created(node: &Node, prefix: &[u8]) -> Result<(Option<KeyValue>, i64), Error> {
    node.linearizable_read().await?;
    let r = range(
        node.store.as_ref(),
        &RangeRequest { key: prefix.to_vec(), range_end: prefix_end(prefix), limit: 1, sort_order: SORT_ASCEND, sort_target: SORT_BY_CREATE, ..Default::default() },
    )?;
    let rev = r.header.map_or(0, |h| h.revision);
    Ok((r.kvs.into_iter().next(), rev))
}

/// Writes `key` under `lease` unless it exists; returns the key as stored
/// (its create revision orders the contenders) and the response header.
pub async fn enqueue(node: &Node, key: &[u8], lease: i64, value: &[u8]) -> Result<(KeyValue, PbResponseHeader), Error> {
    let put = PutRequest { key: key.to_vec(), value: value.to_vec(), lease, ..Default::default() };
    let get = RangeRequest { key: key.to_vec(), ..Default::default() };
    let resp = txn(
        node,
        TxnRequest {
            compare: vec![create_revision_is(key, 0)],
            success: vec![RequestOp { request: Some(Op::RequestPut(put)) }, RequestOp { request: Some(Op::RequestRange(get.clone())) }],
            failure: vec![RequestOp { request: Some(Op::RequestRange(get)) }],
        },
    )
    .await?;
    let kv = resp
        .responses
        .into_iter()
        .filter_map(|r| match r.response {
            Some(OpResponse::ResponseRange(rr)) => rr.kvs.into_iter().next(),
            _ => None,
        })
        .next()
        .ok_or_else(|| Error::Internal("recipe key vanished".into()))?;
    Ok((kv, header(node, resp.header)))
}

/// A watcher of one key that removes itself when dropped.
struct KeyWatch {
    node: Arc<Node>,
    id: (u64, i64),
    rx: mpsc::Receiver<etcd_client::proto::PbWatchResponse>,
}

impl KeyWatch {
    /// `user`: the user whose read right the watch keeps being checked
    /// against (Observe's); None for the waits of Lock and Campaign.
    fn new(node: &Arc<Node>, key: &[u8], end: RangeEnd, start_rev: i64, no_put: bool, user: Option<String>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let id = (RECIPE_STREAMS.fetch_add(1, Ordering::Relaxed), 0);
        let spec = WatchSpec {
            key: key.to_vec(),
            end,
            start_rev,
            no_put,
            no_delete: false,
            prev_kv: false,
            progress_notify: false,
            fragment: false,
            user,
        };
        node.hub.add(id, spec, tx);
        Self { node: node.clone(), id, rx }
    }

    /// The next event, or an error if the store compacted past it.
    async fn next(&mut self) -> Result<etcd_client::proto::PbEvent, Error> {
        loop {
            let r = self.rx.recv().await.ok_or(Error::Stopped)?;
            if r.compact_revision != 0 {
                return Err(Error::Compacted);
            }
            if r.canceled {
                // Its user may no longer read what it watches.
                return Err(Error::PermissionDenied);
            }
            if let Some(e) = r.events.into_iter().next() {
                return Ok(e);
            }
        }
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        self.node.hub.remove(self.id);
    }
}

/// Waits until no key under `prefix` was created before `my_rev`.
pub async fn wait_turn(node: &Arc<Node>, prefix: &[u8], my_rev: i64) -> Result<PbResponseHeader, Error> {
    loop {
        node.linearizable_read().await?;
        let older = range(
            node.store.as_ref(),
            &RangeRequest {
                key: prefix.to_vec(),
                range_end: prefix_end(prefix),
                limit: 1,
                sort_order: SORT_DESCEND,
                sort_target: SORT_BY_CREATE,
                max_create_revision: my_rev - 1,
                ..Default::default()
            },
        )?;
        let rev = older.header.as_ref().map_or(0, |h| h.revision);
        let Some(kv) = older.kvs.into_iter().next() else {
            return Ok(node.header(rev));
        };
        // Wait for that key's deletion, then look again.
        let mut w = KeyWatch::new(node, &kv.key, RangeEnd::Single, rev + 1, true, None);
        w.next().await?;
    }
}

/// Streams the holder of `prefix` as it changes (Election.Observe).
/// Election.Observe: the leader of `prefix`, then each change of it, on
/// `tx`; `user` (authentication enabled) loses the stream with "permission
/// denied" once it may no longer read the prefix.
pub async fn observe(node: Arc<Node>, prefix: Vec<u8>, tx: mpsc::Sender<Result<(KeyValue, PbResponseHeader), Error>>, user: Option<String>) {
    let mut last: Option<KeyValue> = None;
    loop {
        let (leader, rev) = match first_created(&node, &prefix).await {
            Ok(x) => x,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let Some(mut kv) = leader else {
            // No leader yet: wait for any key under the prefix.
            let mut w = KeyWatch::new(&node, &prefix, RangeEnd::Until(prefix_end(&prefix)), rev + 1, false, user.clone());
            tokio::select! {
                r = w.next() => if let Err(e) = r {
                    if matches!(e, Error::PermissionDenied) {
                        let _ = tx.send(Err(e)).await;
                    }
                    return;
                },
                _ = tx.closed() => return,
            }
            continue;
        };
        loop {
            if last.as_ref() != Some(&kv) {
                if tx.send(Ok((kv.clone(), node.header(0)))).await.is_err() {
                    return;
                }
                last = Some(kv.clone());
            }
            let mut w = KeyWatch::new(&node, &kv.key, RangeEnd::Single, kv.mod_revision + 1, false, user.clone());
            let e = tokio::select! {
                r = w.next() => match r {
                    Ok(e) => e,
                    Err(e) => {
                        if matches!(e, Error::PermissionDenied) {
                            let _ = tx.send(Err(e)).await;
                        }
                        return;
                    }
                },
                _ = tx.closed() => return,
            };
            match e.kv {
                Some(next) if e.r#type == 0 => kv = next,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
    }
}
