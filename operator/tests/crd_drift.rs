//! The committed CRD is what the code generates: regenerate it with
//! `cargo run -p raftkv-operator --bin crdgen > crds/kvcluster.yaml`.

use std::path::Path;

#[test]
fn committed_crd_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/kvcluster.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = raftkv_operator::render::crd_yaml().expect("the CRD renders");
    assert!(
        committed == generated,
        "{} is stale or missing: run `cargo run -p raftkv-operator --bin crdgen > crds/kvcluster.yaml`",
        path.display()
    );
}
