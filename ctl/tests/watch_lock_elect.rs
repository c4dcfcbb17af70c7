//! raftkvctl's `watch`, `lock` and `elect` next to etcdctl 3.4's on a real
//! etcd: both watchers see the same events and must print the same bytes;
//! a lock held by one tool keeps the other waiting until it is released;
//! both observers report the same leaders of a campaign.
//!
//! Every wait is bounded and every child is killed when dropped. Skipped,
//! with a message, when /usr/bin/etcd or /usr/bin/etcdctl is absent.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ETCDCTL, Etcd, RAFTKVCTL, available, start_etcd};

const WAIT: Duration = Duration::from_secs(15);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, name: &str) {
        let status = Command::new("kill").args([name, &self.0.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {name}");
    }

    /// Waits (bounded) for the exit; returns the exit code.
    fn finish(mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "process did not exit in time");
            std::thread::sleep(Duration::from_millis(50));
        };
        status.code().unwrap_or(-1)
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

fn command(tool: &str, etcd: &Etcd, args: &[&str]) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &etcd.endpoint])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Runs a short command to completion; returns its exit code.
fn ctl(tool: &str, etcd: &Etcd, args: &[&str]) -> i32 {
    let child = command(tool, etcd, args).stdout(Stdio::null()).spawn().expect("run tool");
    Proc(child).finish()
}

/// Starts a long-running command whose stdout goes to a file.
fn spawn(tool: &str, etcd: &Etcd, args: &[&str], out: &Path) -> Proc {
    let file = std::fs::File::create(out).expect("output file");
    Proc(command(tool, etcd, args).stdout(file).spawn().expect("start tool"))
}

/// Waits (bounded) until the file has at least `lines` lines.
fn wait_lines(path: &Path, lines: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(Instant::now() < deadline, "{path:?} got only {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_prints_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let formats = ["simple", "json", "fields"];
    let mut watchers = Vec::new();
    for format in formats {
        for tool in [ETCDCTL, RAFTKVCTL] {
            let out = dir.path().join(format!("{format}-{}", tool.len()));
            let args = ["watch", "w/", "--prefix", "--prev-kv", "-w", format];
            watchers.push((spawn(tool, &etcd, &args, &out), out));
        }
    }
    // Both watchers must be registered before the first write.
    std::thread::sleep(Duration::from_secs(1));
    for args in [&["put", "w/a", "1"][..], &["put", "w/a", "2"], &["del", "w/a"], &["put", "w/b", "x y"]] {
        assert_eq!(ctl(ETCDCTL, &etcd, args), 0);
    }
    // The last event (`PUT w/b`) ends every format's output with its value.
    let expected_lines = [("simple", 13), ("json", 4), ("fields", 38)];
    for pair in watchers.chunks(2) {
        let (etcdctl_out, raftkvctl_out) = (&pair[0].1, &pair[1].1);
        let format = etcdctl_out.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let lines = expected_lines.iter().find(|(f, _)| format.starts_with(f)).map_or(1, |(_, n)| *n);
        let expected = wait_lines(etcdctl_out, lines);
        let got = wait_lines(raftkvctl_out, lines);
        assert_eq!(got, expected, "watch output ({format}) differs from etcdctl's");
    }
}

/// `first` holds the lock; `second` waits for it with a command, which
/// must run only once `first` releases on SIGINT.
fn lock_excludes(first: &str, second: &str) {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let held = dir.path().join("held");
    let holder = spawn(first, &etcd, &["lock", "mylock"], &held);
    let key = wait_lines(&held, 1);
    assert!(key.starts_with("mylock/"), "lock key {key:?}");

    let waited = dir.path().join("waited");
    let mut waiter = spawn(second, &etcd, &["lock", "mylock", "--", "echo", "acquired"], &waited);
    std::thread::sleep(Duration::from_secs(2));
    assert!(waiter.running(), "second locker did not wait for the first");
    assert_eq!(std::fs::read_to_string(&waited).unwrap_or_default(), "");

    holder.signal("-INT");
    assert_eq!(holder.finish(), 0, "holder releases on SIGINT and exits 0");
    assert_eq!(waiter.finish(), 0);
    assert_eq!(std::fs::read_to_string(&waited).unwrap_or_default(), "acquired\n");
}

#[test]
fn raftkvctl_lock_waits_for_etcdctl_lock() {
    if available() {
        lock_excludes(ETCDCTL, RAFTKVCTL);
    }
}

#[test]
fn etcdctl_lock_waits_for_raftkvctl_lock() {
    if available() {
        lock_excludes(RAFTKVCTL, ETCDCTL);
    }
}

#[test]
fn elect_and_observe_as_etcdctl() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let (seen_by_etcdctl, seen_by_raftkvctl) = (dir.path().join("oe"), dir.path().join("or"));
    let observers = [
        spawn(ETCDCTL, &etcd, &["elect", "-l", "myelection"], &seen_by_etcdctl),
        spawn(RAFTKVCTL, &etcd, &["elect", "-l", "myelection"], &seen_by_raftkvctl),
    ];
    std::thread::sleep(Duration::from_secs(1));

    let first_out = dir.path().join("first");
    let first = spawn(RAFTKVCTL, &etcd, &["elect", "myelection", "one"], &first_out);
    let first_leader = wait_lines(&first_out, 2);
    assert!(first_leader.starts_with("myelection/") && first_leader.ends_with("\none\n"));

    let second_out = dir.path().join("second");
    let mut second = spawn(ETCDCTL, &etcd, &["elect", "myelection", "two"], &second_out);
    std::thread::sleep(Duration::from_secs(2));
    assert!(second.running());
    assert_eq!(std::fs::read_to_string(&second_out).unwrap_or_default(), "");

    first.signal("-INT");
    assert_eq!(first.finish(), 0, "raftkvctl resigns on SIGINT and exits 0");
    let second_leader = wait_lines(&second_out, 2);
    assert!(second_leader.ends_with("\ntwo\n"));

    let expected = wait_lines(&seen_by_etcdctl, 4);
    assert_eq!(expected, format!("{first_leader}{second_leader}"));
    assert_eq!(wait_lines(&seen_by_raftkvctl, 4), expected);
    for observer in observers {
        observer.signal("-INT");
        assert_eq!(observer.finish(), 0);
    }
    second.signal("-INT");
    assert_eq!(second.finish(), 0);
}

