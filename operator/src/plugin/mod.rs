//! `kubectl raftkv`, the kubectl plugin (`kubectl-raftkv` on the PATH):
//! status, an on-demand backup, a restore into a new cluster,
//! defragmentation, leadership transfer, and etcdctl against a cluster,
//! all through the API server (kubectl's configuration and credentials,
//! port-forwards to the member pods), as `kubectl cnpg` does for
//! PostgreSQL.
//!
//! What the operator coordinates goes through the operator: a backup is a
//! `KvBackup`, a restore a new `KvCluster`, a defragmentation the
//! annotation `raftkv.io/defragment` (the operator runs it member by
//! member, the leader last). A leadership transfer is etcd's MoveLeader
//! sent to the leader, as `etcdctl move-leader` does, refused while the
//! operator has an operation or maintenance run in flight.

pub mod forward;
pub mod status;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use etcd_client::{Client, ConnectOptions};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Config, ResourceExt};

use crate::backup::crd::{BackupPhase, KvBackup, KvBackupSchedule, KvBackupSpec};
use crate::crd::{BackupRef, BootstrapSpec, KvCluster, KvClusterSpec, RestoreSpec};
use crate::maintenance::REQUEST_ANNOTATION;
use crate::resources::CLIENT_PORT;
use forward::Forward;

