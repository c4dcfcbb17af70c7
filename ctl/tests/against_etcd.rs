//! raftkvctl against etcdctl 3.4 on a real etcd: every command is run by
//! both tools on the same cluster state and must print the same bytes and
//! exit with the same code.
//!
//! Reads run with both tools back to back. A write changes what the next
//! command sees, so each write case first puts the keys it touches into a
//! known state, runs etcdctl, restores that state, runs raftkvctl, and
//! compares with revision numbers masked (they differ by construction).
//! Skipped, with a message, when /usr/bin/etcd or /usr/bin/etcdctl is absent.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ETCDCTL, Etcd, Output, RAFTKVCTL, available, mask_fields, run, start_etcd};

/// Replaces revisions, cluster ids and timings with `N`.
fn mask(text: &str) -> String {
    const FIELDS: [&str; 13] = [
        "\"revision\":",
        "\"create_revision\":",
        "\"mod_revision\":",
        "\"cluster_id\":",
        "\"member_id\":",
        "\"raft_term\":",
        "\"Revision\" : ",
        "\"CreateRevision\" : ",
        "\"ModRevision\" : ",
        "\"PrevCreateRevision\" : ",
        "\"PrevModRevision\" : ",
        "compacted revision ",
        "\"took\":\"",
    ];
    mask_fields(text, &FIELDS)
}

fn assert_same_read(etcd: &Etcd, args: &[&str], stdin: &str) {
    let expected = run(ETCDCTL, etcd, args, stdin);
    let got = run(RAFTKVCTL, etcd, args, stdin);
    assert_eq!(got, expected, "raftkvctl {args:?} differs from etcdctl");
}

/// Puts `keys` back into a known state: every key under `w/` deleted,
/// then the given ones written.
fn reset(etcd: &Etcd, keys: &[(&str, &str)]) {
    assert_eq!(run(ETCDCTL, etcd, &["del", "w/", "--prefix"], "").code, 0);
    for (k, v) in keys {
        assert_eq!(run(ETCDCTL, etcd, &["put", k, v], "").code, 0);
    }
}

/// The keys to start from, the command line, and its stdin.
type WriteCase<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);

fn assert_same_write(etcd: &Etcd, state: &[(&str, &str)], args: &[&str], stdin: &str) {
    reset(etcd, state);
    let expected = run(ETCDCTL, etcd, args, stdin);
    reset(etcd, state);
    let got = run(RAFTKVCTL, etcd, args, stdin);
    let masked = |o: Output| Output { stdout: mask(&o.stdout), stderr: o.stderr, code: o.code };
    assert_eq!(masked(got), masked(expected), "raftkvctl {args:?} differs from etcdctl");
}

