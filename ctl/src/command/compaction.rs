//! `compaction [--physical] <revision>`: discards the key history before a
//! revision and prints `compacted revision N` whatever the output format,
//! as etcdctl does.

use clap::Args;
use etcd_client::CompactionOptions;

use super::{Ctx, flush};
use crate::error::CtlError;
use crate::gofmt::parse_int;

#[derive(Args, Debug, Clone, Default)]
pub struct CompactionArgs {
    /// 'true' to wait for compaction to physically remove all old revisions
    #[arg(long)]
    pub physical: bool,
    /// <revision>
    #[arg(allow_negative_numbers = true)]
    pub args: Vec<String>,
}

pub async fn run(args: CompactionArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [rev] = args.args.as_slice() else {
        return Err(CtlError::bad_args("compaction command needs 1 argument"));
    };
    let rev = parse_int(rev, 10).map_err(CtlError::error)?;
    let mut opts = CompactionOptions::new();
    if args.physical {
        opts = opts.with_physical();
    }
    let client = ctx.conn.connect().await?;
    ctx.conn
        .call(|| {
            let mut kv = client.kv_client();
            let opts = opts.clone();
            async move { kv.compact(rev, Some(opts)).await }
        })
        .await?;
    let mut out = ctx.stdout();
    std::io::Write::write_all(&mut out, format!("compacted revision {rev}\n").as_bytes())?;
    flush(&mut out)
}
