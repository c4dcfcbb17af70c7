//! `make chaos`: fault runs on real processes under the checkers for as
//! long as asked (tests/src/chaos.rs). Each run is one fault kind, taken in
//! turn, on a fresh 3-member raftkv cluster, with its own seed.
//!
//! - `CHAOS_MINUTES` (default 10): stop starting runs after this long;
//! - `CHAOS_RUNS`: stop after this many runs instead;
//! - `CHAOS_FAULT=kill|pause|partition|move-leader|kill-all`: that fault only;
//! - `CHAOS_SEED`: the first run's seed (the next ones count up), to run a
//!   failed run's schedule again;
//! - `CHAOS_FLAVOR=etcd`: the same against etcd 3.4, to check the checkers.
//!
//! One line per run on stdout; the first failure stops the runs, prints the
//! minimal history and the seed, keeps the histories, and exits 1.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use raftkv_tests::Flavor;
use raftkv_tests::chaos::{self, FAULTS, Fault};

fn env<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) => v.parse().map(Some).map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(None),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes: f64 = env("CHAOS_MINUTES")?.unwrap_or(10.0);
    let runs: Option<usize> = env("CHAOS_RUNS")?;
    let faults: Vec<Fault> = match std::env::var("CHAOS_FAULT") {
        Ok(name) => vec![Fault::parse(&name)?],
        Err(_) => FAULTS.to_vec(),
    };
    let flavor = match std::env::var("CHAOS_FLAVOR").as_deref() {
        Ok("etcd") => Flavor::Etcd,
        Ok("raftkv") | Err(_) => Flavor::Raftkv,
        Ok(other) => anyhow::bail!("CHAOS_FLAVOR={other:?}: raftkv or etcd"),
    };
    let first_seed: u64 = env("CHAOS_SEED")?.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_secs()));
    let dir = tempfile::Builder::new().prefix("raftkv-chaos-").tempdir()?;
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let (mut done, mut ops, mut unknown, mut events) = (0usize, 0usize, 0usize, 0usize);
    eprintln!("chaos: {} runs of {:?} from seed {first_seed}, histories in {}", runs.map_or_else(|| format!("{minutes} minutes of"), |n| n.to_string()), faults.iter().map(|f| f.name()).collect::<Vec<_>>(), dir.path().display());
    while runs.map_or(Instant::now() < deadline, |n| done < n) {
        let fault = faults[done % faults.len()];
        let seed = first_seed + done as u64;
        match chaos::run(flavor, fault, seed, dir.path()).await {
            Ok(report) => {
                println!("{report}");
                ops += report.answered;
                unknown += report.unknown;
                events += report.watch_events;
            }
            Err(err) => {
                let kept = dir.keep();
                eprintln!("{err:?}\nhistories kept in {}", kept.display());
                std::process::exit(1);
            }
        }
        done += 1;
    }
    println!("chaos: {done} runs, 0 linearizability violations, 0 watch violations; {ops} operations answered, {unknown} indeterminate, {events} watch events checked");
    Ok(())
}
