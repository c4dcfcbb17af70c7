//! `member list`: the cluster's members, as etcdctl lists them.

use clap::Subcommand;

use super::{Ctx, flush};
use crate::error::CtlError;

#[derive(Subcommand, Debug, Clone)]
pub enum MemberCommand {
    /// Lists all members in the cluster
    List,
}

pub async fn run(cmd: MemberCommand, ctx: &Ctx) -> Result<(), CtlError> {
    match cmd {
        MemberCommand::List => list(ctx).await,
    }
}

async fn list(ctx: &Ctx) -> Result<(), CtlError> {
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            async move { cluster.member_list().await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.member_list(&mut out, &resp.0)?;
    flush(&mut out)
}
