//! The lifecycles a user drives with kubectl, against real raftkv processes:
//! a control plane on raftkv (`tests/k8s`), the test node agent playing the
//! kubelet on three Nodes (`tests/k8s/nodeagent`), the chart's operator
//! running as a Pod, and writers putting through a NodePort Service the
//! whole time; at the end every acknowledged put is read back.
//! Root only (the node agent's network namespaces and mounts).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use etcd_client::{Client, ConnectOptions};
use raftkv_tests::acked::{self, Ack};
use raftkv_tests::binaries::{self, workspace_binary};
use raftkv_tests::k8s::{ControlPlane, eventually, helm_release};
use raftkv_tests::nodes::NodeAgent;
use raftkv_tests::{Flavor, Server};

/// One control plane and node agent at a time (node ports are the host's).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const OPS: &str = "raftkv-system";
const RELEASE: &str = "rk";
const NS: &str = "prod";
const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];

const KVCLUSTER: &str = r#"
apiVersion: raftkv.io/v1alpha1
kind: KvCluster
metadata: {name: demo, namespace: prod}
spec:
  replicas: 3
  version: 0.1.0
  storage: {size: 1Gi}
"#;

/// The members' client port on every Node's address (127.0.0.1 here).
const NODE_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: demo-nodeport, namespace: prod}
spec:
  type: NodePort
  selector: {app.kubernetes.io/instance: demo, app.kubernetes.io/name: raftkv}
  ports: [{name: client, port: 2379, targetPort: 2379}]
"#;

/// A member pod: (name, uid, IP, ready, restarts).
type PodRow = (String, String, String, bool, u32);

/// A control plane on raftkv, the node agent, the operator as a Pod.
struct Env {
    agent: NodeAgent,
    cp: ControlPlane,
    _store: Server,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        Env::start_with(&[]).await
    }

    /// With more images than raftkv's and the operator's.
    async fn start_with(more: &[(&str, Vec<std::path::PathBuf>)]) -> anyhow::Result<Env> {
        let store = Server::start(Flavor::Raftkv).await?;
        let cp = ControlPlane::start(&[store.endpoint()]).await?;
        let mut images = vec![
            ("raftkv/raftkv", vec![binaries::raftkv()?, binaries::raftkvctl()?]),
            ("raftkv/raftkv-operator", vec![workspace_binary("raftkv-operator")?]),
        ];
        images.extend(more.iter().cloned());
        let agent = NodeAgent::start(&cp, &NODES, &images).await?;
        helm_release(&cp, OPS, RELEASE, "install", serde_json::json!({}))?;
        cp.kubectl(&["rollout", "status", "-n", OPS, "deployment/rk-raftkv-operator", "--timeout=120s"])
            .context("the operator's Deployment")?;
        Ok(Env { agent, cp, _store: store })
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cp.kubectl(args)
    }

    /// (name, uid, IP, ready, restarts) of the members' pods of "demo".
    fn members(&self) -> anyhow::Result<Vec<PodRow>> {
        self.members_of("demo")
    }

    /// (name, uid, IP, ready, restarts) of the members' pods of `cluster`.
    fn members_of(&self, cluster: &str) -> anyhow::Result<Vec<PodRow>> {
        let selector = format!("app.kubernetes.io/instance={cluster}");
        let out = self.kubectl(&[
            "get", "pods", "-n", NS, "-l", &selector, "-o",
            r#"jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.status.podIP} {.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[0].restartCount}{"\n"}{end}"#,
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 5).then(|| (f[0].to_owned(), f[1].to_owned(), f[2].to_owned(), f[3] == "True", f[4].parse().unwrap_or(0)))
            })
            .collect())
    }

    /// etcdctl against every member's pod IP of "demo", run in the pod
    /// network.
    fn etcdctl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.etcdctl_of("demo", args)
    }

    fn etcdctl_of(&self, cluster: &str, args: &[&str]) -> anyhow::Result<String> {
        let endpoints = self.members_of(cluster)?.iter().map(|m| format!("http://{}:2379", m.2)).collect::<Vec<_>>().join(",");
        let mut all = vec!["--endpoints", endpoints.as_str(), "--command-timeout=10s"];
        all.extend_from_slice(args);
        let out = self.agent.in_pod_network(binaries::ETCDCTL, &all)?;
        ensure!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until `n` member pods are Ready, the KvCluster counts `n` ready
    /// replicas and the member list has `n` started voters named after
    /// the pods; returns the member list (`id, status, name, ...` lines).
    async fn settled(&self, n: usize, timeout: Duration) -> anyhow::Result<String> {
        self.settled_of("demo", n, timeout).await
    }

    async fn settled_of(&self, cluster: &str, n: usize, timeout: Duration) -> anyhow::Result<String> {
        eventually(&format!("{n} ready members of {cluster}"), timeout, || {
            let pods = self.members_of(cluster)?;
            if pods.len() != n || !pods.iter().all(|p| p.3) {
                return Ok(None);
            }
            let ready = self.kubectl(&["get", "kvc", "-n", NS, cluster, "-o", "jsonpath={.status.readyReplicas}"])?;
            if ready.trim() != n.to_string() {
                return Ok(None);
            }
            let list = self.etcdctl_of(cluster, &["member", "list"])?;
            let mut names: Vec<&str> = list.lines().filter_map(|l| l.split(", ").nth(2)).collect();
            names.sort();
            let mut expected: Vec<String> = pods.iter().map(|p| p.0.clone()).collect();
            expected.sort();
            let voters = list.lines().all(|l| l.contains(", started, ") && l.ends_with(", false"));
            Ok((names == expected && voters).then_some(list))
        })
        .await
    }

    fn diagnose(&self) {
        eprintln!("node agent log:\n{}", self.agent.log_tail(60));
        eprintln!("pods:\n{}", self.kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default());
        eprintln!("kvc:\n{}", self.kubectl(&["get", "kvc", "-n", NS, "demo", "-o", "yaml"]).unwrap_or_default());
        eprintln!("events:\n{}", self.kubectl(&["get", "events", "-n", NS, "--sort-by=.lastTimestamp"]).unwrap_or_default());
    }
}

