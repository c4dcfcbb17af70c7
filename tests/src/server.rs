//! One raftkv or etcd process for a test: a single-member cluster of its own,
//! or (through [`crate::cluster`]) one member of a larger one. Both take the
//! same command line, so a test can run a scenario against either. The
//! process is a child of the test: its data dir and log live in a temporary
//! directory that goes away with the [`Server`], and dropping the [`Server`]
//! kills it.
//!
//! Readiness is judged through the API (a `Status` call that reports a
//! leader), never by sleeping or by parsing the log.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions, TlsOptions};
use tempfile::TempDir;

use crate::binaries;
use crate::ports::free_port;

/// How long a server may take to answer `Status` with a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful stop (SIGTERM) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Which implementation a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// The `raftkv` binary built from this workspace.
    Raftkv,
    /// Real etcd 3.4 from /usr/bin/etcd, the reference behaviour.
    Etcd,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Raftkv => "raftkv",
            Flavor::Etcd => "etcd",
        }
    }

    fn program(self) -> anyhow::Result<PathBuf> {
        match self {
            Flavor::Raftkv => binaries::raftkv(),
            Flavor::Etcd => {
                let path = PathBuf::from(binaries::ETCD);
                if !path.is_file() {
                    bail!("real etcd is not installed at {}", path.display());
                }
                Ok(path)
            }
        }
    }
}

/// How a member finds its cluster: `--name` and the `--initial-*` flags.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub name: String,
    /// The peer URL the other members dial; in a [`crate::Cluster`] a proxy
    /// in front of the member's own `--listen-peer-urls`.
    pub advertise_peer_url: String,
    /// `name=peer-url,...`, every member of the cluster this one starts in.
    pub initial_cluster: String,
    /// `new` for a member bootstrapping a cluster, `existing` for one added
    /// to a running cluster with MemberAdd.
    pub state: &'static str,
    pub token: String,
}

/// A running (or stopped) server on loopback ports.
pub struct Server {
    flavor: Flavor,
    program: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    bootstrap: Bootstrap,
    extra_args: Vec<String>,
    /// Environment variables set for the process on its next starts.
    env: Vec<(String, String)>,
    child: Option<Child>,
    /// Set when the client port serves TLS: the URL is https:// and the
    /// harness's clients (etcd-client's own TLS, not raftkv's) use these.
    tls: Option<TlsOptions>,
}

impl Server {
    /// Starts a fresh single member and waits until it is ready.
    pub async fn start(flavor: Flavor) -> anyhow::Result<Server> {
        Server::start_with(flavor, &[]).await
    }

    /// Like [`Server::start`], with extra command-line flags such as
    /// `["--max-request-bytes", "4096"]`.
    pub async fn start_with(flavor: Flavor, extra_args: &[&str]) -> anyhow::Result<Server> {
        Server::start_program(flavor, None, extra_args).await
    }

    /// A single member of an etcd release built from Go modules
    /// ([`binaries::etcd_releases`]) rather than Debian's etcd.
    pub async fn start_etcd_release(program: &std::path::Path) -> anyhow::Result<Server> {
        Server::start_program(Flavor::Etcd, Some(program.to_path_buf()), &[]).await
    }

