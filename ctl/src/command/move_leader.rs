//! `move-leader <transferee-member-id>`: asks each endpoint in turn for its
//! status until one says it is the leader, and sends that endpoint the
//! MoveLeader request, as etcdctl does (only the leader can hand over).
//!
//! One command timeout covers the whole search and the transfer.

use clap::Args;
use etcd_client::Client;

use super::{Ctx, flush};
use crate::error::CtlError;
use crate::gofmt::parse_uint;

#[derive(Args, Debug, Clone)]
pub struct MoveLeaderArgs {
    /// <transferee-member-id>
    args: Vec<String>,
}

pub async fn run(args: MoveLeaderArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let [target] = args.args.as_slice() else {
        return Err(CtlError::bad_args("move-leader command needs 1 argument"));
    };
    let target = parse_uint(target, 16).map_err(CtlError::bad_args)?;
    let transfer = async {
        let Some((leader, client)) = find_leader(ctx).await? else {
            // Go's %v of a []string.
            let endpoints = ctx.conn.endpoints.join(" ");
            return Err(CtlError::bad_args(format!("no leader endpoint given at [{endpoints}]")));
        };
        let resp = ctx
            .conn
            .call(|| {
                let mut maintenance = client.maintenance_client();
                async move { maintenance.move_leader(target).await }
            })
            .await?;
        Ok((leader, resp.0))
    };
    let (leader, resp) = tokio::time::timeout(ctx.conn.command_timeout, transfer)
        .await
        .map_err(|_| CtlError::deadline_exceeded())??;
    let mut out = ctx.stdout();
    ctx.printer.move_leader(&mut out, leader, target, &resp)?;
    flush(&mut out)
}

/// The leader's member id and a client for its endpoint, or `None` when no
/// endpoint is the leader. Any endpoint that cannot answer ends the search.
async fn find_leader(ctx: &Ctx) -> Result<Option<(u64, Client)>, CtlError> {
    for ep in &ctx.conn.endpoints {
        let client = ctx.conn.connect_to(std::slice::from_ref(ep)).await?;
        let status = ctx
            .conn
            .call(|| {
                let mut maintenance = client.maintenance_client();
                async move { maintenance.status().await }
            })
            .await?
            .0;
        let member = status.header.as_ref().map_or(0, |h| h.member_id);
        if member == status.leader {
            return Ok(Some((status.leader, client)));
        }
    }
    Ok(None)
}
