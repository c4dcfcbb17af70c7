//! `make sim SEEDS=N`: N seeds of the deterministic simulation
//! (tests/src/sim.rs), each a whole cluster with faults in simulated time,
//! decided by the same checkers as the fault runs on real processes.
//!
//! - `SEEDS` (default 100): how many seeds;
//! - `SEED` (default 1): the first (the next ones count up): `SEEDS=1
//!   SEED=n` replays seed n exactly;
//! - `SIM_JOBS` (default: the machine's cores): seeds run at once.
//!
//! A line every 100 seeds (or per seed with `SEEDS` <= 20); the first
//! failure prints its seed, the faults injected and what broke, keeps its
//! directory (the history for lincheck) and exits 1 once running seeds end.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use raftkv_tests::sim;

fn env<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(name) {
        Ok(v) => v.parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

#[derive(Default)]
struct Totals {
    runs: usize,
    ops: usize,
    unknown: usize,
    watch_events: usize,
    faults: usize,
    snapshots: usize,
    leases: usize,
    five: usize,
}

fn main() -> anyhow::Result<()> {
    let seeds: u64 = env("SEEDS", 100)?;
    let first: u64 = env("SEED", 1)?;
    let jobs: usize = env("SIM_JOBS", std::thread::available_parallelism().map_or(2, |n| n.get()))?;
    let verbose = seeds <= 20;
    raftkv_tests::history::lincheck_binary()?;
    let next = Arc::new(AtomicU64::new(first));
    let failed = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    eprintln!("sim: seeds {first}..{} on {jobs} threads", first + seeds - 1);
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, failed, totals, done) = (next.clone(), failed.clone(), totals.clone(), done.clone());
            std::thread::spawn(move || {
                while !failed.load(Ordering::SeqCst) {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= first + seeds {
                        return;
                    }
                    let dir = match tempfile::Builder::new().prefix(&format!("raftkv-sim-{seed}-")).tempdir() {
                        Ok(d) => d,
                        Err(e) => {
                            eprintln!("sim: cannot make a directory: {e}");
                            failed.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    match sim::run(seed, dir.path()) {
                        Ok(r) => {
                            if verbose {
                                println!(
                                    "seed {seed}: {} members, {} ops ({} unknown), revision {}, {} watch events, {} snapshots sent, {} leases expired, {} faults",
                                    r.members,
                                    r.ops,
                                    r.unknown,
                                    r.revision,
                                    r.watch_events,
                                    r.snapshots_sent,
                                    r.leases_expired,
                                    r.faults.len()
                                );
                            }
                            let mut t = totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            t.runs += 1;
                            t.ops += r.ops;
                            t.unknown += r.unknown;
                            t.watch_events += r.watch_events;
                            t.faults += r.faults.len();
                            t.snapshots += r.snapshots_sent;
                            t.leases += r.leases_expired;
                            t.five += usize::from(r.members == 5);
                            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                            if !verbose && n % 100 == 0 {
                                eprintln!("sim: {n} seeds passed ({:.0} s)", started.elapsed().as_secs_f64());
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            let kept = dir.keep();
                            eprintln!("{e:?}\nreplay: make sim SEEDS=1 SEED={seed}   (history in {})", kept.display());
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    if failed.load(Ordering::SeqCst) {
        std::process::exit(1);
    }
    let t = totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "sim: {} seeds ({} of 5 members, the rest of 3) in {:.0} s: 0 linearizability violations, 0 watch violations; \
         {} faults, {} operations answered, {} indeterminate, {} watch events checked, {} raft snapshots sent, {} leases expired on time",
        t.runs,
        t.five,
        started.elapsed().as_secs_f64(),
        t.faults,
        t.ops,
        t.unknown,
        t.watch_events,
        t.snapshots,
        t.leases
    );
    Ok(())
}
