//! The programs in `server/examples`, run as their users run them: as
//! separate processes against a real raftkv, killed with SIGKILL where the
//! point is surviving a crash. Five lockers counting ten times each reach
//! exactly 50; a registry watcher sees a worker arrive, and depart within its
//! TTL after a kill -9; when the elected leader is killed the other replica
//! takes over and resumes the work; two queue consumers take each of 20 items
//! exactly once.
//!
//! The examples must be built first (`cargo build -p raftkv --examples`, which
//! `make test` does). Every wait is bounded, and an example still running when
//! a test fails is killed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::GetOptions;
use raftkv_tests::{Flavor, Server};

/// Generous bounds: the machine running the tests may be busy.
const START: Duration = Duration::from_secs(20);
const FINISH: Duration = Duration::from_secs(60);
/// Beyond the lease TTL, the time for the leader to notice the expiry and
/// for the news to reach a watcher.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// `target/<profile>/examples/<name>`, next to the `deps/` directory holding
/// the running test executable.
fn example_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test executable path {}", exe.display()))?;
    let path = profile_dir.join("examples").join(name);
    if !path.is_file() {
        bail!(
            "example {name} not found at {}: run `cargo build -p raftkv --examples` before this test",
            path.display()
        );
    }
    Ok(path)
}

/// One running example. Its stdout lines arrive on a channel as they are
/// printed; stdout and stderr both go to a transcript shown on failure.
/// Dropping it kills the process.
struct Example {
    label: String,
    child: Option<Child>,
    lines: Receiver<String>,
    transcript: Arc<Mutex<Vec<String>>>,
}

impl Example {
    fn start(name: &str, label: &str, server: &Server, args: &[&str]) -> anyhow::Result<Example> {
        let program = example_binary(name)?;
        let mut child = Command::new(&program)
            .arg("--endpoints")
            .arg(server.endpoint())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {} {}", program.display(), args.join(" ")))?;
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        spawn_reader(stdout, "out", Some(sender), Arc::clone(&transcript));
        spawn_reader(stderr, "err", None, Arc::clone(&transcript));
        Ok(Example {
            label: label.to_owned(),
            child: Some(child),
            lines,
            transcript,
        })
    }

