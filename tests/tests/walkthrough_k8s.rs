//! The README's "On Kubernetes" walkthrough, run as written: the commands
//! of its "Create a cluster and reach it", "Scale, upgrade" and "Uninstall"
//! blocks are read from README.md and run in order against a control plane
//! on raftkv with the test node agent running the pods (root only). What a
//! person would watch for between commands, the test waits for: a
//! KvCluster settled (every pod Ready on its spec, no operation), the pods
//! gone. `kubectl get -w` runs without `-w`; `kubectl port-forward` runs in
//! the background on a free local port, which the etcdctl lines then use.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use raftkv_tests::binaries;
use raftkv_tests::k8s::{ControlPlane, eventually, helm_release, k8s_binary, workspace};
use raftkv_tests::nodes::three_nodes_with_raftkv_images;
use raftkv_tests::ports::free_port;

/// The commands of the `sh` block under a README heading, comments off.
fn block(readme: &str, heading: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let after = readme.split_once(&format!("\n{heading}\n")).with_context(|| format!("README has no {heading:?}"))?.1;
    // Up to the next heading, every sh block.
    let end = [after.find("\n## "), after.find("\n### ")].into_iter().flatten().min().unwrap_or(after.len());
    let section = &after[..end];
    let mut body = String::new();
    for chunk in section.split("```sh\n").skip(1) {
        body.push_str(chunk.split_once("```").context("unterminated block")?.0);
    }
    ensure!(!body.is_empty(), "no sh block under {heading:?}");
    let mut commands = Vec::new();
    let mut pending = String::new();
    for line in body.lines() {
        let line = line.split(" #").next().unwrap_or_default().trim_end();
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            continue;
        }
        pending.push_str(line);
        commands.push(shell_words(&pending)?);
        pending.clear();
    }
    Ok(commands)
}

/// Splits a command line as sh would, for the quoting the README uses
/// (single quotes).
fn shell_words(line: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => word.push(c),
        }
    }
    ensure!(!quoted, "unbalanced quotes in {line:?}");
    if any || !word.is_empty() {
        words.push(word);
    }
    Ok(words)
}

