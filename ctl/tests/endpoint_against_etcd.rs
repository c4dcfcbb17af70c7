//! raftkvctl's `endpoint status|health|hashkv --cluster` and `move-leader`
//! next to etcdctl 3.4's on a real three-member etcd cluster: same bytes,
//! same exit code.
//!
//! Health timings, and the order in which health answers arrive, are
//! normalised; a read is repeated when a commit between the two tools' runs
//! moved raft indexes. `move-leader` changes the leader, so each tool moves
//! it from the same member to the same member, and etcdctl moves it back
//! after each. Skipped, with a message, when /usr/bin/etcd or
//! /usr/bin/etcdctl is absent.

mod common;

use std::time::{Duration, Instant};

use common::{
    Cluster, ETCDCTL, FORMATS, Output, RAFTKVCTL, WAIT, assert_same, assert_same_read, available, json,
    mask_fields, run_at, run_raw, start_cluster,
};

/// Runs a read with both tools until they agree (a commit between the two
/// runs moves raft indexes and database sizes), at most a few times.
fn assert_same_settled(endpoints: &str, args: &[&str]) {
    let mut attempts = 0;
    loop {
        let expected = run_raw(ETCDCTL, endpoints, args, "");
        let got = run_raw(RAFTKVCTL, endpoints, args, "");
        attempts += 1;
        if got == expected || attempts == 5 {
            assert_same(got, expected, &format!("{args:?}"));
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `endpoint health` with what varies between runs normalised: each
/// `took`, and the order of the answers (the order they arrive in). A
/// table's cells are compared without their padding, which follows `took`.
fn health_normalised(out: Output, format: &str) -> Output {
    let took = |text: &str| mask_fields(text, &["took = ", "\"took\":\""]);
    let sorted = |mut lines: Vec<String>| {
        lines.sort();
        lines
    };
    let stdout = match format {
        "json" => {
            let text = took(out.stdout.trim_end());
            let inner = text.trim_start_matches("[{").trim_end_matches("}]");
            let items = sorted(inner.split("},{").map(str::to_string).collect());
            format!("[{{{}}}]\n", items.join("},{"))
        }
        "table" => {
            let cells = |line: &str| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                match cells.get(3) {
                    Some(t) if !t.is_empty() && *t != "TOOK" => {
                        let mut cells = cells.clone();
                        cells[3] = "N";
                        cells.join("|")
                    }
                    _ => cells.join("|"),
                }
            };
            let lines: Vec<String> = out.stdout.lines().filter(|l| l.starts_with('|')).map(cells).collect();
            let (header, rows) = lines.split_first().map(|(h, r)| (h.clone(), r.to_vec())).unwrap_or_default();
            format!("{header}\n{}", sorted(rows).join("\n"))
        }
        "fields" => {
            let text = mask_fields(&out.stdout, &["\"Took\" : "]);
            sorted(text.split_inclusive("\n\n").map(str::to_string).collect()).concat()
        }
        _ => took(&out.stdout),
    };
    let stderr = sorted(took(&out.stderr).lines().map(str::to_string).collect()).join("\n");
    Output { stdout, stderr, code: out.code }
}

#[test]
fn endpoints_of_the_cluster_print_as_etcdctl() {
    if !available() {
        return;
    }
    let cluster = start_cluster(3);
    let (first, all) = (cluster.members[0].endpoint.clone(), cluster.endpoints());
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        assert_eq!(run_at(ETCDCTL, &first, &["put", k, v], "").code, 0);
    }
    for format in FORMATS {
        assert_same_settled(&first, &["endpoint", "status", "--cluster", "-w", format]);
        assert_same_settled(&first, &["endpoint", "hashkv", "--cluster", "-w", format]);
    }
    for args in [
        &["endpoint", "hashkv"][..],
        &["endpoint", "hashkv", "--rev", "2", "-w", "json"],
        &["endpoint", "hashkv", "--rev", "100000"],
        &["endpoint", "hashkv", "--rev", "3", "--cluster", "-w", "fields"],
    ] {
        assert_same_settled(&all, args);
    }
    for format in ["simple", "json", "table", "fields"] {
        let args = ["endpoint", "health", "--cluster", "-w", format];
        let expected = health_normalised(run_at(ETCDCTL, &first, &args, ""), format);
        let got = health_normalised(run_at(RAFTKVCTL, &first, &args, ""), format);
        // The simple format reports on stderr, one line per member.
        let lines = if format == "simple" { 3 } else { 0 };
        assert_eq!((expected.code, expected.stderr.matches("is healthy").count()), (0, lines), "{expected:?}");
        assert_eq!(got, expected, "raftkvctl {args:?} differs from etcdctl");
    }
}

/// Each member's id and the leader it follows, from its own status.
fn leaders(cluster: &Cluster) -> Vec<(u64, u64)> {
    cluster
        .members
        .iter()
        .map(|m| {
            let out = run_at(ETCDCTL, &m.endpoint, &["endpoint", "status", "-w", "json"], "");
            let status = &json(&out.stdout)[0]["Status"];
            (status["header"]["member_id"].as_u64().unwrap_or_default(), status["leader"].as_u64().unwrap_or_default())
        })
        .collect()
}

/// Waits until every member follows the same leader; returns it and the
/// members' ids.
fn settled_leader(cluster: &Cluster) -> (u64, Vec<u64>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = leaders(cluster);
        let leader = seen[0].1;
        if leader != 0 && seen.iter().all(|(_, l)| *l == leader) {
            return (leader, seen.iter().map(|(id, _)| *id).collect());
        }
        assert!(Instant::now() < deadline, "no settled leader: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn move_leader_runs_as_etcdctl() {
    if !available() {
        return;
    }
    let cluster = start_cluster(3);
    let all = cluster.endpoints();
    let (leader, ids) = settled_leader(&cluster);
    let follower = ids.iter().position(|id| *id != leader).expect("a follower");
    let target = format!("{:x}", ids[follower]);
    let back = format!("{leader:x}");
    let follower_endpoint = cluster.members[follower].endpoint.clone();
    for args in [
        &["move-leader"][..],
        &["move-leader", "zz"],
        &["move-leader", "1", "2"],
        &["move-leader", "123456"],
        &["move-leader", &back],
    ] {
        assert_same_read(&all, args);
    }
    assert_same_read(&follower_endpoint, &["move-leader", &target]);

    // Both tools hand over from the same leader to the same follower; the
    // leadership is moved back after each.
    let hand_back = || {
        assert_eq!(settled_leader(&cluster).0, ids[follower]);
        let out = run_at(ETCDCTL, &all, &["move-leader", &back], "");
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(settled_leader(&cluster).0, leader);
    };
    for format in FORMATS {
        let args = ["move-leader", &target, "-w", format];
        let expected = run_raw(ETCDCTL, &all, &args, "");
        hand_back();
        let got = run_raw(RAFTKVCTL, &all, &args, "");
        hand_back();
        assert_same(got, expected, &format!("{args:?}"));
    }
}
