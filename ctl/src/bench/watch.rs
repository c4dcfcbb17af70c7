//! The watch workload (etcd benchmark's `watch-latency`, with the put load
//! of its `watch`): `--watchers` watchers on one prefix, spread over
//! `--streams` watch streams and the connections, then `--total` puts under
//! the prefix from `--clients` putters (at most `--put-rate` a second when
//! given). Every event every watcher receives is one delivery, timed from
//! the put's sending to the event's arrival; Requests/sec is deliveries per
//! second, from the first put to the last delivery. A delivery that never
//! arrives (within `--drain-timeout` of the last put) counts as an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{EventType, WatchOptions};

use super::report::{Report, Stats};
use super::{BenchArgs, connect, progress_bar, random_value};
use crate::client::ConnConfig;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Number of watchers, all on the prefix.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Number of watch streams the watchers are spread over.
    #[arg(long, default_value_t = 10)]
    pub streams: usize,
    /// Puts a second, over all putters; 0 is as fast as they go.
    #[arg(long, default_value_t = 0)]
    pub put_rate: u64,
    /// Value size of each put, in bytes (the value starts with its number).
    #[arg(long, default_value_t = 32)]
    pub val_size: usize,
    /// The prefix watched and written.
    #[arg(long, default_value = "bench-watch/")]
    pub prefix: String,
    /// How long after the last put a missing event is waited for.
    #[arg(long, default_value = "30s", value_parser = crate::gofmt::parse_duration)]
    pub drain_timeout: Duration,
}

/// Nanoseconds since the run's start at which put `seq` was sent.
type SentAt = Arc<Vec<AtomicU64>>;

pub(super) async fn drive(
    args: &BenchArgs,
    conn: &ConnConfig,
    w: &WatchArgs,
) -> anyhow::Result<Report> {
    if w.watchers == 0 || w.streams == 0 {
        bail!("--watchers and --streams must be at least 1");
    }
    let conns = connect(args.conns, conn).await?;
    let total = args.total;
    let sent_at: SentAt = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let bar = progress_bar(total * w.watchers as u64);
    let started = Instant::now();

    // Watchers first: every one is created before the first put.
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<anyhow::Result<()>>(w.streams);
    let (last_put_tx, last_put_rx) = tokio::sync::watch::channel(false);
    let mut streams = Vec::new();
    for s in 0..w.streams.min(w.watchers) {
        let watchers = (s..w.watchers).step_by(w.streams).count();
        let mut client = conns[s % conns.len()].clone();
        let (prefix, sent_at, bar, ready, drain) = (
            w.prefix.clone(),
            sent_at.clone(),
            bar.clone(),
            ready_tx.clone(),
            w.drain_timeout,
        );
        let mut last_put = last_put_rx.clone();
        streams.push(tokio::spawn(async move {
            let mut stats = Stats::new();
            let expected = watchers as u64 * total;
            let opts = || WatchOptions::new().with_prefix();
            let created = async {
                let mut stream = client.watch(prefix.as_str(), Some(opts())).await?;
                for _ in 1..watchers {
                    stream.watch(prefix.as_str(), Some(opts())).await?;
                }
                let mut confirmed = 0;
                while confirmed < watchers {
                    match stream.message().await? {
                        Some(resp) if resp.created() => confirmed += 1,
                        Some(_) => {}
                        None => return Err(etcd_client::Error::WatchError("the watch stream ended".into())),
                    }
                }
                Ok(stream)
            };
            let mut stream = match created.await {
                Ok(stream) => {
                    let _ = ready.send(Ok(())).await;
                    stream
                }
                Err(e) => {
                    let _ = ready.send(Err(anyhow::Error::from(e).context("creating watchers"))).await;
                    return stats;
                }
            };
            let mut delivered = 0u64;
            let mut deadline: Option<tokio::time::Instant> = None;
            while delivered < expected {
                let sleep = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    msg = stream.message() => match msg {
                        Ok(Some(resp)) => {
                            let now = started.elapsed();
                            for e in resp.events().iter().filter(|e| e.event_type() == EventType::Put) {
                                let Some(seq) = e.kv().and_then(|kv| seq_of(kv.value())) else { continue };
                                let Some(sent) = sent_at.get(seq as usize) else { continue };
                                let sent = Duration::from_nanos(sent.load(Ordering::Acquire));
                                stats.record_ok(now.saturating_sub(sent));
                                delivered += 1;
                                bar.inc(1);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            stats.record_err(&e);
                            break;
                        }
                    },
                    _ = last_put.wait_for(|done| *done), if deadline.is_none() => {
                        deadline = Some(tokio::time::Instant::now() + drain);
                    }
                    _ = sleep => break,
                }
            }
            stats.record_errors("event never delivered", expected.saturating_sub(delivered));
            stats
        }));
    }
    drop(ready_tx);
    for _ in 0..streams.len() {
        ready_rx
            .recv()
            .await
            .context("a watch stream task ended early")??;
    }

    // Then the putters.
    let value = random_value(w.val_size.max(20));
    let next = Arc::new(AtomicU64::new(0));
    let interval =
        (w.put_rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / w.put_rate as f64));
    let puts_started = Instant::now();
    let putters: Vec<_> = (0..args.clients)
        .map(|i| {
            let mut client = conns[i % conns.len()].clone();
            let (prefix, next, sent_at, mut value) = (
                w.prefix.clone(),
                next.clone(),
                sent_at.clone(),
                value.clone(),
            );
            tokio::spawn(async move {
                let mut stats = Stats::new();
                let mut tick = interval.map(tokio::time::interval);
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= total {
                        break;
                    }
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let number = format!("{seq:020}");
                    value[..20].copy_from_slice(number.as_bytes());
                    let key = format!("{prefix}{seq}");
                    let at = started.elapsed().as_nanos() as u64;
                    sent_at[seq as usize].store(at, Ordering::Release);
                    if let Err(e) = client.put(key, value.clone(), None).await {
                        stats.record_err(&e);
                    }
                }
                stats
            })
        })
        .collect();
    let mut put_errors = Stats::new();
    for p in putters {
        put_errors.merge(&p.await.context("a putter panicked")?);
    }
    let _ = last_put_tx.send(true);
    let mut stats = Stats::new();
    for s in streams {
        stats.merge(&s.await.context("a watch stream task panicked")?);
    }
    stats.merge(&put_errors);
    let elapsed = puts_started.elapsed();
    bar.finish_and_clear();
    Ok(Report {
        workload: "watch",
        stats,
        elapsed,
    })
}

/// The put number a value starts with.
fn seq_of(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..20)?).ok()?.parse().ok()
}
