//! `lock <lockname> [exec-command arg1 arg2 ...]`: etcdctl 3.4's lock, on
//! clientv3's mutex recipe (see `concurrency`), so it excludes etcdctl's
//! lock on the same name.
//!
//! Without a command it prints the lock key (as `get` would) and holds the
//! lock until SIGINT or SIGTERM, then releases it; with a command it runs
//! it with `ETCD_LOCK_KEY` and `ETCD_LOCK_REV` set and releases the lock
//! when it exits. The session lease is left to expire, as etcdctl leaves it.

use std::ffi::OsString;

use clap::Args;
use etcd_client::GetOptions;

use super::{Ctx, Signals, canceled, arg_bytes, flush, run_command};
use crate::concurrency::{Mutex, Session, settle};
use crate::error::CtlError;

#[derive(Args, Debug)]
pub struct LockArgs {
    /// timeout for session
    #[arg(long, default_value = "10", value_parser = crate::gofmt::parse_int10, allow_negative_numbers = true)]
    ttl: i64,
    /// <lockname> [exec-command arg1 arg2 ...]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub async fn run(args: LockArgs, ctx: &Ctx) -> Result<(), CtlError> {
    // cobra drops a `--` before the command.
    let argv: Vec<OsString> = args.args.into_iter().filter(|a| a != "--").collect();
    let Some((name, command)) = argv.split_first() else {
        return Err(CtlError::bad_args(
            "lock takes a lock name argument and an optional command to execute",
        ));
    };
    let mut signals = Signals::new()?;
    let client = ctx.conn.connect().await?;
    let session = Session::new(client.clone(), args.ttl).await?;
    let mut prefix = arg_bytes(name);
    prefix.push(b'/');
    let mutex = tokio::select! {
        locked = Mutex::lock(&session, &prefix) => locked?,
        () = signals.recv() => {
            // Dropping the wait removes this waiter's key; let it land.
            settle().await;
            return Err(canceled());
        }
    };

    if !command.is_empty() {
        let env = [
            ("ETCD_LOCK_KEY".to_string(), String::from_utf8_lossy(&mutex.key).into_owned()),
            ("ETCD_LOCK_REV".to_string(), mutex.header.revision.to_string()),
        ];
        // etcdctl puts these before the inherited environment, which wins.
        let env: Vec<_> = env.into_iter().filter(|(k, _)| std::env::var_os(k).is_none()).collect();
        let ran = run_command(command, &env).await;
        let unlocked = mutex.unlock(&client).await;
        ran.map_err(CtlError::error)?;
        return unlocked;
    }

    let key = mutex.key.clone();
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let key = key.clone();
            async move { kv.get(key, None::<GetOptions>).await }
        })
        .await?;
    if resp.0.kvs.is_empty() {
        return Err(CtlError::error("lock lost on init"));
    }
    let mut out = ctx.stdout();
    ctx.printer.get(&mut out, &resp.0)?;
    flush(&mut out)?;
    drop(out);

    tokio::select! {
        () = signals.recv() => {
            mutex.unlock(&client).await
        }
        () = session.done() => Err(CtlError::error("session expired")),
    }
}
