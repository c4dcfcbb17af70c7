//! A multi-member raftkv or etcd cluster on loopback for a test: n
//! [`Server`]s, each with its own ports and temporary data dir, and a
//! [`Network`] of proxies between them for cutting members off. Both flavors
//! get the same command lines and the same checks, so a scenario proven on
//! etcd holds raftkv to etcd's behaviour.
//!
//! Members keep their index for the life of the cluster, also once removed,
//! so a test can name "the killed one" after membership changed. What the
//! cluster knows of leadership it learns through Maintenance.Status, never
//! from logs.
//!
//! One cluster at a time runs in a test process: several clusters started
//! by parallel tests on a small machine would turn election timeouts into
//! noise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, ConnectOptions, MemberAddOptions, TlsOptions};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::both::selected_flavors;
use crate::ports::free_port;
use crate::proxy::Network;
use crate::server::{Bootstrap, Flavor, Server, loopback_url};

/// Raft timing of every cluster: etcd's defaults, spelled out because the
/// tests measure failover against them.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const ELECTION_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a cluster may take to agree on a leader after a start, restart
/// or membership change.
const AGREE_TIMEOUT: Duration = Duration::from_secs(30);
/// One Status call; a member that does not answer in time counts as not
/// agreeing.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// What etcd answers a membership change while a peer has been connected
/// for less than 5 s (its strict reconfiguration check): retried.
pub const UNHEALTHY: &str = "etcdserver: unhealthy cluster";

/// Held by the one running cluster of this process.
static ONE_AT_A_TIME: LazyLock<Arc<Mutex<()>>> = LazyLock::new(Arc::default);
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// TLS on a cluster's ports; the certificate flags go in the cluster's
/// extra arguments.
#[derive(Clone, Default)]
pub struct ClusterTls {
    /// Client URLs are https://, reached by the harness with these options.
    pub client: Option<TlsOptions>,
    /// Peer URLs, listened on and advertised, are https://.
    pub peer: bool,
}

/// A cluster of real processes; dropping it kills them all.
pub struct Cluster {
    flavor: Flavor,
    token: String,
    extra_args: Vec<String>,
    tls: ClusterTls,
    members: Vec<Member>,
    network: Network,
    _one_at_a_time: OwnedMutexGuard<()>,
}

/// One member: its process, its proxy link and what the cluster learned
/// about it.
pub struct Member {
    server: Server,
    link: usize,
    /// The raft member id, 0 until the member has answered Status.
    id: u64,
    removed: bool,
}

/// A member whose ports and proxy exist, announced to the cluster (by
/// MemberAdd, etcdctl member add) before [`Cluster::join`] starts it.
pub struct Joining {
    pub peer_url: String,
    peer_port: u16,
    link: usize,
}

impl Member {
    pub fn server(&self) -> &Server {
        &self.server
    }

    pub fn name(&self) -> &str {
        self.server.name()
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// A client of this member alone (no failover to other endpoints).
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.server.client().await
    }
}

impl Cluster {
    /// Starts `n` members named `m0`.. with `extra_args` on each and waits
    /// until all report the same leader.
    pub async fn start(flavor: Flavor, n: usize, extra_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::start_prepared(flavor, n, extra_args, |_, _| Ok(())).await
    }

    /// [`Cluster::start`] with TLS on the ports `tls` names (the
    /// certificate flags in `extra_args`); members added later get it too.
    pub async fn start_tls(flavor: Flavor, n: usize, tls: ClusterTls, extra_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::start_inner(flavor, n, tls, extra_args, |_, _| Ok(())).await
    }

    /// `n` raftkv members whose data dirs `raftkvctl snapshot restore`
    /// makes from `snapshot` (raftkv's or etcd's), each with the bootstrap
    /// flags it then starts with: a new cluster from a backup.
    pub async fn start_restored(n: usize, snapshot: &std::path::Path) -> anyhow::Result<Cluster> {
        Cluster::start_restored_from(n, snapshot.as_os_str(), &[]).await
    }

