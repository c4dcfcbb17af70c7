//! `snapshot save | status | restore`: etcdctl 3.4's snapshot commands
//! (etcdutl's, for status and restore), for raftkv's snapshot files.
//!
//! `save` streams `Maintenance.Snapshot` from one endpoint into
//! `FILE.part` with a progress bar, checks etcd's framing and the SHA-256,
//! and renames the file only then. `status` and `restore` read files
//! offline, through the server crate's snapshot format (`raftkv::backup`),
//! as etcdutl reads etcd's; they also read snapshots that etcd wrote (bbolt
//! files), which is how a cluster migrates from etcd.

use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use raftkv::backup;
use sha2::{Digest, Sha256};

use super::{Ctx, flush};
use crate::error::{CtlError, ExitCode};
use crate::gofmt::humanize_bytes;
use crate::printer::Format;
use crate::printer::table;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stores an etcd node backend snapshot to a given file
    Save(FileArgs),
    /// Gets backend snapshot status of a given file
    Status(FileArgs),
    /// Restores an etcd member snapshot to an etcd directory
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// <filename>
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Path to the data directory
    #[arg(long = "data-dir", default_value = "")]
    pub data_dir: String,
    /// Initial cluster configuration for restore bootstrap
    #[arg(long = "initial-cluster", default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster token for the etcd cluster during restore bootstrap
    #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster
    #[arg(long = "initial-advertise-peer-urls", default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Human-readable name for this member
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Ignore snapshot integrity hash value (required if copied from data directory)
    #[arg(long = "skip-hash-check", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub skip_hash_check: bool,
    /// <filename>
    pub args: Vec<String>,
}

pub async fn run(cmd: SnapshotCommand, ctx: &Ctx) -> Result<(), CtlError> {
    match cmd {
        SnapshotCommand::Save(a) => save(a, ctx).await,
        SnapshotCommand::Status(a) => status(a, ctx),
        SnapshotCommand::Restore(a) => restore(a),
    }
}

/// A bar on stderr (drawn only on a terminal): bytes, rate, time left.
fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "{what} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}, {{eta}} left"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Failures of `save` exit as etcdctl's: `ExitInterrupted`.
fn save_error(message: impl Into<String>) -> CtlError {
    CtlError::new(ExitCode::Interrupted, message)
}

async fn save(args: FileArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot save expects one argument"));
    };
    if ctx.conn.endpoints.len() != 1 {
        return Err(save_error(format!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            ctx.conn.endpoints.join(" ")
        )));
    }
    let part = PathBuf::from(format!("{path}.part"));
    let result = save_to(&part, Path::new(path), ctx).await;
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result?;
    let mut out = ctx.stdout();
    writeln!(out, "Snapshot saved at {path}")?;
    flush(&mut out)
}

async fn save_to(part: &Path, path: &Path, ctx: &Ctx) -> Result<(), CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(|e| save_error(format!("could not open {} ({e})", part.display())))?;
    let client = ctx.conn.without_deadline().connect().await?;
    let mut stream = client.maintenance_client().snapshot().await.map_err(CtlError::from)?;
    let mut bar: Option<ProgressBar> = None;
    let mut size = 0u64;
    // The last HASH_LEN bytes seen are the SHA-256 if the stream ends there.
    let mut hash = Sha256::new();
    let mut held: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(msg) = stream.message().await.map_err(|e| save_error(CtlError::from(e).message))? {
        let blob = msg.blob();
        file.write_all(blob).map_err(|e| save_error(format!("could not write snapshot: {e}")))?;
        size += blob.len() as u64;
        held.extend_from_slice(blob);
        if held.len() > backup::HASH_LEN {
            let done = held.len() - backup::HASH_LEN;
            hash.update(&held[..done]);
            held.drain(..done);
        }
        let b = bar.get_or_insert_with(|| progress(size + msg.remaining_bytes(), "snapshot save"));
        b.set_length(size + msg.remaining_bytes().max(1));
        b.set_position(size);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if size % backup::ALIGN != backup::HASH_LEN as u64 {
        return Err(save_error(format!("sha256 checksum not found [bytes: {size}]")));
    }
    let got: [u8; backup::HASH_LEN] = hash.finalize().into();
    if got.as_slice() != held.as_slice() {
        return Err(save_error("sha256 checksum mismatch: the snapshot was damaged in transit"));
    }
    file.sync_all().map_err(|e| save_error(format!("could not fsync snapshot: {e}")))?;
    drop(file);
    std::fs::rename(part, path)
        .map_err(|e| save_error(format!("could not rename {} to {} ({e})", part.display(), path.display())))
}

fn status(args: FileArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot status requires exactly one argument"));
    };
    let mut file = File::open(path).map_err(|e| CtlError::error(format!("open {path}: {e}")))?;
    let size = file.metadata().map_err(CtlError::from)?.len();
    let mut head = Vec::with_capacity(64);
    (&mut file).take(64).read_to_end(&mut head)?;
    let st = if raftkv::bbolt::looks_like_bbolt(&head) {
        // A snapshot etcd wrote: what etcdctl prints for it.
        let s = raftkv::bbolt::Db::open(Path::new(path)).and_then(|db| db.status()).map_err(|e| CtlError::error(e.to_string()))?;
        backup::Status { hash: s.hash, revision: s.revision, total_key: s.total_key, total_size: s.total_size }
    } else {
        file.rewind()?;
        // A saved file ends with its hash; the status describes the payload.
        let payload = if size % backup::ALIGN == backup::HASH_LEN as u64 { size - backup::HASH_LEN as u64 } else { size };
        backup::status(BufReader::new(file), payload).map_err(|e| CtlError::error(e.to_string()))?
    };
    let row = vec![format!("{:x}", st.hash), st.revision.to_string(), st.total_key.to_string(), humanize_bytes(st.total_size)];
    let mut out = ctx.stdout();
    match ctx.printer.format {
        Format::Simple => writeln!(out, "{}", row.join(", "))?,
        Format::Json => writeln!(out, "{}", serde_json::to_string(&st).map_err(|e| CtlError::error(e.to_string()))?)?,
        Format::Table => table::render(&mut out, &["hash", "revision", "total keys", "total size"], &[row])?,
        Format::Fields => {
            writeln!(out, "\"Hash\" : {}", st.hash)?;
            writeln!(out, "\"Revision\" : {}", st.revision)?;
            writeln!(out, "\"Keys\" : {}", st.total_key)?;
            writeln!(out, "\"Size\" : {}", st.total_size)?;
        }
        Format::Protobuf => return Err(CtlError::bad_feature("protobuf not supported as output format")),
    }
    flush(&mut out)
}

fn restore(args: RestoreArgs) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot restore requires exactly one argument"));
    };
    let data_dir = if args.data_dir.is_empty() { format!("{}.raftkv", args.name) } else { args.data_dir.clone() };
    let cfg = raftkv::restore::RestoreConfig {
        snapshot: PathBuf::from(path),
        data_dir: PathBuf::from(data_dir),
        name: args.name,
        initial_cluster: args.initial_cluster,
        initial_cluster_token: args.initial_cluster_token,
        initial_advertise_peer_urls: args.initial_advertise_peer_urls,
        skip_hash_check: args.skip_hash_check,
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let bar = progress(size.max(1), "snapshot restore");
    let result = raftkv::restore::restore(&cfg, &mut |done, total| {
        bar.set_length(total.max(1));
        bar.set_position(done);
    });
    bar.finish_and_clear();
    result.map_err(|e| CtlError::error(e.to_string()))
}
