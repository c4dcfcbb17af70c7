//! The backup Job, pure: a `KvBackup` and its cluster in, the Job that runs
//! `raftkvctl snapshot save URL` against one member out; and the report the
//! Job leaves as its termination message, read back into the status.
//!
//! The data never passes through the operator: the Job streams the member's
//! snapshot to the store (raftkvctl's multipart upload, completed only once
//! its SHA-256 matched), with the store's credentials taken from Secrets by
//! the kubelet. A restore's init container uses the same URL and
//! environment ([`object_url`], [`env`], [`volumes`]).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, KeyToPath, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    SecretKeySelector, SecretVolumeSource, Volume as PodVolume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::Deserialize;

use super::crd::{Destination, KvBackup, SecretKey};
use crate::crd::KvCluster;
use crate::resources::MANAGER;

/// Where a volume destination is mounted in the Job's pod.
pub const VOLUME_MOUNT: &str = "/var/lib/raftkv-backups";
/// Where a GCS service account key is mounted.
const GCS_KEY_DIR: &str = "/var/run/raftkv/gcs";
/// raftkvctl in the raftkv image.
pub const RAFTKVCTL: &str = "/usr/local/bin/raftkvctl";
/// Finished Jobs stay this long for `kubectl logs`, then go.
const JOB_TTL_SECONDS: i32 = 24 * 3600;
/// A failed upload is retried this many times, each from the start.
const BACKOFF_LIMIT: i32 = 2;

fn with_slash(prefix: Option<&str>) -> String {
    match prefix.map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("{p}/"),
        _ => String::new(),
    }
}

/// The key of a backup's snapshot in its store: `PREFIX/NAMESPACE/CLUSTER/BACKUP.snap`.
pub fn object_key(prefix: Option<&str>, namespace: &str, cluster: &str, backup: &str) -> String {
    format!("{}{namespace}/{cluster}/{backup}.snap", with_slash(prefix))
}

/// The URL raftkvctl reads or writes for `key` in the destination.
pub fn object_url(dest: &Destination, key_of: impl Fn(Option<&str>) -> String) -> Option<String> {
    if let Some(s3) = &dest.s3 {
        return Some(format!("s3://{}/{}", s3.bucket, key_of(s3.prefix.as_deref())));
    }
    if let Some(gcs) = &dest.gcs {
        return Some(format!("gs://{}/{}", gcs.bucket, key_of(gcs.prefix.as_deref())));
    }
    if let Some(az) = &dest.azure {
        return Some(format!("az://{}/{}", az.container, key_of(az.prefix.as_deref())));
    }
    if let Some(v) = &dest.volume {
        return Some(format!("file://{VOLUME_MOUNT}/{}", key_of(v.prefix.as_deref())));
    }
    None
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), ..EnvVar::default() }
}

fn from_secret(name: &str, key: &SecretKey) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: key.name.clone(), key: key.key.clone(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The environment that points raftkvctl (object_store) at the store.
pub fn env(dest: &Destination) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(s3) = &dest.s3 {
        env.push(plain("AWS_REGION", s3.region.clone().unwrap_or_else(|| "us-east-1".to_owned())));
        if let Some(endpoint) = &s3.endpoint {
            env.push(plain("AWS_ENDPOINT_URL", endpoint));
            if endpoint.starts_with("http://") {
                env.push(plain("AWS_ALLOW_HTTP", "true"));
            }
        }
        if s3.force_path_style {
            env.push(plain("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"));
        }
        if let Some(c) = &s3.credentials {
            env.push(from_secret("AWS_ACCESS_KEY_ID", &c.access_key_id));
            env.push(from_secret("AWS_SECRET_ACCESS_KEY", &c.secret_access_key));
            if let Some(token) = &c.session_token {
                env.push(from_secret("AWS_SESSION_TOKEN", token));
            }
        }
    }
    if let Some(gcs) = &dest.gcs
        && let Some(key) = &gcs.application_credentials
    {
        env.push(plain("GOOGLE_SERVICE_ACCOUNT", format!("{GCS_KEY_DIR}/{}", key.key)));
    }
    if let Some(az) = &dest.azure {
        env.push(plain("AZURE_STORAGE_ACCOUNT_NAME", &az.storage_account));
        if let Some(endpoint) = &az.endpoint {
            env.push(plain("AZURE_STORAGE_ENDPOINT", endpoint));
            if endpoint.starts_with("http://") {
                env.push(plain("AZURE_ALLOW_HTTP", "true"));
            }
        }
        if let Some(key) = &az.storage_key {
            env.push(from_secret("AZURE_STORAGE_ACCOUNT_KEY", key));
        }
        if let Some(sas) = &az.sas_token {
            env.push(from_secret("AZURE_STORAGE_SAS_KEY", sas));
        }
    }
    env
}