/// Writers through the NodePort Service, tolerating failures (members come
/// and go), recording what was acknowledged.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Ack>>>>,
}

async fn client(endpoint: &str) -> anyhow::Result<Client> {
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(Duration::from_secs(5));
    Ok(Client::connect([endpoint], Some(options)).await?)
}

impl Writers {
    async fn start(endpoint: &str, n: usize) -> anyhow::Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();
        for w in 0..n {
            let client = client(endpoint).await?;
            tasks.push(tokio::spawn(acked::put_until(client, format!("writer{w}"), stop.clone(), fault.clone())));
        }
        Ok(Writers { stop, tasks })
    }

    async fn finish(self) -> anyhow::Result<Vec<Ack>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await??);
        }
        Ok(all)
    }
}

/// Create, scale 3 -> 5 -> 3 with `kubectl scale`, a member killed (-9), a
/// member's claim and pod deleted (replaced on a fresh volume), a Node
/// drained under the PodDisruptionBudget: writers the whole time, and
/// every acknowledged put present at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kvcluster_through_its_lifecycles_on_real_pods_loses_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await?;
    let outcome = lifecycles(&env).await;
    if outcome.is_err() {
        env.diagnose();
    }
    outcome
}

async fn lifecycles(env: &Env) -> anyhow::Result<()> {
    let step = |name: &str, began: Instant| eprintln!("lifecycle: {name} in {:.1} s", began.elapsed().as_secs_f64());
    let began = Instant::now();
    env.kubectl(&["create", "namespace", NS])?;
    env.cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
    env.settled(3, Duration::from_secs(180)).await.context("the new cluster")?;
    step("create 3 members", began);

    env.cp.kubectl_stdin(&["apply", "-f", "-"], NODE_PORT)?;
    let node_port = env.kubectl(&["get", "service", "-n", NS, "demo-nodeport", "-o", "jsonpath={.spec.ports[0].nodePort}"])?;
    let endpoint = format!("127.0.0.1:{}", node_port.trim());
    let writers = Writers::start(&endpoint, 2).await?;

    let began = Instant::now();
    env.kubectl(&["scale", "kvc", "demo", "-n", NS, "--replicas=5"])?;
    env.settled(5, Duration::from_secs(300)).await.context("scaled to 5")?;
    step("scale to 5", began);

    let began = Instant::now();
    env.kubectl(&["scale", "kvc", "demo", "-n", NS, "--replicas=3"])?;
    env.settled(3, Duration::from_secs(300)).await.context("scaled back to 3")?;
    step("scale to 3", began);

    let began = Instant::now();
    let victim = env.members()?.into_iter().find(|m| m.0 == "demo-1").context("no pod demo-1")?;
    env.agent.kill_container(&victim.1, "raftkv")?;
    eventually("demo-1 restarted after kill -9", Duration::from_secs(120), || {
        Ok(env.members()?.into_iter().any(|m| m.0 == "demo-1" && m.1 == victim.1 && m.4 > victim.4 && m.3).then_some(()))
    })
    .await?;
    env.settled(3, Duration::from_secs(120)).await.context("after kill -9 of demo-1")?;
    step("member killed -9 and restarted", began);

    let began = Instant::now();
    let before = env.etcdctl(&["member", "list"])?;
    let old_id = before.lines().find(|l| l.split(", ").nth(2) == Some("demo-2")).and_then(|l| l.split(", ").next()).context("demo-2 in the member list")?.to_owned();
    env.kubectl(&["delete", "pvc", "-n", NS, "data-demo-2", "--wait=false"])?;
    env.kubectl(&["delete", "pod", "-n", NS, "demo-2"])?;
    let list = eventually("demo-2 replaced with a new member id", Duration::from_secs(300), || {
        let Ok(list) = env.etcdctl(&["member", "list"]) else { return Ok(None) };
        let new_id = list.lines().find(|l| l.split(", ").nth(2) == Some("demo-2")).and_then(|l| l.split(", ").next()).map(str::to_owned);
        Ok(new_id.filter(|id| *id != old_id).map(|_| list))
    })
    .await?;
    env.settled(3, Duration::from_secs(180)).await.with_context(|| format!("after demo-2's volume was deleted ({list})"))?;
    step("claim and pod deleted, member replaced", began);

    let began = Instant::now();
    let node = env.kubectl(&["get", "pod", "-n", NS, "demo-0", "-o", "jsonpath={.spec.nodeName}"])?;
    env.kubectl(&["drain", node.trim(), "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s"])
        .context("kubectl drain")?;
    env.settled(3, Duration::from_secs(180)).await.context("after the drain")?;
    env.kubectl(&["uncordon", node.trim()])?;
    step("node drained", began);

    let acks = writers.finish().await?;
    ensure!(acks.len() > 100, "only {} puts were acknowledged during the lifecycles", acks.len());
    let mut reader = client(&endpoint).await?;
    let (_, store) = acked::whole_store(&mut reader, false).await?;
    acked::all_present(&store, &acks)?;
    eprintln!("lifecycle: {} acknowledged puts, all present", acks.len());

    // reclaimPolicy Retain (the default): the claims and their volumes
    // outlive the KvCluster.
    let claims = env.kubectl(&["get", "pvc", "-n", NS, "-o", "name"])?;
    env.kubectl(&["delete", "kvc", "demo", "-n", NS, "--timeout=120s"])?;
    eventually("the members' pods gone", Duration::from_secs(120), || Ok(env.members()?.is_empty().then_some(()))).await?;
    let kept = env.kubectl(&["get", "pvc", "-n", NS, "-o", "name"])?;
    ensure!(!claims.trim().is_empty() && kept == claims, "claims before the deletion: {claims}; after: {kept}");
    let phases = env.kubectl(&["get", "pv", "-o", "jsonpath={.items[*].status.phase}"])?;
    ensure!(phases.split_whitespace().all(|p| p == "Bound"), "volumes after the deletion: {phases}");
    Ok(())
}

