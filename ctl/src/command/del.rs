//! `del [options] <key> [range_end]`: deletes a key or a range, with
//! `--prefix`, `--from-key` and `--prev-kv`.

use std::ffi::OsString;

use clap::Args;
use etcd_client::DeleteOptions;

use super::{Ctx, arg_bytes, flush, key_range};
use crate::error::CtlError;

#[derive(Args, Debug, Clone, Default)]
pub struct DelArgs {
    /// delete keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// return deleted key-value pairs
    #[arg(long = "prev-kv")]
    pub prev_kv: bool,
    /// delete keys that are greater than or equal to the given key using byte compare
    #[arg(long = "from-key")]
    pub from_key: bool,
    /// <key> [range_end]
    pub args: Vec<OsString>,
}

impl DelArgs {
    /// etcdctl's `getDelOp`: validation and options, in its order.
    pub fn op(&self) -> Result<(Vec<u8>, DeleteOptions), CtlError> {
        let key = match self.args.as_slice() {
            [key] | [key, _] => key,
            _ => {
                return Err(CtlError::bad_args(
                    "del command needs one argument as key and an optional argument as range_end",
                ));
            }
        };
        if self.prefix && self.from_key {
            return Err(CtlError::bad_args(
                "`--prefix` and `--from-key` cannot be set at the same time, choose one",
            ));
        }
        let range_end = self.args.get(1).map(arg_bytes);
        if range_end.is_some() && (self.prefix || self.from_key) {
            return Err(CtlError::bad_args(
                "too many arguments, only accept one argument when `--prefix` or `--from-key` is set",
            ));
        }
        let (key, end) = key_range(arg_bytes(key), range_end, self.prefix, self.from_key);
        let mut opts = DeleteOptions::new();
        if !end.is_empty() {
            opts = opts.with_range(end);
        }
        if self.prev_kv {
            opts = opts.with_prev_key();
        }
        Ok((key, opts))
    }
}

pub async fn run(args: DelArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let (key, opts) = args.op()?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let (key, opts) = (key.clone(), opts.clone());
            async move { kv.delete(key, Some(opts)).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.del(&mut out, &resp.0)?;
    flush(&mut out)
}