/// The volumes the pod needs for the destination (the claim, a GCS key),
/// with their mounts.
pub fn volumes(dest: &Destination) -> (Vec<PodVolume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(v) = &dest.volume {
        volumes.push(PodVolume {
            name: "backups".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: v.claim_name.clone(), read_only: None }),
            ..PodVolume::default()
        });
        mounts.push(VolumeMount { name: "backups".to_owned(), mount_path: VOLUME_MOUNT.to_owned(), ..VolumeMount::default() });
    }
    if let Some(gcs) = &dest.gcs
        && let Some(key) = &gcs.application_credentials
    {
        volumes.push(PodVolume {
            name: "gcs-key".to_owned(),
            secret: Some(SecretVolumeSource { secret_name: Some(key.name.clone()), ..SecretVolumeSource::default() }),
            ..PodVolume::default()
        });
        mounts.push(VolumeMount { name: "gcs-key".to_owned(), mount_path: GCS_KEY_DIR.to_owned(), read_only: Some(true), ..VolumeMount::default() });
    }
    (volumes, mounts)
}

/// Every Secret key the destination names, for the operator to check before
/// it starts a Job that could only fail.
pub fn secret_keys(dest: &Destination) -> Vec<&SecretKey> {
    let mut keys = Vec::new();
    if let Some(c) = dest.s3.as_ref().and_then(|s| s.credentials.as_ref()) {
        keys.extend([&c.access_key_id, &c.secret_access_key]);
        keys.extend(c.session_token.as_ref());
    }
    keys.extend(dest.gcs.as_ref().and_then(|g| g.application_credentials.as_ref()));
    if let Some(az) = &dest.azure {
        keys.extend(az.storage_key.as_ref());
        keys.extend(az.sas_token.as_ref());
    }
    keys
}

/// The backup Job's name: the backup's, suffixed, within a label value's
/// 63 characters (a long name is cut and made unique by its hash).
pub fn job_name(backup: &str) -> String {
    suffixed(backup, "backup")
}

/// The Job that deletes a backup's stored snapshot.
pub fn delete_job_name(backup: &str) -> String {
    suffixed(backup, "delete")
}

fn suffixed(backup: &str, suffix: &str) -> String {
    let name = format!("{backup}-{suffix}");
    if name.len() <= 63 {
        return name;
    }
    let hash = backup.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{}-{:08x}-{suffix}", &backup[..(63 - 10 - suffix.len())], hash as u32)
}

/// The Job's and its pod's labels. Not the members' selector labels
/// (`app.kubernetes.io/instance` with `name: raftkv`): a backup pod that
/// matched them would join the cluster's Services (clients sent to a pod
/// that serves nothing) and its PodDisruptionBudget. The cluster is named
/// by `raftkv.io/cluster`.
fn labels(backup: &KvBackup) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "raftkv".to_owned()),
        ("raftkv.io/cluster".to_owned(), backup.spec.cluster.clone()),
        ("app.kubernetes.io/component".to_owned(), "backup".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), MANAGER.to_owned()),
        ("raftkv.io/backup".to_owned(), backup.name_any()),
    ])
}

