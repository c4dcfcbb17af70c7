//! `KvBackup` (one backup of a cluster, taken once) and `KvBackupSchedule`
//! (backups on a cron schedule, with retention), `raftkv.io/v1alpha1`, and
//! the destination they share with a restore's source: S3 or an
//! S3-compatible store, Google Cloud Storage, Azure Blob Storage, or a
//! PersistentVolumeClaim. CloudNativePG's `Backup` and `ScheduledBackup`
//! are the model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::ReclaimPolicy;

/// A backup of a KvCluster: a snapshot streamed from one healthy member
/// (a follower when there is one) to object storage or a volume.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "raftkv.io",
    version = "v1alpha1",
    kind = "KvBackup",
    plural = "kvbackups",
    shortname = "kvb",
    namespaced,
    doc = "A backup of a KvCluster: a snapshot of one healthy member streamed to object storage or a volume",
    status = "KvBackupStatus",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster", description = "The KvCluster backed up"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision", description = "The highest revision in the snapshot"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.size", description = "Bytes stored"),
    printcolumn(name = "Location", type_ = "string", json_path = ".status.location", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "a KvBackup's spec cannot change: create another backup"
}]))]
pub struct KvBackupSpec {
    /// The KvCluster, in the backup's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
    pub destination: Destination,
    /// What happens to the stored snapshot when this KvBackup is deleted:
    /// `Retain` (the default for a backup made by hand) keeps it, `Delete`
    /// removes it from the store (a schedule's backups, so that its
    /// retention prunes the store).
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

/// Where snapshots go, and where a restore reads one: exactly one kind.
/// A snapshot of cluster `C` in namespace `N` taken by backup `B` is stored
/// at `PREFIX/N/C/B.snap`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.s3), has(self.gcs), has(self.azure), has(self.volume)].filter(x, x).size() == 1",
    "message": "exactly one of s3, gcs, azure and volume"
}]))]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<Gcs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<Azure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
}

/// A key of a Secret in the resource's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKey {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// AWS S3, or any S3-compatible store (MinIO, Ceph RGW, SeaweedFS, R2...).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3 {
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket, e.g. `raftkv/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The store's URL, for an S3-compatible store (`http://` is allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// Path-style requests (`ENDPOINT/BUCKET/KEY`), which most
    /// S3-compatible stores need.
    #[serde(default)]
    pub force_path_style: bool,
    /// Static credentials; without them the ambient identity of the pod
    /// (an IAM role for service accounts, instance metadata) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<S3Credentials>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Credentials {
    pub access_key_id: SecretKey,
    pub secret_access_key: SecretKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token: Option<SecretKey>,
}

/// Google Cloud Storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gcs {
    #[schemars(length(min = 3, max = 222))]
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A service account key (JSON); without it the pod's workload
    /// identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_credentials: Option<SecretKey>,
}

/// Azure Blob Storage.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.storageKey) && has(self.sasToken))",
    "message": "either storageKey or sasToken, not both"
}]))]
pub struct Azure {
    #[schemars(length(min = 3, max = 24))]
    pub storage_account: String,
    #[schemars(length(min = 3, max = 63))]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The blob service's URL, for an emulator or a sovereign cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub endpoint: Option<String>,
    /// The account's access key; or `sasToken`; without either the pod's
    /// managed identity is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_key: Option<SecretKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sas_token: Option<SecretKey>,
}

/// A PersistentVolumeClaim in the namespace (ReadWriteMany, or
/// ReadWriteOnce when backups run one at a time on one node).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[schemars(length(min = 1))]
    pub claim_name: String,
    /// A directory inside the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
}

/// What the backup is, once taken.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvBackupStatus {
    #[serde(default)]
    pub phase: BackupPhase,
    /// The snapshot's URL (`s3://...`, `gs://...`, `az://...`, or a path in
    /// the volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The member the snapshot came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The Job that takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The image its Job ran (raftkvctl's), which also deletes the snapshot
    /// when the cluster is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Why it failed, in the store's or the cluster's own words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Backups of a KvCluster on a cron schedule, pruned by count and age.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "raftkv.io",
    version = "v1alpha1",
    kind = "KvBackupSchedule",
    plural = "kvbackupschedules",
    shortname = "kvbs",
    namespaced,
    doc = "Backups of a KvCluster on a cron schedule, with retention by count and age",
    status = "KvBackupScheduleStatus",
    derive = "PartialEq",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last Backup", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Last Success", type_ = "date", json_path = ".status.lastSuccessfulTime"),
    printcolumn(name = "Next", type_ = "date", json_path = ".status.nextScheduleTime", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct KvBackupScheduleSpec {
    /// The KvCluster, in the schedule's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub cluster: String,
    /// A cron expression in UTC: five fields (minute granularity, as a
    /// CronJob's) or six (seconds first, as CloudNativePG's), or `@daily`,
    /// `@hourly`...
    #[schemars(length(min = 1))]
    pub schedule: String,
    /// While true no backup starts; the backups taken are kept.
    #[serde(default)]
    pub suspend: bool,
    /// Take a backup as soon as the schedule is created, without waiting
    /// for the first time the schedule names.
    #[serde(default)]
    pub immediate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    pub destination: Destination,
    /// What happens to a stored snapshot when its backup is deleted (by the
    /// retention, or by hand): `Delete` (the default) removes it from the
    /// store, `Retain` keeps it.
    #[serde(default = "delete_snapshots")]
    pub reclaim_policy: ReclaimPolicy,
}

fn delete_snapshots() -> ReclaimPolicy {
    ReclaimPolicy::Delete
}

/// How many completed backups a schedule keeps, and for how long; with
/// both, a backup goes once either says so. The newest complete backup is
/// never pruned.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.count) || has(self.maxAge)",
    "message": "a retention needs a count, a maxAge, or both"
}]))]
pub struct Retention {
    /// Completed backups kept, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,
    /// Completed backups older than this are pruned: a number and a unit
    /// (`s`, `m`, `h`, `d`, `w`), e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+[smhdw]$"))]
    pub max_age: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvBackupScheduleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the last backup was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When the last backup that completed was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The KvBackups it owns, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
