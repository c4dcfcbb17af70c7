//! Real object stores on loopback, for the backup tests: each started as a
//! child process on a free port with its data in a temporary directory, a
//! bucket (or container) made, and the environment variables that point
//! `raftkvctl` (and so a backup Job) at it.
//!
//! - [`ObjectStore::s3`]: versitygw, an S3 gateway over a directory (built
//!   from its Go module by `scripts/go-peers.sh`), with SigV4 credentials.
//! - [`ObjectStore::gcs`]: fake-gcs-server, Google Cloud Storage's JSON and
//!   XML APIs (Go module, same script).
//! - [`ObjectStore::azure`]: Azurite, Microsoft's own Azure Storage
//!   emulator (npm, `scripts/node-peers.sh`).
//! - [`ObjectStore::local`]: a directory, as `file://` URLs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::binaries::go_bin;
use crate::ports::free_port;

/// The bucket or container every store starts with.
pub const BUCKET: &str = "backups";
/// The S3 store's credentials.
pub const S3_ACCESS_KEY: &str = "raftkv-test-access";
pub const S3_SECRET_KEY: &str = "raftkv-test-secret-key";

/// Where `scripts/node-peers.sh` installs the npm test peers.
pub fn node_dir() -> PathBuf {
    std::env::var_os("RAFTKV_NODE_DIR").map_or_else(|| PathBuf::from("/var/tmp/raftkv-node"), PathBuf::from)
}

fn peer(path: PathBuf, script: &str) -> anyhow::Result<PathBuf> {
    if !path.is_file() {
        bail!("{} is not installed: run `make test-peers` ({script} installs it)", path.display());
    }
    Ok(path)
}

pub struct ObjectStore {
    kind: &'static str,
    scheme: &'static str,
    child: Option<Child>,
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl ObjectStore {
    /// versitygw serving `dir/root` over S3 with path-style requests.
    pub async fn s3() -> anyhow::Result<ObjectStore> {
        let program = peer(go_bin().join("versitygw"), "scripts/go-peers.sh")?;
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(BUCKET))?;
        let port = free_port()?;
        let mut cmd = Command::new(program);
        cmd.args(["--port", &format!("127.0.0.1:{port}"), "--access", S3_ACCESS_KEY, "--secret", S3_SECRET_KEY, "posix"]).arg(&root);
        let child = spawn(cmd, dir.path(), "versitygw")?;
        let env = vec![
            ("AWS_ACCESS_KEY_ID".into(), S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), S3_SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST".into(), "false".into()),
        ];
        let store = ObjectStore { kind: "s3", scheme: "s3", child: Some(child), dir, env };
        store.wait_listening(port).await?;
        Ok(store)
    }

    /// fake-gcs-server over plain HTTP, its data in a directory, holding
    /// `objects` (key, local file) from the start; OAuth off through the
    /// service account file object_store reads. It serves reads and simple
    /// uploads, but not the XML API's multipart uploads that object_store
    /// (and so `snapshot save`) uses on GCS.
    pub async fn gcs(objects: &[(&str, &Path)]) -> anyhow::Result<ObjectStore> {
        let program = peer(go_bin().join("fake-gcs-server"), "scripts/go-peers.sh")?;
        let dir = tempfile::tempdir()?;
        let seed = dir.path().join("seed");
        std::fs::create_dir_all(seed.join(BUCKET))?;
        for (key, file) in objects {
            let to = seed.join(BUCKET).join(key);
            std::fs::create_dir_all(to.parent().context("a key names a file")?)?;
            std::fs::copy(file, to)?;
        }
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(program);
        cmd.args(["-scheme", "http", "-host", "127.0.0.1", "-port", &port.to_string(), "-backend", "filesystem"])
            .arg("-filesystem-root")
            .arg(dir.path().join("root"))
            .arg("-data")
            .arg(&seed)
            .args(["-public-host", &format!("127.0.0.1:{port}"), "-external-url", &base, "-log-level", "warn"]);
        let child = spawn(cmd, dir.path(), "fake-gcs-server")?;
        let account = dir.path().join("service-account.json");
        std::fs::write(
            &account,
            format!(r#"{{"gcs_base_url": "{base}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#),
        )?;
        let env = vec![("GOOGLE_SERVICE_ACCOUNT".into(), account.display().to_string())];
        let store = ObjectStore { kind: "gcs", scheme: "gs", child: Some(child), dir, env };
        store.wait_listening(port).await?;
        Ok(store)
    }

    /// Azurite's blob service with its well-known development account; the
    /// container is made with Azure's own SDK (`@azure/storage-blob`).
    pub async fn azure() -> anyhow::Result<ObjectStore> {
        let node_dir = node_dir();
        let program = peer(node_dir.join("node_modules/.bin/azurite-blob"), "scripts/node-peers.sh")?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut cmd = Command::new(program);
        cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--skipApiVersionCheck", "--disableProductStyleUrl"])
            .arg("--location")
            .arg(dir.path().join("root"));
        let child = spawn(cmd, dir.path(), "azurite")?;
        let url = format!("http://127.0.0.1:{port}/devstoreaccount1");
        let env = vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            ("AZURITE_BLOB_STORAGE_URL".into(), format!("http://127.0.0.1:{port}")),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), "devstoreaccount1".into()),
        ];
        let store = ObjectStore { kind: "azure", scheme: "az", child: Some(child), dir, env };
        store.wait_listening(port).await?;
        let script = node_dir.join("create-container.js");
        let out = Command::new("node")
            .arg(&script)
            .args([&url, BUCKET])
            .env("NODE_PATH", node_dir.join("node_modules"))
            .output()
            .with_context(|| format!("cannot run node {}", script.display()))?;
        if !out.status.success() {
            bail!("creating Azurite's container: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(store)
    }

    /// A directory, as `file://` URLs.
    pub fn local() -> anyhow::Result<ObjectStore> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("root").join(BUCKET))?;
        Ok(ObjectStore { kind: "local", scheme: "file", child: None, dir, env: Vec::new() })
    }

    /// Where the S3 gateway and the local store keep their buckets, one
    /// directory each, objects as files under their keys.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The URL of `key` in the store's bucket.
    pub fn url(&self, key: &str) -> String {
        if self.scheme == "file" {
            format!("file://{}/{key}", self.dir.path().join("root").join(BUCKET).display())
        } else {
            self.url_in(BUCKET, key)
        }
    }

    /// The URL of `key` in another bucket (one that does not exist, say).
    pub fn url_in(&self, bucket: &str, key: &str) -> String {
        format!("{}://{bucket}/{key}", self.scheme)
    }

    /// The environment variables that point a client at the store.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// `cmd` with the store's environment.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// The server's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    async fn wait_listening(&self, port: u16) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the {} store did not listen on port {port} within 30 s:\n{}", self.kind, self.log())
    }
}

fn spawn(mut cmd: Command, dir: &Path, what: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("server.log"))?;
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    cmd.spawn().with_context(|| format!("cannot start {what}"))
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