    /// [`Cluster::start_restored`] from a file or an object URL, with
    /// `env` for raftkvctl (an object store's endpoint and credentials).
    pub async fn start_restored_from(n: usize, snapshot: &std::ffi::OsStr, env: &[(String, String)]) -> anyhow::Result<Cluster> {
        let ctl = crate::binaries::raftkvctl()?;
        Cluster::start_prepared(Flavor::Raftkv, n, &[], |b, data_dir| {
            let out = std::process::Command::new(&ctl)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .arg("snapshot")
                .arg("restore")
                .arg(snapshot)
                .args(["--name", &b.name, "--initial-cluster", &b.initial_cluster, "--initial-cluster-token", &b.token])
                .args(["--initial-advertise-peer-urls", &b.advertise_peer_url])
                .arg("--data-dir")
                .arg(data_dir)
                .output()
                .context("cannot run raftkvctl snapshot restore")?;
            if !out.status.success() {
                bail!("raftkvctl snapshot restore for {}: {}", b.name, String::from_utf8_lossy(&out.stderr));
            }
            Ok(())
        })
        .await
    }

    /// [`Cluster::start`], with `prepare(bootstrap, data_dir)` called for
    /// each member before it first starts (to restore a snapshot into its
    /// data dir, say).
    pub async fn start_prepared(
        flavor: Flavor,
        n: usize,
        extra_args: &[&str],
        prepare: impl FnMut(&Bootstrap, &std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_inner(flavor, n, ClusterTls::default(), extra_args, prepare).await
    }

    async fn start_inner(
        flavor: Flavor,
        n: usize,
        tls: ClusterTls,
        extra_args: &[&str],
        mut prepare: impl FnMut(&Bootstrap, &std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let one_at_a_time = ONE_AT_A_TIME.clone().lock_owned().await;
        let token = format!(
            "e2e-{}-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::SeqCst),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        // The harness's timing unless the test sets its own.
        if !extra_args.iter().any(|a| a.starts_with("--heartbeat-interval") || a.starts_with("--election-timeout")) {
            extra_args.extend([
                "--heartbeat-interval".to_owned(),
                HEARTBEAT.as_millis().to_string(),
                "--election-timeout".to_owned(),
                ELECTION_TIMEOUT.as_millis().to_string(),
            ]);
        }
        let mut cluster = Cluster {
            flavor,
            token,
            extra_args,
            tls,
            members: Vec::new(),
            network: Network::new()?,
            _one_at_a_time: one_at_a_time,
        };
        let joining: Vec<Joining> = (0..n)
            .map(|_| cluster.prepare_member())
            .collect::<anyhow::Result<_>>()?;
        let initial_cluster = joining
            .iter()
            .enumerate()
            .map(|(i, j)| format!("m{i}={}", j.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for (i, joining) in joining.into_iter().enumerate() {
            let m = cluster.add_process(joining, &format!("m{i}"), &initial_cluster, "new")?;
            let server = &cluster.members[m].server;
            prepare(server.bootstrap(), &server.data_dir())?;
        }
        cluster.start_all().await?;
        Ok(cluster)
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Member `i`'s server, to change its flags before a start.
    pub fn server_mut(&mut self, i: usize) -> &mut Server {
        &mut self.members[i].server
    }

    /// The flags every member starts with (the harness's timing included).
    pub fn extra_args(&self) -> &[String] {
        &self.extra_args
    }

    /// Member `i`, also once removed.
    ///
    /// # Panics
    /// If there never was a member `i`: a mistake in the test itself.
    pub fn member(&self, i: usize) -> &Member {
        &self.members[i]
    }

    /// Indices of the members still in the cluster (running or not).
    pub fn members(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| !self.members[i].removed)
            .collect()
    }

    /// Indices of the members in the cluster whose process runs.
    pub fn running(&self) -> Vec<usize> {
        self.members()
            .into_iter()
            .filter(|&i| self.members[i].server.is_running())
            .collect()
    }

    /// Client URLs of the members still in the cluster.
    pub fn endpoints(&self) -> Vec<String> {
        self.members()
            .into_iter()
            .map(|i| self.members[i].endpoint())
            .collect()
    }

    /// A client of member `i` alone.
    pub async fn client(&self, i: usize) -> anyhow::Result<Client> {
        self.members[i].client().await
    }

    /// The leader's index, once every running member reports the same one.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        eventually(AGREE_TIMEOUT, async || self.agreed_leader().await)
            .await
            .context("the running members did not agree on a leader")
    }

    /// The running members other than the leader, once all agree on one.
    pub async fn followers(&self) -> anyhow::Result<Vec<usize>> {
        let leader = self.leader().await?;
        Ok(self
            .running()
            .into_iter()
            .filter(|&i| i != leader)
            .collect())
    }

    /// One round of Status on every running member: the leader's index if
    /// all name the same one of them, an error saying who disagrees if not.
    pub async fn agreed_leader(&self) -> anyhow::Result<usize> {
        let mut reports = Vec::new();
        for i in self.running() {
            let (id, leader) = self.status(i).await?;
            reports.push((i, id, leader));
        }
        let Some(&(_, _, leader)) = reports.first() else {
            bail!("no member is running");
        };
        if leader == 0 || reports.iter().any(|&(_, _, l)| l != leader) {
            let reports: Vec<String> = reports
                .iter()
                .map(|(i, _, l)| format!("m{i} names {l:x}"))
                .collect();
            bail!("no agreed leader: {}", reports.join(", "));
        }
        reports
            .iter()
            .find(|&&(_, id, _)| id == leader)
            .map(|&(i, _, _)| i)
            .with_context(|| format!("the leader {leader:x} is not a running member"))
    }

    /// Member `i`'s own id and the leader it reports (0 for none).
    async fn status(&self, i: usize) -> anyhow::Result<(u64, u64)> {
        let status = tokio::time::timeout(STATUS_TIMEOUT, async {
            let mut client = quick_client(&self.members[i].endpoint(), self.tls.client.as_ref()).await?;
            anyhow::Ok(client.status().await?)
        })
        .await
        .with_context(|| format!("Status on m{i} timed out"))?
        .with_context(|| format!("Status on m{i}"))?;
        let id = status.header().map_or(0, |h| h.member_id());
        Ok((id, status.leader()))
    }

    /// SIGKILL member `i`: no chance to flush or say goodbye.
    pub fn kill9(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        member.server.kill9()?;
        self.network.set_pid(member.link, None);
        Ok(())
    }

    /// Starts member `i` again on its data dir and waits until the running
    /// members agree on a leader, member `i` included.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)?;
        self.leader().await.map(drop)
    }

    /// Starts member `i` again with the environment variable `key` set to
    /// `value` (for this start and the next ones), and waits as
    /// [`Cluster::restart`].
    pub async fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> anyhow::Result<()> {
        for (key, value) in env {
            self.members[i].server.set_env(key, value);
        }
        self.restart(i).await
    }

    /// Starts member `i` again with `extra_args` added to its flags (for
    /// this start and the next ones), and waits as [`Cluster::restart`].
    pub async fn restart_with(&mut self, i: usize, extra_args: &[&str]) -> anyhow::Result<()> {
        self.members[i].server.push_extra_args(extra_args);
        self.restart(i).await
    }

    /// Member `i` is lost for good (its machine and disk are gone): killed
    /// if it runs, its data dir deleted, and no longer counted among the
    /// members. Nothing is asked of the cluster.
    pub fn lose(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if member.server.is_running() {
            member.server.kill9()?;
        }
        self.network.set_pid(member.link, None);
        let dir = member.server.data_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("cannot delete {}", dir.display()))?;
        }
        member.removed = true;
        Ok(())
    }

    /// Starts member `i` again without waiting for it to serve: for a start
    /// that is expected to fail ([`Cluster::exit_within`]).
    pub fn spawn_only(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn(i)
    }

    /// Waits up to `timeout` for member `i`'s process to exit.
    pub async fn exit_within(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let status = self.members[i].server.exit_within(timeout).await?;
        if status.is_some() {
            self.network.set_pid(self.members[i].link, None);
        }
        Ok(status)
    }

    /// SIGTERM to member `i`, then waits for it to exit.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        self.members[i].server.terminate()?;
        self.members[i].server.wait_exit().await?;
        self.network.set_pid(self.members[i].link, None);
        Ok(())
    }

