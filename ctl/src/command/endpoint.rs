//! `endpoint status`, `endpoint health` and `endpoint hashkv`: ask every
//! endpoint on its own (or, with `--cluster`, every client URL in the member
//! list).

use std::time::Instant;

use clap::{Args, Subcommand};
use etcd_client::{AlarmAction, AlarmType};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Ctx, flush};
use crate::error::{CtlError, ExitCode};
use crate::gofmt::{duration, parse_int10};
use crate::printer::{EpHashKv, EpHealth, EpStatus};

#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// use all endpoints from the cluster member list
    #[arg(long, global = true)]
    pub cluster: bool,
    #[command(subcommand)]
    pub command: EndpointCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum EndpointCommand {
    /// Checks the healthiness of endpoints specified in `--endpoints` flag
    Health(IgnoredArgs),
    /// Prints out the status of endpoints specified in `--endpoints` flag
    Status(IgnoredArgs),
    /// Prints the KV history hash for each endpoint in --endpoints
    Hashkv(HashKvArgs),
}

/// Arguments etcdctl accepts and ignores.
#[derive(Args, Debug, Clone)]
pub struct IgnoredArgs {
    args: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct HashKvArgs {
    /// maximum revision to hash (default: all revisions)
    #[arg(long, default_value = "0", value_parser = parse_int10, allow_negative_numbers = true)]
    rev: i64,
    /// ignored, as etcdctl ignores them
    args: Vec<String>,
}

pub async fn run(args: EndpointArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let endpoints = if args.cluster { cluster_endpoints(ctx).await? } else { ctx.conn.endpoints.clone() };
    match args.command {
        EndpointCommand::Health(_) => health(ctx, endpoints).await,
        EndpointCommand::Status(_) => status(ctx, endpoints).await,
        EndpointCommand::Hashkv(hash_args) => hashkv(ctx, endpoints, hash_args.rev).await,
    }
}

pub async fn cluster_endpoints(ctx: &Ctx) -> Result<Vec<String>, CtlError> {
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut cluster = client.cluster_client();
            async move { cluster.member_list().await }
        })
        .await
        .map_err(|e| {
            CtlError::error(format!("failed to fetch endpoints from etcd cluster member list: {e}"))
        })?;
    Ok(resp.0.members.iter().flat_map(|m| m.client_ur_ls.iter().cloned()).collect())
}

async fn status(ctx: &Ctx, endpoints: Vec<String>) -> Result<(), CtlError> {
    let mut list = Vec::new();
    let mut failed = false;
    for ep in endpoints {
        let result = async {
            let client = ctx.conn.connect_to(std::slice::from_ref(&ep)).await?;
            ctx.conn
                .call(|| {
                    let mut maintenance = client.maintenance_client();
                    async move { maintenance.status().await }
                })
                .await
        }
        .await;
        match result {
            Ok(resp) => list.push(EpStatus { endpoint: ep, status: resp.0 }),
            Err(e) => {
                failed = true;
                eprintln!("Failed to get the status of endpoint {ep} ({e})");
            }
        }
    }
    let mut out = ctx.stdout();
    ctx.printer.endpoint_status(&mut out, &list)?;
    flush(&mut out)?;
    if failed {
        // etcdctl exits without a further message here.
        return Err(CtlError::new(ExitCode::Error, ""));
    }
    Ok(())
}

async fn hashkv(ctx: &Ctx, endpoints: Vec<String>, rev: i64) -> Result<(), CtlError> {
    let mut list = Vec::new();
    let mut last_error = None;
    for ep in endpoints {
        let result = async {
            let client = ctx.conn.connect_to(std::slice::from_ref(&ep)).await?;
            ctx.conn
                .call(|| {
                    let mut maintenance = client.maintenance_client();
                    async move { maintenance.hash_kv(rev).await }
                })
                .await
        }
        .await;
        match result {
            Ok(resp) => list.push(EpHashKv { endpoint: ep, hash_kv: resp.0 }),
            Err(e) => {
                eprintln!("Failed to get the hash of endpoint {ep} ({e})");
                last_error = Some(e);
            }
        }
    }
    let mut out = ctx.stdout();
    ctx.printer.endpoint_hashkv(&mut out, &list)?;
    flush(&mut out)?;
    // Unlike status, hashkv ends with the last failure's text.
    match last_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One endpoint's health as etcdctl judges it: a linearizable read of the
/// key `health` succeeds (or is denied) and no alarm is raised.
async fn check(ctx: &Ctx, ep: String) -> EpHealth {
    let start = Instant::now();
    let read = async {
        let client = ctx.conn.connect_to(std::slice::from_ref(&ep)).await?;
        let got = ctx
            .conn
            .call(|| {
                let mut kv = client.kv_client();
                async move { kv.get("health", None).await }
            })
            .await;
        Ok::<_, CtlError>((client, got))
    }
    .await;
    let took = duration(start.elapsed());
    let mut health = EpHealth { endpoint: ep, health: false, took, error: String::new() };
    let client = match read {
        Ok((client, Ok(_))) => client,
        Ok((client, Err(e))) if e.message == "etcdserver: permission denied" => client,
        Ok((_, Err(e))) | Err(e) => {
            health.error = e.message;
            return health;
        }
    };
    let alarms = ctx
        .conn
        .call(|| {
            let mut maintenance = client.maintenance_client();
            async move { maintenance.alarm(AlarmAction::Get, AlarmType::None, None).await }
        })
        .await;
    match alarms {
        Ok(resp) if !resp.0.alarms.is_empty() => {
            let mut error = String::from("Active Alarm(s): ");
            for alarm in &resp.0.alarms {
                error.push_str(match AlarmType::try_from(alarm.alarm) {
                    Ok(AlarmType::Nospace) => "NOSPACE ",
                    Ok(AlarmType::Corrupt) => "CORRUPT ",
                    _ => "UNKNOWN ",
                });
            }
            health.error = error;
        }
        Ok(_) => health.health = true,
        Err(_) => health.error = "Unable to fetch the alarm list".to_string(),
    }
    health
}

async fn health(ctx: &Ctx, endpoints: Vec<String>) -> Result<(), CtlError> {
    // Reported in the order the answers arrive, as etcdctl does.
    let mut pending: FuturesUnordered<_> = endpoints.into_iter().map(|ep| check(ctx, ep)).collect();
    let mut list = Vec::new();
    while let Some(h) = pending.next().await {
        list.push(h);
    }
    let unhealthy = list.iter().any(|h| !h.error.is_empty());
    let mut out = ctx.stdout();
    let mut err = std::io::stderr().lock();
    ctx.printer.endpoint_health(&mut out, &mut err, &list)?;
    flush(&mut out)?;
    if unhealthy {
        return Err(CtlError::error("unhealthy cluster"));
    }
    Ok(())
}