#[test]
fn reads_print_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "a value"), ("k1", "v1 again"), ("other", "x")] {
        assert_eq!(run(ETCDCTL, &etcd, &["put", k, v], "").code, 0);
    }
    let cases: &[&[&str]] = &[
        &["get", "k1"],
        &["get", "missing"],
        &["get", "missing", "-w", "json"],
        &["get", "k", "--prefix"],
        &["get", "k", "--prefix", "-w", "json"],
        &["get", "k", "--prefix", "-w", "fields"],
        &["get", "k", "--prefix", "-w", "protobuf"],
        &["get", "k", "--prefix", "--hex"],
        &["get", "k", "--prefix", "--keys-only"],
        &["get", "k", "--prefix", "--limit", "1", "-w", "json"],
        &["get", "k", "--prefix", "--sort-by", "VALUE", "--order", "DESCEND"],
        &["get", "k", "--prefix", "--sort-by", "create"],
        &["get", "k", "--prefix", "--print-value-only"],
        &["get", "k1", "--rev", "2"],
        &["get", "k2", "--from-key"],
        &["get", "k1", "k3"],
        &["get", "", "--prefix", "--consistency", "s"],
        &["get"],
        &["get", "k", "--prefix", "--from-key"],
        &["get", "k", "z", "--prefix"],
        &["get", "k", "--consistency", "x"],
        &["get", "k", "--order", "sideways"],
        &["get", "k", "--sort-by", "colour"],
        &["get", "k1", "-w", "table"],
        &["get", "k1", "--print-value-only", "-w", "json"],
        &["get", "k1", "--rev", "100000"],
        &["-w", "yaml", "get", "k1"],
        &["put"],
        &["put", "", "x"],
        &["put", "k", "v", "--lease", "zz"],
        &["put", "k", "v", "--ignore-value"],
        &["del"],
        &["del", "a", "b", "c"],
        &["del", "a", "--prefix", "--from-key"],
        &["compaction"],
        &["compaction", "abc"],
        &["compaction", "100000"],
        &["member", "list"],
        &["member", "list", "-w", "json"],
        &["member", "list", "-w", "table"],
        &["member", "list", "-w", "fields"],
        &["member", "list", "-w", "protobuf"],
        &["endpoint", "status", "-w", "protobuf"],
    ];
    for args in cases {
        assert_same_read(&etcd, args, "");
    }
    let txn_errors = [
        "",
        "bad\n",
        "mod(\"k1\") = \"x\"\n",
        "foo(\"k1\") = \"x\"\n",
        "mod(\"k1\") >\n",
        "\nput\n",
        "\nput a\n",
        "\nfoo a b\n",
        "mod(\"k1\") = \"0\"",
    ];
    for input in txn_errors {
        assert_same_read(&etcd, &["txn"], input);
    }
    assert_same_read(&etcd, &["txn", "extra"], "\n\n\n");
}