    /// The next stdout line, or `None` if none came within `timeout`.
    fn next_line(&self, timeout: Duration) -> anyhow::Result<Option<String>> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.failure("closed its stdout (exited?) while a line was expected"))
            }
        }
    }

    /// Skips stdout lines until one satisfies `wanted`, and returns it.
    fn expect_line(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left)? {
                Some(line) if wanted(&line) => return Ok(line),
                Some(_) => {}
                None => {
                    return Err(self.failure(&format!("did not print {what} within {timeout:?}")));
                }
            }
        }
    }

    /// Waits for the process to exit on its own and requires success.
    fn expect_success(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let status = self.wait(timeout)?;
        if !status.success() {
            return Err(self.failure(&format!("exited with {status}")));
        }
        Ok(())
    }

    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("the example is not running")?;
        loop {
            if let Some(status) = child.try_wait().context("cannot poll the example")? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(self.failure(&format!("did not exit within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to revoke its lease or resign.
    fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the example is not running")?;
        child.kill().context("cannot send SIGKILL")?;
        child.wait().context("cannot reap the example")?;
        Ok(())
    }

    /// SIGINT, what Ctrl-C sends.
    fn interrupt(&self) -> anyhow::Result<()> {
        let child = self.child.as_ref().context("the example is not running")?;
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let sent = Command::new("kill")
            .args(["-s", "INT", &child.id().to_string()])
            .status()
            .context("cannot run kill(1)")?;
        ensure!(sent.success(), "kill -s INT {} failed: {sent}", child.id());
        Ok(())
    }

    /// The stdout lines not read yet, once the process has exited.
    fn rest(&self) -> anyhow::Result<Vec<String>> {
        let mut rest = Vec::new();
        loop {
            match self.lines.recv_timeout(START) {
                Ok(line) => rest.push(line),
                Err(RecvTimeoutError::Disconnected) => return Ok(rest),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failure("kept its stdout open after exiting"));
                }
            }
        }
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        let transcript = self
            .transcript
            .lock()
            .map(|t| t.join("\n"))
            .unwrap_or_default();
        anyhow::anyhow!("{} {what}; its output:\n{transcript}", self.label)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    tag: &'static str,
    sender: Option<mpsc::Sender<String>>,
    transcript: Arc<Mutex<Vec<String>>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut transcript) = transcript.lock() {
                transcript.push(format!("{tag}: {line}"));
            }
            if let Some(sender) = &sender {
                // The test may have stopped listening; the transcript has it.
                let _ = sender.send(line);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_lockers_incrementing_ten_times_each_reach_fifty() -> anyhow::Result<()> {
    let server = Server::start(Flavor::Raftkv).await?;
    let mut lockers = Vec::new();
    for i in 1..=5 {
        let name = format!("locker-{i}");
        let args = [
            "--lock", "l", "--key", "counter", "--count", "10", "--name", &name,
        ];
        lockers.push(Example::start("distributed_lock", &name, &server, &args)?);
    }
    for locker in &mut lockers {
        locker.expect_success(FINISH)?;
    }
    let mut client = server.client().await?;
    let counter = client.get("counter", None).await?;
    let value = counter
        .kvs()
        .first()
        .context("no counter key")?
        .value_str()?
        .to_owned();
    ensure!(
        value == "50",
        "five lockers incrementing ten times each left the counter at {value}, not 50"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_watcher_sees_a_killed_worker_depart_within_its_ttl() -> anyhow::Result<()> {
    let server = Server::start(Flavor::Raftkv).await?;
    let mut watcher = Example::start(
        "service_registry",
        "watcher",
        &server,
        &[
            "--service",
            "web",
            "--watch",
            "--count",
            "2",
            "--duration",
            "120s",
        ],
    )?;
    watcher.expect_line("`watching`", START, |l| {
        l.starts_with("watching services/web/")
    })?;

    let mut worker = Example::start(
        "service_registry",
        "worker",
        &server,
        &[
            "--service",
            "web",
            "--instance",
            "w1",
            "--address",
            "10.0.0.1:80",
            "--ttl",
            "2",
            "--duration",
            "120s",
        ],
    )?;
    let registered = worker.expect_line("`registered`", START, |l| {
        l.starts_with("registered services/web/w1")
    })?;
    // The server may raise the TTL asked for; the worker says what it got.
    let ttl: u64 = registered
        .rsplit_once("ttl ")
        .and_then(|(_, ttl)| ttl.strip_suffix("s)"))
        .and_then(|ttl| ttl.parse().ok())
        .with_context(|| format!("no TTL in {registered:?}"))?;
    watcher.expect_line("the arrival", START, |l| l == "arrived w1 at 10.0.0.1:80")?;

    worker.kill9()?;
    let bound = Duration::from_secs(ttl) + EXPIRY_MARGIN;
    watcher.expect_line("the departure", bound, |l| l == "departed w1")?;
    watcher.expect_success(START)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_the_other_replica_takes_over_and_resumes() -> anyhow::Result<()>
{
    let server = Server::start(Flavor::Raftkv).await?;
    let args = |name: &'static str| {
        [
            "--election",
            "e",
            "--name",
            name,
            "--ttl",
            "2",
            "--interval",
            "200ms",
            "--count",
            "25",
            "--duration",
            "120s",
        ]
    };
    let mut a = Example::start("leader_election", "replica a", &server, &args("a"))?;
    a.expect_line("`became leader`", START, |l| l == "became leader (a)")?;
    a.expect_line("work #2", START, |l| l == "leader a: work #2")?;

    let mut b = Example::start("leader_election", "replica b", &server, &args("b"))?;
    b.expect_line("`following a`", START, |l| {
        assert!(
            !l.starts_with("became leader"),
            "b became leader while a led: {l}"
        );
        l == "following a"
    })?;

    a.kill9()?;
    let bound = Duration::from_secs(2) + EXPIRY_MARGIN;
    b.expect_line("`became leader`", bound, |l| l == "became leader (b)")?;
    let first = b.expect_line("work", START, |l| l.starts_with("leader b: work #"))?;
    let resumed_at: u64 = first.trim_start_matches("leader b: work #").parse()?;
    ensure!(
        resumed_at >= 3,
        "b started over at work #{resumed_at} instead of resuming after a's work #2"
    );

    b.expect_line("work #25", FINISH, |l| l == "leader b: work #25")?;
    b.expect_success(START)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queue_consumers_take_each_of_twenty_items_exactly_once() -> anyhow::Result<()> {
    let server = Server::start(Flavor::Raftkv).await?;
    let consume = ["--queue", "q", "consume", "--duration", "120s"];
    let mut consumers = [
        Example::start("distributed_queue", "consumer 1", &server, &consume)?,
        Example::start("distributed_queue", "consumer 2", &server, &consume)?,
    ];
    let mut producer = Example::start(
        "distributed_queue",
        "producer",
        &server,
        &[
            "--queue",
            "q",
            "produce",
            "--count",
            "20",
            "--interval",
            "20ms",
        ],
    )?;
    producer.expect_success(FINISH)?;

    // item -> how many times it was dequeued
    let mut taken: BTreeMap<String, usize> = BTreeMap::new();
    let mut record = |line: &str| {
        if let Some(item) = line
            .strip_prefix("dequeued ")
            .and_then(|rest| rest.split(' ').next())
        {
            *taken.entry(item.to_owned()).or_default() += 1;
        }
    };
    let deadline = Instant::now() + FINISH;
    let mut dequeued = 0;
    while dequeued < 20 {
        ensure!(
            Instant::now() < deadline,
            "only {dequeued} of 20 items dequeued within {FINISH:?}"
        );
        for consumer in &consumers {
            if let Some(line) = consumer.next_line(Duration::from_millis(100))? {
                dequeued += usize::from(line.starts_with("dequeued "));
                record(&line);
            }
        }
    }
    for consumer in &mut consumers {
        consumer.interrupt()?;
        consumer.expect_success(START)?;
        consumer.rest()?.iter().for_each(|line| record(line));
    }

    let expected: BTreeMap<String, usize> = (1..=20).map(|i| (format!("item-{i}"), 1)).collect();
    ensure!(
        taken == expected,
        "items and how many times each was dequeued: {taken:?}"
    );
    let mut client = server.client().await?;
    let left = client
        .get("queue/q/", Some(GetOptions::new().with_prefix()))
        .await?;
    ensure!(
        left.kvs().is_empty(),
        "{} item(s) left in the queue",
        left.kvs().len()
    );
    Ok(())
}