struct PortForward(Child);

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_readme_walkthrough_runs_as_written() -> anyhow::Result<()> {
    let readme = std::fs::read_to_string(workspace().join("README.md"))?;
    let mut commands = block(&readme, "### Create a cluster and reach it")?;
    commands.extend(block(&readme, "### Scale, upgrade")?);
    commands.extend(block(&readme, "### Day two: `kubectl raftkv`")?);
    commands.extend(block(&readme, "### Uninstall, and what is kept")?);
    ensure!(commands.len() >= 10, "the walkthrough has only {} commands", commands.len());

    let (_store, cp, agent) = three_nodes_with_raftkv_images().await?;
    // "Install the operator with Helm", its first command.
    helm_release(&cp, "raftkv-system", "raftkv-operator", "install", serde_json::json!({}))?;
    cp.kubectl(&["rollout", "status", "-n", "raftkv-system", "deployment/raftkv-operator", "--timeout=120s"])?;

    let mut forward: Option<(PortForward, u16)> = None;
    let outcome = async {
        for words in &commands {
            let line = words.join(" ");
            eprintln!("walkthrough: {line}");
            run(&cp, words, &mut forward).await.with_context(|| format!("walkthrough step `{line}`"))?;
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if outcome.is_err() {
        eprintln!("node agent log:\n{}", agent.log_tail(40));
        eprintln!("pods:\n{}", cp.kubectl(&["get", "pods", "-A", "-o", "wide"]).unwrap_or_default());
    }
    outcome
}

async fn run(cp: &ControlPlane, words: &[String], forward: &mut Option<(PortForward, u16)>) -> anyhow::Result<()> {
    // Paths in the README are relative to the repository's root.
    let words: Vec<String> = words
        .iter()
        .map(|w| if w.starts_with("examples/") { workspace().join(w).display().to_string() } else { w.clone() })
        .collect();
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["kubectl", "port-forward", rest @ ..] => {
            let local = free_port()?;
            let rest: Vec<String> = rest.iter().map(|a| if a.starts_with("2379:") { a.replacen("2379", &local.to_string(), 1) } else { (*a).to_owned() }).collect();
            let mut child = Command::new(k8s_binary("kubectl")?)
                .env("KUBECONFIG", cp.admin_kubeconfig())
                .arg("port-forward")
                .args(&rest)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(std::env::temp_dir().join("walkthrough-port-forward.log"))?)
                .spawn()?;
            let stdout = child.stdout.take().context("no stdout")?;
            // Read every line kubectl prints: a closed pipe would kill it.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await?.unwrap_or_default();
            ensure!(first.contains("Forwarding from"), "kubectl port-forward said {first:?}");
            *forward = Some((PortForward(child), local));
        }
        [env, "etcdctl", rest @ ..] if env.starts_with("ETCDCTL_API=") => {
            let (_, local) = forward.as_ref().context("etcdctl before kubectl port-forward")?;
            let endpoint = format!("127.0.0.1:{local}");
            let rest: Vec<&str> = rest.iter().map(|a| if a.starts_with("127.0.0.1:2379") { endpoint.as_str() } else { a }).collect();
            let out = Command::new(binaries::ETCDCTL).env("ETCDCTL_API", "3").args(&rest).output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                out.status.success(),
                "etcdctl failed: {}\nkubectl port-forward said: {}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(std::env::temp_dir().join("walkthrough-port-forward.log")).unwrap_or_default()
            );
            if rest.contains(&"member") {
                let started = stdout.lines().filter(|l| l.contains("| started |")).count();
                ensure!(started == 3, "member list shows {started} started members:\n{stdout}");
            }
            if rest.contains(&"put") {
                ensure!(stdout.trim() == "OK", "put answered {stdout}");
            }
        }
        ["helm", "uninstall", release, "-n", ns] => {
            helm_release(cp, ns, release, "uninstall", serde_json::json!({}))?;
        }
        ["kubectl", rest @ ..] => {
            let watch = rest.contains(&"-w");
            let rest: Vec<&str> = rest.iter().copied().filter(|a| *a != "-w").collect();
            let out = cp.kubectl(&rest)?;
            let ns = rest.iter().position(|a| *a == "-n").and_then(|i| rest.get(i + 1)).copied().unwrap_or("default");
            match rest.as_slice() {
                ["apply", ..] | ["scale", "kvc", ..] | ["patch", "kvc", ..] => settled(cp, ns).await?,
                ["get", "kvc", ..] if watch => {
                    settled(cp, ns).await?;
                    ensure!(out.contains("demo"), "kubectl get kvc printed {out}");
                }
                ["delete", "kvc", ..] => {
                    eventually("the members' pods gone", Duration::from_secs(120), || {
                        Ok(cp.kubectl(&["get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=demo", "-o", "name"])?.trim().is_empty().then_some(()))
                    })
                    .await?;
                    let claims = cp.kubectl(&["get", "pvc", "-n", ns, "-o", "name"])?;
                    ensure!(claims.lines().count() >= 3, "claims kept after the deletion (reclaimPolicy Retain): {claims}");
                }
                ["raftkv", "status", cluster, ..] => {
                    let leader = out.lines().find_map(|l| l.strip_prefix("Leader:")).map(str::trim).unwrap_or_default();
                    ensure!(leader.starts_with(&format!("{cluster}-")), "kubectl raftkv status names no leader:\n{out}");
                    let answering = out.lines().filter(|l| l.starts_with(&format!("{cluster}-")) && l.contains(" ok ")).count();
                    let replicas = cp.kubectl(&["get", "kvc", "-n", ns, cluster, "-o", "jsonpath={.spec.replicas}"])?;
                    ensure!(answering.to_string() == replicas.trim(), "{answering} members answer, {replicas} asked:\n{out}");
                }
                ["raftkv", "etcdctl", .., "get", key] => {
                    ensure!(out.lines().next() == Some(*key) && out.lines().nth(1).is_some_and(|v| !v.is_empty()), "etcdctl get {key} printed {out:?}");
                }
                ["raftkv", "move-leader", cluster, member, ..] => {
                    let status = cp.kubectl(&["raftkv", "status", cluster, "-n", ns])?;
                    ensure!(status.lines().any(|l| l.strip_prefix("Leader:").is_some_and(|v| v.trim() == *member)), "after move-leader {member}:\n{status}");
                }
                ["raftkv", "defrag", ..] => ensure!(out.lines().last().is_some_and(|l| l.starts_with("done in")), "defrag said {out}"),
                ["delete", "pvc", ..] => {
                    let left = cp.kubectl(&["get", "pvc", "-n", ns, "-o", "name"])?;
                    ensure!(left.trim().is_empty(), "claims left: {left}");
                }
                _ => {}
            }
        }
        _ => bail!("the walkthrough test does not know how to run this"),
    }
    Ok(())
}

/// A KvCluster settled: as many Ready pods as `spec.replicas`, all on the
/// image of `spec.version`, and no operation in its status.
async fn settled(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    eventually("the KvCluster settled", Duration::from_secs(300), || {
        let kvc: serde_json::Value = serde_json::from_str(&cp.kubectl(&["get", "kvc", "-n", ns, "demo", "-o", "json"])?)?;
        let replicas = kvc["spec"]["replicas"].as_i64().context("spec.replicas")?;
        let version = kvc["spec"]["version"].as_str().context("spec.version")?;
        if kvc["status"]["readyReplicas"].as_i64() != Some(replicas) || !kvc["status"]["operation"].is_null() {
            return Ok(None);
        }
        let pods = cp.kubectl(&[
            "get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=demo", "-o",
            r#"jsonpath={range .items[*]}{.spec.containers[0].image} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
        ])?;
        let good = pods.lines().filter(|l| l.ends_with(" True") && l.starts_with(&format!("raftkv/raftkv:{version} "))).count();
        Ok((good as i64 == replicas && pods.lines().count() as i64 == replicas).then_some(()))
    })
    .await
}
