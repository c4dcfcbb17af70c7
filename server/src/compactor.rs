//! Auto compaction with etcd's meaning of --auto-compaction-mode and
//! --auto-compaction-retention:
//! - periodic: keep `retention` of history; every min(retention, 1h)
//!   compact to the revision that was current `retention` ago (revisions
//!   are sampled ten times per interval);
//! - revision: every 5 minutes compact to current revision - retention.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::proto::PbCompactionRequest;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::apply::request::Op;
use crate::config::AutoCompaction;
use crate::node::Node;

const REVISION_INTERVAL: Duration = Duration::from_secs(300);

pub async fn run(node: Arc<Node>, mode: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let (interval, sample) = match mode {
        AutoCompaction::Off => return,
        AutoCompaction::Periodic(retention) => {
            let every = retention.min(Duration::from_secs(3600));
            (every, every / 10)
        }
        AutoCompaction::Revision(_) => (REVISION_INTERVAL, REVISION_INTERVAL),
    };
    // (when, revision) samples, oldest first.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut last_compaction = Instant::now();
    let mut last_target = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(sample) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let current = node.store.current_revision();
        samples.push_back((now, current));
        if now.duration_since(last_compaction) < interval {
            continue;
        }
        let target = match mode {
            AutoCompaction::Periodic(retention) => {
                // The newest sample at least `retention` old.
                while samples.len() > 1 && samples[1].0 <= now - retention {
                    samples.pop_front();
                }
                match samples.front() {
                    Some((at, rev)) if *at <= now - retention => *rev,
                    _ => continue,
                }
            }
            AutoCompaction::Revision(keep) => current - keep,
            AutoCompaction::Off => return,
        };
        last_compaction = now;
        if target <= last_target || target <= node.store.compacted_revision() || target <= 1 {
            continue;
        }
        match node.propose(Op::Compaction(PbCompactionRequest { revision: target, physical: false })).await {
            Ok(_) => {
                last_target = target;
                tracing::info!(revision = target, "auto compaction done");
            }
            Err(e) => tracing::warn!(revision = target, error = %e, "auto compaction failed"),
        }
    }
}
