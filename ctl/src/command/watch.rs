//! `watch [key [range_end]] [-- command args...]`: etcdctl 3.4's watch.
//!
//! Every response with events is printed as it arrives; with a command
//! after `--`, the command runs once per event with `ETCD_WATCH_*` set. The
//! watch ends only when the server cancels it (`ExitInterrupted`) or on a
//! signal, which, as for etcdctl, kills the process. Interactive mode (`-i`)
//! is not supported.

use std::ffi::OsString;
use std::time::Duration;

use clap::Args;
use etcd_client::proto::PbWatchResponse;
use etcd_client::{Client, WatchOptions, WatchStream};
use tokio::time::sleep;

use super::{Ctx, arg_bytes, flush, key_range, quote_argv, run_command};
use crate::concurrency::watch_cancel_error;
use crate::error::{CtlError, ExitCode};
use crate::gofmt::quote;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Interactive mode
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Watch on a prefix if prefix is set
    #[arg(long)]
    prefix: bool,
    /// Revision to start watching
    #[arg(long, default_value = "0", value_parser = crate::gofmt::parse_int10, allow_negative_numbers = true)]
    rev: i64,
    /// get the previous key-value pair before the event happens
    #[arg(long = "prev-kv")]
    prev_kv: bool,
    /// [key or prefix] [range_end]
    args: Vec<OsString>,
    /// [exec-command arg1 arg2 ...]
    #[arg(last = true)]
    exec: Vec<OsString>,
}

const BAD_ARGS_NUM: &str = "bad number of arguments";

/// etcdctl's `parseWatchArgs` for the non-interactive case: the key (and
/// range end) to watch, from the arguments or `ETCDCTL_WATCH_KEY` /
/// `ETCDCTL_WATCH_RANGE_END`.
fn watch_args(args: &WatchArgs) -> Result<Vec<Vec<u8>>, CtlError> {
    let env_key = std::env::var("ETCDCTL_WATCH_KEY").unwrap_or_default();
    let env_range = std::env::var("ETCDCTL_WATCH_RANGE_END").unwrap_or_default();
    if env_key.is_empty() && !env_range.is_empty() {
        return Err(CtlError::bad_args(format!(
            "ETCDCTL_WATCH_KEY is empty but got ETCDCTL_WATCH_RANGE_END={}",
            quote(env_range.as_bytes())
        )));
    }
    // cobra drops `--`; etcdctl looks for it in the raw command line.
    let raw: Vec<OsString> =
        std::env::args_os().skip_while(|a| a != "watch").skip(1).collect();
    let separator = raw.iter().position(|a| a == "--");
    if separator.is_some_and(|i| i == raw.len() - 1) {
        return Err(CtlError::bad_args(
            "bad number of arguments (found separator --, but no commands)",
        ));
    }
    if separator.is_none() && raw.is_empty() && env_key.is_empty() {
        return Err(CtlError::bad_args(BAD_ARGS_NUM));
    }
    if !env_key.is_empty() && !args.args.is_empty() {
        return Err(CtlError::bad_args(
            "bad number of arguments (found conflicting environment key)",
        ));
    }
    let mut keys: Vec<Vec<u8>> = Vec::new();
    if !env_key.is_empty() {
        keys.push(env_key.into_bytes());
        if !env_range.is_empty() {
            keys.push(env_range.into_bytes());
        }
    }
    keys.extend(args.args.iter().map(arg_bytes));
    Ok(keys)
}

/// etcdctl's `getWatchChan`: a range end only when exactly two arguments
/// are given; any further ones are ignored.
fn options(args: &WatchArgs, keys: &[Vec<u8>]) -> Result<(Vec<u8>, WatchOptions), CtlError> {
    let Some(key) = keys.first() else {
        return Err(CtlError::bad_args(BAD_ARGS_NUM));
    };
    let range_end = if keys.len() == 2 {
        if args.prefix {
            return Err(CtlError::bad_args("`range_end` and `--prefix` are mutually exclusive"));
        }
        Some(keys[1].clone())
    } else {
        None
    };
    let (key, end) = key_range(key.clone(), range_end, args.prefix, false);
    let mut options = WatchOptions::new().with_start_revision(args.rev);
    if !end.is_empty() {
        options = options.with_range(end);
    }
    if args.prev_kv {
        options = options.with_prev_key();
    }
    Ok((key, options))
}

pub async fn run(args: WatchArgs, ctx: &Ctx) -> Result<(), CtlError> {
    if args.interactive {
        return Err(CtlError::bad_feature("interactive watch is not supported by raftkvctl"));
    }
    let keys = watch_args(&args)?;
    let (key, options) = options(&args, &keys)?;
    let client = ctx.conn.without_deadline().connect().await.map_err(bad_connection)?;
    let mut next_rev = args.rev;
    let mut stream = open(&client, &key, &options, next_rev).await;
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp.0,
            // clientv3 resumes a broken stream after the last revision seen.
            Ok(None) | Err(_) => {
                sleep(Duration::from_millis(500)).await;
                stream = open(&client, &key, &options, next_rev).await;
                continue;
            }
        };
        if let Some(h) = &resp.header
            && !resp.events.is_empty()
        {
            next_rev = h.revision + 1;
        }
        // clientv3 keeps the "created" notification to itself.
        if resp.created && resp.events.is_empty() && !resp.canceled {
            continue;
        }
        print(ctx, &resp, &args.exec).await?;
        if resp.canceled {
            return Err(CtlError::new(ExitCode::Interrupted, "watch is canceled by the server"));
        }
    }
}

fn bad_connection(e: CtlError) -> CtlError {
    CtlError::new(ExitCode::BadConnection, e.message)
}

/// Opens the watch, retrying until the cluster answers.
async fn open(client: &Client, key: &[u8], options: &WatchOptions, rev: i64) -> WatchStream {
    loop {
        let options = options.clone().with_start_revision(rev);
        match client.watch_client().watch(key.to_vec(), Some(options)).await {
            Ok(stream) => return stream,
            Err(_) => sleep(Duration::from_millis(500)).await,
        }
    }
}

/// etcdctl's `printWatchCh` for one response.
async fn print(ctx: &Ctx, resp: &PbWatchResponse, exec: &[OsString]) -> Result<(), CtlError> {
    if resp.canceled {
        eprintln!("watch was canceled ({})", watch_cancel_error(resp));
    }
    let mut out = ctx.stdout();
    ctx.printer.watch(&mut out, resp)?;
    flush(&mut out)?;
    drop(out);
    if exec.is_empty() {
        return Ok(());
    }
    let revision = resp.header.map_or(0, |h| h.revision);
    for ev in &resp.events {
        let kv = ev.kv.clone().unwrap_or_default();
        let kind = if ev.r#type == 1 { "DELETE" } else { "PUT" };
        let env = [
            ("ETCD_WATCH_REVISION".to_string(), revision.to_string()),
            ("ETCD_WATCH_EVENT_TYPE".to_string(), quote(kind.as_bytes())),
            ("ETCD_WATCH_KEY".to_string(), quote(&kv.key)),
            ("ETCD_WATCH_VALUE".to_string(), quote(&kv.value)),
        ];
        if let Err(e) = run_command(exec, &env).await {
            // etcdctl reports this itself and exits 1 without `Error:`.
            eprintln!("command {} error ({e})", quote_argv(exec));
            return Err(CtlError::error(""));
        }
    }
    Ok(())
}
