//! Fault runs on real processes, decided by the checkers: a 3-member
//! cluster, clients recording a history ([`crate::history`]), a writer of
//! multi-key txns, watchers following the prefix through everything
//! ([`crate::watchcheck`]), and one kind of fault injected a few times
//! while they run. At the end, with every member back: the store's history
//! is read and checked, the clients' history is resolved against it and
//! decided by `lincheck`, every watcher is checked event by event, and the
//! members' HashKV at the last revision must agree.
//!
//! A run is chosen by its fault and its seed (which member, when, for how
//! long, and every client's choice of request); a failure names both, and
//! `CHAOS_FAULT=<fault> CHAOS_SEED=<seed> make chaos` runs it again (the
//! schedule again, not the same interleaving: these are real processes).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{ConnectOptions, GetOptions, Txn, TxnOp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{Cluster, eventually};
use crate::history::{self, Endpoints, History, pick};
use crate::server::Flavor;
use crate::watchcheck::{self, Filter};

/// The faults a run injects, one kind per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a member (the leader half the time), restarted after.
    Kill,
    /// SIGSTOP of a member, SIGCONT after.
    Pause,
    /// A member cut off its peers both ways, healed after.
    Partition,
    /// Leadership moved to another member (MoveLeader).
    MoveLeader,
    /// kill -9 of every member at once, all restarted.
    KillAll,
    /// One way: the leader's messages to a follower lost, or a follower's
    /// to the leader, the other direction flowing.
    OneWay,
    /// 50 to 400 ms added to all peer traffic into a member.
    Delay,
    /// A member removed (MemberRemove) and a new one added in its place,
    /// catching up from a raft snapshot.
    Replace,
}

pub const FAULTS: [Fault; 8] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::MoveLeader,
    Fault::KillAll,
    Fault::OneWay,
    Fault::Delay,
    Fault::Replace,
];

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::MoveLeader => "move-leader",
            Fault::KillAll => "kill-all",
            Fault::OneWay => "one-way",
            Fault::Delay => "delay",
            Fault::Replace => "replace",
        }
    }

    pub fn parse(name: &str) -> anyhow::Result<Fault> {
        FAULTS
            .into_iter()
            .find(|f| f.name() == name)
            .with_context(|| format!("no fault named {name:?}: one of {}", FAULTS.map(Fault::name).join(", ")))
    }
}

/// How much a run did.
#[derive(Debug)]
pub struct Report {
    pub flavor: Flavor,
    pub fault: Fault,
    pub seed: u64,
    /// Faults injected.
    pub injected: usize,
    pub answered: usize,
    pub unknown: usize,
    /// Revisions the store reached.
    pub revisions: i64,
    pub watch_events: usize,
    pub watch_resumes: usize,
    pub elapsed: Duration,
    pub verdict: String,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fault={} seed={} injected={} ops={} unknown={} revisions={} watch_events={} watch_resumes={} {:.1}s: {}",
            self.flavor.name(),
            self.fault.name(),
            self.seed,
            self.injected,
            self.answered,
            self.unknown,
            self.revisions,
            self.watch_events,
            self.watch_resumes,
            self.elapsed.as_secs_f64(),
            self.verdict
        )
    }
}

const PREFIX: &str = "/chaos/";
const CLIENTS: usize = 6;
const KEYS: usize = 5;
/// Names of replacement members, unique in the process.
static REPLACEMENTS: AtomicUsize = AtomicUsize::new(0);
/// Faults per run.
const CYCLES: usize = 3;

/// One run; an error names the fault and the seed, and keeps the history
/// file in `dir`.
pub async fn run(flavor: Flavor, fault: Fault, seed: u64, dir: &Path) -> anyhow::Result<Report> {
    // Raft snapshots often, and followers that lag catch up from one.
    let args: &[&str] = match flavor {
        Flavor::Raftkv => &["--snapshot-count", "300", "--snapshot-catchup-entries", "100"],
        Flavor::Etcd => &["--snapshot-count", "300"],
    };
    let mut cluster = Cluster::start(flavor, 3, args).await?;
    let outcome = run_on(&mut cluster, fault, seed, dir).await;
    match outcome {
        Ok(report) => Ok(report),
        Err(err) => Err(err.context(format!(
            "{} run fault={} seed={seed} failed (again: CHAOS_FAULT={} CHAOS_SEED={seed} make chaos)\n{}",
            flavor.name(),
            fault.name(),
            fault.name(),
            cluster.log_tails(30)
        ))),
    }
}

