//! The PodDisruptionBudget that keeps quorum through voluntary disruptions
//! (drains, node upgrades): at most (n-1)/2 members down at once.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, metadata};
use crate::crd::KvCluster;

/// How many of `replicas` voters may be down with a majority still up.
pub fn max_unavailable(replicas: i32) -> i32 {
    (replicas.max(1) - 1) / 2
}

pub fn pdb(kvc: &KvCluster) -> PodDisruptionBudget {
    let names = Names::of(kvc);
    PodDisruptionBudget {
        metadata: metadata(kvc, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(kvc.spec.replicas))),
            selector: Some(LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::tests::kvcluster;

    #[test]
    fn max_unavailable_keeps_a_majority() {
        let table = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (7, 3), (9, 4)];
        for (replicas, allowed) in table {
            assert_eq!(max_unavailable(replicas), allowed, "replicas {replicas}");
            // What stays up is a majority of the voters.
            assert!(replicas - allowed > replicas / 2);
        }
    }

    #[test]
    fn pdb_selects_the_members() {
        let kvc = kvcluster("demo", 5);
        let spec = pdb(&kvc).spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
        assert_eq!(
            spec.selector.and_then(|s| s.match_labels),
            Some(Names::of(&kvc).selector_labels())
        );
    }
}
