//! The operator and its Helm chart against a real Kubernetes control plane
//! (kube-apiserver and kube-controller-manager from `tests/k8s`, storing
//! their data in raftkv): the chart installed, upgraded and uninstalled by
//! Helm 4's own SDK (`charts/tests/helm_release.py`), the CRDs it installs
//! enforced by the API server (schema and CEL rules), and `raftkv-operator
//! run` as a process authenticated as the chart's ServiceAccount, bound by
//! the chart's RBAC, so that a verb the chart forgot fails here.
//!
//! Nothing plays the kubelet, so no member ever runs: what is checked is
//! what the operator writes to the API server, and how it behaves there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use raftkv_tests::binaries::{self, workspace_binary};
use raftkv_tests::certs::{Pair, Pki, Validity};
use raftkv_tests::k8s::{ControlPlane, Options, eventually, helm_release, kubectl_as, workspace};
use raftkv_tests::nodes::three_nodes_with_raftkv_images;
use raftkv_tests::ports::free_port;
use raftkv_tests::{Flavor, Server};
use tokio::sync::Mutex;

/// One control plane at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const OPS: &str = "raftkv-system";
const RELEASE: &str = "rk";
/// The chart's ServiceAccount: the release's full name.
const SERVICE_ACCOUNT: &str = "rk-raftkv-operator";
const NS: &str = "prod";

/// The chart as release `rk` in `raftkv-system`.
fn helm(cp: &ControlPlane, action: &str, values: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    helm_release(cp, OPS, RELEASE, action, values)
}

