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
use object_store::{ObjectStoreExt, WriteMultipart};
use raftkv::backup;
use sha2::{Digest, Sha256};

use super::{Ctx, flush};
use crate::error::{CtlError, ExitCode};
use crate::objstore;
use crate::gofmt::humanize_bytes;
use crate::printer::Format;
use crate::printer::table;

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stores an etcd node backend snapshot to a given file
    Save(SaveArgs),
    /// Gets backend snapshot status of a given file
    Status(FileArgs),
    /// Restores an etcd member snapshot to an etcd directory
    Restore(RestoreArgs),
    /// Deletes a snapshot file or object; one already gone is not an error (raftkv)
    Delete(FileArgs),
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// <filename>
    pub args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Also write what was saved (location, size, sha256, revision, keys) as JSON to this file (raftkv)
    #[arg(long = "report-file")]
    pub report_file: Option<PathBuf>,
    /// <filename> or an object URL (s3://, gs://, az://, file://)
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
    /// 'new' restores; 'existing' (a member joining a cluster, which gets its data from the cluster) restores nothing (raftkv)
    #[arg(long = "initial-cluster-state", default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Leave a data dir that already holds data as it is and succeed, instead of refusing it (raftkv: a restarted pod's init container)
    #[arg(long = "keep-existing-data-dir", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    pub keep_existing_data_dir: bool,
    /// <filename> or an object URL (s3://, gs://, az://, file://)
    pub args: Vec<String>,
}

pub async fn run(cmd: SnapshotCommand, ctx: &Ctx) -> Result<(), CtlError> {
    match cmd {
        SnapshotCommand::Save(a) => save(a, ctx).await,
        SnapshotCommand::Status(a) => status(a, ctx),
        SnapshotCommand::Restore(a) => restore(a).await,
        SnapshotCommand::Delete(a) => delete(a, ctx).await,
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

/// Parts of a multipart upload: S3's minimum part is 5 MiB; with two in
/// flight and one filling, an upload holds at most 24 MiB whatever the
/// snapshot's size.
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 2;

/// What a saved snapshot is, as `--report-file` writes it (the operator
/// reads it back from a backup Job's termination message).
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    location: String,
    size: u64,
    sha256: String,
    /// The highest revision in the snapshot (raftkv's files), or the
    /// revision the server's header gave (etcd's).
    revision: i64,
    /// Records in the file; etcd's `snapshot status` hash of them.
    total_key: u64,
    hash: u32,
}

async fn save(args: SaveArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot save expects one argument"));
    };
    if ctx.conn.endpoints.len() != 1 {
        return Err(save_error(format!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            ctx.conn.endpoints.join(" ")
        )));
    }
    let report = if objstore::is_url(path) {
        let object = objstore::open(path)?;
        save_to_object(&object, ctx).await?
    } else {
        let part = PathBuf::from(format!("{path}.part"));
        let result = save_to_file(&part, Path::new(path), ctx).await;
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result?
    };
    if let Some(file) = &args.report_file {
        let json = serde_json::to_string(&report).map_err(|e| CtlError::error(e.to_string()))?;
        std::fs::write(file, json).map_err(|e| save_error(format!("could not write {} ({e})", file.display())))?;
    }
    let mut out = ctx.stdout();
    writeln!(out, "Snapshot saved at {path}")?;
    flush(&mut out)
}

/// Where `receive` puts the stream.
enum Sink {
    File(File),
    Object(Box<WriteMultipart>),
}

impl Sink {
    async fn write(&mut self, blob: &[u8]) -> Result<(), CtlError> {
        match self {
            Sink::File(f) => f.write_all(blob).map_err(|e| save_error(format!("could not write snapshot: {e}"))),
            Sink::Object(w) => {
                w.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| save_error(format!("could not upload snapshot: {e}")))?;
                w.write(blob);
                Ok(())
            }
        }
    }
}

async fn save_to_file(part: &Path, path: &Path, ctx: &Ctx) -> Result<Report, CtlError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(part)
        .map_err(|e| save_error(format!("could not open {} ({e})", part.display())))?;
    let mut sink = Sink::File(file);
    let received = receive(&mut sink, ctx).await?;
    let Sink::File(file) = sink else { unreachable!("a file sink stays one") };
    file.sync_all().map_err(|e| save_error(format!("could not fsync snapshot: {e}")))?;
    drop(file);
    std::fs::rename(part, path)
        .map_err(|e| save_error(format!("could not rename {} to {} ({e})", part.display(), path.display())))?;
    Ok(received.report(path.display().to_string()))
}

/// A multipart upload, completed only once the whole stream arrived and its
/// SHA-256 matched: an upload cut short or damaged is aborted, and a killed
/// one never completes, so the object exists only whole.
async fn save_to_object(object: &objstore::Object, ctx: &Ctx) -> Result<Report, CtlError> {
    let upload = object.store.put_multipart(&object.path).await.map_err(|e| objstore::store_error(&object.url, e))?;
    let mut sink = Sink::Object(Box::new(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)));
    let received = receive(&mut sink, ctx).await;
    let Sink::Object(writer) = sink else { unreachable!("an object sink stays one") };
    match received {
        Ok(received) => {
            writer.finish().await.map_err(|e| save_error(format!("could not complete the upload to {}: {e}", object.url)))?;
            Ok(received.report(object.url.clone()))
        }
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                eprintln!("could not abort the upload to {}: {abort}", object.url);
            }
            Err(e)
        }
    }
}

/// A snapshot stream that arrived whole.
struct Received {
    size: u64,
    sha256: [u8; backup::HASH_LEN],
    status: Option<backup::Status>,
    header_revision: i64,
}

