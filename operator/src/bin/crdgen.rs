//! Prints the `KvCluster` CRD as YAML; `crds/kvcluster.yaml` is its output:
//! `cargo run -p raftkv-operator --bin crdgen > crds/kvcluster.yaml`.

fn main() -> anyhow::Result<()> {
    print!("{}", raftkv_operator::render::crd_yaml()?);
    Ok(())
}
