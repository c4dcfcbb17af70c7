//! raftkv's Kubernetes operator: the `KvCluster` resource and the code that
//! turns one into a running raftkv cluster on a StatefulSet.
//!
//! # Layout
//! - [`crd`]: the `KvCluster` spec and status, and the CRD `crdgen` writes.
//! - [`resources`]: pure builders of the owned objects (Services,
//!   StatefulSet, PodDisruptionBudget, bootstrap ConfigMap).
//! - [`planner`]: the membership planner, pure: observation in, the one next
//!   step out.
//! - [`members`]: the membership executor over the etcd API (MemberAdd,
//!   MemberPromote, MemberRemove, MoveLeader, Status) and the [`members::Workloads`]
//!   seam for the StatefulSet side of each step.
//! - [`render`]: the CRD and a manifest's objects as YAML (`crdgen`,
//!   `raftkv-operator render`).

pub mod crd;
pub mod members;
pub mod planner;
pub mod render;
pub mod resources;
