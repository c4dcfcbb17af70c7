//! Service discovery on raftkv.
//!
//! A worker registers itself as `services/<service>/<instance>` = its address,
//! with the key attached to a lease that the worker keeps alive. When the
//! worker stops, it revokes the lease and the key goes at once; when it dies
//! (kill -9, a crashed machine), nobody refreshes the lease and the key goes
//! one TTL later. Either way, every watcher of the prefix sees a delete.
//!
//! A watcher lists the current instances, then watches the prefix from the
//! revision of that listing, so that no arrival or departure falls between
//! the two.
//!
//! ```sh
//! # a worker, registered for as long as it runs
//! cargo run -p raftkv --example service_registry -- --endpoints 127.0.0.1:2379 \
//!     --service api --instance api-1 --address 10.0.0.7:8080 --ttl 5
//! # the instances of `api`, then arrivals and departures as they happen
//! cargo run -p raftkv --example service_registry -- --endpoints 127.0.0.1:2379 --service api --watch
//! ```

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};

use common::{ClusterArgs, Session, Shutdown};

/// Register a service instance, or watch a service's instances come and go.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    cluster: ClusterArgs,
    /// The service; its instances live under `services/<service>/`.
    #[arg(long, default_value = "api")]
    service: String,
    /// This instance's name [default: worker-<pid>].
    #[arg(long)]
    instance: Option<String>,
    /// What the instance advertises, typically where to reach it.
    #[arg(long, default_value = "127.0.0.1:8080")]
    address: String,
    /// Seconds a dead worker stays registered.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
    /// Watch the service's instances instead of registering one.
    #[arg(long)]
    watch: bool,
    /// With --watch: stop after this many arrivals and departures.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this long (`30s`, `5m`); otherwise run until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let shutdown = Shutdown::new(args.duration)?;
    let client = args.cluster.connect().await?;
    let prefix = format!("services/{}/", args.service);
    if args.watch {
        watch(client, &prefix, args.count, shutdown).await
    } else {
        let instance = args
            .instance
            .clone()
            .unwrap_or_else(|| common::default_name("worker"));
        register(
            client,
            &format!("{prefix}{instance}"),
            &args.address,
            args.ttl,
            shutdown,
        )
        .await
    }
}

async fn register(
    mut client: Client,
    key: &str,
    address: &str,
    ttl: i64,
    mut shutdown: Shutdown,
) -> Result<()> {
    let mut session = Session::new(&client, ttl).await?;
    client
        .put(key, address, Some(PutOptions::new().with_lease(session.lease())))
        .await
        .with_context(|| format!("cannot register {key}"))?;
    println!(
        "registered {key} = {address} (lease {:x}, ttl {}s)",
        session.lease(),
        session.ttl()
    );

    tokio::select! {
        () = shutdown.requested() => {}
        // The registration is gone (or about to be): better to stop, and let
        // the supervisor restart us, than to serve while undiscoverable.
        err = session.lost() => return Err(err.context(format!("{key} is no longer registered"))),
    }

    session.close().await?;
    println!("deregistered {key}");
    Ok(())
}

async fn watch(mut client: Client, prefix: &str, count: Option<usize>, mut shutdown: Shutdown) -> Result<()> {
    let listing = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    println!("{} instance(s) under {prefix}", listing.kvs().len());
    for kv in listing.kvs() {
        println!(
            "  {} at {}",
            instance_name(kv.key_str()?, prefix),
            kv.value_str()?
        );
    }

    // Everything after the listing's revision is news.
    let revision = listing.header().context("the listing has no header")?.revision();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client.watch(prefix, Some(options)).await?;
    println!("watching {prefix} from revision {}", revision + 1);

    let mut changes = 0;
    loop {
        let response = tokio::select! {
            () = shutdown.requested() => return Ok(()),
            message = stream.message() => message?.context("the server closed the watch")?,
        };
        if response.canceled() {
            bail!("the server canceled the watch: {}", response.cancel_reason());
        }
        for event in response.events() {
            let kv = event.kv().context("a watch event without its key")?;
            let instance = instance_name(kv.key_str()?, prefix);
            match event.event_type() {
                // Version 1 is the key's first put since it was (re)created.
                EventType::Put if kv.version() == 1 => println!("arrived {instance} at {}", kv.value_str()?),
                EventType::Put => println!("updated {instance} at {}", kv.value_str()?),
                EventType::Delete => println!("departed {instance}"),
            }
            changes += 1;
            if count.is_some_and(|count| changes >= count) {
                return Ok(());
            }
        }
    }
}

fn instance_name<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}
