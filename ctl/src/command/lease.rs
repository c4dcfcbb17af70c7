//! `lease grant|revoke|timetolive|list|keep-alive`: etcdctl 3.4's lease
//! commands. Lease ids are hex on the command line and in the simple
//! format, decimal elsewhere.
//!
//! As in etcdctl, `grant` and `revoke` run under the command timeout and
//! report errors as `failed to ... lease (...)`; `timetolive`, `list` and
//! `keep-alive` have no deadline and exit with `ExitBadConnection`.
//! `keep-alive` without `--once` renews until the server no longer knows the
//! lease, and ends on SIGINT the way a Go program does: killed by the
//! signal, which is the default disposition this process keeps.

use clap::{Args, Subcommand};
use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, LeaseTimeToLiveOptions};
use tokio::time::{Duration, Instant, sleep, sleep_until, timeout_at};

use super::{Ctx, flush};
use crate::error::{CtlError, ExitCode, is_connection_error};
use crate::gofmt::parse_int;

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Creates leases
    Grant(GrantArgs),
    /// Revokes leases
    Revoke(RevokeArgs),
    /// Get lease information
    Timetolive(TimeToLiveArgs),
    /// List all active leases
    List(ListArgs),
    /// Keeps leases alive (renew)
    #[command(name = "keep-alive")]
    KeepAlive(KeepAliveArgs),
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// <ttl>
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// <leaseID>
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TimeToLiveArgs {
    /// Get keys attached to this lease
    #[arg(long)]
    keys: bool,
    /// <leaseID>
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// ignored, as etcdctl ignores them
    args: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KeepAliveArgs {
    /// Resets the keep-alive time to its original value and exits immediately
    #[arg(long)]
    once: bool,
    /// <leaseID>
    args: Vec<String>,
}

pub async fn run(cmd: LeaseCommand, ctx: &Ctx) -> Result<(), CtlError> {
    match cmd {
        LeaseCommand::Grant(args) => grant(args, ctx).await,
        LeaseCommand::Revoke(args) => revoke(args, ctx).await,
        LeaseCommand::Timetolive(args) => time_to_live(args, ctx).await,
        LeaseCommand::List(_) => list(ctx).await,
        LeaseCommand::KeepAlive(args) => keep_alive(args, ctx).await,
    }
}

/// etcdctl's `leaseFromArgs`: a signed 64-bit hex number, no `0x`.
fn lease_from_arg(arg: &str) -> Result<i64, CtlError> {
    parse_int(arg, 16)
        .map_err(|e| CtlError::bad_args(format!("bad lease ID arg ({e}), expecting ID in Hex")))
}

/// The only argument, or etcdctl's complaint about the count.
fn single_arg<'a>(args: &'a [String], complaint: &str) -> Result<&'a str, CtlError> {
    match args {
        [arg] => Ok(arg),
        _ => Err(CtlError::bad_args(complaint)),
    }
}

fn failed(what: &'static str) -> impl Fn(CtlError) -> CtlError {
    move |e| CtlError::error(format!("failed to {what} lease ({})", e.message))
}

fn bad_connection(e: CtlError) -> CtlError {
    CtlError::new(ExitCode::BadConnection, e.message)
}

/// What clientv3 returns when a keep-alive finds no lease.
fn lease_not_found() -> CtlError {
    CtlError::new(ExitCode::BadConnection, "etcdserver: requested lease not found")
}

async fn grant(args: GrantArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let ttl = single_arg(&args.args, "lease grant command needs TTL argument")?;
    let ttl = parse_int(ttl, 10).map_err(|e| CtlError::bad_args(format!("bad TTL ({e})")))?;
    let client = ctx.conn.connect().await.map_err(failed("grant"))?;
    let resp = ctx
        .conn
        .call(|| {
            let mut lease = client.lease_client();
            async move { lease.grant(ttl, None).await }
        })
        .await
        .map_err(failed("grant"))?;
    let mut out = ctx.stdout();
    ctx.printer.lease_grant(&mut out, &resp.0)?;
    flush(&mut out)
}

async fn revoke(args: RevokeArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = single_arg(&args.args, "lease revoke command needs 1 argument")?;
    let id = lease_from_arg(id)?;
    let client = ctx.conn.connect().await.map_err(failed("revoke"))?;
    let resp = ctx
        .conn
        .call(|| {
            let mut lease = client.lease_client();
            async move { lease.revoke(id).await }
        })
        .await
        .map_err(failed("revoke"))?;
    let mut out = ctx.stdout();
    ctx.printer.lease_revoke(&mut out, id, &resp.0)?;
    flush(&mut out)
}

