//! `raftkvctl bench`: a load generator in the shape of etcd's
//! `tools/benchmark`, so figures for raftkv and etcd come from the same tool.
//!
//! Layout: this file holds the flags shared by every workload and the runner
//! (connections, client tasks, progress bar); `put.rs`, `range.rs`,
//! `txn.rs`, `lease.rs` and `lock.rs` each describe one workload's requests
//! (and what a client keeps between them); `watch.rs` drives watchers and
//! the puts they see, timing deliveries rather than requests; `report.rs`
//! turns the measured latencies into etcd's summary or a JSON line. A
//! workload knows nothing of timing or reporting, and the runner nothing of
//! request shapes.

mod lease;
mod lock;
mod put;
mod range;
mod report;
mod txn;
mod watch;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use etcd_client::{Client, GetOptions};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::ConnConfig;
use crate::command::Ctx;
use crate::error::CtlError;
use report::{Report, Stats};

/// Flags shared by every workload. As in etcd's tool they may go before the
/// workload's name (`raftkvctl bench --conns 10 --clients 100 put`), and
/// like its `--total` also after it. The endpoints are raftkvctl's global
/// `--endpoints` (comma separated); connections are spread over them in turn.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Number of gRPC connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub conns: usize,
    /// Number of concurrent clients, spread over the connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub clients: usize,
    /// Total number of requests.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub total: u64,
    /// Print one JSON line instead of etcd's summary.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub workload: BenchWorkload,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWorkload {
    /// Puts keys of a fixed size, random (default) or sequential within a key space.
    Put(put::PutArgs),
    /// Ranges over one key or [KEY, END).
    Range(range::RangeArgs),
    /// Txns made of --txn-ops puts each (etcd's txn-put).
    Txn(txn::TxnArgs),
    /// Keep-alives of one lease per client, each answered before the next
    /// (etcd's lease-keepalive).
    LeaseKeepalive(lease::LeaseArgs),
    /// Lock then unlock, through the Lock service, each client with its own
    /// lease; clients share --names locks.
    Lock(lock::LockArgs),
    /// Watchers on a prefix and puts under it: --total is the number of
    /// puts, and every watcher's every event is a timed delivery, from the
    /// put's sending to the event's arrival (etcd's watch-latency).
    Watch(watch::WatchArgs),
}

/// One kind of request, issued `total` times by all clients together.
pub(crate) trait Workload: Send + Sync + 'static {
    /// What one client keeps between requests: a lease, a keep-alive stream.
    type Session: Send + 'static;

    /// Opens a client's session, before the clock starts.
    fn open(&self, client: &mut Client) -> impl Future<Output = Result<Self::Session, etcd_client::Error>> + Send;

    /// Issues request number `seq` (0-based, unique over the whole run).
    fn request(
        &self,
        client: &mut Client,
        session: &mut Self::Session,
        seq: u64,
    ) -> impl Future<Output = Result<(), etcd_client::Error>> + Send;
}

pub async fn run(args: BenchArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let conn = ctx.conn.clone();
    // raftkvctl's runtime is single-threaded, which suits one request at a
    // time; a load generator needs every core, so it gets a runtime of its own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let json = args.json;
    std::thread::spawn(move || {
        let report = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(bench(&args, &conn)));
        let _ = tx.send(report);
    });
    let report = match rx.await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return Err(CtlError::error(format!("{e:#}"))),
        Err(_) => return Err(CtlError::error("bench: the benchmark thread panicked")),
    };
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.summary());
    }
    Ok(())
}

async fn bench(args: &BenchArgs, conn: &ConnConfig) -> anyhow::Result<Report> {
    if args.conns == 0 || args.clients == 0 {
        bail!("--conns and --clients must be at least 1");
    }
    if conn.endpoints.is_empty() {
        bail!("--endpoints must name at least one endpoint");
    }
    match &args.workload {
        BenchWorkload::Put(w) => drive("put", args, conn, w.workload()?).await,
        BenchWorkload::Range(w) => drive("range", args, conn, w.workload()).await,
        BenchWorkload::Txn(w) => drive("txn", args, conn, w.workload()?).await,
        BenchWorkload::LeaseKeepalive(w) => drive("lease-keepalive", args, conn, w.workload()).await,
        BenchWorkload::Lock(w) => drive("lock", args, conn, w.workload()?).await,
        BenchWorkload::Watch(w) => watch::drive(args, conn, w).await,
    }
}

/// Opens the connections, runs `args.clients` tasks until `args.total`
/// requests have been issued, and gathers what they measured.
async fn drive<W: Workload>(
    name: &'static str,
    args: &BenchArgs,
    conn: &ConnConfig,
    workload: W,
) -> anyhow::Result<Report> {
    let conns = connect(args.conns, conn).await?;
    let workload = Arc::new(workload);
    let next = Arc::new(AtomicU64::new(0));
    let total = args.total;
    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let mut client = conns[i % conns.len()].clone();
        let session = workload.open(&mut client).await.context("opening a client's session")?;
        clients.push((client, session));
    }
    let bar = progress_bar(args.total);

    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut client, mut session)| {
            let (workload, next, bar) = (workload.clone(), next.clone(), bar.clone());
            tokio::spawn(async move {
                let mut stats = Stats::new();
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        break;
                    }
                    let sent = Instant::now();
                    match workload.request(&mut client, &mut session, seq).await {
                        Ok(()) => stats.record_ok(sent.elapsed()),
                        Err(e) => stats.record_err(&e),
                    }
                    bar.inc(1);
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::new();
    for task in tasks {
        stats.merge(&task.await.context("bench client task panicked")?);
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok(Report { workload: name, stats, elapsed })
}

/// One `etcd_client::Client` (one HTTP/2 connection) per `--conns`, each
/// checked with a serializable read so that dialing is not timed.
pub(crate) async fn connect(count: usize, conn: &ConnConfig) -> anyhow::Result<Vec<Client>> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let endpoint = &conn.endpoints[i % conn.endpoints.len()];
        let client = conn
            .dial(std::slice::from_ref(endpoint))
            .await
            .with_context(|| format!("connecting to {endpoint}"))?;
        let mut client = client;
        let probe = GetOptions::new().with_serializable().with_count_only();
        client
            .get("raftkvctl-bench-probe", Some(probe))
            .await
            .with_context(|| format!("probing {endpoint}"))?;
        conns.push(client);
    }
    Ok(conns)
}

/// Drawn on stderr, and hidden by indicatif when stderr is not a terminal.
pub(crate) fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}") {
        bar.set_style(style);
    }
    bar
}

/// A key of `size` bytes naming `index`: its decimal digits, zero-padded on
/// the left and truncated to the last `size` digits, so `bench put` keys
/// can be read back by name (`bench range 00000000`, `etcdctl get`). etcd's
/// benchmark writes a binary varint instead; the size on the wire is the same.
/// Distinct for every index below 10^size.
pub(crate) fn key_bytes(index: u64, size: usize) -> Vec<u8> {
    let digits = format!("{index:0size$}").into_bytes();
    digits[digits.len() - size..].to_vec()
}

/// A value of `size` random bytes, made once and sent with every request.
pub(crate) fn random_value(size: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut value = vec![0u8; size];
    rand::rng().fill_bytes(&mut value);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sized_and_distinct() {
        assert_eq!(key_bytes(42, 8), b"00000042");
        assert_eq!(key_bytes(1234, 2), b"34");
        assert_eq!(key_bytes(u64::MAX, 24).len(), 24);
        assert_ne!(key_bytes(99_999, 8), key_bytes(99_998, 8));
    }
}