/// A Job running raftkvctl with `args`, the destination's environment and
/// volumes.
fn raftkvctl_job(backup: &KvBackup, name: String, image: String, args: Vec<String>, owned: bool) -> Job {
    let labels = labels(backup);
    let (volumes, volume_mounts) = volumes(&backup.spec.destination);
    let container = Container {
        name: "backup".to_owned(),
        image: Some(image),
        command: Some(vec![RAFTKVCTL.to_owned()]),
        args: Some(args),
        env: Some(env(&backup.spec.destination)),
        volume_mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
        // A failure's last lines of output (raftkvctl's `Error: ...`) become
        // the message when raftkvctl wrote none.
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(backup.namespace().unwrap_or_else(|| "default".to_owned())),
            labels: Some(labels.clone()),
            owner_references: if owned { backup.controller_owner_ref(&()).map(|o| vec![o]) } else { None },
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(BACKOFF_LIMIT),
            ttl_seconds_after_finished: Some(JOB_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_owned()),
                    containers: vec![container],
                    volumes: (!volumes.is_empty()).then_some(volumes),
                    // raftkv's image runs as uid 65532; the volume is written as it.
                    security_context: Some(k8s_openapi::api::core::v1::PodSecurityContext {
                        run_as_non_root: Some(true),
                        fs_group: Some(65532),
                        ..Default::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// The Job that deletes the stored snapshot at `url` of a backup being
/// deleted (`raftkvctl snapshot delete`, idempotent), with the image the
/// backup ran. Not owned by the backup, which is going: its TTL removes it.
pub fn delete_job(backup: &KvBackup, image: &str, url: &str) -> Job {
    let args = vec!["snapshot".to_owned(), "delete".to_owned(), url.to_owned()];
    raftkvctl_job(backup, delete_job_name(&backup.name_any()), image.to_owned(), args, false)
}

/// The Job that takes `backup` from the member at `member_url`.
pub fn backup_job(backup: &KvBackup, kvc: &KvCluster, member_url: &str) -> Option<Job> {
    let namespace = backup.namespace().unwrap_or_else(|| "default".to_owned());
    let name = backup.name_any();
    let url = object_url(&backup.spec.destination, |prefix| object_key(prefix, &namespace, &backup.spec.cluster, &name))?;
    let mut args = vec![
        format!("--endpoints={member_url}"),
        "--dial-timeout=10s".to_owned(),
    ];
    let tls = client_tls(kvc);
    args.extend(tls.iter().flat_map(|t| t.args.clone()));
    args.extend([
        "snapshot".to_owned(),
        "save".to_owned(),
        url,
        "--report-file=/dev/termination-log".to_owned(),
    ]);
    let mut job = raftkvctl_job(backup, job_name(&name), kvc.spec.image(), args, true);
    if let Some(tls) = tls
        && let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut())
    {
        pod.volumes.get_or_insert_with(Vec::new).extend(tls.volumes);
        pod.containers[0].volume_mounts.get_or_insert_with(Vec::new).extend(tls.mounts);
    }
    Some(job)
}

/// raftkvctl's TLS flags for a cluster serving clients over TLS, with the
/// volumes they read: the client CA (only `ca.crt` of the members' Secret,
/// never their key) and the operator's client certificate.
struct JobTls {
    args: Vec<String>,
    volumes: Vec<PodVolume>,
    mounts: Vec<VolumeMount>,
}

const JOB_TLS_DIR: &str = "/etc/raftkv/tls";
const CLIENT_CA_VOLUME: &str = "client-ca";
const OPERATOR_TLS_VOLUME: &str = "operator-tls";

/// The Secrets a backup Job of `kvc` mounts for TLS, as (volume, Secret,
/// keys): what the Job reads, and what the operator checks exists before
/// it starts one that could only wait.
pub fn tls_secret_keys(kvc: &KvCluster) -> Vec<(&'static str, String, &'static [&'static str])> {
    let Some(secrets) = kvc.spec.tls.as_ref().map(|t| t.secrets(&kvc.name_any())) else { return Vec::new() };
    let Some(client) = secrets.client else { return Vec::new() };
    let mut keys: Vec<(&'static str, String, &'static [&'static str])> = vec![(CLIENT_CA_VOLUME, client, &["ca.crt"])];
    keys.extend(secrets.operator.map(|o| (OPERATOR_TLS_VOLUME, o, &["tls.crt", "tls.key"][..])));
    keys
}

fn client_tls(kvc: &KvCluster) -> Option<JobTls> {
    let secrets = tls_secret_keys(kvc);
    if secrets.is_empty() {
        return None;
    }
    let mut tls = JobTls { args: vec![format!("--cacert={JOB_TLS_DIR}/{CLIENT_CA_VOLUME}/ca.crt")], volumes: Vec::new(), mounts: Vec::new() };
    for (volume, secret, keys) in secrets {
        if volume == OPERATOR_TLS_VOLUME {
            tls.args.extend([format!("--cert={JOB_TLS_DIR}/{volume}/tls.crt"), format!("--key={JOB_TLS_DIR}/{volume}/tls.key")]);
        }
        tls.volumes.push(PodVolume {
            name: volume.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                items: Some(keys.iter().map(|k| KeyToPath { key: (*k).to_owned(), path: (*k).to_owned(), mode: None }).collect()),
                ..SecretVolumeSource::default()
            }),
            ..PodVolume::default()
        });
        tls.mounts.push(VolumeMount {
            name: volume.to_owned(),
            mount_path: format!("{JOB_TLS_DIR}/{volume}"),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    Some(tls)
}

/// What `raftkvctl snapshot save --report-file` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub location: String,
    pub size: i64,
    pub sha256: String,
    pub revision: i64,
    #[serde(default)]
    pub total_key: i64,
}

/// A finished backup container's termination message: the report when it
/// succeeded, its error otherwise (the last lines it printed, without
/// raftkvctl's `Error: ` prefix).
pub fn read_report(message: &str) -> Result<Report, String> {
    let message = message.trim();
    if let Ok(report) = serde_json::from_str::<Report>(message) {
        return Ok(report);
    }
    let last = message.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("the backup Job left no message");
    Err(last.trim().strip_prefix("Error: ").unwrap_or(last.trim()).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::crd::{Azure, Gcs, KvBackupSpec, S3, S3Credentials, Volume};

    fn key(name: &str, key: &str) -> SecretKey {
        SecretKey { name: name.into(), key: key.into() }
    }

    fn s3() -> Destination {
        Destination {
            s3: Some(S3 {
                bucket: "backups".into(),
                prefix: Some("/raftkv/".into()),
                region: None,
                endpoint: Some("http://minio.storage:9000".into()),
                force_path_style: true,
                credentials: Some(S3Credentials {
                    access_key_id: key("s3", "id"),
                    secret_access_key: key("s3", "secret"),
                    session_token: None,
                }),
            }),
            ..Destination::default()
        }
    }

    fn backup(dest: Destination) -> KvBackup {
        let mut b = KvBackup::new("nightly-1", KvBackupSpec { cluster: "demo".into(), destination: dest, reclaim_policy: Default::default() });
        b.metadata.namespace = Some("prod".into());
        b.metadata.uid = Some("uid-1".into());
        b
    }

    fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
        env.iter()
            .map(|e| {
                let v = match (&e.value, &e.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(src)) => {
                        let s = src.secret_key_ref.as_ref().expect("a secret ref");
                        format!("secret:{}/{}", s.name, s.key)
                    }
                    _ => String::new(),
                };
                (e.name.clone(), v)
            })
            .collect()
    }

    #[test]
    fn each_destination_names_its_url_and_environment() {
        let key_of = |p: Option<&str>| object_key(p, "prod", "demo", "nightly-1");
        assert_eq!(object_url(&s3(), key_of).as_deref(), Some("s3://backups/raftkv/prod/demo/nightly-1.snap"));
        let vars = env_map(&env(&s3()));
        assert_eq!(vars["AWS_ENDPOINT_URL"], "http://minio.storage:9000");
        assert_eq!(vars["AWS_ALLOW_HTTP"], "true");
        assert_eq!(vars["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"], "false");
        assert_eq!(vars["AWS_REGION"], "us-east-1");
        assert_eq!(vars["AWS_ACCESS_KEY_ID"], "secret:s3/id");
        assert_eq!(vars["AWS_SECRET_ACCESS_KEY"], "secret:s3/secret");

        let gcs = Destination {
            gcs: Some(Gcs { bucket: "b".into(), prefix: None, application_credentials: Some(key("gcp", "sa.json")) }),
            ..Destination::default()
        };
        assert_eq!(object_url(&gcs, key_of).as_deref(), Some("gs://b/prod/demo/nightly-1.snap"));
        assert_eq!(env_map(&env(&gcs))["GOOGLE_SERVICE_ACCOUNT"], "/var/run/raftkv/gcs/sa.json");
        let (vols, mounts) = volumes(&gcs);
        assert_eq!(vols[0].secret.as_ref().and_then(|s| s.secret_name.as_deref()), Some("gcp"));
        assert_eq!(mounts[0].mount_path, "/var/run/raftkv/gcs");

        let azure = Destination {
            azure: Some(Azure {
                storage_account: "acct".into(),
                container: "c".into(),
                prefix: Some("x".into()),
                endpoint: None,
                storage_key: None,
                sas_token: Some(key("az", "sas")),
            }),
            ..Destination::default()
        };
        assert_eq!(object_url(&azure, key_of).as_deref(), Some("az://c/x/prod/demo/nightly-1.snap"));
        let vars = env_map(&env(&azure));
        assert_eq!(vars["AZURE_STORAGE_ACCOUNT_NAME"], "acct");
        assert_eq!(vars["AZURE_STORAGE_SAS_KEY"], "secret:az/sas");
        assert!(!vars.contains_key("AZURE_STORAGE_ACCOUNT_KEY"));

        let volume = Destination { volume: Some(Volume { claim_name: "nfs".into(), prefix: None }), ..Destination::default() };
        assert_eq!(object_url(&volume, key_of).as_deref(), Some("file:///var/lib/raftkv-backups/prod/demo/nightly-1.snap"));
        let (vols, mounts) = volumes(&volume);
        assert_eq!(vols[0].persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("nfs"));
        assert_eq!(mounts[0].mount_path, VOLUME_MOUNT);
        assert!(env(&volume).is_empty() && secret_keys(&volume).is_empty());

        assert_eq!(object_url(&Destination::default(), key_of), None);
        assert_eq!(secret_keys(&s3()), vec![&key("s3", "id"), &key("s3", "secret")]);
    }

    #[test]
    fn a_tls_clusters_job_presents_the_operator_certificate_and_trusts_only_the_client_ca() {
        let mut kvc = crate::resources::tests::kvcluster("demo", 3);
        kvc.spec.tls = Some(
            serde_json::from_value(serde_json::json!({"clientSecretName": "client-tls", "operatorSecretName": "op-tls"}))
                .expect("tls"),
        );
        let job = backup_job(&backup(s3()), &kvc, "https://demo-1.demo-peer.prod.svc:2379").expect("a job");
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        let args = pod.containers[0].args.clone().unwrap_or_default();
        let snapshot = args.iter().position(|a| a == "snapshot").expect("snapshot");
        for flag in [
            "--cacert=/etc/raftkv/tls/client-ca/ca.crt",
            "--cert=/etc/raftkv/tls/operator-tls/tls.crt",
            "--key=/etc/raftkv/tls/operator-tls/tls.key",
        ] {
            let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("{flag} missing from {args:?}"));
            assert!(at < snapshot, "{flag} after the subcommand: {args:?}");
        }
        // The members' Secret lends its CA only, never their key.
        let projected: Vec<(String, Vec<String>)> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| {
                let s = v.secret?;
                Some((s.secret_name?, s.items?.into_iter().map(|i| i.key).collect()))
            })
            .collect();
        assert!(projected.contains(&("client-tls".to_owned(), vec!["ca.crt".to_owned()])), "{projected:?}");
        assert!(projected.contains(&("op-tls".to_owned(), vec!["tls.crt".to_owned(), "tls.key".to_owned()])), "{projected:?}");
        assert_eq!(
            tls_secret_keys(&kvc).into_iter().map(|(_, name, _)| name).collect::<Vec<_>>(),
            ["client-tls", "op-tls"],
            "what the operator checks before the Job is what the Job mounts"
        );
    }

    #[test]
    fn the_job_runs_raftkvctl_against_the_member_and_reports_as_its_termination_message() {
        let kvc = crate::resources::tests::kvcluster("demo", 3);
        let job = backup_job(&backup(s3()), &kvc, "http://demo-1.demo-peer.prod.svc:2379").expect("a job");
        assert_eq!(job.metadata.name.as_deref(), Some("nightly-1-backup"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("prod"));
        let owner = &job.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("KvBackup", "nightly-1", Some(true)));
        let spec = job.spec.expect("spec");
        assert_eq!(spec.backoff_limit, Some(BACKOFF_LIMIT));
        // Its pod stays out of the members' Services and PDB: it does not
        // carry every one of their selector labels.
        let pod_labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).expect("pod labels");
        let selector = crate::resources::Names::of(&kvc).selector_labels();
        assert!(selector.iter().any(|(k, v)| pod_labels.get(k) != Some(v)), "the backup pod matches the members' selector: {pod_labels:?}");
        assert_eq!(pod_labels.get("raftkv.io/cluster").map(String::as_str), Some("demo"));
        let pod = spec.template.spec.expect("pod");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("raftkv/raftkv:0.1.0"));
        assert_eq!(c.command.as_deref(), Some(&[RAFTKVCTL.to_owned()][..]));
        assert_eq!(
            c.args.as_deref().expect("args"),
            [
                "--endpoints=http://demo-1.demo-peer.prod.svc:2379",
                "--dial-timeout=10s",
                "snapshot",
                "save",
                "s3://backups/raftkv/prod/demo/nightly-1.snap",
                "--report-file=/dev/termination-log"
            ]
        );
        assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
        assert_eq!(env_map(c.env.as_deref().expect("env"))["AWS_SECRET_ACCESS_KEY"], "secret:s3/secret");
    }

    #[test]
    fn the_delete_job_runs_snapshot_delete_with_the_stores_environment_and_no_owner() {
        let job = delete_job(&backup(s3()), "raftkv/raftkv:0.1.0", "s3://backups/raftkv/prod/demo/nightly-1.snap");
        assert_eq!(job.metadata.name.as_deref(), Some("nightly-1-delete"));
        assert_eq!(job.metadata.owner_references, None);
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref().expect("args"), ["snapshot", "delete", "s3://backups/raftkv/prod/demo/nightly-1.snap"]);
        assert_eq!(env_map(c.env.as_deref().expect("env"))["AWS_ACCESS_KEY_ID"], "secret:s3/id");
    }

    #[test]
    fn long_backup_names_make_unique_job_names_within_63_characters() {
        let a = job_name(&"a".repeat(60));
        let b = job_name(&format!("{}b", "a".repeat(59)));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(job_name("short"), "short-backup");
        let d = delete_job_name(&"a".repeat(60));
        assert!(d.len() <= 63 && d.ends_with("-delete") && d != a, "{d}");
    }

    #[test]
    fn reports_and_errors_read_back_from_the_termination_message() {
        let msg = r#"{"location":"s3://b/k","size":544,"sha256":"feec","revision":4,"totalKey":6,"hash":3583063090}"#;
        assert_eq!(
            read_report(msg),
            Ok(Report { location: "s3://b/k".into(), size: 544, sha256: "feec".into(), revision: 4, total_key: 6 })
        );
        let logs = "snapshot save [=====] 3 MiB\nError: s3://b/k: Object at location k not found: NoSuchBucket\n";
        assert_eq!(read_report(logs), Err("s3://b/k: Object at location k not found: NoSuchBucket".into()));
        assert_eq!(read_report(""), Err("the backup Job left no message".into()));
    }
}
