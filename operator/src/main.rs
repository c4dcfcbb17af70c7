//! `raftkv-operator`: `render -f kvcluster.yaml` prints the objects the
//! operator would create for a manifest.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "raftkv-operator",
    version,
    about = "Kubernetes operator for raftkv clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the objects the operator creates for a KvCluster manifest, as
    /// multi-document YAML.
    Render {
        /// The KvCluster manifest ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Render { file } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let kvc = raftkv_operator::render::parse_manifest(&yaml)?;
            print!("{}", raftkv_operator::render::render(&kvc)?);
            Ok(())
        }
    }
}
