//! `defrag [--cluster] [--data-dir DIR]`: etcdctl 3.4's, member by member.
//! Online, each endpoint (or, with `--cluster`, every member's client URL)
//! compacts its RocksDB in place, under the command timeout; with
//! `--data-dir`, a stopped member's data dir is compacted offline through
//! the server crate, as etcdctl does a bbolt file.

use std::io::Write;

use clap::Args;

use super::endpoint::cluster_endpoints;
use super::{Ctx, flush};
use crate::error::{CtlError, ExitCode};

#[derive(Args, Debug)]
pub struct DefragArgs {
    /// use all endpoints from the cluster member list
    #[arg(long)]
    pub cluster: bool,
    /// Optional. If present, defragments a data directory not in use by etcd.
    #[arg(long = "data-dir", default_value = "")]
    pub data_dir: String,
}

pub async fn run(args: DefragArgs, ctx: &Ctx) -> Result<(), CtlError> {
    if !args.data_dir.is_empty() {
        let dir = std::path::PathBuf::from(&args.data_dir);
        return tokio::task::spawn_blocking(move || raftkv::restore::defragment_offline(&dir))
            .await
            .map_err(|e| CtlError::error(e.to_string()))?
            .map_err(|e| CtlError::error(format!("Failed to defragment etcd data[{}] ({e})", args.data_dir)));
    }
    let endpoints = if args.cluster { cluster_endpoints(ctx).await? } else { ctx.conn.endpoints.clone() };
    let mut failures = 0;
    for ep in endpoints {
        let result = async {
            let client = ctx.conn.connect_to(std::slice::from_ref(&ep)).await?;
            ctx.conn
                .call(|| {
                    let mut maintenance = client.maintenance_client();
                    async move { maintenance.defragment().await }
                })
                .await
        }
        .await;
        match result {
            Ok(_) => {
                let mut out = ctx.stdout();
                writeln!(out, "Finished defragmenting etcd member[{ep}]")?;
                flush(&mut out)?;
            }
            Err(e) => {
                eprintln!("Failed to defragment etcd member[{ep}] ({e})");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        // etcdctl exits without a further message.
        return Err(CtlError::new(ExitCode::Error, ""));
    }
    Ok(())
}
