//! `txn [-i]`: reads compares, success requests and failure requests from
//! stdin, each section ended by an empty line, and commits them as one
//! transaction. `-i` prints etcdctl's prompts before each section.

use std::ffi::OsString;
use std::io::{BufRead, Write};

use clap::Args;
use etcd_client::{Compare, Txn, TxnOp};

use super::txn_grammar::{parse_compare, parse_request};
use super::{Ctx, flush};
use crate::error::CtlError;

#[derive(Args, Debug, Clone, Default)]
pub struct TxnArgs {
    /// Input transaction in interactive mode
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// txn takes no arguments; kept to report etcdctl's error
    #[arg(hide = true)]
    pub args: Vec<OsString>,
}

/// Reads one line as Go's `ReadString('\n')`: a last line without its
/// newline is an `EOF` error, as in etcdctl. Returns it trimmed.
fn read_line(r: &mut dyn BufRead) -> Result<String, CtlError> {
    let mut buf = Vec::new();
    r.read_until(b'\n', &mut buf).map_err(|e| CtlError::invalid_input(e.to_string()))?;
    if buf.last() != Some(&b'\n') {
        return Err(CtlError::invalid_input("EOF"));
    }
    Ok(String::from_utf8_lossy(&buf).trim().to_string())
}

fn read_compares(r: &mut dyn BufRead) -> Result<Vec<Compare>, CtlError> {
    let mut compares = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(compares);
        }
        compares.push(parse_compare(&line)?);
    }
}

fn read_ops(r: &mut dyn BufRead) -> Result<Vec<TxnOp>, CtlError> {
    let mut ops = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(ops);
        }
        ops.push(parse_request(&line)?);
    }
}

/// Reads a whole transaction, printing the prompts to `prompt` if asked.
pub fn read_txn(
    input: &mut dyn BufRead,
    prompt: Option<&mut dyn Write>,
) -> Result<Txn, CtlError> {
    let mut prompt = prompt;
    let mut ask = |text: &str| -> Result<(), CtlError> {
        if let Some(w) = prompt.as_mut() {
            writeln!(w, "{text}")?;
            w.flush()?;
        }
        Ok(())
    };
    ask("compares:")?;
    let compares = read_compares(input)?;
    ask("success requests (get, put, del):")?;
    let success = read_ops(input)?;
    ask("failure requests (get, put, del):")?;
    let failure = read_ops(input)?;
    Ok(Txn::new().when(compares).and_then(success).or_else(failure))
}

pub async fn run(args: TxnArgs, ctx: &Ctx) -> Result<(), CtlError> {
    if !args.args.is_empty() {
        return Err(CtlError::bad_args("txn command does not accept argument"));
    }
    let txn = {
        let mut stdin = std::io::stdin().lock();
        let mut stdout = ctx.stdout();
        let prompt: Option<&mut dyn Write> = if args.interactive { Some(&mut stdout) } else { None };
        read_txn(&mut stdin, prompt)?
    };
    let client = ctx.conn.connect().await?;
    let resp = ctx
        .conn
        .call(|| {
            let mut kv = client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
    let mut out = ctx.stdout();
    ctx.printer.txn(&mut out, &resp.0)?;
    flush(&mut out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_prompts_precede_each_section() {
        let mut input: &[u8] = b"mod(\"k1\") > \"0\"\n\nput k v\n\nget k\n\n";
        let mut prompts = Vec::new();
        let txn = read_txn(&mut input, Some(&mut prompts));
        assert!(txn.is_ok());
        assert_eq!(
            String::from_utf8_lossy(&prompts),
            "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\n"
        );
    }

    #[test]
    fn input_ending_without_a_newline_is_eof() {
        let mut input: &[u8] = b"\n\n";
        let err = read_txn(&mut input, None).err();
        assert_eq!(err, Some(CtlError::invalid_input("EOF")));
    }
}
