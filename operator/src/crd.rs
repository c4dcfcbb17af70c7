//! The `KvCluster` custom resource (`raftkv.io/v1alpha1`): what a user asks
//! for (spec) and what the operator reports (status), including the
//! membership operation in flight. The CRD in `crds/` is generated from these
//! types by `crdgen`; nothing here talks to Kubernetes or to raftkv.

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group of every raftkv resource.
pub const GROUP: &str = "raftkv.io";

/// A raftkv cluster: members on a StatefulSet, grown, shrunk, healed and
/// upgraded one membership step at a time.
// Several printer columns share a type; clippy takes that for a repeated
// attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "raftkv.io",
    version = "v1alpha1",
    kind = "KvCluster",
    plural = "kvclusters",
    shortname = "kvc",
    namespaced,
    doc = "A raftkv cluster: members on a StatefulSet, scaled, healed and upgraded one membership step at a time",
    status = "KvClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.replicas",
        description = "Members asked for"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Healthy voting members"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.version",
        description = "raftkv version the members run"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "The raft leader"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)",
    "message": "bootstrap is read when the cluster is created and cannot change: a restore makes a new KvCluster"
}, {
    "rule": "!(has(self.maintenance) && has(self.maintenance.compaction) && has(self.server) && has(self.server.autoCompaction))",
    "message": "compaction is set in maintenance.compaction or in server.autoCompaction, not both"
}, {
    "rule": "has(self.tls) == has(oldSelf.tls) && (!has(self.tls) || self.tls == oldSelf.tls)",
    "message": "tls is set when the cluster is created and cannot change (the members' URLs would change scheme); renew certificates by updating their Secrets"
}]))]
pub struct KvClusterSpec {
    /// Voting members. Odd sizes tolerate as many failures as the next even
    /// size and are cheaper: 1, 3, 5, 7 or 9 are the usual choices.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9))] // resources::MAX_MEMBERS
    pub replicas: i32,
    /// raftkv version, e.g. `0.1.0` or `v0.2.0-rc.1`; names the image tag
    /// unless `image` is set.
    #[schemars(regex(pattern = r"^v?[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$"))]
    pub version: String,
    /// A full image reference to run instead of `raftkv/raftkv:<version>`
    /// (a mirror, a digest); `version` still says what it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    #[serde(default)]
    pub storage: Storage,
    /// Requests and limits of the raftkv container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// What the members' pods get besides raftkv itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,
    /// TLS for clients and peers, from Secrets or from cert-manager. Set
    /// when the cluster is created; it cannot change after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// raftkv server flags, passed to every member; a change rolls the
    /// members one at a time, as an upgrade does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSettings>,
    /// Defragmentation on a schedule or past thresholds, and what is done
    /// when a member runs out of space (NOSPACE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// How a new cluster starts: empty (the default), or restored from a
    /// backup. Read when the cluster is created; it cannot change after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
    /// While true the operator changes nothing (it still reports status).
    #[serde(default)]
    pub paused: bool,
}

/// Maintenance the operator runs on the members, one at a time, followers
/// first and the leader last (after moving leadership off it), only while
/// every voter is healthy and no membership change is under way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// The members' own compaction (raftkv's `--auto-compaction-mode` and
    /// `--auto-compaction-retention`): `periodic` keeps `retention` of
    /// history (`1h`), `revision` keeps that many revisions. In the pod
    /// template, so a change rolls the members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<AutoCompaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defragmentation: Option<Defragmentation>,
    /// On a NOSPACE alarm: compact to the current revision, defragment
    /// every member, disarm the alarm; if the data still does not fit the
    /// quota, say so instead of looping. On by default.
    #[serde(default = "yes")]
    pub nospace_remediation: bool,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance { compaction: None, defragmentation: None, nospace_remediation: true }
    }
}

fn yes() -> bool {
    true
}

