//! Faults under the checkers (issue 18): the bounded set `make test` runs,
//! one run of each fault on raftkv and one on etcd (the checkers must
//! accept the reference), and the checkers' own tests: each must reject a
//! history or a watch that breaks what it checks. `make chaos` runs the
//! faults for as long as asked (`tests/examples/chaos.rs`).

use std::time::{SystemTime, UNIX_EPOCH};

use raftkv_tests::chaos::{self, FAULTS, Fault};
use raftkv_tests::history::{self, Answer, Op, Outcome, Record};
use raftkv_tests::watchcheck::{self, Filter, Kv, Seen, TruthEvent, WatchLog};
use raftkv_tests::{Flavor, binaries};

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007))
}

#[tokio::test]
async fn every_fault_once_on_raftkv_under_the_checkers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let seed = seed();
    for (i, fault) in FAULTS.into_iter().enumerate() {
        let report = chaos::run(Flavor::Raftkv, fault, seed + i as u64, dir.path()).await;
        match report {
            Ok(report) => {
                println!("{report}");
                assert!(report.injected > 0 && report.revisions > 1, "{report}: nothing happened");
            }
            Err(err) => {
                // Keep the history for the person reading this.
                let kept = dir.keep();
                panic!("{err:?}\n(histories kept in {})", kept.display());
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_checkers_accept_etcd_under_faults() -> anyhow::Result<()> {
    assert!(binaries::etcd_available(), "etcd and etcdctl 3.4 are needed in /usr/bin (make deps installs Debian's etcd-server and etcd-client)");
    let dir = tempfile::tempdir()?;
    for fault in [Fault::Kill, Fault::Partition] {
        let report = chaos::run(Flavor::Etcd, fault, seed(), dir.path()).await?;
        println!("{report}");
        assert!(report.answered > 0 && report.watch_events > 0, "{report}: nothing was checked");
    }
    Ok(())
}

// --- The checkers' own tests: each must reject what breaks its rule. ---

fn ms(t: u64) -> u64 {
    t * 1_000_000
}

fn rec(client: usize, call: u64, ret: Option<u64>, op: Op, outcome: Outcome) -> Record {
    Record { client, call: ms(call), ret: ret.map(ms), key: "k".to_owned(), op, outcome }
}

fn put(value: &str) -> Op {
    Op::Put { value: value.to_owned(), lease: 0 }
}

fn wrote(rev: i64) -> Outcome {
    Outcome::Ok(Answer { rev, ..Answer::default() })
}

fn read(rev: i64, value: &str, mod_rev: i64, version: i64) -> Outcome {
    Outcome::Ok(Answer { rev, found: true, value: value.to_owned(), mod_rev, version, ..Answer::default() })
}

fn lincheck(records: &[Record]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    history::check(records, &dir.path().join("history.json"))
}

#[test]
fn lincheck_accepts_concurrent_and_unknown_outcomes() -> anyhow::Result<()> {
    let records = [
        rec(0, 0, Some(10), put("a"), wrote(2)),
        // Overlaps the put of b: may see a or b.
        rec(1, 12, Some(30), put("b"), wrote(3)),
        rec(2, 14, Some(20), Op::Get, read(2, "a", 2, 1)),
        rec(2, 31, Some(35), Op::Get, read(3, "b", 3, 2)),
        // No answer; it happened (the store's history says at 4).
        rec(3, 36, None, put("c"), Outcome::Unknown),
        rec(0, 40, Some(41), Op::Get, read(4, "c", 4, 3)),
        rec(1, 42, Some(43), Op::Txn { expect_mod: 4, value: "d".to_owned() }, Outcome::Ok(Answer { rev: 5, succeeded: true, ..Answer::default() })),
        rec(1, 44, Some(45), Op::Txn { expect_mod: 4, value: "e".to_owned() }, read(5, "d", 5, 4)),
        rec(4, 46, None, put("never"), Outcome::Unknown),
    ];
    let truth: Vec<TruthEvent> = [("a", 2), ("b", 3), ("c", 4), ("d", 5)]
        .iter()
        .map(|&(v, rev)| truth_put("k", v, rev, rev, 1))
        .collect();
    let resolved = history::resolve(&records, &truth);
    assert_eq!(resolved.len(), records.len() - 1, "the put never seen in the store's history is left out");
    let verdict = lincheck(&resolved)?;
    assert!(verdict.starts_with("linearizable"), "{verdict}");
    Ok(())
}

#[test]
fn lincheck_rejects_a_stale_read() -> anyhow::Result<()> {
    let records = [
        rec(0, 0, Some(10), put("a"), wrote(2)),
        rec(0, 11, Some(20), put("b"), wrote(3)),
        // Invoked after b was acknowledged, reads a.
        rec(1, 21, Some(30), Op::Get, read(3, "a", 2, 1)),
    ];
    let err = lincheck(&records).expect_err("a stale read accepted");
    let text = format!("{err:#}");
    assert!(text.contains("NOT LINEARIZABLE: key \"k\""), "{text}");
    assert!(text.contains("a minimal history of 3"), "all three operations are needed: {text}");
    Ok(())
}

#[test]
fn lincheck_rejects_a_lost_write_and_a_revoked_lease_used() -> anyhow::Result<()> {
    let lost = [
        rec(0, 0, Some(10), put("a"), wrote(2)),
        rec(1, 20, Some(30), Op::Get, Outcome::Ok(Answer { rev: 2, ..Answer::default() })),
    ];
    assert!(lincheck(&lost).is_err(), "a read missing an acknowledged put accepted");
    let revoked = [
        rec(0, 0, Some(10), Op::Put { value: "a".to_owned(), lease: 7 }, wrote(2)),
        rec(0, 11, Some(12), Op::Revoke { lease: 7 }, wrote(3)),
        rec(0, 13, Some(14), Op::Put { value: "b".to_owned(), lease: 7 }, wrote(4)),
    ];
    assert!(lincheck(&revoked).is_err(), "a put with a revoked lease accepted");
    let refused = [
        rec(0, 0, Some(10), Op::Put { value: "a".to_owned(), lease: 7 }, wrote(2)),
        rec(0, 11, Some(12), Op::Revoke { lease: 7 }, wrote(3)),
        rec(0, 13, Some(14), Op::Put { value: "b".to_owned(), lease: 7 }, Outcome::LeaseNotFound),
        rec(0, 15, Some(16), Op::Get, Outcome::Ok(Answer { rev: 3, ..Answer::default() })),
    ];
    let verdict = lincheck(&refused)?;
    assert!(verdict.starts_with("linearizable"), "{verdict}");
    Ok(())
}

#[test]
fn lincheck_rejects_revisions_going_back() -> anyhow::Result<()> {
    // Each key alone is fine; across keys the revision goes back in time.
    let mut other = rec(1, 20, Some(30), put("x"), wrote(2));
    other.key = "other".to_owned();
    let records = [rec(0, 0, Some(10), put("a"), wrote(5)), other];
    let err = lincheck(&records).expect_err("a revision going back accepted");
    assert!(format!("{err:#}").contains("REVISION ORDER"), "{err:#}");
    Ok(())
}

fn kv(key: &str, value: &str, create: i64, rev: i64, version: i64) -> Kv {
    Kv { key: key.to_owned(), value: value.to_owned(), create_rev: create, mod_rev: rev, version, lease: 0 }
}

fn truth_put(key: &str, value: &str, create: i64, rev: i64, version: i64) -> TruthEvent {
    TruthEvent { delete: false, key: key.to_owned(), value: value.to_owned(), mod_rev: rev, kv: kv(key, value, create, rev, version) }
}

fn truth_delete(key: &str, rev: i64) -> TruthEvent {
    TruthEvent { delete: true, key: key.to_owned(), value: String::new(), mod_rev: rev, kv: kv(key, "", 0, rev, 0) }
}

fn seen_of(truth: &[TruthEvent], response: impl Fn(usize) -> usize) -> Vec<Seen> {
    let mut prev: std::collections::HashMap<String, Kv> = Default::default();
    truth
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let p = if e.delete { prev.remove(&e.key) } else { prev.insert(e.key.clone(), e.kv.clone()) };
            Seen { response: response(i), delete: e.delete, kv: e.kv.clone(), prev: p }
        })
        .collect()
}

#[test]
fn the_watch_check_rejects_gaps_duplicates_split_revisions_and_wrong_prev_kv() {
    let truth = vec![
        truth_put("a", "1", 2, 2, 1),
        truth_put("b", "1", 3, 3, 1),
        truth_put("a", "2", 2, 4, 2),
        truth_delete("b", 5),
        truth_put("c", "1", 6, 6, 1),
        truth_put("d", "1", 6, 6, 1),
        // Two keys in one revision, each with its own prev_kv.
        truth_put("a", "3", 2, 7, 3),
        truth_put("c", "2", 6, 7, 2),
    ];
    let log = |seen: Vec<Seen>, filter: Filter| WatchLog { name: "w".to_owned(), filter, start_rev: 1, seen, resumes: 1 };
    let good = seen_of(&truth, |i| i.min(4) + i.saturating_sub(5).min(1));
    watchcheck::check(&log(good.clone(), Filter::None), &truth).expect("the faithful watch");

    let mut gap = good.clone();
    gap.remove(2);
    assert!(watchcheck::check(&log(gap, Filter::None), &truth).is_err(), "a gap accepted");
    let mut dup = good.clone();
    dup.insert(2, good[1].clone());
    assert!(watchcheck::check(&log(dup, Filter::None), &truth).is_err(), "a repeated event accepted");
    let mut swapped = good.clone();
    swapped.swap(1, 2);
    assert!(watchcheck::check(&log(swapped, Filter::None), &truth).is_err(), "events out of order accepted");
    let split = seen_of(&truth, |i| i);
    assert!(watchcheck::check(&log(split, Filter::None), &truth).is_err(), "a revision split over two responses accepted");
    let mut bad_prev = good.clone();
    bad_prev[2].prev = None;
    assert!(watchcheck::check(&log(bad_prev, Filter::None), &truth).is_err(), "a missing prev_kv accepted");
    let mut crossed = good.clone();
    let (a, c) = (crossed[6].prev.clone(), crossed[7].prev.clone());
    (crossed[6].prev, crossed[7].prev) = (c, a);
    assert!(watchcheck::check(&log(crossed, Filter::None), &truth).is_err(), "prev_kvs of two keys of one revision swapped accepted");
    assert!(watchcheck::check(&log(good.clone(), Filter::NoDelete), &truth).is_err(), "a delete through NoDelete accepted");
    let no_delete: Vec<Seen> = good.iter().filter(|s| !s.delete).cloned().collect();
    watchcheck::check(&log(no_delete, Filter::NoDelete), &truth).expect("the faithful filtered watch");
    let mut late = log(good[2..].to_vec(), Filter::None);
    late.start_rev = 4;
    watchcheck::check(&late, &truth).expect("a watch from revision 4");
}

#[test]
fn faults_have_names_for_replay() {
    for fault in FAULTS {
        assert_eq!(Fault::parse(fault.name()).ok(), Some(fault));
    }
    assert!(Fault::parse("meteor").is_err());
}

/// libfaketime, which `make deps` installs (Debian's libfaketime).
fn libfaketime() -> std::path::PathBuf {
    let found = std::fs::read_dir("/usr/lib").ok().and_then(|dirs| {
        dirs.flatten().map(|d| d.path().join("faketime/libfaketime.so.1")).find(|p| p.is_file())
    });
    found.expect("libfaketime is needed for the clock jumps: run `make deps` (it installs Debian's libfaketime)")
}

/// Leases run on the monotonic clock: wall-clock jumps of hours on the
/// leader and a follower (libfaketime preloaded into raftkv, its offset
/// changed while it runs; the monotonic clock left alone, as on a real
/// machine whose NTP steps the clock) neither expire a lease early nor keep
/// one alive late, and a lease kept alive lives on through a leadership
/// change between members hours apart. The leader's log timestamps prove
/// the jump took hold.
#[tokio::test]
async fn leases_never_expire_early_when_wall_clocks_jump() -> anyhow::Result<()> {
    use std::time::{Duration, Instant};

    use etcd_client::PutOptions;
    use raftkv_tests::Cluster;

    let lib = libfaketime();
    let clocks = tempfile::tempdir()?;
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    for i in cluster.members() {
        let file = clocks.path().join(format!("m{i}"));
        std::fs::write(&file, "+0")?;
        cluster.stop(i).await?;
        cluster
            .restart_with_env(
                i,
                &[
                    ("LD_PRELOAD", lib.to_str().expect("a UTF-8 path")),
                    ("FAKETIME_TIMESTAMP_FILE", file.to_str().expect("a UTF-8 path")),
                    ("FAKETIME_CACHE_DURATION", "1"),
                    ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
                ],
            )
            .await?;
    }
    let jump = |i: usize, offset: &str| std::fs::write(clocks.path().join(format!("m{i}")), offset);
    let leader = cluster.leader().await?;
    let follower = cluster.followers().await?[0];
    let mut client = cluster.client(leader).await?;

    const TTL: i64 = 6;
    let short = client.lease_grant(TTL, None).await?.id();
    let kept = client.lease_grant(3, None).await?.id();
    let granted = Instant::now();
    client.put("clock/short", "v", Some(PutOptions::new().with_lease(short))).await?;
    client.put("clock/kept", "v", Some(PutOptions::new().with_lease(kept))).await?;
    let (mut keeper, _responses) = client.lease_keep_alive(kept).await?;

    jump(leader, "+2h")?;
    jump(follower, "-3h")?;
    let present = |key: &'static str| {
        let mut client = client.clone();
        async move { anyhow::Ok(client.get(key, None).await?.count() == 1) }
    };
    // Until TTL - 1 s the key is there, whatever the clocks say.
    while granted.elapsed() < Duration::from_secs(TTL as u64 - 1) {
        assert!(present("clock/short").await?, "the lease expired early, {:?} after its grant of {TTL} s", granted.elapsed());
        keeper.keep_alive().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And gone soon after its TTL (expiry is checked every 500 ms, then a
    // revoke goes through raft).
    while present("clock/short").await? {
        assert!(granted.elapsed() < Duration::from_secs(TTL as u64 + 4), "the lease outlived its TTL by 4 s");
        keeper.keep_alive().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The kept lease lives on through a move to the member 3 h behind.
    let follower_id = cluster.member(follower).id();
    client.move_leader(follower_id).await?;
    let mut client = cluster.client(follower).await?;
    let (mut keeper, _responses) = client.lease_keep_alive(kept).await?;
    for _ in 0..10 {
        keeper.keep_alive().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(client.get("clock/kept", None).await?.count(), 1, "a lease kept alive expired across clock jumps");
    }
    // The old leader logged the move in its own time: about 2 h ahead.
    let log = cluster.member(leader).server().log();
    // (Either hour, should the hour have turned since the move.)
    let ahead = [(hour_now() + 2) % 24, (hour_now() + 1) % 24];
    assert!(
        log.lines().rev().take(200).any(|l| l.get(11..13).and_then(|h| h.parse::<u32>().ok()).is_some_and(|h| ahead.contains(&h))),
        "no log line of the old leader is stamped 2 h ahead: libfaketime did not take hold\n{}",
        cluster.member(leader).server().log_tail(20)
    );
    Ok(())
}

/// The hour (UTC) now, from the system clock.
fn hour_now() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ((secs / 3600) % 24) as u32
}
