//! The test node agent's kubelet duties that the lifecycles do not reach:
//! a failing liveness probe restarts its container (the restart count
//! written back), and a deleted Pod's processes get SIGTERM, then SIGKILL
//! once the grace period has passed. Root only (network namespaces).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use raftkv_tests::binaries;
use raftkv_tests::k8s::{ControlPlane, eventually};
use raftkv_tests::nodes::NodeAgent;
use raftkv_tests::{Flavor, Server};

const GRACE_SECONDS: u64 = 4;

/// A container whose liveness probe never succeeds (nothing listens on
/// 8080); one that ignores SIGTERM and one that records it in a host
/// directory and exits.
const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: unhealthy, namespace: default}
spec:
  containers:
  - name: main
    image: raftkv/raftkv:0.1.0
    command: ["/bin/sleep", "3600"]
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: stopping, namespace: default}
spec:
  terminationGracePeriodSeconds: GRACE
  containers:
  - name: stubborn
    image: raftkv/raftkv:0.1.0
    command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"]
  - name: polite
    image: raftkv/raftkv:0.1.0
    command: ["/bin/sh", "-c", "trap 'echo TERM > /out/polite; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{name: out, mountPath: /out}]
  volumes:
  - name: out
    hostPath: {path: OUT, type: Directory}
"#;

/// Whether a process runs (exists and is not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn liveness_restarts_and_deletion_sends_sigterm_then_sigkill_after_the_grace_period() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let store = Server::start(Flavor::Raftkv).await?;
    let cp = ControlPlane::start(&[store.endpoint()]).await?;
    let agent = NodeAgent::start(&cp, &["node-0"], &[("raftkv/raftkv", vec![binaries::raftkv()?])]).await?;
    let outcome = async {
        cp.kubectl_stdin(&["apply", "-f", "-"], &PODS.replace("GRACE", &GRACE_SECONDS.to_string()).replace("OUT", &out.path().display().to_string()))?;
        let uid = |pod: &str| cp.kubectl(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);

        // Liveness: the container is restarted, a new process each time.
        let unhealthy = uid("unhealthy")?;
        let first = eventually("the unhealthy container started", Duration::from_secs(60), || Ok(agent.container_pid(&unhealthy, "main"))).await?;
        eventually("the unhealthy container restarted twice", Duration::from_secs(90), || {
            let restarts = cp.kubectl(&["get", "pod", "unhealthy", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"])?;
            Ok((restarts.trim().parse::<u32>().unwrap_or(0) >= 2).then_some(()))
        })
        .await?;
        ensure!(!running(first), "the first run ({first}) of the unhealthy container still runs after two restarts");

        // Deletion: SIGTERM to every container, SIGKILL after the grace period.
        let stopping = uid("stopping")?;
        let (stubborn, polite) = eventually("both containers of the stopping pod running", Duration::from_secs(60), || {
            let pids = (agent.container_pid(&stopping, "stubborn"), agent.container_pid(&stopping, "polite"));
            Ok(match pids {
                (Some(s), Some(p)) if running(s) && running(p) => Some((s, p)),
                _ => None,
            })
        })
        .await?;
        let began = Instant::now();
        cp.kubectl(&["delete", "pod", "stopping", "--wait=false"])?;
        let marker = out.path().join("polite");
        eventually("the polite container told of SIGTERM", Duration::from_secs(10), || Ok(marker.is_file().then_some(()))).await?;
        ensure!(began.elapsed() < Duration::from_secs(GRACE_SECONDS), "SIGTERM came only after {:?}", began.elapsed());
        tokio::time::sleep(Duration::from_secs(GRACE_SECONDS - 2)).await;
        ensure!(running(stubborn), "the container ignoring SIGTERM was killed {:?} after the deletion, before its grace period of {GRACE_SECONDS} s", began.elapsed());
        ensure!(!running(polite), "the container that exited on SIGTERM still runs");
        eventually("the container ignoring SIGTERM killed", Duration::from_secs(GRACE_SECONDS + 10), || Ok((!running(stubborn)).then_some(()))).await?;
        let took = began.elapsed();
        ensure!(took >= Duration::from_secs(GRACE_SECONDS - 1), "the stubborn container was gone {took:?} after the deletion, within its grace period");
        eprintln!("SIGKILL {took:?} after the deletion (grace period {GRACE_SECONDS} s)");
        eventually("the pod gone", Duration::from_secs(30), || {
            let left = cp.kubectl_output(&["get", "pod", "stopping", "-o", "name"], None)?;
            Ok((!left.status.success()).then_some(()))
        })
        .await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if outcome.is_err() {
        eprintln!("node agent log:\n{}", agent.log_tail(60));
    }
    outcome.context("node agent")
}