/// When to defragment every member: on a cron schedule (UTC), and/or once
/// a member's free space (`dbSize - dbSizeInUse`) passes a size or a share
/// of its file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.schedule) || has(self.minFreeBytes) || has(self.minFreePercent)",
    "message": "a defragmentation needs a schedule, a threshold, or both"
}]))]
pub struct Defragmentation {
    /// A cron expression, as a KvBackupSchedule's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub schedule: Option<String>,
    /// Defragment once a member's free space reaches this size (`1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_size_schema")]
    pub min_free_bytes: Option<Quantity>,
    /// Defragment once a member's free space reaches this share of its
    /// file, in percent (with at least 16 MiB free, so small files are left
    /// alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub min_free_percent: Option<u32>,
}

/// A new cluster's first data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// A snapshot to restore: a `KvBackup` of this namespace, or an object in
/// a store (a snapshot raftkv or etcd wrote). The founding member's volume
/// is made from it before raftkv first starts; the cluster then keeps its
/// keys and revisions, under a new cluster id, and grows to its size as
/// any new cluster does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.backup) != has(self.source)",
    "message": "a restore names either a backup or a source"
}]))]
pub struct RestoreSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RestoreSource>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRef {
    /// A Completed `KvBackup` in the cluster's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// An object in a store: a backup's destination, and the object's key
/// there (after the destination's prefix).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.s3), has(self.gcs), has(self.azure), has(self.volume)].filter(x, x).size() == 1",
    "message": "exactly one of s3, gcs, azure and volume"
}]))]
pub struct RestoreSource {
    #[serde(flatten)]
    pub destination: crate::backup::crd::Destination,
    #[schemars(length(min = 1))]
    pub key: String,
}

fn default_replicas() -> i32 {
    3
}

/// Each member's persistent volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.size == oldSelf.size",
        "message": "storage.size cannot change: a StatefulSet's volume claim templates are immutable"
    },
    {
        "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
        "message": "storage.storageClassName cannot change: a StatefulSet's volume claim templates are immutable"
    }
]))]
pub struct Storage {
    /// Requested size of each member's volume.
    #[serde(default = "default_size")]
    #[schemars(schema_with = "quantity_schema")]
    pub size: Quantity,
    /// The StorageClass of the volumes; the cluster's default if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to a member's volume when scale-in removes the member.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

fn default_size() -> Quantity {
    Quantity("8Gi".to_owned())
}

/// Kubernetes' own quantity syntax (`8Gi`, `500M`, `1e9`), as a string.
fn quantity_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
    })
}

/// A whole number of bytes with an optional unit: the quantities
/// `byte_size` reads (no exponents, no milli-units).
fn byte_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "nullable": true,
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,6})?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
    })
}

/// Bytes in a quantity of `byte_size_schema`'s form (`8Gi`, `1.5G`,
/// `2147483648`); None for any other form, or a size that is not a whole
/// number of bytes or does not fit.
pub fn byte_size(q: &Quantity) -> Option<i64> {
    let s = q.0.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let multiplier: u128 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || whole.len() > 15 || fraction.len() > 6 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let scale = 10u128.pow(fraction.len() as u32);
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    let scaled = mantissa.checked_mul(multiplier)?;
    if scaled % scale != 0 {
        return None;
    }
    i64::try_from(scaled / scale).ok()
}

/// `Delete` removes a member's volume once scale-in removed the member;
/// `Retain` (the default) keeps it for an administrator to inspect or
/// delete.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    Delete,
    #[default]
    Retain,
}