async fn time_to_live(args: TimeToLiveArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = single_arg(&args.args, "lease timetolive command needs lease ID as argument")?;
    let id = lease_from_arg(id)?;
    let conn = ctx.conn.without_deadline();
    let client = conn.connect().await.map_err(bad_connection)?;
    let options = args.keys.then(|| LeaseTimeToLiveOptions::new().with_keys());
    let resp = conn
        .call(|| {
            let mut lease = client.lease_client();
            let options = options.clone();
            async move { lease.time_to_live(id, options).await }
        })
        .await
        .map_err(bad_connection)?;
    let mut out = ctx.stdout();
    ctx.printer.lease_time_to_live(&mut out, &resp.0, args.keys)?;
    flush(&mut out)
}

async fn list(ctx: &Ctx) -> Result<(), CtlError> {
    let conn = ctx.conn.without_deadline();
    let client = conn.connect().await.map_err(bad_connection)?;
    let resp = conn
        .call(|| {
            let mut lease = client.lease_client();
            async move { lease.leases().await }
        })
        .await
        .map_err(bad_connection)?;
    let mut out = ctx.stdout();
    ctx.printer.lease_leases(&mut out, &resp.0)?;
    flush(&mut out)
}

/// Opens a keep-alive stream. etcd-client sends the first request itself
/// and keeps its answer (an error when the lease is unknown), so the caller
/// sends another one to get a response it can print; renewing twice in a
/// row changes nothing the server reports.
async fn open_stream(
    client: &Client,
    id: i64,
) -> Result<(LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
    client.lease_client().keep_alive(id).await
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::LeaseKeepAliveError(m) if m == "lease not found")
}

async fn keep_alive(args: KeepAliveArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let id = single_arg(&args.args, "lease keep-alive command needs lease ID as argument")?;
    let id = lease_from_arg(id)?;
    if args.once {
        return keep_alive_once(id, ctx).await;
    }
    let client = ctx.conn.without_deadline().connect().await.map_err(bad_connection)?;
    let mut out = ctx.stdout();
    // clientv3 gives the first response dial timeout + 1s to arrive; after
    // that, each response extends the deadline by the lease's TTL.
    let mut deadline = Instant::now() + ctx.conn.dial_timeout + Duration::from_secs(1);
    'stream: loop {
        let (mut keeper, mut stream) = match timeout_at(deadline, open_stream(&client, id)).await {
            Err(_elapsed) => break,
            Ok(Err(e)) if is_lease_not_found(&e) => break,
            // clientv3 retries a broken stream every 500ms until the deadline.
            Ok(Err(_)) => {
                sleep(Duration::from_millis(500)).await;
                continue;
            }
            Ok(Ok(opened)) => opened,
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                sleep(Duration::from_millis(500)).await;
                continue 'stream;
            }
            let resp = match timeout_at(deadline, stream.message()).await {
                Err(_elapsed) => break 'stream,
                Ok(Ok(Some(resp))) => resp.0,
                Ok(Ok(None) | Err(_)) => {
                    sleep(Duration::from_millis(500)).await;
                    continue 'stream;
                }
            };
            if resp.ttl <= 0 {
                break 'stream;
            }
            ctx.printer.lease_keep_alive(&mut out, &resp)?;
            flush(&mut out)?;
            let ttl = Duration::from_secs(resp.ttl.unsigned_abs());
            deadline = Instant::now() + ttl;
            sleep_until(Instant::now() + ttl / 3).await;
        }
    }
    ctx.printer.lease_keep_alive_end(&mut out, id)?;
    flush(&mut out)
}

async fn keep_alive_once(id: i64, ctx: &Ctx) -> Result<(), CtlError> {
    let conn = ctx.conn.without_deadline();
    let client = conn.connect().await.map_err(bad_connection)?;
    let resp = loop {
        let (mut keeper, mut stream) = match open_stream(&client, id).await {
            Ok(opened) => opened,
            Err(e) if is_lease_not_found(&e) => return Err(lease_not_found()),
            Err(e) if is_connection_error(&e) => {
                sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(bad_connection(e.into())),
        };
        keeper.keep_alive().await.map_err(|e| bad_connection(e.into()))?;
        match stream.message().await {
            Ok(Some(resp)) => break resp.0,
            Ok(None) => continue,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => return Err(bad_connection(e.into())),
        }
    };
    if resp.ttl <= 0 {
        return Err(lease_not_found());
    }
    let mut out = ctx.stdout();
    ctx.printer.lease_keep_alive(&mut out, &resp)?;
    flush(&mut out)
}