    /// SIGTERM to every running member at once, then waits for each to exit.
    pub async fn stop_all(&mut self) -> anyhow::Result<()> {
        let running = self.running();
        for &i in &running {
            self.members[i].server.terminate()?;
        }
        // The exit status says nothing: etcd re-raises SIGTERM after its
        // cleanup instead of exiting 0.
        for i in running {
            self.members[i].server.wait_exit().await?;
            self.network.set_pid(self.members[i].link, None);
        }
        Ok(())
    }

    /// Starts every member that is in the cluster but not running, then
    /// waits until all agree on a leader and records the members' ids.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in self.members() {
            if !self.members[i].server.is_running() {
                self.spawn(i)?;
            }
        }
        self.leader().await?;
        for i in self.running() {
            self.members[i].id = self.status(i).await?.0;
        }
        Ok(())
    }

    /// Cuts member `i` off its peers, both ways, until [`Cluster::heal`].
    /// Its clients still reach it.
    pub fn cut(&self, i: usize) {
        self.network.cut(self.members[i].link);
    }

    pub fn heal(&self, i: usize) {
        self.network.heal(self.members[i].link);
    }

    /// Member `from`'s messages to member `to` are lost (connections it
    /// dials there dropped and refused) until [`Cluster::unblock`]; `to`
    /// still reaches `from`. One-way for raftkv's transport only: see
    /// [`Network::block`].
    pub fn block(&self, from: usize, to: usize) {
        self.network.block(self.members[from].link, self.members[to].link);
    }

    pub fn unblock(&self, from: usize, to: usize) {
        self.network.unblock(self.members[from].link, self.members[to].link);
    }

    /// Delays the peer traffic into member `i` by `delay` (zero: none).
    pub fn delay(&self, i: usize, delay: Duration) {
        self.network.delay(self.members[i].link, delay);
    }

    /// SIGSTOP to member `i`: it stops where it is, its sockets open, until
    /// [`Cluster::resume`] (a long GC pause, a stalled VM).
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")
    }

    /// SIGCONT to a member [`Cluster::pause`] stopped.
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let pid = self.members[i].server.pid().with_context(|| format!("m{i} is not running"))?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .context("cannot run kill")?;
        ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
        Ok(())
    }

    /// Peer connections dialed into member `i` (through its proxy) since
    /// the cluster started.
    pub fn peer_connections_into(&self, i: usize) -> u64 {
        self.network.accepted(self.members[i].link)
    }

    /// etcd's runtime reconfiguration: MemberAdd (as a learner if
    /// `learner`), then a new process started with the initial cluster the
    /// answer implies and `--initial-cluster-state existing`. Returns the
    /// new member's index once it reports the cluster's leader and the
    /// leader lists it as started.
    pub async fn add_member(&mut self, name: &str, learner: bool) -> anyhow::Result<usize> {
        let joining = self.prepare_member()?;
        let mut options = MemberAddOptions::new();
        if learner {
            options = options.with_is_learner();
        }
        let mut client = self.client(self.leader().await?).await?;
        let added = retry_while(UNHEALTHY, AGREE_TIMEOUT, async || {
            Ok(client
                .member_add([joining.peer_url.clone()], Some(options.clone()))
                .await?)
        })
        .await
        .with_context(|| format!("MemberAdd {name} {}", joining.peer_url))?;
        let new_id = added
            .member()
            .context("MemberAdd answered without the new member")?
            .id();
        // etcdctl's recipe: every member's peer URLs under its name, the new
        // member (still nameless in the answer) under the name it will get.
        let initial_cluster = added
            .member_list()
            .iter()
            .flat_map(|m| {
                let member_name = if m.id() == new_id { name } else { m.name() };
                m.peer_urls()
                    .iter()
                    .map(move |u| format!("{member_name}={u}"))
            })
            .collect::<Vec<_>>()
            .join(",");
        let i = self.join(joining, name, &initial_cluster).await?;
        if self.members[i].id != new_id {
            bail!(
                "{name} answers Status as {:x}, MemberAdd gave it {new_id:x}",
                self.members[i].id
            );
        }
        // Started, as etcd counts it (its name published through raft):
        // until then a next MemberAdd may be refused for want of started
        // members, rightly, as on etcd.
        let deadline = tokio::time::Instant::now() + AGREE_TIMEOUT;
        loop {
            let mut client = self.client(self.leader().await?).await?;
            let listed = client.member_list().await?;
            if listed.members().iter().any(|m| m.id() == new_id && !m.name().is_empty()) {
                return Ok(i);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name} ({new_id:x}) never published its name: {:?}", listed.members());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ports and a proxy for a member about to be added; announce
    /// `peer_url`, then [`Cluster::join`].
    pub fn prepare_member(&self) -> anyhow::Result<Joining> {
        let peer_port = free_port()?;
        let (link, proxy_port) = self.network.add_link(peer_port)?;
        Ok(Joining {
            peer_url: self.peer_url_of(proxy_port),
            peer_port,
            link,
        })
    }

    /// Starts an announced member into the running cluster with
    /// `--initial-cluster-state existing`; returns its index once it reports
    /// the same leader as everyone else.
    pub async fn join(
        &mut self,
        joining: Joining,
        name: &str,
        initial_cluster: &str,
    ) -> anyhow::Result<usize> {
        let i = self.add_process(joining, name, initial_cluster, "existing")?;
        self.spawn(i)?;
        self.leader().await?;
        self.members[i].id = self.status(i).await?.0;
        Ok(i)
    }

    /// MemberRemove member `i`, asked of another member; then as
    /// [`Cluster::removed`].
    pub async fn remove_member(&mut self, i: usize) -> anyhow::Result<()> {
        let id = self.members[i].id;
        let asked = self
            .running()
            .into_iter()
            .find(|&j| j != i)
            .context("no other running member to ask for the removal")?;
        let mut client = self.client(asked).await?;
        retry_while(UNHEALTHY, AGREE_TIMEOUT, async || {
            Ok(client.member_remove(id).await?)
        })
        .await
        .with_context(|| format!("MemberRemove m{i} ({id:x}) asked of m{asked}"))?;
        self.removed(i).await
    }

    /// Takes note that member `i` was removed from the cluster (by
    /// [`Cluster::remove_member`] or by a tool): gives its process time to
    /// leave (etcd shuts a removed member down by itself), stops it if it
    /// stays, and waits until the rest agree on a leader.
    pub async fn removed(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        member.removed = true;
        if member.server.is_running()
            && member
                .server
                .exit_within(ELECTION_TIMEOUT * 5)
                .await?
                .is_none()
        {
            member.server.stop().await?;
        }
        self.network.set_pid(member.link, None);
        self.leader().await.map(drop)
    }

    /// A process of another cluster posing as a founding member of this
    /// one: `--initial-cluster-state new` with its own `token`, and an
    /// `--initial-cluster` naming every member of this cluster plus itself
    /// as `name`, on fresh ports with the cluster's other flags. Started and
    /// not waited for (it never has a quorum); dropping it kills it.
    pub fn spawn_stranger(&self, name: &str, token: &str) -> anyhow::Result<Server> {
        let peer_port = free_port()?;
        let peer_url = self.peer_url_of(peer_port);
        let mut initial_cluster: Vec<String> = self
            .members()
            .into_iter()
            .map(|i| {
                format!(
                    "{}={}",
                    self.members[i].name(),
                    self.members[i].server.peer_url()
                )
            })
            .collect();
        initial_cluster.push(format!("{name}={peer_url}"));
        let bootstrap = Bootstrap {
            name: name.to_owned(),
            advertise_peer_url: peer_url,
            initial_cluster: initial_cluster.join(","),
            state: "new",
            token: token.to_owned(),
        };
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let mut server = Server::new(self.flavor, peer_port, bootstrap, &args)?;
        if let Some(tls) = &self.tls.client {
            server.set_tls(tls.clone());
        }
        server.spawn()?;
        Ok(server)
    }

    /// The last `lines` lines of every member's log, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "----- {} ({}) -----\n{}",
                    m.server.label(),
                    m.endpoint(),
                    m.server.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn add_process(
        &mut self,
        joining: Joining,
        name: &str,
        initial_cluster: &str,
        state: &'static str,
    ) -> anyhow::Result<usize> {
        let bootstrap = Bootstrap {
            name: name.to_owned(),
            advertise_peer_url: joining.peer_url,
            initial_cluster: initial_cluster.to_owned(),
            state,
            token: self.token.clone(),
        };
        let args: Vec<&str> = self.extra_args.iter().map(String::as_str).collect();
        let mut server = Server::new(self.flavor, joining.peer_port, bootstrap, &args)?;
        if let Some(tls) = &self.tls.client {
            server.set_tls(tls.clone());
        }
        self.members.push(Member {
            server,
            link: joining.link,
            id: 0,
            removed: false,
        });
        Ok(self.members.len() - 1)
    }

    /// A peer URL on loopback `port`, https:// with peer TLS.
    fn peer_url_of(&self, port: u16) -> String {
        let url = loopback_url(port);
        if self.tls.peer { url.replacen("http://", "https://", 1) } else { url }
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        member.server.spawn()?;
        self.network.set_pid(member.link, member.server.pid());
        Ok(())
    }
}

/// Retries `attempt` every 50 ms until it succeeds; after `within`, fails
/// with its last error. For what a cluster does eventually: agree on a
/// leader, catch a member up.
pub async fn eventually<T>(
    within: Duration,
    attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    retry(within, |_| true, attempt).await
}

/// Retries `attempt` while it fails with `transient` in its message, for
/// up to `within`; any other error fails at once.
pub async fn retry_while<T>(
    transient: &str,
    within: Duration,
    attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    retry(
        within,
        |err| format!("{err:#}").contains(transient),
        attempt,
    )
    .await
}

async fn retry<T>(
    within: Duration,
    transient: impl Fn(&anyhow::Error) -> bool,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Err(err) if transient(&err) => {
                if Instant::now() > deadline {
                    return Err(err.context(format!("still so after {within:?}")));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcome => return outcome,
        }
    }
}

/// A client for one Status call: connects fast, gives up fast (over the
/// cluster's client TLS, if any).
async fn quick_client(endpoint: &str, tls: Option<&TlsOptions>) -> anyhow::Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(STATUS_TIMEOUT)
        .with_timeout(STATUS_TIMEOUT);
    if let Some(tls) = tls {
        options = options.with_tls(tls.clone());
    }
    Ok(Client::connect([endpoint], Some(options)).await?)
}

