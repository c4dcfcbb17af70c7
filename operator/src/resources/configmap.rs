//! The bootstrap ConfigMap: `RAFTKV_INITIAL_CLUSTER`,
//! `RAFTKV_INITIAL_CLUSTER_STATE` and `RAFTKV_INITIAL_CLUSTER_TOKEN`, read
//! by every member's pod as environment (raftkv takes each flag as
//! `RAFTKV_<FLAG>`). raftkv reads them only on its first start (afterwards
//! the data dir holds its identity), so they only ever matter to the member
//! being added.
//!
//! A cluster is founded by ordinal 0 alone (`new`, itself as the initial
//! cluster); every other member joins with `existing` after a MemberAdd,
//! with the member list that MemberAdd produced.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::{Names, metadata};
use crate::crd::KvCluster;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialClusterState {
    New,
    Existing,
}

/// What the next member to start needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub state: InitialClusterState,
    /// `(name, peer URL)` of every member, the starting one included.
    pub initial_cluster: Vec<(String, String)>,
}

impl Bootstrap {
    /// Ordinal 0 founding the cluster alone.
    pub fn founding(names: &Names) -> Bootstrap {
        Bootstrap {
            state: InitialClusterState::New,
            initial_cluster: vec![(names.member(0), names.peer_url(0))],
        }
    }
}

/// The cluster token: member and cluster ids derive from it, so it must
/// never change for the life of the cluster and must differ between two
/// clusters of the same name (a deleted and recreated `KvCluster` has a new
/// uid).
pub fn token(kvc: &KvCluster) -> String {
    match kvc.uid() {
        Some(uid) => format!("{}-{uid}", kvc.name_any()),
        None => kvc.name_any(),
    }
}

pub fn configmap(kvc: &KvCluster, bootstrap: &Bootstrap) -> ConfigMap {
    let names = Names::of(kvc);
    let initial_cluster = bootstrap
        .initial_cluster
        .iter()
        .map(|(name, url)| format!("{name}={url}"))
        .collect::<Vec<_>>()
        .join(",");
    let state = match bootstrap.state {
        InitialClusterState::New => "new",
        InitialClusterState::Existing => "existing",
    };
    ConfigMap {
        metadata: metadata(kvc, names.configmap()),
        data: Some(BTreeMap::from([
            ("RAFTKV_INITIAL_CLUSTER".to_owned(), initial_cluster),
            ("RAFTKV_INITIAL_CLUSTER_STATE".to_owned(), state.to_owned()),
            ("RAFTKV_INITIAL_CLUSTER_TOKEN".to_owned(), token(kvc)),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::kvcluster;

    fn data(cm: &ConfigMap, key: &str) -> String {
        cm.data
            .as_ref()
            .and_then(|d| d.get(key))
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn ordinal_zero_founds_the_cluster_alone() {
        let kvc = kvcluster("demo", 3);
        let cm = configmap(&kvc, &Bootstrap::founding(&Names::of(&kvc)));
        assert_eq!(
            data(&cm, "RAFTKV_INITIAL_CLUSTER"),
            "demo-0=http://demo-0.demo-peer.prod.svc:2380"
        );
        assert_eq!(data(&cm, "RAFTKV_INITIAL_CLUSTER_STATE"), "new");
    }

    #[test]
    fn joiners_get_the_member_list_and_existing() {
        let kvc = kvcluster("demo", 3);
        let names = Names::of(&kvc);
        let bootstrap = Bootstrap {
            state: InitialClusterState::Existing,
            initial_cluster: (0..2)
                .map(|o| (names.member(o), names.peer_url(o)))
                .collect(),
        };
        let cm = configmap(&kvc, &bootstrap);
        assert_eq!(
            data(&cm, "RAFTKV_INITIAL_CLUSTER"),
            "demo-0=http://demo-0.demo-peer.prod.svc:2380,demo-1=http://demo-1.demo-peer.prod.svc:2380"
        );
        assert_eq!(data(&cm, "RAFTKV_INITIAL_CLUSTER_STATE"), "existing");
    }

    #[test]
    fn the_token_is_unique_per_kvcluster_object() {
        let a = kvcluster("demo", 3);
        let mut b = kvcluster("demo", 3);
        b.metadata.uid = Some("another-uid".to_owned());
        assert_ne!(token(&a), token(&b));
        assert_eq!(token(&a), token(&a.clone()));
    }
}
