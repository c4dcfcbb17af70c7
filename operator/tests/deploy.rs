//! `operator/deploy/operator.yaml`: valid Kubernetes objects (read back
//! into the k8s-openapi types unchanged), and a ClusterRole that grants
//! every call the operator makes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
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
            "ClusterRoleBinding",
            "Deployment"
        ]
    );
    for doc in docs() {
        match doc["kind"].as_str() {
            Some("ServiceAccount") => drop(round_trips::<ServiceAccount>(&doc)),
            Some("ClusterRole") => drop(round_trips::<ClusterRole>(&doc)),
            Some("ClusterRoleBinding") => drop(round_trips::<ClusterRoleBinding>(&doc)),
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
fn the_cluster_role_grants_every_call_the_operator_makes() {
    let role: ClusterRole = docs()
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .map(round_trips)
        .expect("a ClusterRole");
    let rules = role.rules.unwrap_or_default();
    let allows = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    // (group, resource, verb) of every call in controller.rs, the
    // finalizer, the event recorder and the lease manager.
    let calls = [
        ("raftkv.io", "kvclusters", "watch"),
        ("raftkv.io", "kvclusters", "list"),
        ("raftkv.io", "kvclusters", "patch"),
        ("raftkv.io", "kvclusters/status", "patch"),
        ("apps", "statefulsets", "get"),
        ("apps", "statefulsets", "watch"),
        ("apps", "statefulsets", "patch"),
        ("", "services", "patch"),
        ("", "services", "watch"),
        ("", "configmaps", "patch"),
        ("", "configmaps", "watch"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("policy", "poddisruptionbudgets", "watch"),
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("", "persistentvolumeclaims", "list"),
        ("", "persistentvolumeclaims", "delete"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "patch"),
    ];
    for (group, resource, verb) in calls {
        assert!(
            allows(group, resource, verb),
            "the ClusterRole does not allow {verb} {resource} in {group:?}"
        );
    }
}
