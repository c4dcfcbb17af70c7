//! The test node agent (`tests/k8s/nodeagent`): Nodes that run the Pods of
//! a [`ControlPlane`] as real local processes, each in a network namespace
//! of its own on a bridge in a namespace the agent makes. Root only.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::k8s::{ControlPlane, k8s_binary};

/// A running node agent; dropping it stops its pods (SIGTERM, their grace
/// periods) and removes its network namespaces.
/// What the tests of the operator on pods start from: a control plane
/// storing its data in a raftkv member, and the node agent playing three
/// Nodes that run raftkv's image (raftkv, raftkvctl) and the operator's.
/// Bind them in this order, so that they stop in the reverse one.
pub async fn three_nodes_with_raftkv_images() -> anyhow::Result<(crate::Server, ControlPlane, NodeAgent)> {
    use crate::binaries::{self, workspace_binary};
    let store = crate::Server::start(crate::Flavor::Raftkv).await?;
    let cp = ControlPlane::start(&[store.endpoint()]).await?;
    let agent = NodeAgent::start(&cp, &["node-0", "node-1", "node-2"], &[
        ("raftkv/raftkv", vec![binaries::raftkv()?, binaries::raftkvctl()?]),
        ("raftkv/raftkv-operator", vec![workspace_binary("raftkv-operator")?]),
    ])
    .await?;
    Ok((store, cp, agent))
}

pub struct NodeAgent {
    child: Option<Child>,
    dir: TempDir,
    bridge: String,
}

impl NodeAgent {
    /// Registers `nodes` on `cp` and runs their pods; `images` maps an
    /// image repository (no tag) to the binaries it holds, the first its
    /// entrypoint.
    pub async fn start(cp: &ControlPlane, nodes: &[&str], images: &[(&str, Vec<PathBuf>)]) -> anyhow::Result<NodeAgent> {
        let dir = tempfile::Builder::new().prefix("e2e-nodes-").tempdir()?;
        let log = File::create(dir.path().join("nodeagent.log"))?;
        let mut cmd = Command::new(k8s_binary("k8s-nodeagent")?);
        cmd.arg("--kubeconfig")
            .arg(cp.admin_kubeconfig())
            .arg("--root")
            .arg(dir.path())
            .arg(format!("--nodes={}", nodes.join(",")))
            .arg(format!("--apiserver={}", cp.url().trim_start_matches("https://")));
        for (repo, bins) in images {
            let bins: Vec<String> = bins.iter().map(|b| b.display().to_string()).collect();
            cmd.arg(format!("--image={repo}={}", bins.join(",")));
        }
        let child = cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().context("cannot start the node agent")?;
        let mut agent = NodeAgent { child: Some(child), dir, bridge: String::new() };
        let marker = agent.dir.path().join("bridge-netns");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(name) = std::fs::read_to_string(&marker) {
                agent.bridge = name.trim().to_owned();
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().expect("running").try_wait()? {
                agent.child = None;
                bail!("the node agent exited with {status}:\n{}", agent.log_tail(40));
            }
            if Instant::now() > deadline {
                bail!("the node agent did not start within 30 s:\n{}", agent.log_tail(40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A command run in the pod network (the bridge's namespace), where
    /// every pod IP is reachable.
    pub fn in_pod_network(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> anyhow::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.bridge])
            .arg(program)
            .args(args)
            .output()
            .context("cannot run ip netns exec")
    }

    /// The /etc/hosts the agent wrote for a pod (what its containers resolve
    /// names, and addresses back to names, with).
    pub fn pod_hosts(&self, pod_uid: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("pods").join(pod_uid).join("hosts")).unwrap_or_default()
    }

    /// The output of a container (every run of it), as its log file holds.
    pub fn container_log(&self, pod_uid: &str, container: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("pods").join(pod_uid).join(format!("{container}.log"))).unwrap_or_default()
    }

    /// The process of a container's current run (`pod_uid` from the Pod's
    /// metadata), as the agent recorded it when it started it.
    pub fn container_pid(&self, pod_uid: &str, container: &str) -> Option<u32> {
        let path = self.dir.path().join("pods").join(pod_uid).join(format!("{container}.pid"));
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Kills a container's process with SIGKILL, as a crash would.
    pub fn kill_container(&self, pod_uid: &str, container: &str) -> anyhow::Result<u32> {
        let pid = self.container_pid(pod_uid, container).with_context(|| format!("no process recorded for {container} of pod {pod_uid}"))?;
        let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -9 {pid} failed");
        }
        Ok(pid)
    }

    /// The last `lines` lines of the agent's own log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("nodeagent.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the agent and its pods.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the agent stops every pod within its grace period.
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !exited {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.remove_leftovers(child.id());
        }
    }

    /// Whatever an agent killed before it cleaned up left behind: the
    /// processes in its network namespaces, and the namespaces.
    fn remove_leftovers(&self, pid: u32) {
        let prefix = format!("rkv{pid}-");
        let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
        for ns in String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
            if !ns.starts_with(&prefix) {
                continue;
            }
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
