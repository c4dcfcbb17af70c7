//! A distributed work queue on raftkv, etcd's queue recipe.
//!
//! Producers enqueue each item under a new key in `queue/<name>/`: a
//! transaction puts it only if the key does not exist yet, so two producers
//! never overwrite each other. Consumers dequeue the oldest item, the key with
//! the smallest create revision, with a transaction that deletes it only if it
//! is unchanged since it was read: of two consumers racing for one item
//! exactly one wins, and the other moves on to the next. An empty queue is
//! waited on with a watch, not by polling.
//!
//! ```sh
//! cargo run -p raftkv --example distributed_queue -- --endpoints 127.0.0.1:2379 consume
//! cargo run -p raftkv --example distributed_queue -- --endpoints 127.0.0.1:2379 produce --count 20
//! ```

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, SortOrder, SortTarget, Txn, TxnOp, WatchFilterType,
    WatchOptions,
};
use futures::FutureExt;

use common::{ClusterArgs, Shutdown};

/// Enqueue items, or dequeue them oldest first.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The queue; its items live under `queue/<queue>/`.
    #[arg(long, default_value = "jobs")]
    queue: String,
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Enqueue `<prefix>-1` to `<prefix>-<count>`.
    Produce {
        /// How many items to enqueue.
        #[arg(long, default_value_t = 10)]
        count: u64,
        /// The items' names.
        #[arg(long, default_value = "item")]
        prefix: String,
        /// Pause between two items (`100ms`).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        interval: Duration,
    },
    /// Dequeue items, waiting when the queue is empty.
    Consume {
        /// Stop after this many items.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long (`30s`); otherwise run until Ctrl-C or SIGTERM.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut client = args.cluster.connect().await?;
    let dir = format!("queue/{}/", args.queue);
    match args.role {
        Role::Produce {
            count,
            prefix,
            interval,
        } => {
            for i in 1..=count {
                let item = format!("{prefix}-{i}");
                let key = enqueue(&mut client, &dir, &item).await?;
                println!("enqueued {item} as {key}");
                tokio::time::sleep(interval).await;
            }
            Ok(())
        }
        Role::Consume { count, duration } => {
            let mut shutdown = Shutdown::new(duration)?;
            let mut consumed = 0;
            while count.is_none_or(|count| consumed < count) {
                // Between items, not in the middle of taking one: an item
                // deleted but never printed would be lost.
                if shutdown.requested().now_or_never().is_some() {
                    break;
                }
                let Some(item) = dequeue(&mut client, &dir, &mut shutdown).await? else {
                    break; // asked to stop
                };
                println!("dequeued {} ({})", item.value_str()?, item.key_str()?);
                consumed += 1;
            }
            println!("consumed {consumed} item(s)");
            Ok(())
        }
    }
}

/// Puts `item` under a fresh key in `dir` and returns the key.
async fn enqueue(client: &mut Client, dir: &str, item: &str) -> Result<String> {
    loop {
        // The key only needs to be new; order comes from the create revision
        // the put gets, so producers' clocks need not agree.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_nanos();
        let key = format!("{dir}{nanos:020}");
        let put_if_new = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), item, None)]);
        if client.txn(put_if_new).await?.succeeded() {
            return Ok(key);
        }
        // Another producer took this key in the same nanosecond: draw another.
    }
}

/// Removes and returns the oldest item of `dir`, waiting while it is empty.
/// `None` when asked to stop while waiting.
async fn dequeue(client: &mut Client, dir: &str, shutdown: &mut Shutdown) -> Result<Option<KeyValue>> {
    loop {
        let oldest = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let listing = client.get(dir, Some(oldest)).await?;
        if let Some(item) = listing.kvs().first() {
            // Delete it only if nobody has since: whoever deletes it owns it.
            let take = Txn::new()
                .when([Compare::mod_revision(
                    item.key(),
                    CompareOp::Equal,
                    item.mod_revision(),
                )])
                .and_then([TxnOp::delete(item.key(), None)]);
            if client.txn(take).await?.succeeded() {
                return Ok(Some(item.clone()));
            }
            continue; // another consumer took it first
        }

        // Empty at this revision: wait for a put after it, then look again.
        let revision = listing.header().context("the listing has no header")?.revision();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_filters([WatchFilterType::NoDelete]);
        let mut watch = client.watch(dir, Some(options)).await?;
        loop {
            let response = tokio::select! {
                () = shutdown.requested() => return Ok(None),
                message = watch.message() => message?.context("the server closed the watch")?,
            };
            if response.canceled() {
                bail!("the server canceled the watch: {}", response.cancel_reason());
            }
            if !response.events().is_empty() {
                break;
            }
        }
    }
}
