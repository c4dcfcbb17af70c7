//! The committed CRDs are what the code generates: regenerate them with
//! `cargo run -p raftkv-operator --bin crdgen -- crds/` (and copy them into
//! the chart: `cp crds/*.yaml charts/raftkv-operator/crds/`).

use std::path::Path;

#[test]
fn committed_crds_match_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let generated = raftkv_operator::render::crd_yamls().expect("the CRDs render");
    assert_eq!(generated.len(), 3);
    for (file, yaml) in generated {
        let path = dir.join(file);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == yaml,
            "{} is stale or missing: run `cargo run -p raftkv-operator --bin crdgen -- crds/`",
            path.display()
        );
    }
}
