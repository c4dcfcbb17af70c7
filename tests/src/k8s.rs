//! A real Kubernetes control plane on loopback, built from Go modules by
//! `scripts/go-peers.sh` (`tests/k8s`): kube-apiserver storing its data in
//! the etcd endpoints a test gives it (raftkv, or etcd for reference),
//! kube-controller-manager, and kubectl of the same release, started the way
//! controller-runtime's envtest starts them: serving and client
//! certificates from one test CA, an admin in `system:masters`, RBAC
//! authorization, service-account tokens signed by a key of the test's own.
//!
//! Nothing plays the kubelet: Pods are created and scheduled nowhere.
//!
//! ```no_run
//! # async fn demo(etcd: Vec<String>) -> anyhow::Result<()> {
//! let cp = raftkv_tests::k8s::ControlPlane::start(&etcd).await?;
//! cp.kubectl(&["create", "namespace", "demo"])?;
//! let client = cp.client().await?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::binaries::go_bin;
use crate::ports::free_port;

/// How long kube-apiserver may take to answer `/readyz` with `ok`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A Go test peer of `tests/k8s`.
pub fn k8s_binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = go_bin().join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: run `make go-peers` (scripts/go-peers.sh builds the Kubernetes release tests/k8s/go.mod pins; the first build takes 15-25 minutes)",
            path.display()
        );
    }
    Ok(path)
}

/// What to start beside kube-apiserver, and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start kube-controller-manager (garbage collector, Deployments,
    /// StatefulSets, namespaces, service accounts, ...).
    pub controller_manager: bool,
    /// kube-apiserver's `--etcd-compaction-interval` (its own compactor;
    /// `None` leaves the default of 5 minutes, `Some(ZERO)` turns it off).
    pub compaction_interval: Option<Duration>,
    /// More kube-apiserver flags.
    pub apiserver_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { controller_manager: true, compaction_interval: None, apiserver_args: Vec::new() }
    }
}

/// A running control plane; dropping it kills its processes.
pub struct ControlPlane {
    dir: TempDir,
    port: u16,
    etcd: Vec<String>,
    options: Options,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
}

impl ControlPlane {
    /// kube-apiserver on `etcd` (client URLs) and kube-controller-manager,
    /// ready to serve.
    pub async fn start(etcd: &[String]) -> anyhow::Result<ControlPlane> {
        ControlPlane::start_with(etcd, Options::default()).await
    }

    pub async fn start_with(etcd: &[String], options: Options) -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new().prefix("e2e-k8s-").tempdir()?;
        let pki = dir.path().join("pki");
        let out = Command::new(k8s_binary("k8s-pki")?).arg(&pki).output().context("cannot run k8s-pki")?;
        if !out.status.success() {
            bail!("k8s-pki failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut cp = ControlPlane {
            dir,
            port,
            etcd: etcd.to_vec(),
            options,
            apiserver: None,
            controller_manager: None,
        };
        cp.write_kubeconfig(&cp.admin_kubeconfig(), "admin", &Credentials::Certificate {
            cert: pki.join("admin.crt"),
            key: pki.join("admin.key"),
        })?;
        cp.start_apiserver().await?;
        if cp.options.controller_manager {
            cp.start_controller_manager()?;
        }
        Ok(cp)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The etcd endpoints kube-apiserver stores its data in.
    pub fn etcd_servers(&self) -> &[String] {
        &self.etcd
    }

    /// The CA that signed the serving certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.pki("ca.crt")
    }

    fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }

    /// A kubeconfig for the admin (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig in the test's directory named `name` that
    /// authenticates with a bearer `token` (a ServiceAccount's, say).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        self.write_kubeconfig(&path, name, &Credentials::Token(token.to_owned()))?;
        Ok(path)
    }

    /// A token for ServiceAccount `namespace/name` (the TokenRequest API, as
    /// a projected volume gets one), valid for an hour.
    pub fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        Ok(token.trim().to_owned())
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, credentials: &Credentials) -> anyhow::Result<()> {
        let auth = match credentials {
            Credentials::Certificate { cert, key } => {
                format!("    client-certificate: {}\n    client-key: {}\n", cert.display(), key.display())
            }
            Credentials::Token(token) => format!("    token: {token}\n"),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n{auth}contexts:\n- name: {user}\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: {user}\n",
            server = self.url(),
            ca = self.ca_file().display(),
        );
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// A kube client for the admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.admin_kubeconfig()).await
    }

    /// kubectl of the same release as the admin: its stdout, or an error
    /// with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl_output(args, None)?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` (or any `-f -` command) with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        let out = self.kubectl_output(args, Some(stdin))?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl's whole outcome, failures included.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        kubectl_as(&self.admin_kubeconfig(), args, stdin)
    }

    /// `kubectl port-forward -n NAMESPACE TARGET LOCAL:PORT` on a free local
    /// port, once kubectl says it is forwarding; stopped when dropped.
    pub async fn port_forward(&self, namespace: &str, target: &str, port: u16) -> anyhow::Result<PortForward> {
        let local = free_port()?;
        let log = tempfile::NamedTempFile::new()?;
        let mut child = Command::new(k8s_binary("kubectl")?)
            .env("KUBECONFIG", self.admin_kubeconfig())
            .args(["port-forward", "-n", namespace, target, &format!("{local}:{port}")])
            .stdout(Stdio::piped())
            .stderr(log.reopen()?)
            .spawn()
            .context("cannot start kubectl port-forward")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // Read every line kubectl prints: a closed pipe would kill it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let forward = PortForward { child, local, log };
        let first = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30))).await?.unwrap_or_default();
        if !first.contains("Forwarding from") {
            bail!("kubectl port-forward {target} said {first:?}: {}", forward.log());
        }
        Ok(forward)
    }

    /// Stops kube-apiserver (SIGKILL: it is a client of the store, and a
    /// test stopping it wants it gone).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts kube-apiserver again on the same port and waits until ready.
    pub async fn start_apiserver(&mut self) -> anyhow::Result<()> {
        if self.apiserver.is_some() {
            bail!("kube-apiserver is already running");
        }
        let interval = self.options.compaction_interval.map(|d| format!("--etcd-compaction-interval={}s", d.as_secs()));
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd.join(",")),
            format!("--secure-port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--tls-cert-file={}", self.pki("apiserver.crt").display()),
            format!("--tls-private-key-file={}", self.pki("apiserver.key").display()),
            format!("--client-ca-file={}", self.pki("ca.crt").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={}", self.url()),
            format!("--service-account-key-file={}", self.pki("sa.pub").display()),
            format!("--service-account-signing-key-file={}", self.pki("sa.key").display()),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--endpoint-reconciler-type=none".into(),
            "--allow-privileged=true".into(),
            // The test node agent serves the kubelet API on 127.0.0.1, the
            // Nodes' InternalIP (logs, port-forward).
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--cert-dir={}", self.dir.path().join("cert-dir").display()),
        ];
        args.extend(interval);
        args.extend(self.options.apiserver_args.iter().cloned());
        let child = self.spawn("kube-apiserver", &args)?;
        self.apiserver = Some(child);
        self.wait_ready().await
    }

    fn start_controller_manager(&mut self) -> anyhow::Result<()> {
        let args = vec![
            format!("--kubeconfig={}", self.admin_kubeconfig().display()),
            "--leader-elect=false".into(),
            format!("--service-account-private-key-file={}", self.pki("sa.key").display()),
            format!("--root-ca-file={}", self.pki("ca.crt").display()),
            "--controllers=*".into(),
            "--secure-port=0".into(),
            "--use-service-account-credentials=false".into(),
            // No kubelet reports node health: keep the node lifecycle
            // controller from evicting anything.
            "--node-monitor-grace-period=1h".into(),
        ];
        self.controller_manager = Some(self.spawn("kube-controller-manager", &args)?);
        Ok(())
    }

    fn spawn(&self, name: &str, args: &[String]) -> anyhow::Result<Child> {
        let log = File::options().create(true).append(true).open(self.log_path(name))?;
        Command::new(k8s_binary(name)?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))
    }

    /// Where `kube-apiserver` or `kube-controller-manager` logs.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.apiserver.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.apiserver = None;
                bail!("kube-apiserver exited with {status}:\n{}", self.log_tail("kube-apiserver", 40));
            }
            let out = self.kubectl_output(&["get", "--raw=/readyz", "--request-timeout=5s"], None)?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!(
            "kube-apiserver not ready within {READY_TIMEOUT:?} (last: {}):\n{}",
            last.trim(),
            self.log_tail("kube-apiserver", 40)
        )
    }
}

enum Credentials {
    Certificate { cert: PathBuf, key: PathBuf },
    Token(String),
}

/// kubectl with `kubeconfig`; the workspace's binaries come first on its
/// PATH, where kubectl finds its plugins (`kubectl raftkv`).
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut cmd = Command::new(k8s_binary("kubectl")?);
    cmd.env("KUBECONFIG", kubeconfig).env_remove("KUBERNETES_SERVICE_HOST").args(args);
    if let Some(dir) = crate::binaries::workspace_binary("kubectl-raftkv").ok().as_deref().and_then(Path::parent) {
        let mut path = vec![dir.to_path_buf()];
        path.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        cmd.env("PATH", std::env::join_paths(path)?);
    }
    let Some(input) = stdin else {
        return cmd.stdin(Stdio::null()).output().context("cannot run kubectl");
    };
    use std::io::Write as _;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().context("kubectl's stdin")?.write_all(input.as_bytes())?;
    child.wait_with_output().context("cannot run kubectl")
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    // kube's TLS uses rustls' process-wide provider, and a workspace build
    // compiles two in (object_store brings aws-lc-rs): name kube's own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [self.controller_manager.take(), self.apiserver.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for name in ["kube-apiserver", "kube-controller-manager"] {
                eprintln!("----- {name} log (last 60 lines) -----\n{}\n-----", self.log_tail(name, 60));
            }
        }
    }
}

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// `charts/tests/helm_release.py ACTION` (Helm 4's SDK, in the Makefile's
/// virtualenv) for the chart as release `release` in `namespace`.
pub fn helm_release(cp: &ControlPlane, namespace: &str, release: &str, action: &str, values: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let venv = std::env::var_os("RAFTKV_VENV").map_or_else(|| workspace().join(".venv"), PathBuf::from);
    let python = venv.join("bin/python");
    if !python.is_file() {
        bail!("{} is missing: run `make pydeps` (the chart tests' virtualenv with helm-python-sdk)", python.display());
    }
    let out = Command::new(&python)
        .arg(workspace().join("charts/tests/helm_release.py"))
        .arg(action)
        .arg("--kubeconfig")
        .arg(cp.admin_kubeconfig())
        .args(["--namespace", namespace, "--name", release, "--values", &values.to_string()])
        .output()
        .context("cannot run helm_release.py")?;
    if !out.status.success() {
        bail!("helm {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("helm_release.py printed no JSON")
}

/// Polls `check` every 250 ms until it yields a value, or fails after
/// `timeout` with the last error it returned.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> anyhow::Result<Option<T>>) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {timeout:?} (last error: {last_error:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A running `kubectl port-forward` (see [`ControlPlane::port_forward`]).
pub struct PortForward {
    child: Child,
    /// The local port it forwards.
    pub local: u16,
    log: tempfile::NamedTempFile,
}

impl PortForward {
    /// What kubectl wrote to its standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
