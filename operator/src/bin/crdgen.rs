//! Writes the CRDs (`KvCluster`, `KvBackup`, `KvBackupSchedule`) into a
//! directory, one file each, as `crds/` and the chart's `crds/` hold them:
//! `cargo run -p raftkv-operator --bin crdgen -- crds/`. Without a
//! directory, prints them to stdout as one multi-document YAML.

fn main() -> anyhow::Result<()> {
    let crds = raftkv_operator::render::crd_yamls()?;
    match std::env::args_os().nth(1) {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            for (file, yaml) in crds {
                std::fs::write(dir.join(file), yaml)?;
            }
        }
        None => {
            for (i, (_, yaml)) in crds.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{yaml}");
            }
        }
    }
    Ok(())
}
