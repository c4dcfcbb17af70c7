//! etcdctl compatibility: the etcdctl 3.4 sessions of etcd's documentation
//! (`scripts/etcdctl_session.sh`) give the same transcript against raftkv as
//! against real etcd, byte for byte once the fields that differ between any
//! two clusters are masked. The transcript covers put/get options, deletes,
//! txn (interactive and plain), leases, compaction and the error cases, and
//! includes etcdctl's stderr and exit codes, so error codes and messages are
//! compared too.
//!
//! The same script also runs with `raftkvctl` in place of etcdctl, against
//! real etcd: the CLI must print what etcdctl prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use raftkv_tests::binaries::{self, ETCDCTL};
use raftkv_tests::diff;
use raftkv_tests::transcript::mask;
use raftkv_tests::{Flavor, Server, with_etcd};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/etcdctl_session.sh");
/// The script's request-size case puts a 5000-byte value.
const SERVER_ARGS: &[&str] = &["--max-request-bytes", "4096"];

/// Runs the session with etcdctl against a fresh single member and returns
/// the masked transcript.
async fn session(flavor: Flavor) -> anyhow::Result<String> {
    session_with(flavor, PathBuf::from(ETCDCTL)).await
}

/// Runs the session with the given CLI in place of etcdctl.
async fn session_with(flavor: Flavor, ctl: PathBuf) -> anyhow::Result<String> {
    let server = Server::start_with(flavor, SERVER_ARGS).await?;
    let output = Command::new("sh")
        .arg(SCRIPT)
        .arg(server.endpoint())
        .env("ETCDCTL", &ctl)
        .output()
        .with_context(|| format!("cannot run {SCRIPT}"))?;
    if !output.status.success() {
        bail!(
            "{SCRIPT} against {} failed with {}: {}",
            flavor.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let transcript = String::from_utf8(output.stdout).context("the transcript is not UTF-8")?;
    Ok(mask(&transcript))
}

/// What any complete transcript of the session shows, whichever server and
/// CLI made it: every command followed by its exit code, every section
/// reached, the JSON header, etcd's compaction errors and the oversized
/// request refused. A session cut short, or one whose comparison would pass
/// because both sides failed alike, fails here.
fn check_session(name: &str, transcript: &str) {
    let commands = transcript.lines().filter(|l| l.starts_with("$ etcdctl")).count();
    let exits = transcript.lines().filter(|l| l.starts_with("exit=")).count();
    assert!(commands > 50, "{name}: only {commands} commands ran:\n{transcript}");
    assert_eq!(commands, exits, "{name}: a command has no exit code:\n{transcript}");
    let script = std::fs::read_to_string(SCRIPT).expect("the session script is readable");
    for section in script.lines().filter_map(|l| l.strip_prefix("section \"")) {
        let section = section.trim_end_matches('"');
        assert!(
            transcript.contains(&format!("### {section}\n")),
            "{name}: section {section:?} not reached:\n{transcript}"
        );
    }
    for expected in [
        "\"cluster_id\":<masked>",
        "etcdserver: mvcc: required revision has been compacted",
        "etcdserver: mvcc: required revision is a future revision",
        "etcdserver: request is too large",
    ] {
        assert!(transcript.contains(expected), "{name}: no {expected:?} in:\n{transcript}");
    }
}

fn assert_same(a_name: &str, a: &str, b_name: &str, b: &str) {
    let diff = diff::unified(a_name, a, b_name, b, 3);
    assert!(diff.is_empty(), "etcdctl transcripts differ:\n{diff}");
}

#[tokio::test]
async fn etcdctl_session_is_identical_on_raftkv_and_etcd() -> anyhow::Result<()> {
    if !with_etcd("etcdctl_session_is_identical_on_raftkv_and_etcd")? {
        return Ok(());
    }
    let etcd = session(Flavor::Etcd).await?;
    let raftkv = session(Flavor::Raftkv).await?;
    check_session("etcd", &etcd);
    check_session("raftkv", &raftkv);
    assert_same("etcd", &etcd, "raftkv", &raftkv);
    Ok(())
}

/// Go clientv3's retry warnings, a log of etcdctl's client library rather
/// than part of the CLI's output; the gRPC code they show is compared by the
/// raftkv-against-etcd test above.
fn drop_client_retry_warnings(transcript: &str) -> String {
    transcript
        .lines()
        .filter(|line| {
            !(line.starts_with(r#"{"level":"warn""#)
                && line.contains("retrying of unary invoker failed"))
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[tokio::test]
async fn raftkvctl_session_is_identical_to_etcdctl_on_etcd() -> anyhow::Result<()> {
    if !with_etcd("raftkvctl_session_is_identical_to_etcdctl_on_etcd")? {
        return Ok(());
    }
    let etcdctl = drop_client_retry_warnings(&session(Flavor::Etcd).await?);
    let raftkvctl =
        drop_client_retry_warnings(&session_with(Flavor::Etcd, binaries::raftkvctl()?).await?);
    check_session("raftkvctl", &raftkvctl);
    assert_same("etcdctl", &etcdctl, "raftkvctl", &raftkvctl);
    Ok(())
}

/// Two fresh etcd clusters give identical masked transcripts: the masks hide
/// exactly what differs between clusters, so any difference against raftkv is
/// a real one.
#[tokio::test]
async fn masked_transcripts_of_two_etcd_clusters_are_identical() -> anyhow::Result<()> {
    if !with_etcd("masked_transcripts_of_two_etcd_clusters_are_identical")? {
        return Ok(());
    }
    let first = session(Flavor::Etcd).await?;
    let second = session(Flavor::Etcd).await?;
    assert!(
        first.contains("\"cluster_id\":<masked>"),
        "the session prints no JSON header:\n{first}"
    );
    assert!(
        first.contains("etcdserver: mvcc: required revision has been compacted"),
        "the session shows no compaction error:\n{first}"
    );
    assert_same("etcd #1", &first, "etcd #2", &second);
    Ok(())
}

#[test]
fn masks_hide_ids_times_and_ports_but_not_revisions() {
    let line = r#"{"header":{"cluster_id":1,"member_id":22,"revision":8,"raft_term":2}} lease 694d77aa9e38260f "ts":"2024-01-01T00:00:00.000Z" endpoint://client-3a9faae7-6211-45f8-bd04-d28d4e337fdd/127.0.0.1:4321"#;
    assert_eq!(
        mask(line),
        r#"{"header":{"cluster_id":<masked>,"member_id":<masked>,"revision":8,"raft_term":<masked>}} lease <hex-id> "ts":"<masked>" endpoint://client-<masked>/127.0.0.1:<port>"#
    );
    assert!(Path::new(SCRIPT).is_file(), "{SCRIPT} is missing");
}
