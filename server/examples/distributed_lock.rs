//! A distributed lock on raftkv, with etcd's Lock service.
//!
//! Each round takes the lock, reads a counter, writes it back plus one, and
//! unlocks. Run several of these at once: no increment is lost, so the
//! counter ends at the sum of their `--count`s.
//!
//! The lock is held through a lease kept alive in the background: if this
//! process dies inside the critical section, the lock is released one TTL
//! later instead of never. The write is fenced by the lock key (it succeeds
//! only while the key exists), so a holder whose lease expired while it was
//! paused cannot write over the next holder's work.
//!
//! ```sh
//! # in several terminals at once
//! cargo run -p raftkv --example distributed_lock -- --endpoints 127.0.0.1:2379 --count 10
//! ```

mod common;

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::{Client, Compare, CompareOp, LockOptions, Txn, TxnOp};

use common::{ClusterArgs, Session};

/// Increment a shared counter under a lock, `--count` times.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The lock's name, shared by everyone updating the counter.
    #[arg(long, default_value = "counter-lock")]
    lock: String,
    /// The counter's key.
    #[arg(long, default_value = "counter")]
    key: String,
    /// How many increments to make.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Seconds before the lock of a dead holder is released.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// This process's name in the output [default: locker-<pid>].
    #[arg(long)]
    name: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| common::default_name("locker"));
    let mut client = args.cluster.connect().await?;
    let session = Session::new(&client, args.ttl).await?;

    for _ in 0..args.count {
        // Blocks while someone else holds the lock; waiters get it oldest first.
        let held = client
            .lock(
                args.lock.as_str(),
                Some(LockOptions::new().with_lease(session.lease())),
            )
            .await
            .context("cannot take the lock")?;
        let lock_key = held.key().to_vec();

        let value = read_counter(&mut client, &args.key).await? + 1;
        let fenced = Txn::new()
            .when([Compare::create_revision(lock_key.clone(), CompareOp::Greater, 0)])
            .and_then([TxnOp::put(args.key.as_str(), value.to_string(), None)]);
        if !client.txn(fenced).await?.succeeded() {
            bail!("{name} lost the lock inside the critical section");
        }
        println!("{name}: {} = {value}", args.key);

        client.unlock(lock_key).await.context("cannot unlock")?;
    }

    session.close().await?;
    println!(
        "{name}: done; final value of {} is {}",
        args.key,
        read_counter(&mut client, &args.key).await?
    );
    Ok(())
}

async fn read_counter(client: &mut Client, key: &str) -> Result<u64> {
    match client.get(key, None).await?.kvs().first() {
        Some(kv) => kv
            .value_str()?
            .parse()
            .with_context(|| format!("{key} is not a number")),
        None => Ok(0),
    }
}