/// Pod settings for scheduling and bookkeeping.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// TLS for a cluster's clients and peers: Secrets the user provides, or
/// cert-manager `Certificate`s the operator requests from an issuer. Each
/// Secret holds `tls.crt`, `tls.key` and `ca.crt` (the layout of
/// cert-manager and of `kubernetes.io/tls` Secrets with a CA). Members
/// reload renewed certificate files without a restart, and the operator
/// reads its own from the Secret at every reconciliation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.certManager) || (!has(self.clientSecretName) && !has(self.peerSecretName) && !has(self.operatorSecretName))",
    "message": "either Secrets or a cert-manager issuer, not both"
}, {
    "rule": "has(self.certManager) || has(self.clientSecretName) || has(self.peerSecretName)",
    "message": "tls needs clientSecretName, peerSecretName or certManager"
}, {
    "rule": "!has(self.operatorSecretName) || has(self.clientSecretName)",
    "message": "operatorSecretName is the client certificate the operator presents to members serving clients over TLS: it needs clientSecretName"
}, {
    "rule": "!has(self.clientSecretName) || has(self.operatorSecretName) || (has(self.clientCertAuth) && !self.clientCertAuth)",
    "message": "members require client certificates (clientCertAuth, the default): operatorSecretName must name the client certificate the operator and its backup Jobs present"
}, {
    "rule": "!has(self.clientCertAuth) || has(self.clientSecretName) || has(self.certManager)",
    "message": "clientCertAuth needs client TLS (clientSecretName or certManager)"
}]))]
pub struct Tls {
    /// Members serve clients over https with this Secret's certificate
    /// (its names must cover `*.<cluster>-peer.<namespace>.svc` and the
    /// client Service `<cluster>.<namespace>.svc`); its `ca.crt` is the CA
    /// client certificates must be signed by (with `clientCertAuth`), and
    /// the one the operator verifies members with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub client_secret_name: Option<String>,
    /// Raft between members over https with this Secret's certificate,
    /// which each member also presents to its peers as a client (it needs
    /// both the server and the client auth usage, or neither); peers must
    /// be signed by its `ca.crt` (`--peer-client-cert-auth`). A member
    /// takes a peer's certificate only if it names the address the peer
    /// connects from, as etcd: list each member's name
    /// (`<cluster>-N.<cluster>-peer.<namespace>.svc`), or
    /// `*.<cluster>-peer.<namespace>.svc.<cluster domain>` where the
    /// cluster DNS answers reverse lookups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub peer_secret_name: Option<String>,
    /// The client certificate (signed by the client CA) the operator and
    /// its backup Jobs present to the members. Its common name is the user
    /// it acts as once authentication is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub operator_secret_name: Option<String>,
    /// Whether members require a client certificate signed by the client
    /// CA (`--client-cert-auth`). Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_auth: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerIssuer>,
}

/// The Secrets a cluster's TLS comes from, whichever way it is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecrets {
    /// Client TLS: the members' serving certificate and the client CA.
    pub client: Option<String>,
    pub peer: Option<String>,
    /// The operator's client certificate, when members require one.
    pub operator: Option<String>,
}

impl Tls {
    /// The refusals of the CRD's rules, for an API server that skips them.
    pub fn check(&self) -> Result<(), &'static str> {
        let names = [&self.client_secret_name, &self.peer_secret_name, &self.operator_secret_name];
        if names.iter().any(|n| n.as_deref() == Some("")) || self.cert_manager.as_ref().is_some_and(|c| c.name.is_empty()) {
            return Err("a TLS Secret or issuer name is empty");
        }
        let secrets = self.client_secret_name.is_some() || self.peer_secret_name.is_some() || self.operator_secret_name.is_some();
        if self.cert_manager.is_some() && secrets {
            return Err("either Secrets or a cert-manager issuer, not both");
        }
        if self.cert_manager.is_none() && self.client_secret_name.is_none() && self.peer_secret_name.is_none() {
            return Err("tls needs clientSecretName, peerSecretName or certManager");
        }
        if self.operator_secret_name.is_some() && self.client_secret_name.is_none() {
            return Err("operatorSecretName is the client certificate the operator presents to members serving clients over TLS: it needs clientSecretName");
        }
        if self.client_secret_name.is_some() && self.operator_secret_name.is_none() && self.client_cert_auth != Some(false) {
            return Err("members require client certificates (clientCertAuth, the default): operatorSecretName must name the client certificate the operator and its backup Jobs present");
        }
        if self.client_cert_auth.is_some() && self.client_secret_name.is_none() && self.cert_manager.is_none() {
            return Err("clientCertAuth needs client TLS (clientSecretName or certManager)");
        }
        Ok(())
    }

    /// Whether members require client certificates.
    pub fn client_cert_auth(&self) -> bool {
        self.client_cert_auth.unwrap_or(true)
    }

    /// The Secrets, named by the user or by the Certificates the operator
    /// requests for `cluster` (`<cluster>-client-tls`, `-peer-tls`,
    /// `-operator-tls`).
    pub fn secrets(&self, cluster: &str) -> TlsSecrets {
        if self.cert_manager.is_some() {
            return TlsSecrets {
                client: Some(format!("{cluster}-client-tls")),
                peer: Some(format!("{cluster}-peer-tls")),
                operator: self.client_cert_auth().then(|| format!("{cluster}-operator-tls")),
            };
        }
        TlsSecrets {
            client: self.client_secret_name.clone(),
            peer: self.peer_secret_name.clone(),
            operator: self.operator_secret_name.clone(),
        }
    }
}

