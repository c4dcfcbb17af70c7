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
