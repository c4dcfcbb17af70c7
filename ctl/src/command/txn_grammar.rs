//! etcdctl's transaction language, one line at a time.
//!
//! A compare line is `<target>("<key>") <op> "<value>"` with target one of
//! `ver`/`version`, `c`/`create`, `m`/`mod`, `val`/`value`, `lease` (hex);
//! a request line is a `put`, `get` or `del` command line with its flags.
//! Quoting follows etcdctl's `Argify`, including its single-quote slicing
//! quirk. Parsing only; nothing here reads stdin or sends requests.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::{Parser, Subcommand};
use etcd_client::{Compare, CompareOp, TxnOp};

use super::del::DelArgs;
use super::get::GetArgs;
use super::put::{PutArgs, ValueSource};
use crate::error::{CtlError, ExitCode};
use crate::gofmt::{parse_int, quote, unquote};

/// Splits a line into words as etcdctl's `Argify` does: `"..."` with Go
/// escapes, `'...'`, or a run of non-space characters; a quote that is
/// never closed is skipped.
pub fn argify(line: &str) -> Result<Vec<Vec<u8>>, CtlError> {
    let bytes = line.as_bytes();
    let mut words: Vec<(u8, &str)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0c) {
            i += 1;
            continue;
        }
        let end = match c {
            b'"' => closing_double_quote(bytes, i),
            b'\'' => bytes[i + 1..].iter().position(|&b| b == b'\'').map(|p| i + 1 + p),
            _ => {
                let len = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c))
                    .unwrap_or(bytes.len() - i);
                Some(i + len - 1)
            }
        };
        match end {
            Some(end) => {
                words.push((c, &line[i..=end]));
                i = end + 1;
            }
            None => i += 1,
        }
    }
    let count = words.len();
    words
        .into_iter()
        .map(|(first, word)| match first {
            // etcdctl slices a single-quoted word with the number of words,
            // not the word's length; kept so the same input stores the same.
            b'\'' => {
                let hi = count.saturating_sub(1).min(word.len());
                Ok(word.as_bytes().get(1..hi).unwrap_or_default().to_vec())
            }
            b'"' => unquote(word).map_err(CtlError::invalid_input),
            _ => Ok(word.as_bytes().to_vec()),
        })
        .collect()
}

fn closing_double_quote(bytes: &[u8], start: usize) -> Option<usize> {
    let mut j = start + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' if j + 1 < bytes.len() => j += 2,
            b'"' => return Some(j),
            b'\\' => return None,
            _ => j += 1,
        }
    }
    None
}

/// Reads Go's `%q` verb from the front of `s`: a quoted string after
/// optional spaces. Returns the string and the rest.
fn scan_quoted(s: &str) -> Option<(Vec<u8>, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    let bytes = s.as_bytes();
    let end = match bytes.first()? {
        b'"' => closing_double_quote(bytes, 0)?,
        b'`' => 1 + bytes[1..].iter().position(|&b| b == b'`')?,
        _ => return None,
    };
    let value = unquote(&s[..=end]).ok()?;
    Some((value, &s[end + 1..]))
}

/// Parses one compare line, with etcdctl's error texts.
pub fn parse_compare(line: &str) -> Result<Compare, CtlError> {
    let malformed = |detail: String| CtlError::invalid_input(format!("malformed comparison: {detail}"));
    let Some((target, rest)) = line.split_once('(') else {
        return Err(malformed(line.to_string()));
    };
    // Go's Sscanf(rest, "%q) %s %q", &key, &op, &val), keeping partial
    // results for the error message.
    let (mut key, mut op, mut val) = (Vec::new(), String::new(), Vec::new());
    let mut scanned = 0;
    if let Some((k, after)) = scan_quoted(rest) {
        key = k;
        scanned = 1;
        if let Some(after) = after.strip_prefix(')') {
            let after = after.trim_start_matches([' ', '\t']);
            let op_end = after.find([' ', '\t']).unwrap_or(after.len());
            if op_end > 0 {
                op = after[..op_end].to_string();
                scanned = 2;
                if let Some((v, _)) = scan_quoted(&after[op_end..]) {
                    val = v;
                    scanned = 3;
                }
            }
        }
    }
    if scanned != 3 {
        return Err(malformed(format!(
            "{line}; got {target}({}) {op} {}",
            quote(&key),
            quote(&val)
        )));
    }
    let invalid = || CtlError::invalid_input(format!("invalid txn compare request: {line}"));
    let val_str = String::from_utf8_lossy(&val).into_owned();
    let number = |base: u32| parse_int(&val_str, base).map_err(|_| invalid());
    match target {
        "ver" | "version" => {
            let n = number(10)?;
            Ok(Compare::version(key, compare_op(&op)?, n))
        }
        "c" | "create" => {
            let n = number(10)?;
            Ok(Compare::create_revision(key, compare_op(&op)?, n))
        }
        "m" | "mod" => {
            let n = number(10)?;
            Ok(Compare::mod_revision(key, compare_op(&op)?, n))
        }
        "val" | "value" => Ok(Compare::value(key, compare_op(&op)?, val)),
        "lease" => {
            let n = number(16)?;
            Ok(Compare::lease(key, compare_op(&op)?, n))
        }
        _ => Err(malformed(format!("{line} (unknown target {target})"))),
    }
}

/// clientv3.Compare panics on any other operator, and etcdctl dies with it.
fn compare_op(op: &str) -> Result<CompareOp, CtlError> {
    match op {
        "=" => Ok(CompareOp::Equal),
        "!=" => Ok(CompareOp::NotEqual),
        ">" => Ok(CompareOp::Greater),
        "<" => Ok(CompareOp::Less),
        _ => Err(CtlError::new(ExitCode::Panic, "Unknown result op")),
    }
}

/// The commands a request line may hold.
#[derive(Parser, Debug)]
#[command(no_binary_name = true, disable_help_subcommand = true)]
struct RequestLine {
    #[command(subcommand)]
    request: Request,
}

#[derive(Subcommand, Debug)]
enum Request {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

/// Parses one request line into an operation, with etcdctl's error texts.
pub fn parse_request(line: &str) -> Result<TxnOp, CtlError> {
    let words = argify(line)?;
    if words.len() < 2 {
        return Err(CtlError::invalid_input(format!("invalid txn compare request: {line}")));
    }
    let words = words.into_iter().map(OsString::from_vec);
    let parsed = RequestLine::try_parse_from(words)
        .map_err(|_| CtlError::invalid_input(format!("invalid txn request: {line}")))?;
    Ok(match parsed.request {
        Request::Put(args) => {
            let (key, value, opts) = args.op(ValueSource::None)?;
            TxnOp::put(key, value, Some(opts))
        }
        Request::Get(args) => {
            let (key, opts) = args.op()?;
            TxnOp::get(key, Some(opts))
        }
        Request::Del(args) => {
            let (key, opts) = args.op()?;
            TxnOp::delete(key, Some(opts))
        }
    })
}

#[cfg(test)]
#[path = "txn_grammar_tests.rs"]
mod tests;
