//! `elect <election-name> [proposal]` and `elect -l <election-name>`:
//! etcdctl 3.4's election, on clientv3's election recipe (see
//! `concurrency`), so it competes with etcdctl's on the same name.
//!
//! A campaign prints the leader key and value once elected and holds the
//! leadership until SIGINT or SIGTERM, then resigns; `-l` prints the leader
//! and every change of it until a signal.

use std::ffi::OsString;

use clap::Args;
use etcd_client::GetOptions;

use super::{Ctx, Signals, canceled, arg_bytes, flush};
use crate::concurrency::{Election, Session, observe, settle};
use crate::error::CtlError;

/// clientv3's default session TTL, which etcdctl's elect keeps.
const SESSION_TTL: i64 = 60;

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// observation mode
    #[arg(short = 'l', long)]
    listen: bool,
    /// <election-name> [proposal]
    args: Vec<OsString>,
}

pub async fn run(args: ElectArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let (name, proposal) = match args.args.as_slice() {
        [name] => (name, None),
        [name, proposal] => (name, Some(proposal)),
        _ => {
            return Err(CtlError::bad_args(
                "elect takes one election name argument and an optional proposal argument",
            ));
        }
    };
    match proposal {
        None if !args.listen => Err(CtlError::bad_args("no proposal argument but -l not set")),
        Some(_) if args.listen => Err(CtlError::bad_args("proposal given but -l is set")),
        None => listen(ctx, name).await,
        Some(proposal) => campaign(ctx, name, proposal).await,
    }
}

fn prefix(name: &OsString) -> Vec<u8> {
    let mut prefix = arg_bytes(name);
    prefix.push(b'/');
    prefix
}

async fn listen(ctx: &Ctx, name: &OsString) -> Result<(), CtlError> {
    let mut signals = Signals::new()?;
    let client = ctx.conn.connect().await?;
    // etcdctl opens a session it never uses; so does this, for the same
    // lease to show up in `lease list`.
    let _session = Session::new(client.clone(), SESSION_TTL).await?;
    let printer = ctx.printer;
    let print = |leader| {
        let mut out = ctx.stdout();
        printer.get(&mut out, &leader)?;
        flush(&mut out)
    };
    let prefix = prefix(name);
    tokio::select! {
        observed = observe(&client, &prefix, print) => {
            observed?;
            Err(CtlError::error("elect: observer lost"))
        }
        () = signals.recv() => Ok(()),
    }
}

async fn campaign(ctx: &Ctx, name: &OsString, proposal: &OsString) -> Result<(), CtlError> {
    let mut signals = Signals::new()?;
    let client = ctx.conn.connect().await?;
    let session = Session::new(client.clone(), SESSION_TTL).await?;
    let (prefix, proposal) = (prefix(name), arg_bytes(proposal));
    let election = tokio::select! {
        elected = Election::campaign(&session, &prefix, &proposal) => elected?,
        () = signals.recv() => {
            // Dropping the campaign removes its key; let that land.
            settle().await;
            return Err(canceled());
        }
    };
    let key = election.key.clone();
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let key = key.clone();
            async move { kv.get(key, None::<GetOptions>).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.get(&mut out, &resp.0)?;
    flush(&mut out)?;
    drop(out);
    tokio::select! {
        () = signals.recv() => {
            election.resign(&client).await
        }
        () = session.done() => Err(CtlError::error("elect: session expired")),
    }
}
