//! raftkv's Kubernetes operator: the `KvCluster` resource and the code that
//! turns one into a running raftkv cluster on a StatefulSet.
//!
//! # Layout
//! - [`crd`]: the `KvCluster` spec and status, and the CRD `crdgen` writes.
//! - [`backup`]: the `KvBackup` and `KvBackupSchedule` kinds, schedule
//!   and retention math, and the backup Job.
//! - [`resources`]: pure builders of the owned objects (Services,
//!   StatefulSet, PodDisruptionBudget, bootstrap ConfigMap).
//! - [`planner`]: the membership planner, pure: observation in, the one next
//!   step out.
//! - [`members`]: the membership executor over the etcd API (MemberAdd,
//!   MemberPromote, MemberRemove, MoveLeader, Status) and the [`members::Workloads`]
//!   seam for the StatefulSet side of each step.
//! - [`maintenance`]: the maintenance planner, pure: defragmentation on a
//!   schedule or past thresholds, NOSPACE remediation, leader last.
//! - [`recovery`]: quorum-loss recovery a person asks for, pure: the
//!   survivor forced into a cluster of one, the rest regrown.
//! - [`status`]: pure translations of pods, claims and the cluster report into
//!   the planner's observation and the `KvCluster` status (conditions, phase).
//! - [`controller`]: the reconciler over the API server (finalizer,
//!   server-side apply, status, events) and [`controller::run`].
//! - [`metrics`]: the Prometheus metrics behind `/metrics`.
//! - [`render`]: the CRD and a manifest's objects as YAML (`crdgen`,
//!   `raftkv-operator render`).
//! - [`watch`]: controllers whose watches back off one by one.
//! - [`plugin`]: `kubectl raftkv`, the kubectl plugin (status, backup,
//!   restore, defrag, move-leader, etcdctl through port-forwards).
//! - [`rbac`]: the permissions it needs, which the chart and
//!   `deploy/operator.yaml` grant (`raftkv-operator rbac`).

pub mod backup;
pub mod controller;
pub mod crd;
pub mod maintenance;
pub mod members;
pub mod metrics;
pub mod planner;
pub mod plugin;
pub mod rbac;
pub mod recovery;
pub mod render;
pub mod resources;
pub mod status;
pub mod watch;