/// A cert-manager `Issuer` or `ClusterIssuer`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerIssuer {
    /// The issuer's name; an `Issuer` is in the KvCluster's namespace.
    #[schemars(length(min = 1))]
    pub name: String,
    /// `Issuer` (the default) or `ClusterIssuer`, or an external issuer's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The issuer's API group: `cert-manager.io` (the default) or an
    /// external issuer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// raftkv's server flags (etcd's names).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerSettings {
    /// Backend size at which the NOSPACE alarm goes off
    /// (`--quota-backend-bytes`): bytes, with an optional binary (`Ki` ..
    /// `Ei`) or decimal (`k` .. `E`) suffix, as `8Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "byte_size_schema")]
    pub quota_backend_bytes: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub snapshot_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval_ms: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub election_timeout_ms: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_compaction: Option<AutoCompaction>,
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoCompaction {
    pub mode: CompactionMode,
    /// A duration (`30m`, `2h`) in periodic mode, a revision count in
    /// revision mode.
    pub retention: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum CompactionMode {
    Periodic,
    Revision,
}

/// What the operator last observed and what it is doing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KvClusterStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: Phase,
    /// Members in the cluster (voters and learners).
    #[serde(default)]
    pub replicas: i32,
    /// Voting members that answer and have a leader.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The version every member runs, once they all run the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The raft cluster id, in hex as etcdctl prints it.
    #[serde(default, rename = "clusterID", skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The leader's member name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The membership operation in flight, written before each of its steps
    /// is taken so that a restarted operator resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// The snapshot `spec.bootstrap.restore` resolved to, recorded before
    /// the first member was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<RestoreStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceStatus>,
    /// The quorum-loss recovery in flight, or the last one done (what was
    /// lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<Recovery>,
}

/// A quorum-loss recovery a person asked for (the annotation
/// `raftkv.io/force-new-cluster`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recovery {
    /// The survivor, forced into a cluster of one.
    pub member: String,
    pub step: RecoveryStep,
    /// The members removed: their data, and any write only they had, is
    /// lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecoveryStep {
    /// The survivor restarts with `--force-new-cluster`.
    Forcing,
    Done,
}

/// The maintenance run in flight (recorded before each step, as a
/// membership operation is), and the last ones done.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<MaintenanceRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_defragmentation: Option<Time>,
    /// The quota a NOSPACE remediation found the data does not fit: no new
    /// remediation starts until the quota changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_exceeds_quota: Option<i64>,
    /// The last value of the annotation `raftkv.io/defragment` a run was
    /// started for (a request is pending while the annotation differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceRun {
    pub reason: MaintenanceReason,
    pub started_at: Time,
    /// Compacted to this revision (a NOSPACE remediation's first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted: Option<i64>,
    /// Members defragmented so far, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub defragmented: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaintenanceReason {
    Schedule,
    Threshold,
    NoSpace,
    /// The annotation `raftkv.io/defragment` (`kubectl raftkv defrag`).
    Requested,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatus {
    pub location: String,
    pub destination: crate::backup::crd::Destination,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    #[default]
    Creating,
    Running,
    Scaling,
    Healing,
    Upgrading,
    Degraded,
    Paused,
}

