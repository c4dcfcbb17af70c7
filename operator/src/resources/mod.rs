//! Pure builders of the Kubernetes objects a `KvCluster` owns: the headless
//! peer Service, the client Service, the StatefulSet, the
//! PodDisruptionBudget and the bootstrap ConfigMap. They take the
//! `KvCluster` (and, for the StatefulSet and ConfigMap, what the membership
//! planner decided) and return objects; they never call the API server, so
//! `render` and the tests see exactly what the controller applies.

mod certificates;
mod configmap;
mod pdb;
mod services;
mod statefulset;

pub use certificates::{OPERATOR_COMMON_NAME, certificate_resource, certificates};
pub use configmap::{Bootstrap, InitialClusterState, configmap};
pub use pdb::{max_unavailable, pdb};
pub use services::{client_service, peer_service};
pub use statefulset::{RestoreFrom, TLS_DIR, add_restore, statefulset};

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::KvCluster;

/// The client port: gRPC and HTTP (`/health`, `/version`).
pub const CLIENT_PORT: i32 = 2379;
/// The peer port: raft between members.
pub const PEER_PORT: i32 = 2380;
/// With client TLS: `/health` and `/metrics` in plaintext, for probes and
/// scrapers (etcd's `--listen-metrics-urls`, port as kubeadm's).
pub const METRICS_PORT: i32 = 2381;
/// Where each member's volume is mounted; raftkv's data dir is a
/// subdirectory, because a fresh filesystem may hold `lost+found` and raftkv
/// refuses a non-empty directory that is not its own.
pub const VOLUME_MOUNT: &str = "/var/lib/raftkv";
pub const DATA_DIR: &str = "/var/lib/raftkv/data";
/// The volume claim template; claims are `data-<cluster>-<ordinal>`.
pub const VOLUME_NAME: &str = "data";
/// The most members a cluster has (`spec.replicas` is at most 9), so
/// ordinals are below it.
pub const MAX_MEMBERS: u32 = 9;
/// The field manager of every object the operator applies.
pub const MANAGER: &str = "raftkv-operator";

/// The names of everything one `KvCluster` owns, and its members' URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
    /// Members serve clients, and peers, over https (`spec.tls`).
    pub client_tls: bool,
    pub peer_tls: bool,
}

impl Names {
    pub fn of(kvc: &KvCluster) -> Names {
        let cluster = kvc.name_any();
        let secrets = kvc.spec.tls.as_ref().map(|t| t.secrets(&cluster));
        Names {
            client_tls: secrets.as_ref().is_some_and(|s| s.client.is_some()),
            peer_tls: secrets.as_ref().is_some_and(|s| s.peer.is_some()),
            namespace: kvc.namespace().unwrap_or_else(|| "default".to_owned()),
            cluster,
        }
    }