#[test]
fn endpoint_status_prints_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    for format in ["simple", "json", "table", "fields"] {
        let args = ["endpoint", "status", "-w", format];
        // The database size is written behind the request path; give the
        // backend a moment to settle if the two reads straddle a commit.
        let mut attempts = 0;
        loop {
            let expected = run(ETCDCTL, &etcd, &args, "");
            let got = run(RAFTKVCTL, &etcd, &args, "");
            attempts += 1;
            if got == expected || attempts == 3 {
                assert_eq!(got, expected, "raftkvctl {args:?} differs from etcdctl");
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

#[test]
fn endpoint_health_reports_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let simple = run(RAFTKVCTL, &etcd, &["endpoint", "health"], "");
    assert_eq!((simple.code, simple.stdout.as_str()), (0, ""));
    let prefix = format!("{} is healthy: successfully committed proposal: took = ", etcd.endpoint);
    assert!(simple.stderr.starts_with(&prefix), "unexpected: {}", simple.stderr);
    let args = ["endpoint", "health", "-w", "json"];
    let expected = run(ETCDCTL, &etcd, &args, "");
    let got = run(RAFTKVCTL, &etcd, &args, "");
    assert_eq!(mask(&got.stdout), mask(&expected.stdout));
    assert_eq!(got.code, expected.code);
}

#[test]
fn writes_print_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let one: &[(&str, &str)] = &[("w/a", "old")];
    let two: &[(&str, &str)] = &[("w/a", "old"), ("w/b", "other")];
    let cases: &[WriteCase] = &[
        (&[], &["put", "w/a", "v"], ""),
        (one, &["put", "w/a", "new", "--prev-kv"], ""),
        (one, &["put", "w/a", "new", "--prev-kv", "-w", "json"], ""),
        (one, &["put", "w/a", "new", "--prev-kv", "-w", "fields"], ""),
        (one, &["put", "w/a", "new", "--prev-kv", "--hex"], ""),
        (one, &["put", "w/a", "--ignore-value", "--prev-kv"], ""),
        (one, &["put", "w/a", "v", "--ignore-lease"], ""),
        (one, &["put", "w/a", "v", "-w", "table"], ""),
        (&[], &["put", "w/a"], "from stdin\n"),
        (one, &["del", "w/a"], ""),
        (one, &["del", "w/missing"], ""),
        (two, &["del", "w/", "--prefix", "--prev-kv"], ""),
        (two, &["del", "w/", "--prefix", "--prev-kv", "-w", "json"], ""),
        (two, &["del", "w/a", "w/c", "-w", "fields"], ""),
        (two, &["del", "w/b", "--from-key", "--prev-kv"], ""),
        (two, &["txn"], "mod(\"w/a\") > \"0\"\nval(\"w/b\") = \"other\"\n\nput w/a \"new v\"\nget w/ --prefix\ndel w/b --prev-kv\n\nput w/x y\n\n"),
        (two, &["txn", "-w", "json"], "ver(\"w/a\") = \"1\"\n\nput w/a x --prev-kv\nget w/a\ndel w/b\n\n\n"),
        (two, &["txn", "-w", "fields"], "c(\"w/a\") = \"0\"\n\n\nget w/ --prefix --keys-only\nput w/c z\n\n"),
        (two, &["txn", "-i"], "value(\"w/a\") != \"old\"\n\nput w/a new\n\nget w/a\n\n"),
        (two, &["txn"], "\nput \"w/a b\" 'c d'\nget \"w/a b\"\n\n\n"),
    ];
    for (state, args, stdin) in cases {
        assert_same_write(&etcd, state, args, stdin);
    }
    // Compacting to the current revision: both tools on the same state.
    for tool in [ETCDCTL, RAFTKVCTL] {
        reset(&etcd, one);
        let header = run(ETCDCTL, &etcd, &["get", "w/a", "-w", "json"], "").stdout;
        let rev = header
            .split("\"revision\":")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("revision in the response header")
            .to_string();
        let out = run(tool, &etcd, &["compaction", "--physical", &rev], "");
        assert_eq!((out.code, out.stdout), (0, format!("compacted revision {rev}\n")), "{tool}");
    }
}

/// Masks what differs between two runs of a lease command: lease ids (16
/// hex digits in the simple format, decimal after an id field), revisions,
/// and with `countdown` the remaining TTL, which may tick between runs.
fn mask_lease(text: &str, countdown: bool) -> String {
    let mut fields = vec!["\"ID\":", "\"id\":", "\"ID\" : "];
    if countdown {
        fields.extend(["remaining(", "\"ttl\":", "\"TTL\" : "]);
    }
    let text = mask_fields(&mask(text), &fields);
    // Runs of exactly 16 lowercase hex digits are `%016x` lease ids.
    let mut out = String::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_alphanumeric() {
            word.push(c);
            continue;
        }
        let is_id = word.len() == 16 && word.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        out.push_str(if is_id { "<lease>" } else { &word });
        word.clear();
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

fn masked_lease(o: Output, countdown: bool) -> Output {
    Output { stdout: mask_lease(&o.stdout, countdown), stderr: mask_lease(&o.stderr, countdown), code: o.code }
}

/// Grants a lease with etcdctl and returns its id in hex.
fn grant(etcd: &Etcd, ttl: &str) -> String {
    let out = run(ETCDCTL, etcd, &["lease", "grant", ttl], "");
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.split_whitespace().nth(1).expect("lease grant prints the id").to_string()
}

fn lease_list(etcd: &Etcd) -> String {
    run(ETCDCTL, etcd, &["lease", "list"], "").stdout
}

const LEASE_FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

#[test]
fn lease_reads_print_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let lease = grant(&etcd, "300");
    // One key only: etcd lists a lease's keys in Go map order.
    assert_eq!(run(ETCDCTL, &etcd, &["put", "--lease", &lease, "l/a \"b\"", "v"], "").code, 0);
    for format in LEASE_FORMATS {
        for args in [
            vec!["lease", "timetolive", &lease, "-w", format],
            vec!["lease", "timetolive", &lease, "--keys", "-w", format],
        ] {
            let expected = run(ETCDCTL, &etcd, &args, "");
            let got = run(RAFTKVCTL, &etcd, &args, "");
            assert_eq!(masked_lease(got, true), masked_lease(expected, true), "raftkvctl {args:?} differs from etcdctl");
        }
        assert_same_read(&etcd, &["lease", "keep-alive", "--once", &lease, "-w", format], "");
        assert_same_read(&etcd, &["lease", "list", "-w", format], "");
    }
    let cases: &[&[&str]] = &[
        &["lease", "grant"],
        &["lease", "grant", "abc"],
        &["lease", "grant", "1", "2"],
        &["lease", "grant", "99999999999"],
        &["lease", "revoke"],
        &["lease", "revoke", "zz"],
        &["lease", "revoke", "0x1234"],
        &["lease", "revoke", "ffffffffffffffff"],
        &["lease", "revoke", "1234"],
        &["lease", "revoke", "1234", "-w", "json"],
        &["lease", "timetolive"],
        &["lease", "timetolive", "zz"],
        &["lease", "timetolive", "1234"],
        &["lease", "timetolive", "1234", "--keys"],
        &["lease", "timetolive", "1234", "-w", "json"],
        &["lease", "timetolive", "1234", "-w", "fields"],
        &["lease", "keep-alive"],
        &["lease", "keep-alive", "zz"],
        &["lease", "keep-alive", "--once", "1234"],
        &["lease", "keep-alive", "--once", "1234", "-w", "json"],
        &["lease", "keep-alive", "1234"],
        &["lease", "keep-alive", "1234", "-w", "json"],
        &["lease", "list", "ignored"],
    ];
    for args in cases {
        assert_same_read(&etcd, args, "");
    }
}

#[test]
fn lease_grant_and_revoke_print_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    for format in LEASE_FORMATS {
        let args = ["lease", "grant", "100", "-w", format];
        let expected = run(ETCDCTL, &etcd, &args, "");
        let got = run(RAFTKVCTL, &etcd, &args, "");
        assert_eq!(masked_lease(got, false), masked_lease(expected, false), "raftkvctl {args:?} differs from etcdctl");

        let revoke = |tool| {
            let lease = grant(&etcd, "100");
            let out = run(tool, &etcd, &["lease", "revoke", &lease, "-w", format], "");
            // Even the formats that cannot print the answer revoke the lease.
            assert!(!lease_list(&etcd).contains(&lease), "{tool} -w {format} left {lease}");
            masked_lease(out, false)
        };
        assert_eq!(revoke(RAFTKVCTL), revoke(ETCDCTL), "raftkvctl lease revoke -w {format} differs");
    }
}

