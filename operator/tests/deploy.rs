//! `operator/deploy/operator.yaml`: valid Kubernetes objects (read back
//! into the k8s-openapi types unchanged), and RBAC that grants exactly
//! `raftkv_operator::rbac` (which the reconcile scenarios hold to the calls
//! the operator makes).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;

const DEPLOY: &str = include_str!("../deploy/operator.yaml");

fn docs() -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple(DEPLOY).expect("multi-document YAML")
}

fn round_trips<T: Serialize + DeserializeOwned>(doc: &serde_json::Value) -> T {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    assert_eq!(
        &serde_json::to_value(&typed).expect("serializes"),
        doc,
        "{} does not survive its schema",
        doc["kind"]
    );
    typed
}

#[test]
fn the_deploy_manifest_is_valid_kubernetes() {
    let kinds: Vec<String> = docs()
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "RoleBinding",
            "ClusterRoleBinding",
            "Deployment"
        ]
    );
    for doc in docs() {
        match doc["kind"].as_str() {
            Some("ServiceAccount") => drop(round_trips::<ServiceAccount>(&doc)),
            Some("ClusterRole") => drop(round_trips::<ClusterRole>(&doc)),
            Some("ClusterRoleBinding") => drop(round_trips::<ClusterRoleBinding>(&doc)),
            Some("Role") => drop(round_trips::<Role>(&doc)),
            Some("RoleBinding") => drop(round_trips::<RoleBinding>(&doc)),
            Some("Deployment") => {
                let deployment = round_trips::<Deployment>(&doc);
                let env: Vec<String> = deployment
                    .spec
                    .and_then(|s| s.template.spec)
                    .map(|p| {
                        p.containers[0]
                            .env
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|e| e.name)
                            .collect()
                    })
                    .unwrap_or_default();
                for name in ["POD_NAME", "POD_NAMESPACE", "WATCH_NAMESPACE"] {
                    assert!(env.iter().any(|e| e == name), "{name} missing");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn the_roles_grant_exactly_what_the_operator_needs() {
    let rbac = raftkv_operator::rbac::to_json();
    let rules_of = |kind: &str| {
        docs()
            .into_iter()
            .find(|d| d["kind"] == kind)
            .map(|d| d["rules"].clone())
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    assert_eq!(
        rules_of("ClusterRole"),
        rbac["rules"],
        "the ClusterRole is not raftkv_operator::rbac::RULES"
    );
    assert_eq!(
        rules_of("Role"),
        rbac["leaderElection"],
        "the Role is not raftkv_operator::rbac::LEADER_ELECTION"
    );
}