    pub fn client_scheme(&self) -> &'static str {
        if self.client_tls { "https" } else { "http" }
    }

    pub fn peer_scheme(&self) -> &'static str {
        if self.peer_tls { "https" } else { "http" }
    }

    /// The StatefulSet, the client Service and the PodDisruptionBudget.
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }

    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }

    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }

    /// The headless Service that gives each pod its stable DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peer", self.cluster)
    }

    pub fn configmap(&self) -> String {
        format!("{}-bootstrap", self.cluster)
    }

    /// Pod and member name of an ordinal.
    pub fn member(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The PersistentVolumeClaim the StatefulSet creates for an ordinal.
    pub fn claim(&self, ordinal: u32) -> String {
        format!("{VOLUME_NAME}-{}-{ordinal}", self.cluster)
    }

    /// The stable DNS name of an ordinal's pod.
    pub fn host(&self, ordinal: u32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.member(ordinal),
            self.peer_service(),
            self.namespace
        )
    }

    pub fn peer_url(&self, ordinal: u32) -> String {
        format!("{}://{}:{PEER_PORT}", self.peer_scheme(), self.host(ordinal))
    }

    pub fn client_url(&self, ordinal: u32) -> String {
        format!("{}://{}:{CLIENT_PORT}", self.client_scheme(), self.host(ordinal))
    }

    /// The DNS names every member's certificates must cover: any member's
    /// pod name, and the client Service. Each possible member's name is
    /// listed besides the wildcards: a member checks that the certificate a
    /// peer presents names the address it connects from (as etcd does), by
    /// the address's reverse name against the wildcards or by looking the
    /// names up, and not every cluster DNS answers reverse lookups.
    pub fn tls_dns_names(&self) -> Vec<String> {
        let ns = &self.namespace;
        let peers = self.peer_service();
        let client = self.client_service();
        let mut names = vec![format!("*.{peers}.{ns}.svc"), format!("*.{peers}.{ns}.svc.cluster.local")];
        names.extend((0..MAX_MEMBERS).map(|o| self.host(o)));
        names.extend([format!("{client}.{ns}.svc"), format!("{client}.{ns}.svc.cluster.local"), "localhost".to_owned()]);
        names
    }

    /// The ordinal of a member's name (`demo-2`), if it is one of ours.
    pub fn ordinal_of_member(&self, member: &str) -> Option<u32> {
        let ordinal = member.strip_prefix(&format!("{}-", self.cluster))?;
        let parsed: u32 = ordinal.parse().ok()?;
        (parsed.to_string() == ordinal).then_some(parsed)
    }

    /// The ordinal whose peer URL `url` is, if any.
    pub fn ordinal_of_peer_url(&self, url: &str) -> Option<u32> {
        let host = url
            .strip_prefix(self.peer_scheme())?
            .strip_prefix("://")?
            .strip_suffix(&format!(":{PEER_PORT}"))?;
        let suffix = format!(".{}.{}.svc", self.peer_service(), self.namespace);
        let member = host.strip_suffix(&suffix)?;
        let ordinal = member.strip_prefix(&format!("{}-", self.cluster))?;
        let parsed: u32 = ordinal.parse().ok()?;
        // "demo-03" is not ordinal 3's name.
        (parsed.to_string() == ordinal).then_some(parsed)
    }

    /// Labels that select this cluster's pods; never change them, a
    /// StatefulSet's selector is immutable.
    pub fn selector_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), "raftkv".to_owned()),
            (
                "app.kubernetes.io/instance".to_owned(),
                self.cluster.clone(),
            ),
        ])
    }

    /// Labels of every object the operator creates.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels();
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        );
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            "member".to_owned(),
        );
        labels
    }
}

/// Metadata of an owned object: name, namespace, labels, and the
/// `KvCluster` as controlling owner (when it came from the API server and
/// so has a uid; `render` works on manifests without one).
pub fn metadata(kvc: &KvCluster, name: String) -> ObjectMeta {
    let names = Names::of(kvc);
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(names.labels()),
        owner_references: owner_reference(kvc).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner_reference(kvc: &KvCluster) -> Option<OwnerReference> {
    kvc.controller_owner_ref(&())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::KvClusterSpec;

    pub fn kvcluster(name: &str, replicas: i32) -> KvCluster {
        let spec: KvClusterSpec =
            serde_json::from_value(serde_json::json!({"version": "0.1.0", "replicas": replicas}))
                .expect("spec");
        let mut kvc = KvCluster::new(name, spec);
        kvc.metadata.namespace = Some("prod".to_owned());
        kvc.metadata.uid = Some("6f1c2d4e-0000-4000-8000-000000000001".to_owned());
        kvc
    }

    #[test]
    fn peer_urls_are_stable_pod_dns_names_and_parse_back() {
        let names = Names::of(&kvcluster("demo", 3));
        assert_eq!(names.peer_url(2), "http://demo-2.demo-peer.prod.svc:2380");
        assert_eq!(names.client_url(0), "http://demo-0.demo-peer.prod.svc:2379");
        assert_eq!(
            names.ordinal_of_peer_url("http://demo-2.demo-peer.prod.svc:2380"),
            Some(2)
        );
        assert_eq!(
            names.ordinal_of_peer_url("http://demo-02.demo-peer.prod.svc:2380"),
            None
        );
        assert_eq!(
            names.ordinal_of_peer_url("http://other-2.other-peer.prod.svc:2380"),
            None
        );
        assert_eq!(
            names.ordinal_of_peer_url("http://demo-2.demo-peer.test.svc:2380"),
            None
        );
    }

    #[test]
    fn owned_objects_point_at_their_kvcluster_as_controller() {
        let kvc = kvcluster("demo", 3);
        let meta = metadata(&kvc, "demo".to_owned());
        let owner = &meta.owner_references.expect("owner references")[0];
        assert_eq!(owner.kind, "KvCluster");
        assert_eq!(owner.api_version, "raftkv.io/v1alpha1");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.uid, "6f1c2d4e-0000-4000-8000-000000000001");
        assert_eq!(meta.namespace.as_deref(), Some("prod"));
    }
}
