//! `raftkvctl bench` against a real etcd: every workload issues exactly the
//! requests asked for, without errors, and leaves the effects it should
//! (keys written, locks released, every watch event delivered to every
//! watcher); bad flags are refused with a message.
//!
//! Skipped, with a message, when /usr/bin/etcd or /usr/bin/etcdctl is absent.

mod common;

use common::{ETCDCTL, RAFTKVCTL, available, json, run, start_etcd};

fn bench(etcd: &common::Etcd, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let out = run(RAFTKVCTL, etcd, &all, "");
    assert_eq!(out.code, 0, "raftkvctl {all:?} failed: {}", out.stderr);
    json(&out.stdout)
}

/// Keys under `prefix`, as etcdctl counts them (its JSON leaves out a zero count).
fn count(etcd: &common::Etcd, prefix: &str) -> u64 {
    let out = run(
        ETCDCTL,
        etcd,
        &["get", "--prefix", "--keys-only", "-w", "json", prefix],
        "",
    );
    assert_eq!(out.code, 0, "etcdctl get failed: {}", out.stderr);
    json(&out.stdout)["count"].as_u64().unwrap_or(0)
}

#[test]
fn every_workload_issues_what_it_is_asked_and_leaves_its_effects() {
    if !available() {
        return;
    }
    let etcd = start_etcd();

    let put = bench(
        &etcd,
        &[
            "--clients",
            "4",
            "--total",
            "50",
            "put",
            "--sequential-keys",
            "--key-space-size",
            "50",
        ],
    );
    assert_eq!(
        (put["requests"].as_u64(), put["errors"].as_u64()),
        (Some(50), Some(0)),
        "{put}"
    );
    assert_eq!(count(&etcd, "000000"), 50, "50 distinct sequential keys");

    let range = bench(
        &etcd,
        &["--total", "20", "range", "00000000", "--consistency", "s"],
    );
    assert_eq!(
        (range["requests"].as_u64(), range["errors"].as_u64()),
        (Some(20), Some(0)),
        "{range}"
    );

    let lease = bench(
        &etcd,
        &["--clients", "3", "--total", "30", "lease-keepalive"],
    );
    assert_eq!(
        (lease["requests"].as_u64(), lease["errors"].as_u64()),
        (Some(30), Some(0)),
        "{lease}"
    );
    let leases = run(ETCDCTL, &etcd, &["lease", "list"], "").stdout;
    assert!(
        leases.starts_with("found 3 leases"),
        "one lease per client: {leases}"
    );

    let lock = bench(
        &etcd,
        &["--clients", "5", "--total", "40", "lock", "--names", "2"],
    );
    assert_eq!(
        (lock["requests"].as_u64(), lock["errors"].as_u64()),
        (Some(40), Some(0)),
        "{lock}"
    );
    assert_eq!(count(&etcd, "bench-lock/"), 0, "every lock released");

    // 25 puts seen by each of 40 watchers: 1000 deliveries.
    let watch = bench(
        &etcd,
        &[
            "--conns",
            "2",
            "--clients",
            "3",
            "--total",
            "25",
            "watch",
            "--watchers",
            "40",
            "--streams",
            "4",
            "--drain-timeout",
            "10s",
        ],
    );
    assert_eq!(
        (watch["requests"].as_u64(), watch["errors"].as_u64()),
        (Some(1000), Some(0)),
        "{watch}"
    );
    assert_eq!(count(&etcd, "bench-watch/"), 25);

    let paced = bench(
        &etcd,
        &[
            "--total",
            "10",
            "watch",
            "--watchers",
            "3",
            "--streams",
            "2",
            "--put-rate",
            "20",
        ],
    );
    assert_eq!(paced["requests"].as_u64(), Some(30), "{paced}");
    assert!(
        paced["seconds"].as_f64().unwrap_or(0.0) >= 0.4,
        "10 puts at 20/s take about half a second: {paced}"
    );
}

#[test]
fn bad_flags_are_refused() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    for (args, message) in [
        (
            &["bench", "lock", "--names", "0"][..],
            "--names must be at least 1",
        ),
        (
            &["bench", "watch", "--watchers", "0"][..],
            "--watchers and --streams must be at least 1",
        ),
        (
            &["bench", "--clients", "0", "put"][..],
            "--conns and --clients must be at least 1",
        ),
    ] {
        let out = run(RAFTKVCTL, &etcd, args, "");
        assert_ne!(out.code, 0, "{args:?} succeeded");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
}
