//! Leader election on raftkv, with etcd's Election service.
//!
//! Every replica campaigns with a lease it keeps alive; the Election service
//! makes the oldest candidate the leader, and Campaign returns only then. The
//! leader does periodic work; the others follow, learning who leads from
//! Observe. When the leader stops it resigns and the next candidate takes
//! over at once; when it dies, its lease expires and the next one takes over
//! one TTL later.
//!
//! The work here is incrementing a counter, `work/<election>`. Each increment
//! is a transaction that succeeds only while this replica's leader key exists:
//! a leader that lost its lease without noticing (paused, partitioned) cannot
//! overwrite its successor's work. A new leader resumes from the counter.
//!
//! ```sh
//! # run it in two or three terminals; kill the leader and watch another take over
//! cargo run -p raftkv --example leader_election -- --endpoints 127.0.0.1:2379 --name a --ttl 5
//! ```

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use etcd_client::{Client, Compare, CompareOp, LeaderKey, ProclaimOptions, ResignOptions, Txn, TxnOp};

use common::{ClusterArgs, Session, Shutdown};

/// Campaign for leadership; do periodic work while leader.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The election's name, shared by all replicas.
    #[arg(long, default_value = "leader-demo")]
    election: String,
    /// This replica's name [default: replica-<pid>].
    #[arg(long)]
    name: Option<String>,
    /// Seconds before a dead leader is replaced.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
    /// Time between two units of work (`1s`, `200ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Stop once the shared work counter reaches this; every replica then stops.
    #[arg(long)]
    count: Option<u64>,
    /// Stop after this long (`30s`, `5m`); otherwise run until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut shutdown = Shutdown::new(args.duration)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| common::default_name("replica"));
    let mut client = args.cluster.connect().await?;
    let mut session = Session::new(&client, args.ttl).await?;

    // Until we lead, say whom we follow.
    let (observing, election, me) = (client.clone(), args.election.clone(), name.clone());
    let observer = tokio::spawn(async move {
        if let Err(err) = follow(observing, election, me).await {
            eprintln!("observe failed: {err:#}");
        }
    });

    println!("{name} campaigning in {}", args.election);
    let mut campaigner = client.clone();
    let lease = session.lease();
    let leader = tokio::select! {
        () = shutdown.requested() => {
            observer.abort();
            // Revoking the lease withdraws the candidacy.
            return session.close().await;
        }
        err = session.lost() => return Err(err.context("lost the lease while campaigning")),
        won = campaigner.campaign(args.election.as_str(), name.as_str(), lease) => {
            won?.take_leader().context("Campaign answered without a leader key")?
        }
    };
    observer.abort();
    println!("became leader ({name})");

    let led = lead(&mut client, &args, &name, &leader, &mut session, &mut shutdown).await;
    if let Err(err) = led {
        // Best effort: the lease may already be gone.
        let _ = session.close().await;
        return Err(err);
    }
    // Hand over now rather than one TTL from now.
    client
        .resign(Some(ResignOptions::new().with_leader(leader)))
        .await?;
    println!("{name} resigned");
    session.close().await
}

/// Does one unit of work per `--interval` for as long as we lead.
async fn lead(
    client: &mut Client,
    args: &Args,
    name: &str,
    leader: &LeaderKey,
    session: &mut Session,
    shutdown: &mut Shutdown,
) -> Result<()> {
    let counter = format!("work/{}", args.election);
    let mut ticks = tokio::time::interval(args.interval);
    loop {
        tokio::select! {
            () = shutdown.requested() => return Ok(()),
            err = session.lost() => return Err(err.context("lost the lease, and with it the leadership")),
            _ = ticks.tick() => {}
        }

        let done: u64 = match client.get(counter.as_str(), None).await?.kvs().first() {
            Some(kv) => kv
                .value_str()?
                .parse()
                .context("the work counter is not a number")?,
            None => 0,
        };
        if args.count.is_some_and(|count| done >= count) {
            println!("all {done} units of work done");
            return Ok(());
        }

        // Fenced by our leader key: its create revision is unique to this
        // term of leadership, and the key is gone once the term is over.
        let unit = done + 1;
        let fenced = Txn::new()
            .when([Compare::create_revision(
                leader.key(),
                CompareOp::Equal,
                leader.rev(),
            )])
            .and_then([TxnOp::put(counter.as_str(), unit.to_string(), None)]);
        if !client.txn(fenced).await?.succeeded() {
            anyhow::bail!("{name} is no longer the leader; stopping work");
        }
        println!("leader {name}: work #{unit}");

        // Proclaim progress: observers (and `etcdctl elect -l`) see it.
        let status = format!("{name} #{unit}");
        client
            .proclaim(status, Some(ProclaimOptions::new().with_leader(leader.clone())))
            .await?;
    }
}

/// Prints "following <leader>" each time the leadership changes hands.
async fn follow(mut client: Client, election: String, me: String) -> Result<()> {
    let mut changes = client.observe(election).await?;
    let mut current = None;
    while let Some(response) = changes.message().await? {
        let Some(kv) = response.kv() else { continue };
        // The value is the leader's name, then its progress once it proclaims.
        let value = kv.value_str()?;
        let leader = value
            .split_once(" #")
            .map_or(value, |(leader, _)| leader)
            .to_owned();
        if current.as_ref() != Some(&leader) {
            if leader != me {
                println!("following {leader}");
            }
            current = Some(leader);
        }
    }
    Ok(())
}