    /// [`Server::start_with`], with `prepare(data_dir)` called before the
    /// first start (to mount a small filesystem there, say).
    pub async fn start_on(
        flavor: Flavor,
        extra_args: &[&str],
        prepare: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Server> {
        Server::start_program_on(flavor, None, extra_args, prepare).await
    }

    async fn start_program(flavor: Flavor, program: Option<PathBuf>, extra_args: &[&str]) -> anyhow::Result<Server> {
        Server::start_program_on(flavor, program, extra_args, |_| Ok(())).await
    }

    /// A single member serving clients over TLS (`https://` URLs; the
    /// certificate flags are in `extra_args`), reached by the harness with
    /// `tls` (etcd-client's own TLS options, not raftkv's code: the CA,
    /// maybe a client certificate).
    pub async fn start_tls(flavor: Flavor, tls: TlsOptions, extra_args: &[&str]) -> anyhow::Result<Server> {
        let mut server = Server::single(flavor, extra_args)?;
        server.tls = Some(tls);
        server.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// A single member of its own cluster, not started yet
    /// ([`Server::spawn`]).
    pub fn single(flavor: Flavor, extra_args: &[&str]) -> anyhow::Result<Server> {
        let peer_port = free_port()?;
        let name = "e2e";
        let peer_url = loopback_url(peer_port);
        let bootstrap = Bootstrap {
            name: name.to_owned(),
            advertise_peer_url: peer_url.clone(),
            initial_cluster: format!("{name}={peer_url}"),
            state: "new",
            token: "etcd-cluster".to_owned(),
        };
        Server::new(flavor, peer_port, bootstrap, extra_args)
    }

    async fn start_program_on(
        flavor: Flavor,
        program: Option<PathBuf>,
        extra_args: &[&str],
        prepare: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Server> {
        let mut server = Server::single(flavor, extra_args)?;
        if let Some(program) = program {
            server.program = program;
        }
        prepare(&server.data_dir())?;
        server.spawn()?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// A member that listens for peers on `peer_port` and starts as
    /// `bootstrap` says, on a fresh client port and data dir; not started
    /// yet ([`Server::spawn`]). [`Server::start_with`] is the single-member
    /// case.
    pub fn new(
        flavor: Flavor,
        peer_port: u16,
        bootstrap: Bootstrap,
        extra_args: &[&str],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{}-{}-", flavor.name(), bootstrap.name))
            .tempdir()
            .context("cannot create the server's temporary directory")?;
        Ok(Server {
            flavor,
            program: flavor.program()?,
            dir,
            client_port: free_port()?,
            peer_port,
            bootstrap,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            child: None,
            tls: None,
        })
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The member's `--name`.
    pub fn name(&self) -> &str {
        &self.bootstrap.name
    }

    /// The client URL, `http://127.0.0.1:PORT` (`https://` over TLS).
    pub fn endpoint(&self) -> String {
        match self.tls {
            Some(_) => format!("https://127.0.0.1:{}", self.client_port),
            None => loopback_url(self.client_port),
        }
    }

    /// Serve clients over TLS from the next start: the URL becomes
    /// https:// and the harness's clients use `tls`.
    pub fn set_tls(&mut self, tls: TlsOptions) {
        self.tls = Some(tls);
    }

    /// Listen on and advertise an https:// peer URL from the next start
    /// (the peer certificate flags are the caller's).
    pub fn set_peer_https(&mut self) {
        let b = &mut self.bootstrap;
        b.initial_cluster = b.initial_cluster.replace(&b.advertise_peer_url, &b.advertise_peer_url.replacen("http://", "https://", 1));
        b.advertise_peer_url = b.advertise_peer_url.replacen("http://", "https://", 1);
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The harness's connect options: TLS when the server serves it.
    fn connect_options(&self) -> ConnectOptions {
        let options = ConnectOptions::new();
        match &self.tls {
            Some(tls) => options.with_tls(tls.clone()),
            None => options,
        }
    }

    /// The peer URL the other members dial.
    pub fn peer_url(&self) -> &str {
        &self.bootstrap.advertise_peer_url
    }

    /// The URL the member listens for peers on: https:// when it
    /// advertises https:// (peer TLS).
    fn listen_peer_url(&self) -> String {
        let url = loopback_url(self.peer_port);
        if self.bootstrap.advertise_peer_url.starts_with("https://") { url.replacen("http://", "https://", 1) } else { url }
    }

    /// How the member finds its cluster.
    pub fn bootstrap(&self) -> &Bootstrap {
        &self.bootstrap
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Everything the process wrote to stdout and stderr, across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_else(|err| format!("<cannot read {}: {err}>", self.log_path().display()))
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A new client for this server. Requests time out, so that a test
    /// against a dead or hung server fails instead of hanging.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let options = self
            .connect_options()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        Client::connect([self.endpoint()], Some(options))
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {} at {}",
                    self.flavor.name(),
                    self.endpoint()
                )
            })
    }

    /// SIGKILL, then reap the process: no chance to flush or clean up.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .child
            .take()
            .context("kill9: the server is not running")?;
        child.kill().context("kill9: cannot send SIGKILL")?;
        child.wait().context("kill9: cannot reap the server")?;
        Ok(())
    }

    /// SIGTERM, the graceful stop, then wait for the process to exit.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.terminate()?;
        self.wait_exit().await
    }

    /// Sends SIGTERM and returns at once; [`Server::wait_exit`] reaps the
    /// process. A cluster signals every member before waiting for any.
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("stop: the server is not running")?;
        // `kill(1)` rather than libc: the workspace forbids unsafe code.
        let sent = Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()
            .context("stop: cannot run kill(1)")?;
        if !sent.success() {
            bail!("stop: kill -s TERM {pid} failed: {sent}");
        }
        Ok(())
    }

