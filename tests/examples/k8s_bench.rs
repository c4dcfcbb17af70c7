//! kube-apiserver on raftkv against kube-apiserver on etcd 3.6, in one run
//! (`make bench-k8s`): the same control plane (tests/k8s, watch cache on, as
//! shipped) on a fresh single member of each, taking turns for
//! `BENCH_ROUNDS` rounds (default 3); each figure is the median of the
//! rounds.
//!
//! One round: a watch on the namespace's ConfigMaps from the start, then
//! `BENCH_OBJECTS` (default 10 000) ConfigMaps created by 32 concurrent
//! clients (objects/s, p50 and p99 of a create), the watch's delivery of
//! all of them (events/s, from the first create to the last event), and 5
//! consistent lists of all of them (the median's duration).
//!
//! Progress goes to stderr; stdout gets a markdown table for
//! docs/benchmarks.md. Ratios read ">= 1.0 means raftkv is as good or
//! better".

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use raftkv_tests::k8s::{ControlPlane, Options};
use raftkv_tests::{Flavor, Server, binaries};

const CONCURRENCY: usize = 32;
const NS: &str = "bench";

#[derive(Default)]
struct Figures(BTreeMap<&'static str, Vec<f64>>);

impl Figures {
    fn add(&mut self, name: &'static str, value: f64) {
        self.0.entry(name).or_default().push(value);
    }

    fn median(&self, name: &str) -> f64 {
        let mut v = self.0.get(name).cloned().unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn round(store: &str, endpoint: String, objects: usize, figures: &mut Figures) -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(&[endpoint], Options { controller_manager: false, ..Options::default() }).await?;
    let client = cp.client().await?;
    cp.kubectl(&["create", "namespace", NS])?;
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    let from = cms.list_metadata(&ListParams::default()).await?.metadata.resource_version.context("a list RV")?;

    let watcher = {
        let cms = cms.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            let mut from = from;
            while seen < objects {
                let mut stream = cms.watch(&WatchParams::default().timeout(290), &from).await?.boxed();
                while let Some(event) = stream.try_next().await? {
                    match event {
                        WatchEvent::Added(o) => {
                            seen += 1;
                            from = o.metadata.resource_version.unwrap_or_default();
                        }
                        WatchEvent::Bookmark(b) => from = b.metadata.resource_version,
                        WatchEvent::Error(e) => bail!("watch: {} {}", e.code, e.message),
                        _ => {}
                    }
                    if seen == objects {
                        break;
                    }
                }
            }
            anyhow::Ok(Instant::now())
        })
    };

    eprintln!("bench-k8s: {store}: creating {objects} ConfigMaps with {CONCURRENCY} clients");
    let start = Instant::now();
    let value = "x".repeat(256);
    let mut latencies: Vec<Duration> = futures::stream::iter(0..objects)
        .map(|i| {
            let (cms, value) = (cms.clone(), value.clone());
            async move {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("cm-{i:06}")},
                    "data": {"value": value},
                }))?;
                let t = Instant::now();
                cms.create(&PostParams::default(), &cm).await?;
                if (i + 1) % 2000 == 0 {
                    eprintln!("bench-k8s: {store}: {} created", i + 1);
                }
                anyhow::Ok(t.elapsed())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let created = start.elapsed();
    latencies.sort();
    figures.add("create throughput (objects/s)", objects as f64 / created.as_secs_f64());
    figures.add("create p50 (ms)", percentile(&latencies, 0.50).as_secs_f64() * 1000.0);
    figures.add("create p99 (ms)", percentile(&latencies, 0.99).as_secs_f64() * 1000.0);

    let delivered = tokio::time::timeout(Duration::from_secs(300), watcher).await.context("the watch did not see every create")???;
    figures.add("watch delivery (events/s)", objects as f64 / (delivered - start).as_secs_f64());

    let mut lists = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let list = cms.list(&ListParams::default()).await?;
        lists.push(t.elapsed());
        if list.items.len() < objects {
            bail!("a list of all returned {} of {objects}", list.items.len());
        }
    }
    lists.sort();
    figures.add("list of all (ms)", lists[lists.len() / 2].as_secs_f64() * 1000.0);
    eprintln!(
        "bench-k8s: {store}: {:.0} creates/s, p99 {:.1} ms, list of all {:.0} ms",
        objects as f64 / created.as_secs_f64(),
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        lists[lists.len() / 2].as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let objects = env_usize("BENCH_OBJECTS", 10_000);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let etcd = binaries::etcd_releases()?
        .into_iter()
        .find(|(v, _)| v.starts_with("3.6."))
        .map(|(_, p)| p)
        .context("etcd 3.6 is not built: run `make go-peers`")?;
    let (mut on_etcd, mut on_raftkv) = (Figures::default(), Figures::default());
    for r in 1..=rounds {
        eprintln!("bench-k8s: round {r} of {rounds}");
        let server = Server::start_etcd_release(&etcd).await?;
        round("etcd", server.endpoint(), objects, &mut on_etcd).await?;
        drop(server);
        let server = Server::start(Flavor::Raftkv).await?;
        round("raftkv", server.endpoint(), objects, &mut on_raftkv).await?;
    }
    println!("| kube-apiserver 1.36 on a 1-member store, {objects} ConfigMaps, median of {rounds} rounds | etcd 3.6 | raftkv | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, higher_is_better) in [
        ("create throughput (objects/s)", true),
        ("create p50 (ms)", false),
        ("create p99 (ms)", false),
        ("watch delivery (events/s)", true),
        ("list of all (ms)", false),
    ] {
        let (e, k) = (on_etcd.median(name), on_raftkv.median(name));
        let ratio = if higher_is_better { k / e } else { e / k };
        println!("| {name} | {e:.1} | {k:.1} | {ratio:.2} |");
    }
    Ok(())
}
