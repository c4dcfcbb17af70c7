//! `get [options] <key> [range_end]`: reads a key or a range, with etcdctl
//! 3.4's options (`--prefix`, `--from-key`, `--limit`, `--rev`,
//! `--sort-by`, `--order`, `--keys-only`, `--print-value-only`,
//! `--consistency`) plus 3.5's `--count-only`.

use std::ffi::OsString;

use clap::Args;
use etcd_client::{GetOptions, SortOrder, SortTarget};

use super::{Ctx, arg_bytes, flush, key_range};
use crate::error::CtlError;
use crate::printer::Format;

#[derive(Args, Debug, Clone)]
pub struct GetArgs {
    /// Linearizable(l) or Serializable(s)
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default)
    #[arg(long, default_value = "")]
    pub order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION
    #[arg(long = "sort-by", default_value = "")]
    pub sort_by: String,
    /// Maximum number of results
    #[arg(long, default_value = "0", value_parser = crate::gofmt::parse_int10, allow_negative_numbers = true)]
    pub limit: i64,
    /// Get keys with matching prefix
    #[arg(long)]
    pub prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare
    #[arg(long = "from-key")]
    pub from_key: bool,
    /// Specify the kv revision
    #[arg(long, default_value = "0", value_parser = crate::gofmt::parse_int10, allow_negative_numbers = true)]
    pub rev: i64,
    /// Get only the keys
    #[arg(long = "keys-only")]
    pub keys_only: bool,
    /// Get only the count
    #[arg(long = "count-only")]
    pub count_only: bool,
    /// Only write values when using the "simple" output format
    #[arg(long = "print-value-only")]
    pub print_value_only: bool,
    /// <key> [range_end]
    pub args: Vec<OsString>,
}

const BOTH_RANGES: &str = "`--prefix` and `--from-key` cannot be set at the same time, choose one";
const TOO_MANY: &str =
    "too many arguments, only accept one argument when `--prefix` or `--from-key` is set";

impl GetArgs {
    /// etcdctl's `getGetOp`: validation and options, in its order.
    pub fn op(&self) -> Result<(Vec<u8>, GetOptions), CtlError> {
        let Some(key) = self.args.first() else {
            return Err(CtlError::bad_args(
                "get command needs one argument as key and an optional argument as range_end",
            ));
        };
        if self.prefix && self.from_key {
            return Err(CtlError::bad_args(BOTH_RANGES));
        }
        let mut opts = GetOptions::new();
        match self.consistency.as_str() {
            "s" => opts = opts.with_serializable(),
            "l" => {}
            other => {
                return Err(CtlError::bad_feature(format!(
                    "unknown consistency flag {}",
                    crate::gofmt::quote(other.as_bytes())
                )));
            }
        }
        let range_end = self.args.get(1).map(arg_bytes);
        if range_end.is_some() && (self.prefix || self.from_key) {
            return Err(CtlError::bad_args(TOO_MANY));
        }
        opts = opts.with_limit(self.limit);
        if self.rev > 0 {
            opts = opts.with_revision(self.rev);
        }
        let order = match self.order.to_uppercase().as_str() {
            "ASCEND" => SortOrder::Ascend,
            "DESCEND" => SortOrder::Descend,
            "" => SortOrder::None,
            _ => return Err(CtlError::bad_feature(format!("bad sort order {}", self.order))),
        };
        let target = match self.sort_by.to_uppercase().as_str() {
            "CREATE" => SortTarget::Create,
            "KEY" | "" => SortTarget::Key,
            "MODIFY" => SortTarget::Mod,
            "VALUE" => SortTarget::Value,
            "VERSION" => SortTarget::Version,
            _ => return Err(CtlError::bad_feature(format!("bad sort target {}", self.sort_by))),
        };
        opts = opts.with_sort(target, order);
        let (key, end) = key_range(arg_bytes(key), range_end, self.prefix, self.from_key);
        if !end.is_empty() {
            opts = opts.with_range(end);
        }
        if self.keys_only {
            opts = opts.with_keys_only();
        }
        if self.count_only {
            opts = opts.with_count_only();
        }
        Ok((key, opts))
    }
}

pub async fn run(args: GetArgs, ctx: &Ctx) -> Result<(), CtlError> {
    let (key, opts) = args.op()?;
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let (key, opts) = (key.clone(), opts.clone());
            async move { kv.get(key, Some(opts)).await }
        })
        .await?;
    // etcdctl checks these only once the response is in.
    if args.count_only && ctx.printer.format != Format::Fields {
        return Err(CtlError::bad_args("--count-only is only for `--write-out=fields`"));
    }
    let mut printer = ctx.printer;
    if args.print_value_only {
        if printer.format != Format::Simple {
            return Err(CtlError::bad_args("print-value-only is only for `--write-out=simple`"));
        }
        printer.value_only = true;
    }
    let mut out = ctx.stdout();
    printer.get(&mut out, &resp.0)?;
    flush(&mut out)
}