async fn run_on(cluster: &mut Cluster, fault: Fault, seed: u64, dir: &Path) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let endpoints: Endpoints = Arc::new(RwLock::new(cluster.endpoints()));
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let clients = tokio::spawn(history::run_clients(endpoints.clone(), PREFIX.to_owned(), KEYS, CLIENTS, seed, history.clone(), stop.clone()));
    let atomic = tokio::spawn(multi_key_writer(endpoints.clone(), seed, stop.clone()));
    let end = Arc::new(watchcheck::End::default());
    let watcher = |name: &str, filter: Filter, start: i64, salt: u64| {
        tokio::spawn(watchcheck::follow(name.to_owned(), endpoints.clone(), PREFIX.to_owned(), filter, start, seed ^ salt, end.clone()))
    };
    let mut watchers = vec![watcher("all", Filter::None, 1, 1), watcher("no-delete", Filter::NoDelete, 1, 2), watcher("no-put", Filter::NoPut, 1, 3)];

    let mut injected = 0;
    for cycle in 0..CYCLES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..900))).await;
        if cycle == 1 {
            // A watcher that starts mid-run, from history.
            let rev = current_revision(&endpoints).await.unwrap_or(1);
            watchers.push(watcher("from-middle", Filter::None, (rev / 2).max(1), 4));
        }
        inject(cluster, fault, &mut rng).await?;
        *endpoints.write().unwrap_or_else(PoisonError::into_inner) = cluster.endpoints();
        injected += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    clients.await?;
    atomic.await?;
    let leader = cluster.leader().await.context("the cluster did not settle after the faults")?;

    // The store's history, then every watcher up to its end.
    let (truth, last) = watchcheck::truth(&cluster.member(leader).endpoint(), PREFIX).await?;
    end.until.store(last, Ordering::SeqCst);
    let give_up_later = {
        let end = end.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            end.give_up.store(true, Ordering::SeqCst);
        })
    };
    let mut logs = Vec::new();
    for w in watchers {
        logs.push(w.await?);
    }
    give_up_later.abort();

    // Every member at the same state.
    hashes_agree(cluster, last).await?;

    let records = history.records();
    let resolved = history::resolve(&records, &truth);
    let path = dir.join(format!("history-{}-{}-{seed}.json", cluster.flavor().name(), fault.name()));
    let verdict = history::check(&resolved, &path).with_context(|| format!("fault={} seed={seed}", fault.name()))?;
    for log in &logs {
        watchcheck::check(log, &truth).with_context(|| format!("fault={} seed={seed}", fault.name()))?;
    }
    let _ = std::fs::remove_file(&path);
    let (answered, unknown) = history.counts();
    ensure!(answered > 0, "no request was answered in the whole run");
    Ok(Report {
        flavor: cluster.flavor(),
        fault,
        seed,
        injected,
        answered,
        unknown,
        revisions: last,
        watch_events: logs.iter().map(|l| l.seen.len()).sum(),
        watch_resumes: logs.iter().map(|l| l.resumes).sum(),
        elapsed: started.elapsed(),
        verdict,
    })
}