const UPGRADABLE: &str = r#"
apiVersion: raftkv.io/v1alpha1
kind: KvCluster
metadata: {name: demo, namespace: prod}
spec:
  replicas: 3
  version: 0.1.0
  storage: {size: 1Gi, reclaimPolicy: Delete}
  server: {quotaBackendBytes: 16Mi}
"#;

/// An upgrade (`spec.version`) rolls the members one pod at a time, the
/// leader last, keeping their data and ids; a NOSPACE alarm is remediated
/// by the operator (writes accepted again); deleting the KvCluster with
/// `reclaimPolicy: Delete` removes its claims and volumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_rolls_leader_last_nospace_is_remediated_and_delete_reclaims() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let env = Env::start().await?;
    let outcome = upgrade_nospace_delete(&env).await;
    if outcome.is_err() {
        env.diagnose();
    }
    outcome
}

async fn upgrade_nospace_delete(env: &Env) -> anyhow::Result<()> {
    env.kubectl(&["create", "namespace", NS])?;
    env.cp.kubectl_stdin(&["apply", "-f", "-"], UPGRADABLE)?;
    env.settled(3, Duration::from_secs(180)).await.context("the new cluster")?;
    env.cp.kubectl_stdin(&["apply", "-f", "-"], NODE_PORT)?;
    let node_port = env.kubectl(&["get", "service", "-n", NS, "demo-nodeport", "-o", "jsonpath={.spec.ports[0].nodePort}"])?;
    let endpoint = format!("127.0.0.1:{}", node_port.trim());

    // The upgrade, writers running.
    let began = Instant::now();
    let ids_before = member_ids(&env.etcdctl(&["member", "list"])?);
    let leader = eventually("the KvCluster's leader", Duration::from_secs(30), || {
        let l = env.kubectl(&["get", "kvc", "-n", NS, "demo", "-o", "jsonpath={.status.leader}"])?;
        Ok((!l.trim().is_empty()).then(|| l.trim().to_owned()))
    })
    .await?;
    let uids: std::collections::BTreeMap<String, String> = env.members()?.into_iter().map(|m| (m.0, m.1)).collect();
    let writers = Writers::start(&endpoint, 2).await?;
    env.kubectl(&["patch", "kvc", "demo", "-n", NS, "--type=merge", "-p", r#"{"spec":{"version":"0.2.0"}}"#])?;
    let mut order: Vec<String> = Vec::new();
    let mut most_down = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        ensure!(Instant::now() < deadline, "the upgrade did not finish in 300 s (restarted so far: {order:?})");
        let pods = env.members()?;
        let down = 3 - pods.iter().filter(|p| p.3).count().min(3);
        most_down = most_down.max(down);
        for p in &pods {
            if uids.get(&p.0) != Some(&p.1) && !order.contains(&p.0) {
                order.push(p.0.clone());
            }
        }
        let images = env.kubectl(&["get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=demo", "-o", "jsonpath={.items[*].spec.containers[0].image}"])?;
        if order.len() == 3 && images.split_whitespace().all(|i| i.ends_with(":0.2.0")) && pods.len() == 3 && pods.iter().all(|p| p.3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.settled(3, Duration::from_secs(120)).await.context("after the upgrade")?;
    ensure!(most_down <= 1, "{most_down} members were down at once during the upgrade");
    ensure!(order.last() == Some(&leader), "pods restarted in the order {order:?}; the leader was {leader}");
    let ids_after = member_ids(&env.etcdctl(&["member", "list"])?);
    ensure!(ids_after == ids_before, "member ids changed in the upgrade: {ids_before:?} -> {ids_after:?}");
    let acks = writers.finish().await?;
    let mut reader = client(&endpoint).await?;
    let (_, store) = acked::whole_store(&mut reader, false).await?;
    acked::all_present(&store, &acks)?;
    eprintln!("lifecycle: upgrade, order {order:?}, in {:.1} s, {} acknowledged puts all present", began.elapsed().as_secs_f64(), acks.len());

    // NOSPACE: overwrites of eight keys until the quota refuses them;
    // writers running through the alarm and its remediation.
    let began = Instant::now();
    let writers = Writers::start(&endpoint, 2).await?;
    let mut c = client(&endpoint).await?;
    let mut refused = None;
    for i in 0..4096u64 {
        if let Err(e) = c.put(format!("k/{}", i % 8), raftkv_tests::noise(i, 64 << 10), None).await {
            let e = e.to_string();
            if e.contains("database space exceeded") {
                refused = Some(e);
                break;
            }
        }
    }
    refused.context("the quota was never reached")?;
    let alarms = env.etcdctl(&["alarm", "list"])?;
    ensure!(alarms.contains("NOSPACE"), "no NOSPACE alarm: {alarms}");
    eventually("writes accepted again after the operator's remediation", Duration::from_secs(180), || Ok(env.etcdctl(&["put", "after", "nospace"]).ok().map(|_| ())))
        .await?;
    let alarms = env.etcdctl(&["alarm", "list"])?;
    ensure!(alarms.trim().is_empty(), "alarms after the remediation: {alarms}");
    let acks = writers.finish().await?;
    let (_, store) = acked::whole_store(&mut reader, false).await?;
    acked::all_present(&store, &acks)?;
    eprintln!("lifecycle: NOSPACE remediated in {:.1} s, {} acknowledged puts all present", began.elapsed().as_secs_f64(), acks.len());

    // Deletion with reclaimPolicy: Delete.
    let began = Instant::now();
    env.kubectl(&["delete", "kvc", "demo", "-n", NS, "--timeout=120s"])?;
    eventually("the claims and volumes removed", Duration::from_secs(120), || {
        let claims = env.kubectl(&["get", "pvc", "-n", NS, "-o", "name"])?;
        let volumes = env.kubectl(&["get", "pv", "-o", "name"])?;
        Ok((claims.trim().is_empty() && volumes.trim().is_empty()).then_some(()))
    })
    .await?;
    eprintln!("lifecycle: deleted with its volumes in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}

/// The member ids of `etcdctl member list`, sorted.
fn member_ids(list: &str) -> Vec<String> {
    let mut ids: Vec<String> = list.lines().filter_map(|l| l.split(", ").next()).map(str::to_owned).collect();
    ids.sort();
    ids
}

/// versitygw as a Pod (its data in a host directory the test reads), behind
/// a Service the backup Jobs reach by name.
const OBJECT_STORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: storage}
---
apiVersion: v1
kind: Pod
metadata: {name: s3, namespace: storage, labels: {app: s3}}
spec:
  containers:
  - name: versitygw
    image: versity/versitygw:v1
    args: ["--port", ":7070", "--access", "backup-access", "--secret", "backup-secret-key", "posix", "/data"]
    ports: [{name: s3, containerPort: 7070}]
    readinessProbe: {tcpSocket: {port: s3}, periodSeconds: 1}
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    hostPath: {path: ROOT, type: Directory}
---
apiVersion: v1
kind: Service
metadata: {name: s3, namespace: storage}
spec:
  selector: {app: s3}
  ports: [{name: s3, port: 7070, targetPort: 7070}]
"#;

/// The destination `kubectl raftkv backup` takes: a suspended schedule's.
const BACKUP_SCHEDULE: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: backup-s3, namespace: prod}
stringData: {ACCESS_KEY_ID: backup-access, SECRET_ACCESS_KEY: backup-secret-key}
---
apiVersion: raftkv.io/v1alpha1
kind: KvBackupSchedule
metadata: {name: nightly, namespace: prod}
spec:
  cluster: demo
  schedule: "0 3 * * *"
  suspend: true
  destination:
    s3:
      bucket: raftkv-backups
      prefix: prod/
      endpoint: http://s3.storage.svc:7070
      forcePathStyle: true
      credentials:
        accessKeyId: {name: backup-s3, key: ACCESS_KEY_ID}
        secretAccessKey: {name: backup-s3, key: SECRET_ACCESS_KEY}
"#;

/// `kubectl raftkv`, the plugin, on real pods: etcdctl through
/// port-forwards, status, a leadership transfer, a defragmentation the
/// operator runs on request; then a backup to an S3-compatible server
/// running as a Pod (the operator's Job, raftkvctl in the member image) and
/// a restore into a new KvCluster (the founding member's init container):
/// the new cluster holds every key at its revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_raftkv_backs_up_and_restores_into_a_new_kvcluster_through_s3() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let store_dir = tempfile::tempdir()?;
    std::fs::create_dir_all(store_dir.path().join("raftkv-backups"))?;
    let env = Env::start_with(&[("versity/versitygw", vec![raftkv_tests::binaries::go_bin().join("versitygw")])]).await?;
    let outcome = plugin_backup_restore(&env, store_dir.path()).await;
    if outcome.is_err() {
        env.diagnose();
    }
    outcome
}

/// `kubectl raftkv ARGS -n prod`: its stdout, or an error with both
/// streams.
fn plugin(env: &Env, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["raftkv", "-n", NS];
    all.extend_from_slice(args);
    let out = env.cp.kubectl_output(&all, None)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "kubectl {} failed: {}{}", all.join(" "), stdout, String::from_utf8_lossy(&out.stderr));
    eprintln!("kubectl {}:\n{stdout}", all.join(" "));
    Ok(stdout)
}

/// The value of a `Label:   value` line of `kubectl raftkv status`.
fn status_field(status: &str, label: &str) -> anyhow::Result<String> {
    let prefix = format!("{label}:");
    let line = status.lines().find(|l| l.starts_with(&prefix)).with_context(|| format!("no {label} in\n{status}"))?;
    Ok(line[prefix.len()..].trim().to_owned())
}

async fn plugin_backup_restore(env: &Env, store: &std::path::Path) -> anyhow::Result<()> {
    let began = Instant::now();
    env.kubectl(&["create", "namespace", NS])?;
    env.cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
    env.cp.kubectl_stdin(&["apply", "-f", "-"], &OBJECT_STORE.replace("ROOT", &store.display().to_string()))?;
    env.settled(3, Duration::from_secs(180)).await.context("the cluster to back up")?;

    // etcdctl through the API server's port-forwards.
    for i in 0..50 {
        plugin(env, &["etcdctl", "demo", "--", "put", &format!("app/{i:04}"), &format!("value {i}")])?;
    }
    let got = plugin(env, &["etcdctl", "demo", "--", "get", "app/0007"])?;
    ensure!(got == "app/0007\nvalue 7\n", "etcdctl get through the plugin printed {got:?}");
    let revision_before = plugin(env, &["etcdctl", "demo", "--", "get", "app/0049", "-w", "json"])?;
    let failing = env.cp.kubectl_output(&["raftkv", "-n", NS, "etcdctl", "demo", "--", "get"], None)?;
    ensure!(!failing.status.success(), "etcdctl's failure (get without a key) is not passed on");
    eprintln!("lifecycle: kubectl raftkv etcdctl in {:.1} s", began.elapsed().as_secs_f64());

    // Status: every member answers, one leader, no lag once idle.
    let status = eventually("every member at the leader's index", Duration::from_secs(30), || {
        let status = plugin(env, &["status", "demo"])?;
        let rows: Vec<Vec<&str>> = status.lines().filter(|l| l.starts_with("demo-")).map(|l| l.split_whitespace().collect()).collect();
        let settled = rows.len() == 3 && rows.iter().all(|r| r.len() == 13 && r[3] == "ok" && r[12] == "0");
        Ok(settled.then_some(status))
    })
    .await?;
    ensure!(status_field(&status, "Cluster")? == "prod/demo", "{status}");
    let revision: i64 = status_field(&status, "Revision")?.parse()?;
    ensure!(revision >= 51, "status says revision {revision} after 50 puts\n{status}");
    ensure!(status_field(&status, "Alarms")? == "none", "{status}");
    ensure!(status_field(&status, "Operation")? == "none", "{status}");
    let leader = status_field(&status, "Leader")?;
    let roles: Vec<&str> = status.lines().filter(|l| l.starts_with("demo-")).map(|l| l.split_whitespace().nth(2).unwrap_or("")).collect();
    ensure!(roles.iter().filter(|r| **r == "leader").count() == 1 && roles.iter().filter(|r| **r == "follower").count() == 2, "roles {roles:?}\n{status}");
    ensure!(status.lines().any(|l| l.starts_with(&format!("{leader} ")) && l.contains(" leader ")), "the Leader line and the table disagree\n{status}");

    // Writers through a NodePort Service from here to the backup.
    env.cp.kubectl_stdin(&["apply", "-f", "-"], NODE_PORT)?;
    let node_port = env.kubectl(&["get", "service", "-n", NS, "demo-nodeport", "-o", "jsonpath={.spec.ports[0].nodePort}"])?;
    let endpoint = format!("127.0.0.1:{}", node_port.trim());
    let writers = Writers::start(&endpoint, 2).await?;

    // A leadership transfer; an unknown member is refused.
    let target = ["demo-0", "demo-1", "demo-2"].into_iter().find(|m| *m != leader).context("no follower")?;
    let moved = plugin(env, &["move-leader", "demo", target])?;
    ensure!(moved.contains(&format!("to {target}")), "{moved}");
    let now = status_field(&plugin(env, &["status", "demo"])?, "Leader")?;
    ensure!(now == target, "after move-leader to {target} the leader is {now}");
    let unknown = env.cp.kubectl_output(&["raftkv", "-n", NS, "move-leader", "demo", "demo-9"], None)?;
    ensure!(
        !unknown.status.success() && String::from_utf8_lossy(&unknown.stderr).contains("demo-9 is not a member of demo"),
        "move-leader to demo-9: {}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // A defragmentation the operator runs on request, every member once.
    let began = Instant::now();
    let mut defragmented_before = std::collections::HashMap::new();
    for member in ["demo-0", "demo-1", "demo-2"] {
        defragmented_before.insert(member, env.kubectl(&["logs", "-n", NS, member])?.matches("defragmented").count() + 1);
    }
    let defrag = plugin(env, &["defrag", "demo", "--timeout", "180"])?;
    ensure!(defrag.lines().last().is_some_and(|l| l.starts_with("done in")), "{defrag}");
    let (token, last) = {
        let out = env.kubectl(&["get", "kvc", "-n", NS, "demo", "-o", r#"jsonpath={.metadata.annotations.raftkv\.io/defragment} {.status.maintenance.lastRequest} {.status.maintenance.lastDefragmentation}"#])?;
        let f: Vec<String> = out.split(' ').map(str::to_owned).collect();
        ensure!(f.len() == 3 && !f[2].is_empty(), "maintenance status after the defragmentation: {out}");
        (f[0].clone(), f[1].clone())
    };
    ensure!(token == last, "the request {token} is not the one recorded ({last})");
    // One Defragmented event per member (each names its pod), not one
    // series under the first member's note.
    let events = env.kubectl(&[
        "get", "events", "-n", NS, "--field-selector", "reason=Defragmented", "-o",
        r#"jsonpath={range .items[*]}{.related.name}: {.message}{"\n"}{end}"#,
    ])?;
    for member in ["demo-0", "demo-1", "demo-2"] {
        ensure!(events.lines().any(|l| l == format!("{member}: member {member} defragmented")), "no Defragmented event naming {member}:\n{events}");
    }
    for member in ["demo-0", "demo-1", "demo-2"] {
        let log = env.kubectl(&["logs", "-n", NS, member])?;
        ensure!(log.matches("defragmented").count() == defragmented_before[member], "{member} was not defragmented once:\n{log}");
    }
    eprintln!("lifecycle: kubectl raftkv defrag in {:.1} s", began.elapsed().as_secs_f64());

    // A backup now, to the schedule's destination.
    let began = Instant::now();
    env.cp.kubectl_stdin(&["apply", "-f", "-"], BACKUP_SCHEDULE)?;
    let backup = plugin(env, &["backup", "demo", "--backup-name", "before-restore", "--timeout", "180"])?;
    ensure!(backup.lines().any(|l| l.starts_with("Completed in")), "{backup}");
    let location = env.kubectl(&["get", "kvbackup", "-n", NS, "before-restore", "-o", "jsonpath={.status.location}"])?;
    let key = location.split("raftkv-backups/").nth(1).with_context(|| format!("the location {location} is not in the bucket"))?;
    let object = store.join("raftkv-backups").join(key);
    ensure!(object.metadata().is_ok_and(|m| m.len() > 0), "no snapshot at {} (location {location})", object.display());
    let status = plugin(env, &["status", "demo"])?;
    ensure!(status_field(&status, "Last backup")?.starts_with("before-restore at "), "{status}");
    ensure!(status_field(&status, "Schedule")? == "nightly \"0 3 * * *\" (suspended)", "{status}");
    let acks = writers.finish().await?;
    let (_, store) = acked::whole_store(&mut client(&endpoint).await?, false).await?;
    acked::all_present(&store, &acks)?;
    let backup_revision: i64 = env.kubectl(&["get", "kvbackup", "-n", NS, "before-restore", "-o", "jsonpath={.status.revision}"])?.trim().parse()?;
    let in_backup: Vec<Ack> = acks.iter().filter(|a| a.revision <= backup_revision).cloned().collect();
    ensure!(!in_backup.is_empty() && in_backup.len() < acks.len(), "of {} acknowledged puts, {} are in the backup at revision {backup_revision}: the writers did not span it", acks.len(), in_backup.len());
    eprintln!(
        "lifecycle: kubectl raftkv backup to S3 ({location}) in {:.1} s; {} acknowledged puts all present, {} of them before the backup's revision",
        began.elapsed().as_secs_f64(),
        acks.len(),
        in_backup.len()
    );

    // A restore into a new KvCluster.
    let began = Instant::now();
    let restore = plugin(env, &["restore", "before-restore", "--to", "restored", "--timeout", "240"])?;
    ensure!(restore.lines().last().is_some_and(|l| l.starts_with("ready in")), "{restore}");
    // Grown from its founding member without rolling it: one template
    // (the restore init container kept at every scale).
    let rolled = env.kubectl(&["get", "events", "-n", NS, "--field-selector", "involvedObject.name=restored,reason=UpgradeStarted", "-o", "name"])?;
    ensure!(rolled.trim().is_empty(), "the restored cluster rolled its members after it grew: {rolled}");
    let revisions = env.kubectl(&["get", "controllerrevisions", "-n", NS, "-l", "app.kubernetes.io/instance=restored", "-o", "name"])?;
    ensure!(revisions.lines().count() == 1, "the restored cluster's StatefulSet went through several templates: {revisions}");
    let again = env.cp.kubectl_output(&["raftkv", "-n", NS, "restore", "before-restore", "--to", "restored"], None)?;
    ensure!(String::from_utf8_lossy(&again.stderr).contains("kvcluster prod/restored already exists"), "a second restore to restored: {}", String::from_utf8_lossy(&again.stderr));
    env.settled_of("restored", 3, Duration::from_secs(240)).await.context("the restored cluster")?;
    let keys = env.etcdctl_of("restored", &["get", "app/", "--prefix", "--keys-only"])?;
    ensure!(keys.lines().filter(|l| !l.is_empty()).count() == 50, "the restored cluster holds {} keys under app/", keys.lines().filter(|l| !l.is_empty()).count());
    let got = env.etcdctl_of("restored", &["get", "app/0049", "-w", "json"])?;
    let mod_revision = |json: &str| -> anyhow::Result<i64> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        v["kvs"][0]["mod_revision"].as_i64().context("no mod_revision")
    };
    ensure!(mod_revision(&got)? == mod_revision(&revision_before)?, "app/0049 at {got} in the restored cluster, {revision_before} before");
    let source_ids = member_ids(&env.etcdctl(&["member", "list"])?);
    let restored_ids = member_ids(&env.etcdctl_of("restored", &["member", "list"])?);
    ensure!(source_ids.iter().all(|id| !restored_ids.contains(id)), "the restored cluster reuses member ids: {source_ids:?} {restored_ids:?}");
    // Every put acknowledged before the backup's revision is restored.
    let dump = plugin(env, &["etcdctl", "restored", "--", "get", "writer", "--prefix", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&dump)?;
    let mut held = std::collections::HashMap::new();
    for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let text = |f: &str| -> anyhow::Result<String> {
            use base64::Engine as _;
            Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(kv[f].as_str().context("no field")?)?)?)
        };
        held.insert(text("key")?, (text("value")?, kv["mod_revision"].as_i64().unwrap_or_default()));
    }
    for ack in &in_backup {
        ensure!(
            held.get(&ack.key) == Some(&(ack.value.clone(), ack.revision)),
            "{} = {} (revision {}) was acknowledged before the backup's revision {backup_revision} and is not in the restored cluster: {:?}",
            ack.key, ack.value, ack.revision, held.get(&ack.key)
        );
    }
    let status = plugin(env, &["status", "restored"])?;
    ensure!(status_field(&status, "Restored from")? == location, "{status}");
    eprintln!("lifecycle: kubectl raftkv restore into a new KvCluster in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
