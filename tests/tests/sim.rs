//! The deterministic simulation (tests/src/sim.rs) in `make test`: a fixed
//! set of seeds (`make sim SEEDS=N` runs as many as asked), that a seed
//! replays exactly, and that the checkers catch a cluster that loses
//! acknowledged writes.

use std::sync::Mutex;

use raftkv_tests::sim::{self, Options, Report};

/// Runs `seeds` on two threads; the reports, or the first failure.
fn run_seeds(seeds: std::ops::RangeInclusive<u64>, options: Options) -> Vec<anyhow::Result<Report>> {
    let seeds: Mutex<Vec<u64>> = Mutex::new(seeds.rev().collect());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some(seed) = seeds.lock().expect("seeds").pop() else { return };
                    let dir = tempfile::tempdir().expect("tempdir");
                    let result = sim::run_with(seed, dir.path(), options);
                    results.lock().expect("results").push(result);
                }
            });
        }
    });
    results.into_inner().expect("results")
}

#[test]
fn two_hundred_seeds_pass_every_checker_through_every_fault() {
    let results = run_seeds(1..=200, Options::default());
    let mut reports = Vec::new();
    for r in results {
        match r {
            Ok(report) => reports.push(report),
            Err(e) => panic!("{e:?}\nreplay: make sim SEEDS=1 SEED=<the seed above>"),
        }
    }
    // The runs did what the simulation claims to do.
    let faults: Vec<&String> = reports.iter().flat_map(|r| &r.faults).collect();
    for kind in ["power loss of member", "kill -9 of member", "pause of member", "isolation of member", "split:", "one-way cut", "loss of", "more on every link", "leadership transfer"] {
        assert!(faults.iter().any(|f| f.contains(kind)), "no seed injected {kind:?}");
    }
    let all_lost = reports.iter().filter(|r| r.faults.windows(3).any(|w| w.iter().all(|f| f.contains("power loss") && f[..9] == w[0][..9]))).count();
    assert!(all_lost > 0, "no seed lost power on every member at once");
    assert!(reports.iter().any(|r| r.members == 5) && reports.iter().any(|r| r.members == 3));
    assert!(reports.iter().map(|r| r.snapshots_sent).sum::<usize>() > 0, "no raft snapshot was ever sent");
    assert!(reports.iter().map(|r| r.unknown).sum::<usize>() > 0, "no request ever had an unknown outcome");
    assert!(reports.iter().map(|r| r.leases_expired).sum::<usize>() > 200, "hardly any lease was let expire");
    // A seed whose faults kept the cluster down nearly all the run may
    // answer little; most must do real work.
    let idle: Vec<u64> = reports.iter().filter(|r| r.ops < 100 || r.watch_events < 100).map(|r| r.seed).collect();
    assert!(idle.len() < reports.len() / 20, "seeds {idle:?} answered fewer than 100 requests or saw fewer than 100 watch events");
}

#[test]
fn a_seed_replays_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = sim::run(42, dir.path()).expect("seed 42");
    let b = sim::run(42, dir.path()).expect("seed 42 again");
    assert_eq!((a.digest, a.ops, a.revision, &a.faults), (b.digest, b.ops, b.revision, &b.faults), "seed 42 ran two ways");
    let c = sim::run(43, dir.path()).expect("seed 43");
    assert_ne!(a.digest, c.digest, "two seeds ran the same way: the digest sees nothing");
}

#[test]
fn disks_that_lie_about_syncs_lose_acknowledged_writes_and_the_checkers_say_so() {
    let results = run_seeds(1..=40, Options { lying_disks: true });
    let failures: Vec<String> = results.into_iter().filter_map(|r| r.err()).map(|e| format!("{e:#}")).collect();
    assert!(!failures.is_empty(), "40 seeds with disks that keep nothing through a power loss, and no checker noticed");
    // Told by the checkers (or by raft finding its log gone, or a member
    // refusing a data dir it finds corrupt), not
    // by a harness error.
    let told = ["not linearizable", "did not settle", "panicked", "is corrupt", "different histories", "HashKV", "watcher", "history"];
    for f in &failures {
        assert!(told.iter().any(|t| f.contains(t)), "an unexpected kind of failure: {f}");
    }
}