/// A `raftkv-operator run` process with `kubeconfig`, logging to a file.
struct Operator {
    child: Option<Child>,
    log: PathBuf,
    /// Set once the test passed: otherwise dropping prints the log.
    passed: bool,
    identity: String,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(kubeconfig: &Path, identity: &str) -> anyhow::Result<Operator> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("operator.log");
        let file = std::fs::File::create(&log)?;
        let child = Command::new(workspace_binary("raftkv-operator")?)
            .args(["run", "--listen", &format!("127.0.0.1:{}", free_port()?), "--lease-namespace", OPS, "--identity", identity, "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("OPERATOR_LOG").unwrap_or_else(|_| "info".into()))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("cannot start raftkv-operator")?;
        Ok(Operator { child: Some(child), log, passed: false, identity: identity.to_owned(), _dir: dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
        if !self.passed {
            let log = self.log();
            let kept = std::env::temp_dir().join(format!("raftkv-operator-{}-{}.log", std::process::id(), self.identity));
            if std::fs::write(&kept, &log).is_ok() {
                eprintln!("the whole operator log: {}", kept.display());
            }
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("----- operator log (last 80 lines) -----\n{}\n-----", lines[lines.len().saturating_sub(80)..].join("\n"));
        }
    }
}

fn json(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    Ok(serde_json::from_str(&cp.kubectl(&args)?)?)
}

/// Whether `kubectl get` finds the object.
fn exists(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<bool> {
    let mut args = args.to_vec();
    args.push("--ignore-not-found");
    args.extend(["-o", "name"]);
    Ok(!cp.kubectl(&args)?.trim().is_empty())
}

const KVCLUSTER: &str = r#"
apiVersion: raftkv.io/v1alpha1
kind: KvCluster
metadata: {name: demo, namespace: prod}
spec:
  replicas: 3
  version: 0.1.0
  storage: {size: 1Gi}
"#;

/// The objects the operator makes for a KvCluster named `name`.
fn owned_objects(name: &str) -> Vec<(String, String)> {
    vec![
        ("statefulset".into(), name.into()),
        ("service".into(), name.into()),
        ("service".into(), format!("{name}-peer")),
        ("configmap".into(), format!("{name}-bootstrap")),
        ("poddisruptionbudget".into(), name.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chart_and_the_operator_run_a_kvcluster_on_a_real_api_server() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let store = Server::start(Flavor::Raftkv).await?;
    let cp = ControlPlane::start_with(&[store.endpoint()], Options::default()).await?;

    // The chart, installed by Helm: CRDs, ServiceAccount, RBAC, and a
    // Deployment that nothing runs here.
    let release = helm(&cp, "install", serde_json::json!({}))?;
    ensure!(release["status"] == "deployed", "helm install: {release}");
    for crd in ["kvclusters.raftkv.io", "kvbackups.raftkv.io", "kvbackupschedules.raftkv.io"] {
        cp.kubectl(&["wait", "--for=condition=Established", &format!("crd/{crd}"), "--timeout=60s"])?;
    }
    let deployment = json(&cp, &["get", "deployment", "-n", OPS, SERVICE_ACCOUNT])?;
    ensure!(deployment["spec"]["replicas"] == 2, "the chart's Deployment: {}", deployment["spec"]);

    // The operator as the chart's ServiceAccount, with the chart's RBAC.
    let token = cp.service_account_token(OPS, SERVICE_ACCOUNT)?;
    let kubeconfig = cp.token_kubeconfig("operator", &token)?;
    let mut first = Operator::start(&kubeconfig, "operator-a")?;
    eventually("operator-a holding the Lease", Duration::from_secs(60), || {
        let lease = json(&cp, &["get", "lease", "-n", OPS, "raftkv-operator"]);
        Ok(lease.ok().filter(|l| l["spec"]["holderIdentity"] == "operator-a"))
    })
    .await
    .with_context(|| format!("operator-a's log:\n{}", first.log()))?;
    let mut second = Operator::start(&kubeconfig, "operator-b")?;

    // The API server enforces the CRD: its schema and its CEL rules.
    cp.kubectl(&["create", "namespace", NS])?;
    let zero = cp.kubectl_output(&["apply", "-f", "-"], Some(&KVCLUSTER.replace("replicas: 3", "replicas: 0")))?;
    let refused = String::from_utf8_lossy(&zero.stderr);
    ensure!(!zero.status.success() && refused.contains("spec.replicas"), "a KvCluster of 0 replicas: {refused}");
    let with_tls = cp.kubectl_output(&["apply", "-f", "-"], Some(&format!("{KVCLUSTER}  tls: {{clientSecretName: client-tls}}\n")))?;
    let refused = String::from_utf8_lossy(&with_tls.stderr);
    ensure!(
        !with_tls.status.success() && refused.contains("operatorSecretName must name the client certificate"),
        "a KvCluster requiring client certificates and naming none for the operator: {refused}"
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
    let tls_added = cp.kubectl_output(&["apply", "-f", "-"], Some(&format!("{KVCLUSTER}  tls: {{peerSecretName: peer-tls}}\n")))?;
    let refused = String::from_utf8_lossy(&tls_added.stderr);
    ensure!(!tls_added.status.success() && refused.contains("tls is set when the cluster is created and cannot change"), "spec.tls added to a KvCluster: {refused}");

    // What the operator makes: owned by the KvCluster, applied server-side.
    let objects = owned_objects("demo");
    let uid = json(&cp, &["get", "kvc", "-n", NS, "demo"])?["metadata"]["uid"].clone();
    for (kind, name) in &objects {
        let obj = eventually(&format!("{kind}/{name}"), Duration::from_secs(60), || {
            Ok(if exists(&cp, &["get", kind, "-n", NS, name])? { Some(json(&cp, &["get", kind, "-n", NS, name, "--show-managed-fields"])?) } else { None })
        })
        .await?;
        let owners = obj["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        ensure!(
            owners.iter().any(|o| o["uid"] == uid && o["controller"] == true && o["kind"] == "KvCluster"),
            "{kind}/{name} is not controlled by the KvCluster: {owners:?}"
        );
        let managers = obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
        ensure!(
            managers.iter().any(|m| m["manager"] == "raftkv-operator" && m["operation"] == "Apply"),
            "{kind}/{name} was not applied server-side by raftkv-operator: {managers:?}"
        );
    }
    let sts = json(&cp, &["get", "statefulset", "-n", NS, "demo"])?;
    ensure!(sts["spec"]["replicas"].as_i64().is_some(), "the StatefulSet: {}", sts["spec"]);

    // Status through the status subresource, and a finalizer of its own.
    let kvc = eventually("the KvCluster's status", Duration::from_secs(60), || {
        let kvc = json(&cp, &["get", "kvc", "-n", NS, "demo", "--show-managed-fields"])?;
        Ok((kvc["status"]["observedGeneration"].as_i64().is_some()).then_some(kvc))
    })
    .await?;
    let managers = kvc["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    ensure!(
        managers.iter().any(|m| m["manager"] == "raftkv-operator" && m["subresource"] == "status"),
        "the status was not written through the status subresource: {managers:?}"
    );
    ensure!(
        kvc["metadata"]["finalizers"].as_array().is_some_and(|f| f.iter().any(|f| f == "raftkv.io/cleanup")),
        "the KvCluster has no raftkv.io/cleanup finalizer: {}",
        kvc["metadata"]
    );

    // The scale subresource, as kubectl scale uses it.
    cp.kubectl(&["scale", "kvc", "-n", NS, "demo", "--replicas=5"])?;
    let scale: serde_json::Value = serde_json::from_str(&cp.kubectl(&["get", "--raw", &format!("/apis/raftkv.io/v1alpha1/namespaces/{NS}/kvclusters/demo/scale")])?)?;
    ensure!(scale["spec"]["replicas"] == 5, "the scale subresource after kubectl scale: {scale}");

    // A CEL rule: the volume size cannot change.
    let edit = cp.kubectl_output(&["patch", "kvc", "-n", NS, "demo", "--type=merge", "-p", r#"{"spec":{"storage":{"size":"20Gi"}}}"#], None)?;
    let refused = String::from_utf8_lossy(&edit.stderr);
    ensure!(!edit.status.success() && refused.contains("storage"), "an edit of storage.size: {refused}");

    // Events, from the operator, through events.k8s.io.
    let events = eventually("an event about the KvCluster", Duration::from_secs(60), || {
        let list = json(&cp, &["get", "events.events.k8s.io", "-n", NS])?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let ours: Vec<_> = items.into_iter().filter(|e| e["reportingController"] == "raftkv-operator" && e["regarding"]["name"] == "demo").collect();
        Ok((!ours.is_empty()).then_some(ours))
    })
    .await?;
    ensure!(events.iter().all(|e| e["reportingInstance"] == "operator-a"), "events from a replica that does not lead: {events:?}");

    // Only the Lease holder reconciles; when it dies the other takes over.
    ensure!(!second.log().contains("leading"), "operator-b leads beside operator-a:\n{}", second.log());
    first.kill9();
    eventually("operator-b taking the Lease over", Duration::from_secs(90), || {
        let lease = json(&cp, &["get", "lease", "-n", OPS, "raftkv-operator"])?;
        Ok((lease["spec"]["holderIdentity"] == "operator-b").then_some(()))
    })
    .await?;
    cp.kubectl_stdin(&["apply", "-f", "-"], &KVCLUSTER.replace("name: demo", "name: other"))?;
    eventually("operator-b reconciling a new KvCluster", Duration::from_secs(60), || exists(&cp, &["get", "statefulset", "-n", NS, "other"]).map(|e| e.then_some(()))).await?;

    // Deleted through the finalizer; the garbage collector takes the rest.
    cp.kubectl(&["delete", "kvc", "-n", NS, "demo", "--wait=true", "--timeout=90s"])?;
    eventually("the garbage collector removing what the operator made", Duration::from_secs(90), || {
        for (kind, name) in &objects {
            if exists(&cp, &["get", kind, "-n", NS, name])? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await?;

    // Nothing the operator did was forbidden by the chart's RBAC.
    for (name, log) in [("operator-a", first.log()), ("operator-b", second.log())] {
        ensure!(!log.contains("forbidden"), "{name} was refused by the chart's RBAC:\n{log}");
    }

    // Helm upgrade changes the Deployment; uninstall removes what the
    // release made and keeps the CRDs (Helm never deletes crds/).
    helm(&cp, "upgrade", serde_json::json!({"logLevel": "debug"}))?;
    let deployment = json(&cp, &["get", "deployment", "-n", OPS, SERVICE_ACCOUNT])?;
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned().unwrap_or_default();
    ensure!(env.iter().any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug"), "after helm upgrade: {env:?}");
    helm(&cp, "uninstall", serde_json::json!({}))?;
    ensure!(!exists(&cp, &["get", "deployment", "-n", OPS, SERVICE_ACCOUNT])?, "the Deployment outlived helm uninstall");
    ensure!(!exists(&cp, &["get", "clusterrole", SERVICE_ACCOUNT])?, "the ClusterRole outlived helm uninstall");
    ensure!(exists(&cp, &["get", "crd", "kvclusters.raftkv.io"])?, "helm uninstall removed the CRD");
    first.passed = true;
    second.passed = true;
    Ok(())
}

/// An operator whose ServiceAccount lacks a verb it needs fails that call
/// with a clear error and keeps running; granted the verb, it carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_missing_a_verb_says_so_and_recovers_once_granted() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let store = Server::start(Flavor::Raftkv).await?;
    let cp = ControlPlane::start_with(&[store.endpoint()], Options { controller_manager: true, ..Options::default() }).await?;
    // The CRDs applied with kubectl, as without Helm (Helm then leaves
    // CRDs that exist alone).
    let crds = workspace().join("crds");
    cp.kubectl(&["apply", "--server-side", "-f", crds.to_str().context("a UTF-8 path")?])?;
    helm(&cp, "install", serde_json::json!({}))?;
    cp.kubectl(&["wait", "--for=condition=Established", "crd/kvclusters.raftkv.io", "--timeout=60s"])?;
    // The chart's ClusterRole without StatefulSet patches.
    let role = json(&cp, &["get", "clusterrole", SERVICE_ACCOUNT])?;
    let mut crippled = role.clone();
    for rule in crippled["rules"].as_array_mut().context("rules")? {
        if rule["resources"].as_array().is_some_and(|r| r.iter().any(|r| r == "statefulsets")) {
            rule["verbs"] = serde_json::json!(["get", "list", "watch"]);
        }
    }
    crippled["metadata"] = serde_json::json!({"name": SERVICE_ACCOUNT});
    cp.kubectl_stdin(&["replace", "-f", "-"], &crippled.to_string())?;
    let token = cp.service_account_token(OPS, SERVICE_ACCOUNT)?;
    let kubeconfig = cp.token_kubeconfig("operator", &token)?;
    let denied = kubectl_as(&kubeconfig, &["auth", "can-i", "patch", "statefulsets", "-n", NS], None)?;
    ensure!(String::from_utf8_lossy(&denied.stdout).trim() == "no", "the crippled role still allows StatefulSet patches");
    let mut operator = Operator::start(&kubeconfig, "operator-a")?;
    cp.kubectl(&["create", "namespace", NS])?;
    cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
    eventually("the operator saying it was forbidden", Duration::from_secs(60), || {
        let log = operator.log();
        Ok((log.contains("forbidden") && log.contains("statefulsets")).then_some(()))
    })
    .await?;
    ensure!(!exists(&cp, &["get", "statefulset", "-n", NS, "demo"])?, "a StatefulSet without the verb to make it");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(operator.running(), "the operator exited on a forbidden call:\n{}", operator.log());
    cp.kubectl_stdin(&["replace", "-f", "-"], &{
        let mut restored = role.clone();
        restored["metadata"] = serde_json::json!({"name": SERVICE_ACCOUNT});
        restored.to_string()
    })?;
    eventually("the StatefulSet once the verb is granted", Duration::from_secs(120), || exists(&cp, &["get", "statefulset", "-n", NS, "demo"]).map(|e| e.then_some(()))).await?;
    ensure!(operator.running(), "the operator exited:\n{}", operator.log());
    operator.passed = true;
    Ok(())
}

/// kube-apiserver stopped for 15 s and started again under a running
/// operator: the operator stays up, and once the API server is back it
/// reconciles a KvCluster created then within a minute. Run on etcd 3.6
/// first, then on raftkv.
///
/// It failed on both before each watch of the operator got a backoff of its
/// own (operator/src/watch.rs): behind kube-runtime's one shared backoff,
/// the refused connections, 403s and 410s of ten watches pushed the pause
/// past 50 s, and the KvCluster watch did not relist for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_operator_resumes_after_kube_apiserver_restarts() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let etcd = binaries::etcd_releases()?
        .into_iter()
        .find(|(v, _)| v.starts_with("3.6."))
        .map(|(_, p)| p)
        .context("etcd 3.6 is not built: run `make go-peers`")?;
    for flavor in [Flavor::Etcd, Flavor::Raftkv] {
        let store = match flavor {
            Flavor::Etcd => Server::start_etcd_release(&etcd).await?,
            Flavor::Raftkv => Server::start(Flavor::Raftkv).await?,
        };
        apiserver_restart(&store).await.with_context(|| format!("on {}", flavor.name()))?;
    }
    Ok(())
}

async fn apiserver_restart(store: &Server) -> anyhow::Result<()> {
    let mut cp = ControlPlane::start_with(&[store.endpoint()], Options::default()).await?;
    helm(&cp, "install", serde_json::json!({}))?;
    cp.kubectl(&["wait", "--for=condition=Established", "crd/kvclusters.raftkv.io", "--timeout=60s"])?;
    let token = cp.service_account_token(OPS, SERVICE_ACCOUNT)?;
    let kubeconfig = cp.token_kubeconfig("operator", &token)?;
    let mut operator = Operator::start(&kubeconfig, "operator-a")?;
    cp.kubectl(&["create", "namespace", NS])?;
    cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
    eventually("the first StatefulSet", Duration::from_secs(60), || exists(&cp, &["get", "statefulset", "-n", NS, "demo"]).map(|e| e.then_some(()))).await?;

    cp.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(15)).await;
    ensure!(operator.running(), "the operator exited while the API server was away:\n{}", operator.log());
    cp.start_apiserver().await?;
    cp.kubectl_stdin(&["apply", "-f", "-"], &KVCLUSTER.replace("name: demo", "name: later"))?;
    eventually("the operator resuming after the API server came back", Duration::from_secs(60), || {
        exists(&cp, &["get", "statefulset", "-n", NS, "later"]).map(|e| e.then_some(()))
    })
    .await?;
    ensure!(operator.running(), "the operator exited:\n{}", operator.log());
    operator.passed = true;
    Ok(())
}

/// With the test node agent playing the kubelet on three Nodes, the chart's
/// operator runs as a Pod (in-cluster config, its ServiceAccount's projected
/// token, probes), and a 3-member KvCluster becomes three raftkv Pods, each
/// in a network namespace of its own, that find each other by their
/// headless-Service names and answer etcdctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kvcluster_runs_as_pods_that_answer_etcdctl() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (_store, cp, agent) = three_nodes_with_raftkv_images().await?;
    let outcome = async {
        helm(&cp, "install", serde_json::json!({}))?;
        cp.kubectl(&["rollout", "status", "-n", OPS, &format!("deployment/{SERVICE_ACCOUNT}"), "--timeout=120s"])
            .context("the operator's Deployment")?;
        cp.kubectl(&["create", "namespace", NS])?;
        cp.kubectl_stdin(&["apply", "-f", "-"], KVCLUSTER)?;
        let ips = ready_pods(&cp, NS, "demo", 3).await?;
        let endpoints = ips.iter().map(|ip| format!("http://{ip}:2379")).collect::<Vec<_>>().join(",");
        let etcdctl = |args: &[&str]| -> anyhow::Result<String> {
            let mut all = vec!["--endpoints", endpoints.as_str()];
            all.extend_from_slice(args);
            let out = agent.in_pod_network(binaries::ETCDCTL, &all)?;
            ensure!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        ensure!(etcdctl(&["put", "hello", "pods"])?.trim() == "OK", "etcdctl put did not answer OK");
        let got = etcdctl(&["get", "hello", "--print-value-only"])?;
        ensure!(got.trim() == "pods", "etcdctl get answered {got:?}");
        let members = etcdctl(&["member", "list"])?;
        let mut names: Vec<&str> = members.lines().filter_map(|l| l.split(", ").nth(2)).collect();
        names.sort();
        ensure!(names == ["demo-0", "demo-1", "demo-2"], "member list: {members}");
        ensure!(members.lines().all(|l| l.contains(", started, ")), "a member is not started: {members}");
        // `kubectl logs`, through kube-apiserver to the node agent's kubelet API.
        let logs = cp.kubectl(&["logs", "-n", NS, "demo-0", "--tail=200"])?;
        ensure!(logs.contains("demo-0"), "kubectl logs of demo-0 does not name it:\n{logs}");
        eventually("the KvCluster status to count three ready replicas", Duration::from_secs(60), || {
            let ready = cp.kubectl(&["get", "kvc", "-n", NS, "demo", "-o", "jsonpath={.status.readyReplicas}"])?;
            Ok((ready.trim() == "3").then_some(()))
        })
        .await
    }
    .await;
    if outcome.is_err() {
        eprintln!("node agent log:\n{}", agent.log_tail(60));
        eprintln!("pods:\n{}", cp.kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default());
    }
    outcome
}

/// The IPs of KvCluster `instance`'s Pods in `ns` that are Ready, once
/// there are `n`.
async fn ready_pods(cp: &ControlPlane, ns: &str, instance: &str, n: usize) -> anyhow::Result<Vec<String>> {
    eventually(&format!("{n} Ready pods of {ns}/{instance}"), Duration::from_secs(240), || {
        let out = cp.kubectl(&[
            "get", "pods", "-n", ns, "-l", &format!("app.kubernetes.io/instance={instance}"), "-o",
            r#"jsonpath={range .items[*]}{.status.podIP} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ])?;
        let ready: Vec<String> = out
            .lines()
            .filter_map(|l| l.split_once(' ').filter(|(_, ready)| *ready == "True").map(|(ip, _)| ip.to_owned()))
            .collect();
        Ok((ready.len() == n).then_some(ready))
    })
    .await
}

/// `kubectl create secret generic` of a certificate, its key and the CA, in
/// cert-manager's layout.
fn tls_secret(cp: &ControlPlane, ns: &str, name: &str, pair: &Pair, ca: &Path) -> anyhow::Result<()> {
    let from = |key: &str, path: &Path| format!("--from-file={key}={}", path.display());
    cp.kubectl(&[
        "create", "secret", "generic", name, "-n", ns,
        &from("tls.crt", &pair.cert), &from("tls.key", &pair.key), &from("ca.crt", ca),
    ])?;
    Ok(())
}

/// The KvCluster's `.status.readyReplicas`, as the operator reports it from
/// what it observed of the members (over TLS, here).
async fn reported_ready(cp: &ControlPlane, ns: &str, name: &str, n: u32) -> anyhow::Result<()> {
    eventually(&format!("{ns}/{name}'s status to count {n} ready replicas"), Duration::from_secs(120), || {
        let ready = cp.kubectl(&["get", "kvc", "-n", ns, name, "-o", "jsonpath={.status.readyReplicas}"])?;
        Ok((ready.trim() == n.to_string()).then_some(()))
    })
    .await
}

/// spec.tls on real pods. From Secrets: three members serve clients and
/// peers over https with the test CA's certificates, probes pass on the
/// plaintext metrics port, the operator grows the cluster one member at a
/// time and reports it through its own client certificate, and etcdctl 3.4
/// reaches a member with a client certificate and is refused without one.
/// From a cert-manager issuer: the operator applies cert-manager's
/// Certificates (its own CRD, from its module), and once their Secrets are
/// written (the test plays the CA issuer, signing what each Certificate
/// asks for) the member comes up on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kvcluster_with_tls_serves_https_and_the_operator_reaches_it_with_its_certificate() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let crd = std::fs::read_dir(binaries::go_bin())?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("cert-manager.io_certificates-")))
        .context("cert-manager's Certificate CRD is not in the Go peers' directory: run `make test-peers` (scripts/go-peers.sh)")?;
    let (_store, cp, agent) = three_nodes_with_raftkv_images().await?;
    let ns = "secure";
    let outcome = async {
        helm(&cp, "install", serde_json::json!({}))?;
        cp.kubectl(&["rollout", "status", "-n", OPS, &format!("deployment/{SERVICE_ACCOUNT}"), "--timeout=120s"])
            .context("the operator's Deployment")?;
        cp.kubectl(&["create", "namespace", ns])?;
        cp.kubectl(&["apply", "-f", &crd.display().to_string()])?;
        cp.kubectl(&["wait", "--for=condition=Established", "crd/certificates.cert-manager.io", "--timeout=60s"])?;

        let pki = Pki::new("kvcluster")?;
        // As the operator asks cert-manager for (resources::Names::tls_dns_names):
        // each member's name besides the wildcard, since the test node agent's
        // names (an /etc/hosts) answer no reverse lookup in the pods.
        let mut hosts = vec![format!("*.demo-peer.{ns}.svc"), format!("demo.{ns}.svc"), "localhost".to_owned(), "127.0.0.1".to_owned()];
        hosts.extend((0..3).map(|i| format!("demo-{i}.demo-peer.{ns}.svc")));
        let member = pki.issue("member", "demo", &hosts.iter().map(String::as_str).collect::<Vec<_>>(), Validity::Current)?;
        let operator = pki.issue("operator", "root", &["operator"], Validity::Current)?;
        let app = pki.issue("app", "app", &["app"], Validity::Current)?;
        tls_secret(&cp, ns, "demo-client-tls", &member, pki.ca())?;
        tls_secret(&cp, ns, "demo-peer-tls", &member, pki.ca())?;
        tls_secret(&cp, ns, "demo-operator-tls", &operator, pki.ca())?;
        cp.kubectl_stdin(&["apply", "-f", "-"], &format!(
            "{}  tls: {{clientSecretName: demo-client-tls, peerSecretName: demo-peer-tls, operatorSecretName: demo-operator-tls}}\n",
            KVCLUSTER.replace("namespace: prod", &format!("namespace: {ns}"))
        ))?;
        ready_pods(&cp, ns, "demo", 3).await?;
        // The operator added demo-1 and demo-2 through MemberAdd and
        // MemberPromote, and reports what it observed: all over TLS.
        reported_ready(&cp, ns, "demo", 3).await?;

        let forward = cp.port_forward(ns, "pod/demo-0", 2379).await?;
        let endpoint = format!("--endpoints=https://127.0.0.1:{}", forward.local);
        let etcdctl = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
            let mut args = vec![endpoint.as_str(), "--dial-timeout=5s", "--command-timeout=5s"];
            args.extend_from_slice(extra);
            Ok(Command::new(binaries::ETCDCTL).env("ETCDCTL_API", "3").args(&args).output()?)
        };
        let (ca, cert, key) = (format!("--cacert={}", pki.ca_str()), format!("--cert={}", app.cert_str()), format!("--key={}", app.key_str()));
        let with_cert = |cmd: &[&str]| -> anyhow::Result<String> {
            let mut args = vec![ca.as_str(), cert.as_str(), key.as_str()];
            args.extend_from_slice(cmd);
            let out = etcdctl(&args)?;
            ensure!(out.status.success(), "etcdctl {cmd:?}: {}\nport-forward: {}", String::from_utf8_lossy(&out.stderr), forward.log());
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        };
        ensure!(with_cert(&["put", "hello", "tls"])?.trim() == "OK", "etcdctl put did not answer OK");
        ensure!(with_cert(&["get", "hello", "--print-value-only"])?.trim() == "tls", "etcdctl get");
        let members = with_cert(&["member", "list"])?;
        for i in 0..3 {
            ensure!(members.contains(&format!("https://demo-{i}.demo-peer.{ns}.svc:2380")), "demo-{i}'s peer URL is not https: {members}");
            ensure!(members.contains(&format!("https://demo-{i}.demo-peer.{ns}.svc:2379")), "demo-{i}'s client URL is not https: {members}");
        }
        let without = etcdctl(&[ca.as_str(), "get", "hello"])?;
        ensure!(!without.status.success(), "etcdctl without a client certificate was let in");
        let plaintext = Command::new(binaries::ETCDCTL)
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints=http://127.0.0.1:{}", forward.local), "--dial-timeout=3s", "--command-timeout=3s", "get", "hello"])
            .output()?;
        ensure!(!plaintext.status.success(), "plaintext etcdctl was answered by a TLS port");
        drop(forward);
        // kubectl raftkv reaches members in plaintext only: it says so.
        let plugin = Command::new(workspace_binary("kubectl-raftkv")?)
            .env("KUBECONFIG", cp.admin_kubeconfig())
            .args(["-n", ns, "status", "demo"])
            .output()?;
        let said = String::from_utf8_lossy(&plugin.stderr);
        ensure!(!plugin.status.success() && said.contains("serves clients over TLS"), "kubectl raftkv status of a TLS cluster: {said}");

        // cert-manager: the operator asks, the test's CA issues.
        cp.kubectl_stdin(&["apply", "-f", "-"], &format!(
            "{}  tls: {{certManager: {{name: test-ca, kind: ClusterIssuer}}}}\n",
            KVCLUSTER.replace("namespace: prod", &format!("namespace: {ns}")).replace("name: demo", "name: issued").replace("replicas: 3", "replicas: 1")
        ))?;
        let wanted = ["issued-client-tls", "issued-peer-tls", "issued-operator-tls"];
        let certificates = eventually("the operator's three Certificates", Duration::from_secs(60), || {
            let list = json(&cp, &["get", "certificates.cert-manager.io", "-n", ns])?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Ok((items.len() == wanted.len()).then_some(items))
        })
        .await?;
        for c in &certificates {
            let name = c["metadata"]["name"].as_str().unwrap_or_default();
            ensure!(wanted.contains(&name), "an unexpected Certificate {name}");
            let spec = &c["spec"];
            ensure!(spec["issuerRef"] == serde_json::json!({"name": "test-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}), "{name}: {spec}");
            ensure!(spec["secretName"] == name, "{name}: {spec}");
            ensure!(c["metadata"]["ownerReferences"][0]["kind"] == "KvCluster", "{name} is not owned by its KvCluster");
            let strings = |v: &serde_json::Value| -> Vec<String> { v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_owned)).collect() };
            let mut hosts = strings(&spec["dnsNames"]);
            hosts.extend(strings(&spec["ipAddresses"]));
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let pair = pki.issue(name, spec["commonName"].as_str().unwrap_or(name), &hosts, Validity::Current)?;
            tls_secret(&cp, ns, name, &pair, pki.ca())?;
        }
        ready_pods(&cp, ns, "issued", 1).await?;
        reported_ready(&cp, ns, "issued", 1).await
    }
    .await;
    if outcome.is_err() {
        eprintln!("node agent log:\n{}", agent.log_tail(60));
        eprintln!("pods:\n{}", cp.kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default());
        eprintln!("operator:\n{}", cp.kubectl(&["logs", "-n", OPS, &format!("deployment/{SERVICE_ACCOUNT}"), "--tail=60"]).unwrap_or_default());
        for pod in cp.kubectl(&["get", "pods", "-n", ns, "-o", "name"]).unwrap_or_default().lines() {
            let log = cp.kubectl(&["logs", "-n", ns, pod]).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| !l.contains("peer unreachable")).collect();
            eprintln!("{pod}:\n{}", lines[lines.len().saturating_sub(25)..].join("\n"));
            let uid = cp.kubectl(&["get", "-n", ns, pod, "-o", "jsonpath={.metadata.uid}"]).unwrap_or_default();
            eprintln!("{pod}'s /etc/hosts:\n{}", agent.pod_hosts(&uid));
            let every_run = agent.container_log(&uid, "raftkv");
            let runs: Vec<&str> = every_run.lines().filter(|l| !l.contains("peer unreachable") && !l.contains(" INFO ")).collect();
            eprintln!("{pod}'s warnings and errors, every run:\n{}", runs[runs.len().saturating_sub(20)..].join("\n"));
        }
    }
    outcome
}