/// One raft member as the operator last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    pub name: String,
    /// Member id in hex.
    pub id: String,
    #[serde(rename = "peerURL")]
    pub peer_url: String,
    #[serde(default)]
    pub is_leader: bool,
    #[serde(default)]
    pub is_learner: bool,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_size: Option<i64>,
    /// UID of the PersistentVolumeClaim this member was seen on first: a
    /// claim with another UID means the member lost its data.
    #[serde(default, rename = "volumeUID", skip_serializing_if = "Option::is_none")]
    pub volume_uid: Option<String>,
}

/// A membership change, one member at a time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub kind: OperationKind,
    /// StatefulSet ordinal of the member concerned.
    pub ordinal: i32,
    /// The step being taken or awaited.
    pub step: Step,
    /// For a replacement: the id (hex) of the member being replaced, so
    /// that a resumed replacement tells the old member from its successor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum OperationKind {
    /// Add ordinal `n` as a learner, start its pod, promote it.
    ScaleOut,
    /// Move leadership off ordinal `n-1`, remove it, stop its pod, reclaim
    /// its volume.
    ScaleIn,
    /// A member whose volume was replaced: remove it, give it a fresh
    /// volume, add it again as a learner, promote it.
    Replace,
    /// Restart one member on the StatefulSet's current template (leadership
    /// moved off it first).
    Upgrade,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Step {
    AddLearner,
    StartPod,
    Promote,
    MoveLeader,
    RemoveMember,
    StopPod,
    DeleteVolume,
    RestartPod,
    WaitHealthy,
}

impl KvClusterSpec {
    /// A cluster of `version` with every other field at its default, as a
    /// manifest naming only the version reads.
    pub fn of_version(version: &str) -> KvClusterSpec {
        KvClusterSpec {
            replicas: default_replicas(),
            version: version.to_owned(),
            image: None,
            storage: Storage::default(),
            resources: None,
            pod_template: None,
            tls: None,
            server: None,
            maintenance: None,
            bootstrap: None,
            paused: false,
        }
    }