#[test]
fn lease_keep_alive_runs_as_etcdctl() {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::ExitStatusExt;
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let spawn = |tool, lease: &str, format| {
        Command::new(tool)
            .env_clear()
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint, "lease", "keep-alive", lease, "-w", format])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run keep-alive")
    };
    // Revoked while running: with a 6s TTL the second renewal comes 2s in,
    // after the revoke, and finds the lease gone.
    for format in ["simple", "json", "fields"] {
        let session = |tool| {
            let lease = grant(&etcd, "6");
            let child = spawn(tool, &lease, format);
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(run(ETCDCTL, &etcd, &["lease", "revoke", &lease], "").code, 0);
            let out = child.wait_with_output().expect("keep-alive ends");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            masked_lease(Output { stdout, stderr, code: out.status.code().unwrap_or(-1) }, false)
        };
        let expected = session(ETCDCTL);
        assert!(expected.stdout.contains("\"TTL\"") || expected.stdout.contains("TTL(6)"), "{expected:?}");
        assert_eq!(session(RAFTKVCTL), expected, "raftkvctl keep-alive -w {format} differs");
    }
    // SIGINT ends it the way it ends a Go program: killed by the signal,
    // after the renewals printed so far.
    let interrupted = |tool| {
        let lease = grant(&etcd, "6");
        let mut child = spawn(tool, &lease, "simple");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("first renewal");
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
        let status = child.wait().expect("keep-alive ends");
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).expect("rest of stdout");
        (status.signal(), mask_lease(&(first + &rest), false))
    };
    let expected = interrupted(ETCDCTL);
    assert_eq!(expected, (Some(2), "lease <lease> keepalived with TTL(6)\n".to_string()));
    assert_eq!(interrupted(RAFTKVCTL), expected);
}