/// A call that outlasts etcd's ping limit: HTTP/2 keepalive pings more
/// often than every 5 s (etcd's `--grpc-keepalive-min-time`) make etcd end
/// the connection (GOAWAY, too many pings). grpc-go, etcdctl's client,
/// never pings more often than every 10 s whatever `--keepalive-time`
/// says; raftkvctl must not either, or a long watch, defragmentation or
/// snapshot against etcd fails (found by the maintenance benchmark).
#[test]
fn a_watch_idle_past_etcds_ping_limit_still_delivers() {
    if !available() {
        return;
    }
    let etcd = start_etcd();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut watchers = Vec::new();
    for tool in [ETCDCTL, RAFTKVCTL] {
        let out = dir.path().join(format!("idle-{}", tool.len()));
        watchers.push((spawn(tool, &etcd, &["--keepalive-time", "1s", "watch", "idle"], &out), out));
    }
    // Pings every second would have been answered with GOAWAY by now.
    std::thread::sleep(Duration::from_secs(16));
    for (w, _) in &mut watchers {
        assert!(w.running(), "a watcher exited while idle");
    }
    assert_eq!(ctl(ETCDCTL, &etcd, &["put", "idle", "still-here"]), 0);
    let expected = wait_lines(&watchers[0].1, 3);
    let got = wait_lines(&watchers[1].1, 3);
    assert_eq!(got, expected, "raftkvctl's idle watch output differs from etcdctl's");
    assert_eq!(got, "PUT\nidle\nstill-here\n");
    // Both watches resume on a new connection when theirs is closed, so
    // the output alone proves nothing: etcd must have started exactly one
    // Watch call per tool.
    let started = watch_calls_started(&etcd.endpoint);
    assert_eq!(started, 2, "etcd started {started} Watch calls for 2 watchers: a connection was closed and the watch resumed");
}

/// etcd's `grpc_server_started_total` for Watch, from its /metrics.
fn watch_calls_started(endpoint: &str) -> u64 {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).expect("connect to etcd's client port");
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes()).expect("request");
    let mut page = String::new();
    stream.read_to_string(&mut page).expect("metrics page");
    page.lines()
        .filter(|l| l.starts_with("grpc_server_started_total{") && l.contains("grpc_method=\"Watch\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}