impl Received {
    fn report(self, location: String) -> Report {
        let (revision, total_key, hash) = match self.status {
            Some(s) => (s.revision, s.total_key, s.hash),
            None => (self.header_revision, 0, 0),
        };
        Report { location, size: self.size, sha256: hex(&self.sha256), revision, total_key, hash }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Streams `Maintenance.Snapshot` into `sink` with a progress bar; checks
/// etcd's framing and the SHA-256 before returning, and reads a raftkv
/// file's records on the way (revision, keys) on a thread of its own.
async fn receive(sink: &mut Sink, ctx: &Ctx) -> Result<Received, CtlError> {
    let client = ctx.conn.without_deadline().connect().await?;
    let mut stream = client.maintenance_client().snapshot().await.map_err(CtlError::from)?;
    let mut bar: Option<ProgressBar> = None;
    let mut size = 0u64;
    let mut header_revision = 0;
    let mut inspect = Inspect::start();
    // The last HASH_LEN bytes seen are the SHA-256 if the stream ends there.
    let mut hash = Sha256::new();
    let mut held: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(msg) = stream.message().await.map_err(|e| save_error(CtlError::from(e).message))? {
        if let Some(h) = msg.header() {
            header_revision = header_revision.max(h.revision());
        }
        let blob = msg.blob();
        sink.write(blob).await?;
        inspect.feed(blob);
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
    let status = inspect.finish().map(|mut s| {
        s.total_size = size - backup::HASH_LEN as u64;
        s
    });
    Ok(Received { size, sha256: got, status, header_revision })
}

/// Decodes a raftkv snapshot as it streams past, for its revision and key
/// count, without holding it: a bounded channel to a thread running
/// `backup::status`. An etcd snapshot (bbolt) is not decoded: it gives up
/// at once and the stream goes on without it.
struct Inspect {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: std::thread::JoinHandle<Option<backup::Status>>,
}

impl Inspect {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let thread = std::thread::spawn(move || {
            let reader = ChannelReader { rx, buf: Vec::new(), pos: 0 };
            backup::status(BufReader::new(reader), 0).ok()
        });
        Inspect { tx: Some(tx), thread }
    }

    fn feed(&mut self, blob: &[u8]) {
        if let Some(tx) = &self.tx
            && tx.send(blob.to_vec()).is_err()
        {
            // The decoder is done (the records ended) or gave up.
            self.tx = None;
        }
    }

    fn finish(mut self) -> Option<backup::Status> {
        self.tx = None;
        self.thread.join().ok().flatten()
    }
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.buf = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
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

/// Removes a snapshot: the operator's retention runs it in a Job. Idempotent,
/// so a retried Job succeeds.
async fn delete(args: FileArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot delete requires exactly one argument"));
    };
    if objstore::is_url(path) {
        let object = objstore::open(path)?;
        match object.store.delete(&object.path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(objstore::store_error(path, e)),
        }
    } else {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CtlError::error(format!("could not delete {path} ({e})"))),
        }
    }
    let mut out = ctx.stdout();
    writeln!(out, "Snapshot deleted at {path}")?;
    flush(&mut out)
}

async fn restore(args: RestoreArgs) -> Result<(), CtlError> {
    let [path] = args.args.as_slice() else {
        return Err(CtlError::bad_args("snapshot restore requires exactly one argument"));
    };
    let data_dir = if args.data_dir.is_empty() { format!("{}.raftkv", args.name) } else { args.data_dir.clone() };
    if args.initial_cluster_state == "existing" {
        eprintln!("{}: joins an existing cluster, which gives it its data: nothing to restore", args.name);
        return Ok(());
    }
    if args.keep_existing_data_dir && raftkv::restore::check_data_dir(Path::new(&data_dir)).is_err() {
        eprintln!("{data_dir}: holds data already, kept as it is: nothing to restore");
        return Ok(());
    }
    if !objstore::is_url(path) {
        return restore_file(&args, Path::new(path), &data_dir);
    }
    // bbolt files (etcd's snapshots) are read in place, so an object is
    // fetched whole first, beside the data dir (on the same volume).
    raftkv::restore::check_data_dir(Path::new(&data_dir)).map_err(|e| CtlError::error(e.to_string()))?;
    let object = objstore::open(path)?;
    let local = PathBuf::from(format!("{data_dir}.snapshot"));
    let result = match download(&object, &local).await {
        Ok(()) => restore_file(&args, &local, &data_dir),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_file(&local);
    result
}

/// Fetches an object into a local file, with a progress bar.
async fn download(object: &objstore::Object, to: &Path) -> Result<(), CtlError> {
    use futures::StreamExt;
    use std::os::unix::fs::OpenOptionsExt;
    let got = object.store.get(&object.path).await.map_err(|e| objstore::store_error(&object.url, e))?;
    let total = got.meta.size;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)
        .map_err(|e| CtlError::error(format!("could not open {} ({e})", to.display())))?;
    let bar = progress(total.max(1), "snapshot download");
    let mut stream = got.into_stream();
    let mut done = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| objstore::store_error(&object.url, e))?;
        file.write_all(&chunk).map_err(|e| CtlError::error(format!("could not write {} ({e})", to.display())))?;
        done += chunk.len() as u64;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    if done != total {
        return Err(CtlError::error(format!("{}: got {done} of {total} bytes", object.url)));
    }
    file.sync_all().map_err(|e| CtlError::error(format!("could not fsync {} ({e})", to.display())))
}

fn restore_file(args: &RestoreArgs, path: &Path, data_dir: &str) -> Result<(), CtlError> {
    let cfg = raftkv::restore::RestoreConfig {
        snapshot: path.to_path_buf(),
        data_dir: PathBuf::from(data_dir),
        name: args.name.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: args.initial_cluster_token.clone(),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.clone(),
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