    /// The image the members run.
    pub fn image(&self) -> String {
        match &self.image {
            Some(image) => image.clone(),
            None => format!("raftkv/raftkv:{}", self.version),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn tls_is_checked_as_the_crds_rules_refuse_it() {
        let tls = |v: serde_json::Value| -> Tls { serde_json::from_value(v).expect("tls") };
        let refused = |v: serde_json::Value| tls(v).check().expect_err("refused");
        assert!(refused(serde_json::json!({})).contains("needs clientSecretName"));
        assert!(refused(serde_json::json!({"peerSecretName": ""})).contains("is empty"));
        assert!(refused(serde_json::json!({"certManager": {"name": "ca"}, "peerSecretName": "p"})).contains("not both"));
        assert!(refused(serde_json::json!({"clientSecretName": "c"})).contains("operatorSecretName must name"));
        assert!(refused(serde_json::json!({"peerSecretName": "p", "operatorSecretName": "o"})).contains("it needs clientSecretName"));
        assert!(refused(serde_json::json!({"peerSecretName": "p", "clientCertAuth": false})).contains("clientCertAuth needs client TLS"));
        for ok in [
            serde_json::json!({"clientSecretName": "c", "operatorSecretName": "o"}),
            serde_json::json!({"clientSecretName": "c", "clientCertAuth": false}),
            serde_json::json!({"peerSecretName": "p"}),
            serde_json::json!({"certManager": {"name": "ca"}, "clientCertAuth": false}),
        ] {
            assert_eq!(tls(ok.clone()).check(), Ok(()), "{ok}");
        }
        // Peer TLS alone: clients stay plaintext, the operator needs nothing.
        let peer_only = tls(serde_json::json!({"peerSecretName": "p"})).secrets("demo");
        assert_eq!((peer_only.client, peer_only.peer.as_deref(), peer_only.operator), (None, Some("p"), None));
    }

    #[test]
    fn byte_sizes_read_as_kubernetes_writes_them() {
        let q = |s: &str| byte_size(&Quantity(s.to_owned()));
        assert_eq!(q("2147483648"), Some(2147483648));
        assert_eq!(q("8Gi"), Some(8 << 30));
        assert_eq!(q("2G"), Some(2_000_000_000));
        assert_eq!(q("1.5Gi"), Some(3 << 29));
        assert_eq!(q("512Mi"), Some(512 << 20));
        assert_eq!(q("7Ei"), Some(7 << 60));
        // Not whole bytes, too large, or forms the schema refuses.
        assert_eq!(q("1.5"), None);
        assert_eq!(q("8Ei"), None);
        assert_eq!(q("1e9"), None);
        assert_eq!(q("100m"), None);
        assert_eq!(q("Gi"), None);
        assert_eq!(q("-1Gi"), None);
    }

    use super::*;
    use kube::CustomResourceExt;

    fn crd_json() -> serde_json::Value {
        serde_json::to_value(KvCluster::crd()).expect("the CRD serializes")
    }

    #[test]
    fn crd_names_group_kind_short_name_and_scope() {
        let crd = KvCluster::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("kvclusters.raftkv.io"));
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["kvc".to_owned()]));
    }

    #[test]
    fn crd_has_status_and_scale_subresources() {
        let crd = crd_json();
        let sub = &crd["spec"]["versions"][0]["subresources"];
        assert!(sub["status"].is_object());
        assert_eq!(sub["scale"]["specReplicasPath"], ".spec.replicas");
        assert_eq!(sub["scale"]["statusReplicasPath"], ".status.replicas");
    }

    #[test]
    fn crd_prints_replicas_ready_version_leader_age() {
        let crd = crd_json();
        let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .expect("printer columns")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        for name in ["Replicas", "Ready", "Version", "Leader", "Age"] {
            assert!(columns.contains(&name), "{name} missing from {columns:?}");
        }
    }

    #[test]
    fn schema_bounds_replicas_and_checks_version_and_quantities() {
        let crd = crd_json();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["replicas"]["minimum"], 1.0);
        assert_eq!(spec["properties"]["replicas"]["maximum"], 9.0);
        let version = regex::Regex::new(
            spec["properties"]["version"]["pattern"]
                .as_str()
                .expect("version pattern"),
        )
        .expect("the version pattern compiles");
        assert!(version.is_match("0.1.0") && version.is_match("v1.2.3-rc.1"));
        assert!(!version.is_match("latest") && !version.is_match("1.2"));
        let quantity = regex::Regex::new(
            spec["properties"]["storage"]["properties"]["size"]["pattern"]
                .as_str()
                .expect("size pattern"),
        )
        .expect("the quantity pattern compiles");
        assert!(quantity.is_match("8Gi") && quantity.is_match("500M") && quantity.is_match("1e9"));
        assert!(!quantity.is_match("eight gigs"));
        let size = &spec["properties"]["storage"]["properties"]["size"];
        assert_eq!(size["type"], "string");
        assert!(size["pattern"].is_string());
        assert_eq!(spec["required"], serde_json::json!(["version"]));
    }

    #[test]
    fn storage_class_and_size_are_immutable_by_cel() {
        let crd = crd_json();
        let storage = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["storage"];
        let rules: Vec<&str> = storage["x-kubernetes-validations"]
            .as_array()
            .expect("CEL rules on storage")
            .iter()
            .filter_map(|r| r["rule"].as_str())
            .collect();
        assert!(
            rules
                .iter()
                .any(|r| r.contains("self.storageClassName == oldSelf.storageClassName"))
        );
        assert!(
            rules
                .iter()
                .any(|r| r.contains("self.size == oldSelf.size"))
        );
    }

    #[test]
    fn spec_defaults_fill_in_a_minimal_manifest() {
        let spec: KvClusterSpec =
            serde_json::from_value(serde_json::json!({"version": "0.1.0"})).expect("minimal spec");
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.storage.size, Quantity("8Gi".into()));
        assert_eq!(spec.storage.reclaim_policy, ReclaimPolicy::Retain);
        assert!(!spec.paused);
        assert_eq!(spec.image(), "raftkv/raftkv:0.1.0");
    }
}
