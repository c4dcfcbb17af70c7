//! One file per etcdctl command group. Each command has the same shape:
//! clap arguments -> `op()` that validates them as etcdctl does and builds
//! the request -> `run()` that sends it under the command timeout and hands
//! the response to the printer.
//!
//! `put`, `get` and `del` expose their `op()` so `txn` can reuse them for
//! its request lines, as etcdctl does.

pub mod compaction;
pub mod del;
pub mod endpoint;
pub mod get;
pub mod lease;
pub mod member;
pub mod put;
pub mod txn;
pub mod txn_grammar;

use std::ffi::OsString;
use std::io::Write;

use crate::client::ConnConfig;
use crate::error::CtlError;
use crate::printer::Printer;

/// What every command needs: where the cluster is and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub conn: ConnConfig,
    pub printer: Printer,
}

impl Ctx {
    /// Locked stdout; commands print through this and flush at the end.
    pub fn stdout(&self) -> std::io::StdoutLock<'static> {
        std::io::stdout().lock()
    }
}

/// A command-line argument as the bytes etcd stores.
pub fn arg_bytes(arg: &OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    arg.as_bytes().to_vec()
}

/// clientv3's `GetPrefixRangeEnd`: the smallest key after every key with
/// this prefix; `\0` (all keys from here) when no such key exists.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The key and range end for etcdctl's `--prefix` / `--from-key` /
/// explicit `range_end`, including its handling of an empty key.
pub fn key_range(
    mut key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
) -> (Vec<u8>, Vec<u8>) {
    let mut end = range_end.unwrap_or_default();
    if prefix {
        if key.is_empty() {
            key = vec![0];
            end = vec![0];
        } else {
            end = prefix_end(&key);
        }
    }
    if from_key {
        if key.is_empty() {
            key = vec![0];
        }
        end = vec![0];
    }
    (key, end)
}

pub fn flush(w: &mut dyn Write) -> Result<(), CtlError> {
    w.flush().map_err(CtlError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_below_ff() {
        assert_eq!(prefix_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn empty_key_with_prefix_means_every_key() {
        assert_eq!(key_range(vec![], None, true, false), (vec![0], vec![0]));
        assert_eq!(key_range(b"k".to_vec(), None, false, true), (b"k".to_vec(), vec![0]));
        assert_eq!(key_range(b"a".to_vec(), Some(b"c".to_vec()), false, false), (b"a".to_vec(), b"c".to_vec()));
    }
}
