//! What the comparisons with etcdctl 3.4 share: real etcd processes on
//! loopback (one member, or a cluster of several with members joining
//! later), and running etcdctl or raftkvctl against them.
//!
//! Every process is killed when its handle is dropped and every wait is
//! bounded. Nothing here compares outputs; each test says what must match.

// Each test crate uses its own part of this module.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
pub const RAFTKVCTL: &str = env!("CARGO_BIN_EXE_raftkvctl");

/// How long a member may take to start or a cluster to settle.
pub const WAIT: Duration = Duration::from_secs(20);

/// Whether the test runs: these comparisons need real etcd and etcdctl. A
/// machine without them fails the test (with what to install) rather than
/// passing it by comparing nothing; raftkv-only mode (`RAFTKV_E2E_FLAVORS=raftkv`)
/// skips it and says so.
pub fn available() -> bool {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this comparison with etcdctl");
    raftkv_tests::with_etcd(test).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A free loopback port outside the kernel's ephemeral range (see
/// raftkv_tests::ports), never handed out twice by this process.
pub fn free_port() -> u16 {
    raftkv_tests::ports::free_port().expect("a free loopback port")
}

pub fn loopback_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// A running etcd member, killed when dropped.
pub struct Etcd {
    child: Child,
    pub name: String,
    /// `127.0.0.1:port`, as etcdctl's `--endpoints` takes it.
    pub endpoint: String,
    /// The URL the member advertises to clients (and lists in `member list`).
    pub client_url: String,
    pub peer_url: String,
    _data: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How to start one member.
pub struct MemberConfig<'a> {
    pub name: &'a str,
    /// The peer URL advertised; the member also listens on `extra_peer_urls`.
    pub peer_url: &'a str,
    pub extra_peer_urls: &'a [String],
    pub initial_cluster: &'a str,
    /// `new` for a cluster's first members, `existing` for one joining later.
    pub state: &'a str,
    pub token: &'a str,
}

impl Etcd {
    /// Starts a member without waiting for it to serve.
    pub fn spawn(config: &MemberConfig<'_>) -> Etcd {
        let data = tempfile::tempdir().expect("temp dir for etcd");
        let client_url = loopback_url();
        let listen_peer_urls =
            std::iter::once(config.peer_url.to_string()).chain(config.extra_peer_urls.iter().cloned()).collect::<Vec<_>>();
        let child = Command::new(ETCD)
            .args(["--name", config.name, "--data-dir"])
            .arg(data.path())
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &listen_peer_urls.join(",")])
            .args(["--initial-advertise-peer-urls", config.peer_url])
            .args(["--initial-cluster", config.initial_cluster])
            .args(["--initial-cluster-state", config.state, "--initial-cluster-token", config.token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let endpoint = client_url.trim_start_matches("http://").to_string();
        Etcd {
            child,
            name: config.name.to_string(),
            endpoint,
            client_url,
            peer_url: config.peer_url.to_string(),
            _data: data,
        }
    }
}

/// Waits until every one of the comma-separated endpoints is healthy.
pub fn wait_healthy(endpoints: &str) {
    let deadline = Instant::now() + WAIT;
    while run_at(ETCDCTL, endpoints, &["endpoint", "health"], "").code != 0 {
        assert!(Instant::now() < deadline, "etcd at {endpoints} did not become healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A single-member etcd, serving.
pub fn start_etcd() -> Etcd {
    let peer_url = loopback_url();
    let etcd = Etcd::spawn(&MemberConfig {
        name: "default",
        peer_url: &peer_url,
        extra_peer_urls: &[],
        initial_cluster: &format!("default={peer_url}"),
        state: "new",
        token: "etcd-cluster",
    });
    wait_healthy(&etcd.endpoint);
    etcd
}

/// A cluster of etcd members started together.
pub struct Cluster {
    pub members: Vec<Etcd>,
    /// The `--initial-cluster-token`; members joining later need it.
    pub token: String,
    /// When every member first answered as healthy.
    pub healthy_since: Instant,
}

impl Cluster {
    /// Every member's endpoint, comma-separated, as `--endpoints` takes them.
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.endpoint.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// `size` members named m1, m2, ..., serving and connected to each other.
pub fn start_cluster(size: usize) -> Cluster {
    let names: Vec<String> = (1..=size).map(|i| format!("m{i}")).collect();
    let peer_urls: Vec<String> = names.iter().map(|_| loopback_url()).collect();
    let initial_cluster =
        names.iter().zip(&peer_urls).map(|(n, u)| format!("{n}={u}")).collect::<Vec<_>>().join(",");
    // A token of its own keeps members of other test clusters, which may
    // reuse a port later, from ever talking to this one.
    let token = format!("raftkvctl-{}-{}", std::process::id(), free_port());
    let members = names
        .iter()
        .zip(&peer_urls)
        .map(|(name, peer_url)| {
            Etcd::spawn(&MemberConfig {
                name,
                peer_url,
                extra_peer_urls: &[],
                initial_cluster: &initial_cluster,
                state: "new",
                token: &token,
            })
        })
        .collect();
    let mut cluster = Cluster { members, token, healthy_since: Instant::now() };
    wait_healthy(&cluster.endpoints());
    cluster.healthy_since = Instant::now();
    cluster
}

/// What a tool printed and how it exited; stdout as raw bytes, since the
/// protobuf format is binary.
#[derive(Debug, PartialEq, Eq)]
pub struct RawOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub code: i32,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

/// Runs etcdctl or raftkvctl against `endpoints` with nothing from this
/// process's environment.
pub fn run_raw(tool: &str, endpoints: &str, args: &[&str], stdin: &str) -> RawOutput {
    let mut child = Command::new(tool)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoints])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the command-line tool");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for the tool");
    // clientv3 logs its retries as JSON on stderr; they carry timestamps.
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("{\"level\":"))
        .map(|l| format!("{l}\n"))
        .collect();
    RawOutput { stdout: out.stdout, stderr, code: out.status.code().unwrap_or(-1) }
}

pub fn run_at(tool: &str, endpoints: &str, args: &[&str], stdin: &str) -> Output {
    let raw = run_raw(tool, endpoints, args, stdin);
    Output { stdout: String::from_utf8_lossy(&raw.stdout).into_owned(), stderr: raw.stderr, code: raw.code }
}

pub fn run(tool: &str, etcd: &Etcd, args: &[&str], stdin: &str) -> Output {
    run_at(tool, &etcd.endpoint, args, stdin)
}

/// Replaces the digits after each of `fields` with `N`.
pub fn mask_fields(text: &str, fields: &[&str]) -> String {
    let mut out = text.to_string();
    for field in fields {
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(pos) = rest.find(field) {
            result.push_str(&rest[..pos + field.len()]);
            rest = &rest[pos + field.len()..];
            let value_len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == 'µ')).unwrap_or(rest.len());
            if value_len > 0 {
                result.push('N');
            }
            rest = &rest[value_len..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// Output formats, in the order the comparisons try them.
pub const FORMATS: [&str; 5] = ["simple", "json", "fields", "protobuf", "table"];

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts that raftkvctl printed and exited as etcdctl did; shows text
/// where there is some, and then compares the bytes.
pub fn assert_same(got: RawOutput, expected: RawOutput, what: &str) {
    assert_eq!(
        (String::from_utf8_lossy(&got.stdout), &got.stderr, got.code),
        (String::from_utf8_lossy(&expected.stdout), &expected.stderr, expected.code),
        "raftkvctl {what} differs from etcdctl"
    );
    assert_eq!(got.stdout, expected.stdout, "raftkvctl {what} differs from etcdctl");
}

/// Runs the same command with both tools, etcdctl first, and compares.
pub fn assert_same_read(endpoints: &str, args: &[&str]) {
    let expected = run_raw(ETCDCTL, endpoints, args, "");
    let got = run_raw(RAFTKVCTL, endpoints, args, "");
    assert_same(got, expected, &format!("{args:?}"));
}