    /// Waits for the process to exit after SIGTERM; kills it and fails
    /// after a timeout.
    pub async fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exit_within(STOP_TIMEOUT).await? {
            return Ok(status);
        }
        // Killing it is the best we can do; the error below says why.
        self.kill9()?;
        bail!(
            "{} did not exit within {STOP_TIMEOUT:?}; log:\n{}",
            self.label(),
            self.log()
        );
    }

    /// Waits up to `timeout` for the process to exit by itself (after
    /// SIGTERM, or removed from its cluster); `None` if it still runs.
    pub async fn exit_within(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().context("the server is not running")?;
            if let Some(status) = child.try_wait().context("cannot wait for the server")? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the process again on the same data dir, ports and flags, and
    /// waits until it is ready. The server must have been stopped or killed.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("restart: the server is still running; kill9() or stop() it first");
        }
        self.spawn()?;
        self.wait_ready().await
    }

    /// Replaces the extra flags the next start uses (a restart with another
    /// setting). The server must be stopped.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Adds flags to those the next start uses. The server must be stopped.
    pub fn push_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    }

    /// Sets an environment variable for the next starts (a preloaded
    /// library, say). The server must be stopped.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// `etcd m0`, naming the process in messages.
    pub fn label(&self) -> String {
        format!("{} {}", self.flavor.name(), self.bootstrap.name)
    }

    fn args(&self) -> Vec<String> {
        let client_url = self.endpoint();
        let b = &self.bootstrap;
        let mut args: Vec<String> = vec![
            "--name".into(),
            b.name.clone(),
            "--data-dir".into(),
            self.data_dir().to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            client_url.clone(),
            "--advertise-client-urls".into(),
            client_url,
            "--listen-peer-urls".into(),
            self.listen_peer_url(),
            "--initial-advertise-peer-urls".into(),
            b.advertise_peer_url.clone(),
            "--initial-cluster".into(),
            b.initial_cluster.clone(),
            "--initial-cluster-state".into(),
            b.state.into(),
            "--initial-cluster-token".into(),
            b.token.clone(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts the process and returns at once, without waiting for it to
    /// serve (a cluster member cannot until a quorum runs). The server must
    /// not be running.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is already running", self.label());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("cannot open the server log")?;
        let log_err: File = log
            .try_clone()
            .context("cannot duplicate the server log handle")?;
        let args = self.args();
        let child = Command::new(&self.program)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| {
                format!("cannot start {} {}", self.program.display(), args.join(" "))
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `Status` until it answers with a leader; fails early if the
    /// process exits, and prints the log on failure.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("cannot poll the server process")?
            {
                self.child = None;
                return Err(self.not_ready(&format!("exited during startup with {status}")));
            }
            let last_error =
                match tokio::time::timeout(Duration::from_secs(3), self.leader_known()).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) => format!("{err:#}"),
                    Err(_) => "Status timed out".to_owned(),
                };
            if Instant::now() > deadline {
                return Err(self.not_ready(&format!(
                    "not ready within {READY_TIMEOUT:?} (last: {last_error})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn leader_known(&self) -> anyhow::Result<()> {
        let options = self.connect_options().with_connect_timeout(Duration::from_secs(1));
        let mut client = Client::connect([self.endpoint()], Some(options)).await?;
        let status = client.status().await?;
        if status.leader() == 0 {
            bail!("Status answered but reports no leader yet");
        }
        Ok(())
    }

    fn not_ready(&self, what: &str) -> anyhow::Error {
        let log = self.log();
        eprintln!(
            "----- {} log ({}) -----\n{log}\n----- end of log -----",
            self.label(),
            self.log_path().display()
        );
        anyhow::anyhow!(
            "{} at {} {what}; command: {} {}",
            self.label(),
            self.endpoint(),
            self.program.display(),
            self.args().join(" ")
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort: the process may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- {} log, kept for the failing test -----\n{}\n----- end of log -----",
                self.label(),
                self.log()
            );
        }
    }
}

/// `http://127.0.0.1:PORT`.
pub fn loopback_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}
