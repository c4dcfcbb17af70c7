//! Corruption checks, as etcd's `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`: members compare HashKV at one
//! revision. Only hashes taken over the same compacted revision compare
//! (etcd's rule); a peer that cannot answer (down, behind, compacted past
//! the revision) is skipped with a warning. It decides, and raises the
//! CORRUPT alarm through raft; the applier does the refusing.

use std::sync::Arc;
use std::time::Duration;

use crate::alarm;
use crate::apply::request::Op;
use crate::node::Node;

/// How long one peer may take to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// This member's HashKV: (hash, compacted revision, revision).
async fn own_hash(node: &Node, rev: i64) -> Result<(u32, i64, i64), String> {
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || store.hash_kv(rev)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
}

/// Every other started member's HashKV at `rev`, by member id, asked on
/// its peer port (etcd's /members/hashkv), with the peer port's TLS.
async fn peer_hashes(node: &Node, rev: i64) -> Vec<(u64, Result<(u32, i64), String>)> {
    let mut out = Vec::new();
    for m in node.membership.list() {
        if m.id == node.member.id || m.client_urls.is_empty() {
            continue;
        }
        let answer = async {
            let mut c = crate::peer::client::connect(&m.peer_urls, PEER_TIMEOUT, &node.peer_tls)?;
            let r = c
                .hash_kv(crate::peer::proto::HashKvRequest { cluster_id: node.cluster_id, revision: rev })
                .await
                .map_err(|s| s.message().to_owned())?
                .into_inner();
            Ok((r.hash, r.compact_revision))
        };
        out.push((m.id, answer.await));
    }
    out
}

/// Members whose hash differs from ours over the same compacted revision.
async fn mismatches(node: &Node, rev: i64) -> Result<Vec<u64>, String> {
    let (hash, compacted, rev) = own_hash(node, rev).await?;
    let mut bad = Vec::new();
    for (id, answer) in peer_hashes(node, rev).await {
        match answer {
            Ok((h, c)) if c == compacted && h != hash => {
                tracing::error!(peer = %format!("{id:x}"), revision = rev, ours = hash, theirs = h, "hash differs from a peer's");
                bad.push(id);
            }
            Ok((_, c)) if c != compacted => {
                tracing::warn!(peer = %format!("{id:x}"), ours = compacted, theirs = c, "cannot compare hashes: compacted revisions differ")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(peer = %format!("{id:x}"), error = %e, "cannot get a peer's hash"),
        }
    }
    Ok(bad)
}

/// The check before a member that already has data serves clients: its
/// hash at its revision against the other members'. Fails with etcd's
/// message on a mismatch.
pub async fn initial_check(node: &Node) -> Result<(), String> {
    tracing::info!("checking data consistency with peers before serving");
    let bad = mismatches(node, 0).await?;
    if bad.is_empty() {
        tracing::info!("data is consistent with peers");
        return Ok(());
    }
    Err(format!("{:x} found data inconsistency with peers", node.member.id))
}

/// The leader's periodic check: a mismatch raises CORRUPT for member 0 (it
/// is not known which member's data is wrong), as etcd since 3.4.23.
pub async fn run_periodic(node: Arc<Node>, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !node.is_leader() || node.alarms.has(alarm::CORRUPT) {
            continue;
        }
        match mismatches(&node, 0).await {
            Ok(bad) if !bad.is_empty() => {
                let raise = etcd_client::proto::PbAlarmRequest { action: alarm::ACTIVATE, member_id: 0, alarm: alarm::CORRUPT };
                if let Err(e) = node.propose(Op::Alarm(raise)).await {
                    tracing::warn!(error = %e, "could not raise the CORRUPT alarm");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "corruption check failed"),
        }
    }
}