/// Runs `scenario` on a fresh `n`-member cluster of each flavor selected by
/// `RAFTKV_E2E_FLAVORS`, etcd first: each must pass on its own. On failure
/// the error carries the end of every member's log.
pub async fn for_each_flavor(
    n: usize,
    extra_args: &[&str],
    scenario: impl AsyncFn(&mut Cluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for_each_flavor_with(n, |_| extra_args.to_vec(), scenario).await
}

/// [`for_each_flavor`] with flags chosen per flavor: where raftkv always
/// does what etcd 3.4 leaves to a flag (`--pre-vote`), the etcd cluster
/// gets the flag, so that both run the same raft.
pub async fn for_each_flavor_with<'a>(
    n: usize,
    extra_args: impl Fn(Flavor) -> Vec<&'a str>,
    scenario: impl AsyncFn(&mut Cluster) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for flavor in selected_flavors()? {
        let mut cluster = Cluster::start(flavor, n, &extra_args(flavor))
            .await
            .with_context(|| format!("cannot start a {n}-member {} cluster", flavor.name()))?;
        // The cause comes first: CI keeps the start and the end of a long
        // failure, and member logs fill the middle.
        if let Err(err) = scenario(&mut cluster).await {
            bail!(
                "scenario failed against a {n}-member {} cluster: {err:#}\nend of each member's log:\n{}\n(the cause again: {err:#})",
                flavor.name(),
                cluster.log_tails(30)
            );
        }
    }
    Ok(())
}
