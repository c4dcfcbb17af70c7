//! The containers the operator renders for backups and restores, run as
//! the kubelet would run them (their command, arguments and environment,
//! `$(VAR)` references expanded, Secret keys resolved) against real raftkv
//! processes and a real S3 server on loopback (versitygw, from the tests'
//! harness): the backup Job's container saves a member's snapshot to S3 and
//! its termination message completes the backup; the restore init container
//! of a KvCluster restored from that backup makes the founding member's
//! data dir, which raftkv then serves with every key and revision; a
//! joining member's and a restarted pod's init containers leave their data
//! dirs alone; the Job that deletes a pruned backup's snapshot removes it
//! from the store.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use etcd_client::GetOptions;
use k8s_openapi::api::core::v1::Container;
use raftkv_operator::backup::crd::{BackupPhase, Destination, KvBackup, KvBackupSpec, KvBackupStatus, S3, S3Credentials, SecretKey};
use raftkv_operator::backup::decide::{self, Observed, Step};
use raftkv_operator::backup::job::{backup_job, delete_job};
use raftkv_operator::backup::restore::{Resolved, resolve};
use raftkv_operator::crd::{BackupRef, BootstrapSpec, KvCluster, KvClusterSpec, RestoreSpec};
use raftkv_operator::resources::{self, DATA_DIR, Names};
use raftkv_tests::objstores::{ObjectStore, S3_ACCESS_KEY, S3_SECRET_KEY};
use raftkv_tests::server::{Bootstrap, loopback_url};
use raftkv_tests::{Flavor, Server, binaries, describe};

/// The Secret the destination names, as the kubelet would read it.
fn secret() -> BTreeMap<(String, String), String> {
    BTreeMap::from([
        (("s3".to_owned(), "id".to_owned()), S3_ACCESS_KEY.to_owned()),
        (("s3".to_owned(), "secret".to_owned()), S3_SECRET_KEY.to_owned()),
    ])
}

fn destination(store: &ObjectStore) -> anyhow::Result<Destination> {
    let endpoint = store.env().iter().find(|(k, _)| k == "AWS_ENDPOINT_URL").context("no endpoint")?.1.clone();
    Ok(Destination {
        s3: Some(S3 {
            bucket: raftkv_tests::objstores::BUCKET.to_owned(),
            prefix: Some("prod".to_owned()),
            region: None,
            endpoint: Some(endpoint),
            force_path_style: true,
            credentials: Some(S3Credentials {
                access_key_id: SecretKey { name: "s3".into(), key: "id".into() },
                secret_access_key: SecretKey { name: "s3".into(), key: "secret".into() },
                session_token: None,
            }),
        }),
        ..Destination::default()
    })
}

/// Runs a container as the kubelet would: `env` (values, Secret keys,
/// `fieldRef` to the pod's name), then `extra` (what `envFrom` gives),
/// `$(VAR)` expanded in the arguments; `/usr/local/bin/raftkvctl` is the
/// workspace's, and `rewrite` maps in-pod paths to local ones.
fn run_container(c: &Container, pod: &str, extra: &[(&str, &str)], rewrite: &dyn Fn(String) -> String) -> anyhow::Result<std::process::Output> {
    let secrets = secret();
    let mut env: BTreeMap<String, String> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    for e in c.env.as_deref().unwrap_or_default() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(src)) => match (&src.secret_key_ref, &src.field_ref) {
                (Some(s), _) => secrets.get(&(s.name.clone(), s.key.clone())).cloned().with_context(|| format!("no Secret key {}/{}", s.name, s.key))?,
                (_, Some(f)) if f.field_path == "metadata.name" => pod.to_owned(),
                _ => bail!("an env source the test does not play: {e:?}"),
            },
            _ => String::new(),
        };
        env.insert(e.name.clone(), value);
    }
    let expand = |arg: &str| {
        let mut out = arg.to_owned();
        for (k, v) in &env {
            out = out.replace(&format!("$({k})"), v);
        }
        rewrite(out)
    };
    let command = c.command.as_deref().context("a command")?;
    ensure!(command == ["/usr/local/bin/raftkvctl"], "the container runs {command:?}");
    let args: Vec<String> = c.args.as_deref().unwrap_or_default().iter().map(|a| expand(a)).collect();
    Ok(Command::new(binaries::raftkvctl()?).args(&args).env_clear().envs(&env).output()?)
}

