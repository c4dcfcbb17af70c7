//! `raftkv-operator render`: the objects it prints for the example manifest
//! are valid Kubernetes objects. Each document is read back into its
//! k8s-openapi type (generated from Kubernetes' OpenAPI schema) and written
//! out again: a field that is not in the schema, or of the wrong type, does
//! not survive the round trip.

use std::process::Command;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::Serialize;
use serde::de::DeserializeOwned;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/kvcluster.yaml");

fn render_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raftkv-operator"))
        .args(args)
        .output()
        .expect("raftkv-operator runs")
}

fn round_trips<T: Serialize + DeserializeOwned>(doc: &serde_json::Value) {
    let typed: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc:#}"));
    let back = serde_json::to_value(&typed).expect("serializes");
    assert_eq!(&back, doc, "{} does not survive its schema", doc["kind"]);
}

#[test]
fn render_prints_schema_valid_objects_for_the_example() {
    let out = render_cli(&["render", "-f", EXAMPLE]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("utf-8");
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&yaml).expect("multi-document YAML");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "Service",
            "Service",
            "ConfigMap",
            "StatefulSet",
            "PodDisruptionBudget"
        ]
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "prod");
        match doc["kind"].as_str() {
            Some("Service") => round_trips::<Service>(doc),
            Some("ConfigMap") => round_trips::<ConfigMap>(doc),
            Some("StatefulSet") => round_trips::<StatefulSet>(doc),
            Some("PodDisruptionBudget") => round_trips::<PodDisruptionBudget>(doc),
            other => panic!("unexpected kind {other:?}"),
        }
    }
    let sts = &docs[3];
    assert_eq!(
        sts["spec"]["replicas"], 1,
        "the operator founds the cluster with ordinal 0 alone"
    );
    assert_eq!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
        "fast-ssd"
    );
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "2Gi"
    );
    assert_eq!(docs[4]["spec"]["maxUnavailable"], 1);
}

#[test]
fn render_refuses_what_is_not_a_kvcluster() {
    let dir = std::env::temp_dir().join(format!("raftkv-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("pod.yaml");
    std::fs::write(&path, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n").expect("write");
    let out = render_cli(&["render", "-f", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a raftkv.io/v1alpha1 KvCluster"));
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: raftkv.io/v1alpha1\nkind: KvCluster\nmetadata:\n  name: x\nspec:\n  replicas: many\n")
        .expect("write");
    let out = render_cli(&["render", "-f", bad.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}
