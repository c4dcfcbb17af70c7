//! Locates the binaries under test. Cargo builds the workspace's binaries in
//! `target/<profile>/` and the test executables in `target/<profile>/deps/`,
//! so the binaries are found relative to the running test, whatever
//! `CARGO_TARGET_DIR` is. Nothing here builds anything.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Real etcd, installed by the Makefile from Debian's `etcd-server`.
pub const ETCD: &str = "/usr/bin/etcd";
/// Real etcdctl, from Debian's `etcd-client`.
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// The `raftkv` server binary built from this workspace.
pub fn raftkv() -> anyhow::Result<PathBuf> {
    workspace_binary("raftkv")
}

/// The `raftkvctl` CLI built from this workspace.
pub fn raftkvctl() -> anyhow::Result<PathBuf> {
    workspace_binary("raftkvctl")
}

/// The etcd releases built from Go modules as test peers: (version, binary)
/// for each module under `tests/go` (its go.mod pins the version;
/// `scripts/go-peers.sh`, run by `make test`, builds them into
/// `$RAFTKV_GO_BIN`, default `/var/tmp/raftkv-go/bin`).
pub fn etcd_releases() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
    let bin = go_bin();
    let mut releases = Vec::new();
    for entry in std::fs::read_dir(&modules).with_context(|| format!("cannot list {}", modules.display()))? {
        let go_mod = entry?.path().join("go.mod");
        let Ok(text) = std::fs::read_to_string(&go_mod) else { continue };
        let Some(version) = text.lines().find_map(|l| l.strip_prefix("require go.etcd.io/etcd/server/v3 v")) else { continue };
        let path = bin.join(format!("etcd-{version}"));
        if !path.is_file() {
            bail!("etcd {version} is not built at {}: run `make go-peers` (scripts/go-peers.sh builds it from the Go module proxy)", path.display());
        }
        releases.push((version.trim().to_owned(), path));
    }
    releases.sort();
    Ok(releases)
}

/// Where `scripts/go-peers.sh` puts the test peers it builds from Go
/// modules: `$RAFTKV_GO_BIN`, default `/var/tmp/raftkv-go/bin`.
pub fn go_bin() -> PathBuf {
    std::env::var_os("RAFTKV_GO_BIN").map_or_else(|| PathBuf::from("/var/tmp/raftkv-go/bin"), PathBuf::from)
}

/// Whether real etcd and etcdctl are installed, for the comparison tests.
pub fn etcd_available() -> bool {
    Path::new(ETCD).is_file() && Path::new(ETCDCTL).is_file()
}

/// `target/<profile>/<name>`, next to the `deps/` directory holding the
/// running test executable.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("unexpected test executable path {}", exe.display()))?;
    let path = profile_dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found at {}: run `cargo build --workspace --bins` before the end-to-end tests",
            path.display()
        );
    }
    Ok(path)
}