fn text(out: &std::process::Output) -> String {
    format!("exit {:?}\nstdout: {}\nstderr: {}", out.status.code(), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn kvcluster(name: &str, bootstrap: Option<BootstrapSpec>) -> anyhow::Result<KvCluster> {
    let mut spec: KvClusterSpec = serde_json::from_value(serde_json::json!({"version": "0.1.0", "replicas": 3}))?;
    spec.bootstrap = bootstrap;
    let mut kvc = KvCluster::new(name, spec);
    kvc.metadata.namespace = Some("prod".into());
    kvc.metadata.uid = Some(format!("uid-{name}"));
    Ok(kvc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rendered_backup_job_and_restore_init_container_work_against_real_s3_and_raftkv() -> anyhow::Result<()> {
    let store = ObjectStore::s3().await?;
    let source = Server::start(Flavor::Raftkv).await?;
    let mut c = source.client().await?;
    for i in 0..40 {
        c.put(format!("k/{:02}", i % 15), format!("v{i}"), None).await?;
    }
    let all = || GetOptions::new().with_all_keys();
    let before = c.get("", Some(all())).await?;
    let rev = before.header().map_or(0, |h| h.revision());
    let keys: Vec<String> = before.kvs().iter().map(describe::kv).collect();

    // The backup Job, against the source member (the URL the operator
    // would name is a pod's DNS name; here it is the member's loopback one).
    let old = kvcluster("old", None)?;
    let mut backup = KvBackup::new("b0", KvBackupSpec { cluster: "old".into(), destination: destination(&store)?, reclaim_policy: Default::default() });
    backup.metadata.namespace = Some("prod".into());
    backup.metadata.uid = Some("uid-b0".into());
    let job = backup_job(&backup, &old, &source.endpoint()).context("a Job")?;
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("a pod")?;
    let dir = tempfile::tempdir()?;
    let termination_log = dir.path().join("termination-log");
    let tl = termination_log.display().to_string();
    let out = run_container(&pod.containers[0], "b0-backup-x7k2p", &[], &|a| a.replace("/dev/termination-log", &tl))?;
    ensure!(out.status.success(), "the backup Job's container: {}\n{}", text(&out), store.log());
    let message = std::fs::read_to_string(&termination_log)?;

    // Its termination message completes the backup.
    let mut finished = job.clone();
    finished.status = Some(k8s_openapi::api::batch::v1::JobStatus { succeeded: Some(1), ..Default::default() });
    let job_pod = k8s_openapi::api::core::v1::Pod {
        status: Some(serde_json::from_value(serde_json::json!({"containerStatuses": [{"name": "backup", "image": "raftkv",
            "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": message}}}]}))?),
        ..Default::default()
    };
    backup.status = Some(KvBackupStatus { phase: BackupPhase::Running, ..KvBackupStatus::default() });
    let step = decide::next(&Observed { backup: &backup, cluster: None, missing_secret: None, job: Some(&finished), pods: &[job_pod] });
    let Step::Complete(report) = step else { bail!("the Job's outcome is {step:?}, not a completed backup") };
    ensure!(report.location == "s3://backups/prod/prod/old/b0.snap" && report.revision == rev, "report {report:?} at revision {rev}");
    backup.status = Some(KvBackupStatus {
        phase: BackupPhase::Completed,
        location: Some(report.location.clone()),
        ..KvBackupStatus::default()
    });

    // A new cluster restored from it: the init container of the founding
    // pod makes its data dir.
    let new = kvcluster("new", Some(BootstrapSpec { restore: Some(RestoreSpec { backup: Some(BackupRef { name: "b0".into() }), source: None }) }))?;
    let Some(Resolved::Ready(from)) = resolve(&new, Some(&backup), false) else { bail!("the restore does not resolve") };
    let mut sts = resources::statefulset(&new, 1);
    resources::add_restore(&mut sts, &new, &from);
    let init = sts.spec.as_ref().and_then(|s| s.template.spec.as_ref()?.init_containers.as_ref()?.first().cloned()).context("an init container")?;
    let names = Names::of(&new);
    let configmap = resources::configmap(&new, &resources::Bootstrap::founding(&names));
    let cm = configmap.data.clone().unwrap_or_default();
    // The member that will serve the restored data dir (not started yet).
    let peer_port = raftkv_tests::ports::free_port()?;
    let mut served = Server::new(
        Flavor::Raftkv,
        peer_port,
        Bootstrap {
            name: "new-0".into(),
            advertise_peer_url: loopback_url(peer_port),
            initial_cluster: cm["RAFTKV_INITIAL_CLUSTER"].clone(),
            state: "new",
            token: cm["RAFTKV_INITIAL_CLUSTER_TOKEN"].clone(),
        },
        &[],
    )?;
    let data = served.data_dir();
    let local = |a: String| a.replace(DATA_DIR, &data.display().to_string());
    let from_configmap: Vec<(&str, &str)> = cm.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = run_container(&init, "new-0", &from_configmap, &local)?;
    ensure!(out.status.success(), "the founding member's init container: {}", text(&out));
    ensure!(data.join("member").is_dir(), "no data dir made at {}", data.display());

    // A restarted pod: the init container keeps what is there.
    let marker = data.join("member").join("kept");
    std::fs::write(&marker, "")?;
    let out = run_container(&init, "new-0", &from_configmap, &local)?;
    ensure!(out.status.success() && marker.exists(), "a restarted pod's init container: {}", text(&out));
    std::fs::remove_file(&marker)?;

    // A joining member: nothing restored.
    let joiner = dir.path().join("data-new-1");
    let joining: Vec<(&str, &str)> = from_configmap.iter().map(|(k, v)| (*k, if *k == "RAFTKV_INITIAL_CLUSTER_STATE" { "existing" } else { *v })).collect();
    let out = run_container(&init, "new-1", &joining, &|a| a.replace(DATA_DIR, &joiner.display().to_string()))?;
    ensure!(out.status.success() && !joiner.exists(), "a joining member's init container: {}", text(&out));

    // The backup deleted under `Delete`: the rendered delete Job's
    // container removes the snapshot from the store, and again without
    // error (a retried Job).
    let stored = store.root().join(raftkv_tests::objstores::BUCKET).join("prod/prod/old/b0.snap");
    ensure!(stored.is_file(), "the backup is not in the store at {}", stored.display());
    let delete = delete_job(&backup, "raftkv/raftkv:0.1.0", &report.location);
    let container = &delete.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("a pod")?.containers[0];
    for round in ["first", "again"] {
        let out = run_container(container, "b0-delete-x7k2p", &[], &|a| a)?;
        ensure!(out.status.success() && !stored.exists(), "{round} delete Job: {}", text(&out));
    }

    // raftkv serves the restored data dir with every key and revision (the
    // peer URL recorded in it is the pod's DNS name, which a one-member
    // cluster never dials).
    served.spawn()?;
    served.wait_ready().await?;
    let mut m = served.client().await?;
    let after = m.get("", Some(all())).await?;
    let got: Vec<String> = after.kvs().iter().map(describe::kv).collect();
    ensure!(after.header().map_or(0, |h| h.revision()) == rev && got == keys, "the restored member serves {got:#?}\nnot {keys:#?}");
    Ok(())
}