/// How often a wait looks again.
const POLL: Duration = Duration::from_secs(1);
/// While waiting, a line at least this often, so a long wait shows life.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A namespace of a Kubernetes cluster, reached with kubectl's configuration.
pub struct Plugin {
    client: kube::Client,
    pub namespace: String,
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Plugin {
    /// From `--kubeconfig` (or `$KUBECONFIG`, `~/.kube/config`, the
    /// in-cluster account), `--context` and `--namespace` (or the
    /// context's namespace).
    pub async fn connect(kubeconfig: Option<PathBuf>, context: Option<String>, namespace: Option<String>) -> anyhow::Result<Plugin> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options = KubeConfigOptions { context, cluster: None, user: None };
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(&path).with_context(|| format!("cannot read {}", path.display()))?;
                Config::from_custom_kubeconfig(file, &options).await?
            }
            None if options.context.is_some() => Config::from_kubeconfig(&options).await?,
            None => Config::infer().await.context("no Kubernetes configuration (kubeconfig or in-cluster)")?,
        };
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        Ok(Plugin { client: kube::Client::try_from(config)?, namespace })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn cluster(&self, name: &str) -> anyhow::Result<KvCluster> {
        match self.api::<KvCluster>().get(name).await {
            Ok(kvc) => Ok(kvc),
            Err(e) if not_found(&e) => bail!("kvcluster {}/{name} not found", self.namespace),
            Err(e) => Err(e).with_context(|| format!("cannot read kvcluster {}/{name}", self.namespace)),
        }
    }

    /// A port-forward to the client port of every running member pod.
    async fn forwards(&self, name: &str) -> anyhow::Result<Vec<Forward>> {
        let kvc = self.cluster(name).await?;
        ensure!(
            !crate::resources::Names::of(&kvc).client_tls,
            "kvcluster {}/{name} serves clients over TLS, which kubectl raftkv does not speak yet: use etcdctl with the cluster's CA and a client certificate through `kubectl port-forward`",
            self.namespace
        );
        let pods: Api<Pod> = self.api();
        // The members' pods only (not a backup Job's), running and not
        // on their way out.
        let selector = format!("app.kubernetes.io/name=raftkv,app.kubernetes.io/instance={name},app.kubernetes.io/component=member");
        let mut list = pods.list(&ListParams::default().labels(&selector)).await.context("cannot list the member pods")?.items;
        list.sort_by_key(|p| p.name_any());
        let mut forwards = Vec::new();
        let running = |p: &&Pod| p.metadata.deletion_timestamp.is_none() && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        for pod in list.iter().filter(running) {
            forwards.push(Forward::start(pods.clone(), &pod.name_any(), CLIENT_PORT as u16).await?);
        }
        Ok(forwards)
    }

    /// `status NAME`.
    pub async fn status(&self, name: &str) -> anyhow::Result<String> {
        let kvc = self.cluster(name).await?;
        let forwards = self.forwards(name).await?;
        let live = status::observe(&forwards).await;
        let backups = self.api::<KvBackup>().list(&ListParams::default()).await.context("cannot list KvBackups")?.items;
        let schedules = self.api::<KvBackupSchedule>().list(&ListParams::default()).await.context("cannot list KvBackupSchedules")?.items;
        Ok(status::render(&kvc, &live, &backups, &schedules, Timestamp::now()))
    }

    /// `backup NAME`: a KvBackup to the destination of the cluster's
    /// backup schedule (the one named, or its only one); waits for it
    /// unless `wait` is false.
    pub async fn backup(&self, name: &str, backup_name: Option<String>, schedule: Option<String>, wait: Option<Duration>) -> anyhow::Result<()> {
        self.cluster(name).await?;
        let schedules: Api<KvBackupSchedule> = self.api();
        let source = match schedule {
            Some(s) => {
                let schedule = match schedules.get(&s).await {
                    Ok(s) => s,
                    Err(e) if not_found(&e) => bail!("kvbackupschedule {}/{s} not found", self.namespace),
                    Err(e) => return Err(e.into()),
                };
                ensure!(
                    schedule.spec.cluster == name,
                    "kvbackupschedule {}/{s} backs up {}, not {name}",
                    self.namespace,
                    schedule.spec.cluster
                );
                schedule
            }
            None => {
                let mut mine: Vec<KvBackupSchedule> =
                    schedules.list(&ListParams::default()).await?.items.into_iter().filter(|s| s.spec.cluster == name).collect();
                match mine.len() {
                    1 => mine.remove(0),
                    0 => bail!(
                        "kvcluster {}/{name} has no KvBackupSchedule to take a destination from: create one (suspend: true takes no scheduled backups), or apply a KvBackup with its destination",
                        self.namespace
                    ),
                    _ => bail!(
                        "kvcluster {}/{name} has {} KvBackupSchedules ({}): name the destination's with --schedule",
                        self.namespace,
                        mine.len(),
                        mine.iter().map(|s| s.name_any()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
        };
        let backup_name = backup_name.unwrap_or_else(|| format!("{name}-{}", Timestamp::now().strftime("%Y%m%d%H%M%S")));
        let backup = KvBackup {
            metadata: ObjectMeta { name: Some(backup_name.clone()), namespace: Some(self.namespace.clone()), ..Default::default() },
            spec: KvBackupSpec { cluster: name.to_owned(), destination: source.spec.destination.clone(), reclaim_policy: Default::default() },
            status: None,
        };
        let backups: Api<KvBackup> = self.api();
        backups.create(&PostParams::default(), &backup).await.with_context(|| format!("cannot create kvbackup {}/{backup_name}", self.namespace))?;
        println!("kvbackup {}/{backup_name} created (the destination of kvbackupschedule {})", self.namespace, source.name_any());
        let Some(timeout) = wait else { return Ok(()) };
        let began = Instant::now();
        let mut said = None;
        let mut beat = Instant::now();
        loop {
            // A failed read (the API server restarting, say) is tried again:
            // the backup goes on regardless.
            let b = match backups.get(&backup_name).await {
                Ok(b) => b,
                Err(e) if began.elapsed() < timeout => {
                    println!("cannot read kvbackup {backup_name} ({e}); trying again");
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("kvbackup {}/{backup_name} (it goes on: kubectl get kvbackup {backup_name} -w)", self.namespace)),
            };
            let s = b.status.unwrap_or_default();
            if said != Some(s.phase) {
                match s.phase {
                    BackupPhase::Running => println!("Running: a snapshot of {} streams to the store", s.member.as_deref().unwrap_or("a member")),
                    BackupPhase::Pending => println!("Pending"),
                    _ => {}
                }
                said = Some(s.phase);
                beat = Instant::now();
            }
            match s.phase {
                BackupPhase::Completed => {
                    println!(
                        "Completed in {:.0} s: {} ({} at revision {})",
                        began.elapsed().as_secs_f64(),
                        s.location.unwrap_or_default(),
                        s.size.map(status::bytes).unwrap_or_default(),
                        s.revision.unwrap_or_default()
                    );
                    return Ok(());
                }
                BackupPhase::Failed => bail!("kvbackup {}/{backup_name} failed: {}", self.namespace, s.error.unwrap_or_default()),
                _ => {}
            }
            ensure!(
                began.elapsed() < timeout,
                "kvbackup {}/{backup_name} is still {:?} after {} s (it goes on: kubectl get kvbackup {backup_name} -w)",
                self.namespace,
                s.phase,
                timeout.as_secs()
            );
            if beat.elapsed() >= HEARTBEAT {
                println!("still {:?} ({:.0} s)", s.phase, began.elapsed().as_secs_f64());
                beat = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `restore BACKUP --to NEW`: a new KvCluster bootstrapped from a
    /// Completed KvBackup, shaped as the cluster it was taken from (when
    /// that still exists) unless `replicas` or `version` say otherwise.
    pub async fn restore(&self, backup: &str, to: &str, replicas: Option<i32>, version: Option<String>, wait: Option<Duration>) -> anyhow::Result<()> {
        let b = match self.api::<KvBackup>().get(backup).await {
            Ok(b) => b,
            Err(e) if not_found(&e) => bail!("kvbackup {}/{backup} not found", self.namespace),
            Err(e) => return Err(e.into()),
        };
        let phase = b.status.as_ref().map(|s| s.phase).unwrap_or_default();
        ensure!(phase == BackupPhase::Completed, "kvbackup {}/{backup} is {phase:?}: only a Completed backup restores", self.namespace);
        let clusters: Api<KvCluster> = self.api();
        let source = match clusters.get(&b.spec.cluster).await {
            Ok(kvc) => Some(kvc.spec),
            Err(e) if not_found(&e) => None,
            Err(e) => return Err(e.into()),
        };
        // Secrets made for the source cluster name its members, not the
        // new cluster's; an issuer makes new Certificates for the new one.
        if let Some(tls) = source.as_ref().and_then(|s| s.tls.as_ref())
            && tls.cert_manager.is_none()
        {
            bail!(
                "kvcluster {}/{} takes its TLS certificates from Secrets, which name its own members: create the restored KvCluster by hand with Secrets for {to} (spec.bootstrap.restore.backup: {backup})",
                self.namespace,
                b.spec.cluster
            );
        }
        let mut spec = match (source, &version) {
            (Some(spec), _) => spec,
            (None, Some(v)) => KvClusterSpec::of_version(v),
            (None, None) => bail!("kvcluster {}/{} (the backup's source) is gone: say the version to run with --version", self.namespace, b.spec.cluster),
        };
        if let Some(v) = version {
            if spec.version != v {
                spec.image = None;
            }
            spec.version = v;
        }
        if let Some(r) = replicas {
            spec.replicas = r;
        }
        spec.paused = false;
        spec.bootstrap = Some(BootstrapSpec { restore: Some(RestoreSpec { backup: Some(BackupRef { name: backup.to_owned() }), source: None }) });
        let replicas = spec.replicas;
        let kvc = KvCluster {
            metadata: ObjectMeta { name: Some(to.to_owned()), namespace: Some(self.namespace.clone()), ..Default::default() },
            spec,
            status: None,
        };
        match clusters.create(&PostParams::default(), &kvc).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => bail!("kvcluster {}/{to} already exists: a restore makes a new cluster", self.namespace),
            Err(e) => return Err(e).with_context(|| format!("cannot create kvcluster {}/{to}", self.namespace)),
        }
        let revision = b.status.as_ref().and_then(|s| s.revision).unwrap_or_default();
        println!("kvcluster {}/{to} created from kvbackup {backup} (revision {revision}), {replicas} members", self.namespace);
        let Some(timeout) = wait else { return Ok(()) };
        self.wait_ready(to, replicas, timeout).await
    }

    /// Waits until `replicas` members are ready and the cluster Running,
    /// saying each phase and each new ready count.
    async fn wait_ready(&self, name: &str, replicas: i32, timeout: Duration) -> anyhow::Result<()> {
        let began = Instant::now();
        let mut said = None;
        let mut beat = Instant::now();
        loop {
            let kvc = self.cluster(name).await?;
            let s = kvc.status.unwrap_or_default();
            let now = (format!("{:?}", s.phase), s.ready_replicas);
            if said.as_ref() != Some(&now) {
                println!("{}: {} of {replicas} members ready", now.0, now.1);
                said = Some(now);
                beat = Instant::now();
            }
            // Ready, and done: a new cluster grows from its founding
            // member and may roll its members once before it is Running.
            if s.ready_replicas >= replicas && s.phase == crate::crd::Phase::Running && s.operation.is_none() {
                println!("ready in {:.0} s", began.elapsed().as_secs_f64());
                return Ok(());
            }
            ensure!(began.elapsed() < timeout, "kvcluster {}/{name} has {} of {replicas} members ready after {} s", self.namespace, s.ready_replicas, timeout.as_secs());
            if beat.elapsed() >= HEARTBEAT {
                println!("waiting ({:.0} s)", began.elapsed().as_secs_f64());
                beat = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `defrag NAME`: asks the operator for a defragmentation run and
    /// follows it member by member.
    pub async fn defrag(&self, name: &str, wait: Option<Duration>) -> anyhow::Result<()> {
        let kvc = self.cluster(name).await?;
        ensure!(!kvc.spec.paused, "kvcluster {}/{name} is paused (spec.paused): the operator runs nothing until it is resumed", self.namespace);
        let token = Timestamp::now().to_string();
        let patch = serde_json::json!({"metadata": {"annotations": {REQUEST_ANNOTATION: token}}});
        self.api::<KvCluster>().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.context("cannot annotate the KvCluster")?;
        println!("defragmentation of {}/{name} requested ({REQUEST_ANNOTATION}={token})", self.namespace);
        let Some(timeout) = wait else { return Ok(()) };
        let began = Instant::now();
        let mut started = false;
        let mut done: Vec<String> = Vec::new();
        let mut beat = Instant::now();
        loop {
            let kvc = self.cluster(name).await?;
            let asked = kvc.annotations().get(REQUEST_ANNOTATION).cloned().unwrap_or_default();
            let m = kvc.status.and_then(|s| s.maintenance).unwrap_or_default();
            let ours = m.last_request.as_deref() == Some(token.as_str());
            if !ours && asked != token {
                bail!("another request ({REQUEST_ANNOTATION}={asked}) replaced this one before the operator started it: that one will run");
            }
            if ours && !started {
                println!("started: one member at a time, followers first, the leader last");
                started = true;
            }
            // Our run, not one started after it (on a schedule, say).
            let our_run = m.run.as_ref().filter(|r| ours && r.reason == crate::crd::MaintenanceReason::Requested);
            if let Some(run) = our_run {
                for member in &run.defragmented {
                    if !done.contains(member) {
                        println!("{member} defragmented");
                        done.push(member.clone());
                        beat = Instant::now();
                    }
                }
            }
            if ours && our_run.is_none() {
                println!("done in {:.0} s: every healthy member defragmented, the leader last", began.elapsed().as_secs_f64());
                return Ok(());
            }
            ensure!(
                began.elapsed() < timeout,
                "the defragmentation of {}/{name} has not {} after {} s; the request stands (see kubectl describe kvc {name})",
                self.namespace,
                if started { "finished" } else { "started (it waits for every voter to be healthy and no membership change)" },
                timeout.as_secs()
            );
            if beat.elapsed() >= HEARTBEAT {
                println!("{} ({:.0} s)", if started { "defragmenting" } else { "waiting for the operator to start it" }, began.elapsed().as_secs_f64());
                beat = Instant::now();
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `move-leader NAME MEMBER`.
    pub async fn move_leader(&self, name: &str, member: &str) -> anyhow::Result<()> {
        let kvc = self.cluster(name).await?;
        let st = kvc.status.clone().unwrap_or_default();
        if let Some(op) = &st.operation {
            bail!("the operator is in the middle of a {:?} of {name}-{} (step {:?}): leadership is left to it until it is done", op.kind, op.ordinal, op.step);
        }
        if let Some(run) = st.maintenance.as_ref().and_then(|m| m.run.as_ref()) {
            bail!("the operator is running a {:?} maintenance run on {name}: leadership is left to it until it is done", run.reason);
        }
        let forwards = self.forwards(name).await?;
        let live = status::observe(&forwards).await;
        if let Some(e) = &live.error
            && live.members.is_empty()
        {
            bail!("no member of {}/{name} answered: {e}", self.namespace);
        }
        let target = live.members.iter().find(|m| m.name == member).with_context(|| {
            format!("{member} is not a member of {name} (members: {})", live.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "))
        })?;
        ensure!(!target.is_learner, "{member} is a learner: only a voting member can lead");
        if let Err(e) = &target.answer {
            bail!("{member} does not answer ({e}): it cannot take leadership now");
        }
        let leader = live.leader().context("the cluster has no leader")?;
        if leader == target.id {
            println!("{member} is already the leader");
            return Ok(());
        }
        let from = live.members.iter().find(|m| m.id == leader).context("the leader is not in the member list")?;
        let endpoint = &forwards.iter().find(|f| f.pod == from.name).with_context(|| format!("no running pod of the leader {}", from.name))?.endpoint;
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(15));
        let mut client = Client::connect([endpoint.as_str()], Some(options)).await.with_context(|| format!("cannot reach the leader {}", from.name))?;
        client.move_leader(target.id).await.with_context(|| format!("MoveLeader from {} to {member}", from.name))?;
        println!("leadership moved from {} to {member}", from.name);
        Ok(())
    }

    /// `etcdctl NAME -- ARGS`: etcdctl with `--endpoints` set to a
    /// port-forward of every running member; its exit code.
    pub async fn etcdctl(&self, name: &str, etcdctl: &str, args: &[String]) -> anyhow::Result<i32> {
        ensure!(
            !args.iter().any(|a| a == "--endpoints" || a.starts_with("--endpoints=")),
            "the plugin sets --endpoints (a port-forward to each member pod)"
        );
        self.cluster(name).await?;
        let forwards = self.forwards(name).await?;
        ensure!(!forwards.is_empty(), "kvcluster {}/{name} has no running member pods", self.namespace);
        let endpoints = forwards.iter().map(|f| f.endpoint.as_str()).collect::<Vec<_>>().join(",");
        let status = tokio::process::Command::new(etcdctl)
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .env("ETCDCTL_API", "3")
            // etcdctl refuses an environment variable that repeats a flag.
            .env_remove("ETCDCTL_ENDPOINTS")
            .status()
            .await
            .with_context(|| format!("cannot run {etcdctl}: install etcdctl or name it with --etcdctl"))?;
        Ok(status.code().unwrap_or(1))
    }
}