/// Injects one fault and heals it (but for MoveLeader and Replace, which
/// need no healing), holding it for 1 to 2.5 s.
async fn inject(cluster: &mut Cluster, fault: Fault, rng: &mut StdRng) -> anyhow::Result<()> {
    let leader = cluster.leader().await?;
    let others: Vec<usize> = cluster.running().into_iter().filter(|&i| i != leader).collect();
    let target = if rng.random_bool(0.5) { leader } else { others[rng.random_range(0..others.len())] };
    let hold = Duration::from_millis(rng.random_range(1000..2500));
    match fault {
        Fault::Kill => {
            cluster.kill9(target)?;
            tokio::time::sleep(hold).await;
            cluster.restart(target).await?;
        }
        Fault::Pause => {
            cluster.pause(target)?;
            tokio::time::sleep(hold).await;
            cluster.resume(target)?;
        }
        Fault::Partition => {
            cluster.cut(target);
            tokio::time::sleep(hold).await;
            cluster.heal(target);
        }
        Fault::MoveLeader => {
            let to = others[rng.random_range(0..others.len())];
            let id = cluster.member(to).id();
            let mut client = cluster.client(leader).await?;
            client.move_leader(id).await.with_context(|| format!("MoveLeader to m{to}"))?;
            tokio::time::sleep(hold).await;
        }
        Fault::KillAll => {
            for i in cluster.running() {
                cluster.kill9(i)?;
            }
            tokio::time::sleep(hold / 2).await;
            cluster.start_all().await?;
        }
        Fault::OneWay => {
            let follower = others[rng.random_range(0..others.len())];
            let (from, to) = if rng.random_bool(0.5) { (leader, follower) } else { (follower, leader) };
            cluster.block(from, to);
            tokio::time::sleep(hold).await;
            cluster.unblock(from, to);
        }
        Fault::Delay => {
            cluster.delay(target, Duration::from_millis(rng.random_range(50..400)));
            tokio::time::sleep(hold).await;
            cluster.delay(target, Duration::ZERO);
        }
        Fault::Replace => {
            cluster.remove_member(target).await?;
            let name = format!("r{}", REPLACEMENTS.fetch_add(1, Ordering::SeqCst));
            cluster.add_member(&name, false).await?;
        }
    }
    Ok(())
}

/// Txns that put three keys at once under `{PREFIX}m/`, for the watchers'
/// atomicity (their outcomes are not part of the history).
async fn multi_key_writer(endpoints: Endpoints, seed: u64, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let endpoint = pick(&endpoints, &mut rng);
        n += 1;
        let Some(mut client) = history::connect(&endpoint, ConnectOptions::new().with_timeout(Duration::from_secs(2))).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let ops: Vec<TxnOp> = ["a", "b", "c"].iter().map(|k| TxnOp::put(format!("{PREFIX}m/{k}"), format!("m{n}"), None)).collect();
            if client.txn(Txn::new().and_then(ops)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn current_revision(endpoints: &Endpoints) -> anyhow::Result<i64> {
    let endpoints = endpoints.read().unwrap_or_else(PoisonError::into_inner).clone();
    for endpoint in &endpoints {
        let Some(mut client) = history::connect(endpoint, ConnectOptions::new().with_timeout(Duration::from_secs(1))).await else { continue };
        if let Ok(resp) = client.get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only())).await {
            return Ok(resp.header().map_or(1, |h| h.revision()));
        }
    }
    bail!("no member answered a range")
}

/// Every member reaches `last` and answers the same HashKV at it.
async fn hashes_agree(cluster: &Cluster, last: i64) -> anyhow::Result<()> {
    let mut hashes = Vec::new();
    for i in cluster.running() {
        let hash = eventually(Duration::from_secs(30), async || {
            let mut client = cluster.client(i).await?;
            let rev = client
                .get(PREFIX, Some(GetOptions::new().with_prefix().with_count_only().with_serializable()))
                .await?
                .header()
                .map_or(0, |h| h.revision());
            ensure!(rev >= last, "m{i} is at revision {rev}, {last} due");
            Ok(client.hash_kv(last).await?.hash())
        })
        .await
        .with_context(|| format!("m{i} did not reach revision {last}"))?;
        hashes.push((i, hash));
    }
    if hashes.windows(2).any(|w| w[0].1 != w[1].1) {
        bail!("the members disagree at revision {last}: HashKV {hashes:?}");
    }
    Ok(())
}
