//! `put [options] <key> <value>`: writes a key; the value may come from
//! stdin. Options as etcdctl 3.4: `--lease` (hex), `--prev-kv`,
//! `--ignore-value`, `--ignore-lease`.

use std::ffi::OsString;
use std::io::Read;

use clap::Args;
use etcd_client::PutOptions;

use super::{Ctx, arg_bytes, flush};
use crate::error::CtlError;
use crate::gofmt::parse_int;

#[derive(Args, Debug, Clone, Default)]
pub struct PutArgs {
    /// lease ID (in hexadecimal) to attach to the key
    #[arg(long, default_value = "0")]
    pub lease: String,
    /// return the previous key-value pair before modification
    #[arg(long = "prev-kv")]
    pub prev_kv: bool,
    /// updates the key using its current value
    #[arg(long = "ignore-value")]
    pub ignore_value: bool,
    /// updates the key using its current lease
    #[arg(long = "ignore-lease")]
    pub ignore_lease: bool,
    /// <key> <value>
    pub args: Vec<OsString>,
}

const NEEDS_ARGS: &str = "put command needs 1 argument and input from stdin or 2 arguments";

/// Where a missing value may come from: stdin for the command, nowhere
/// inside a transaction (etcdctl's stdin is the transaction itself).
pub enum ValueSource<'a> {
    Stdin(&'a mut dyn Read),
    None,
}

impl PutArgs {
    /// etcdctl's `getPutOp`: validation and options, in its order.
    pub fn op(&self, source: ValueSource<'_>) -> Result<(Vec<u8>, Vec<u8>, PutOptions), CtlError> {
        let Some(key) = self.args.first() else {
            return Err(CtlError::bad_args(NEEDS_ARGS));
        };
        if self.ignore_value && self.args.len() > 1 {
            return Err(CtlError::bad_args(
                "put command needs only 1 argument when 'ignore-value' is set",
            ));
        }
        let mut value = Vec::new();
        if !self.ignore_value {
            value = match (self.args.get(1), source) {
                (Some(v), _) => arg_bytes(v),
                (None, ValueSource::Stdin(r)) => {
                    let mut buf = Vec::new();
                    r.read_to_end(&mut buf).map_err(|_| CtlError::bad_args(NEEDS_ARGS))?;
                    if buf.is_empty() {
                        return Err(CtlError::bad_args(NEEDS_ARGS));
                    }
                    buf
                }
                (None, ValueSource::None) => return Err(CtlError::bad_args(NEEDS_ARGS)),
            };
        }
        let lease = parse_int(&self.lease, 16).map_err(|e| {
            CtlError::bad_args(format!("bad lease ID ({e}), expecting ID in Hex"))
        })?;
        let mut opts = PutOptions::new();
        if lease != 0 {
            opts = opts.with_lease(lease);
        }
        if self.prev_kv {
            opts = opts.with_prev_key();
        }
        if self.ignore_value {
            opts = opts.with_ignore_value();
        }
        if self.ignore_lease {
            opts = opts.with_ignore_lease();
        }
        Ok((arg_bytes(key), value, opts))
    }
}

pub async fn run(args: PutArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let mut stdin = std::io::stdin().lock();
    let (key, value, opts) = args.op(ValueSource::Stdin(&mut stdin))?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let (key, value, opts) = (key.clone(), value.clone(), opts.clone());
            async move { kv.put(key, value, Some(opts)).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.put(&mut out, &resp.0)?;
    flush(&mut out)
}
