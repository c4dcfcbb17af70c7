//! One file per etcdctl command group. Each command has the same shape:
//! clap arguments -> `op()` that validates them as etcdctl does and builds
//! the request -> `run()` that sends it under the command timeout and hands
//! the response to the printer.
//!
//! `put`, `get` and `del` expose their `op()` so `txn` can reuse them for
//! its request lines, as etcdctl does.

pub mod alarm;
pub mod auth;
pub mod compaction;
pub mod defrag;
pub mod del;
pub mod elect;
pub mod endpoint;
pub mod get;
pub mod lease;
pub mod lock;
pub mod member;
pub mod move_leader;
pub mod put;
pub mod snapshot;
pub mod txn;
pub mod txn_grammar;
pub mod watch;

use std::ffi::OsString;
use std::io::Write;

use crate::client::ConnConfig;
use crate::error::CtlError;
use crate::gofmt::quote;
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

/// Runs `argv` with extra environment variables (they win over inherited
/// ones), sharing stdout and stderr, and reports a failure in Go's `exec`
/// words (`exit status 3`). Asynchronous, so a session's keep-alives go on
/// while the command runs.
pub async fn run_command(argv: &[OsString], extra_env: &[(String, String)]) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = argv.split_first() else {
        return Err("exec: no command".to_string());
    };
    let mut command = tokio::process::Command::new(program);
    command.args(args).envs(extra_env.iter().map(|(k, v)| (k, v)));
    let status = command.status().await.map_err(|e| {
        let name = arg_bytes(program);
        if e.kind() == std::io::ErrorKind::NotFound && !name.contains(&b'/') {
            format!("exec: {}: executable file not found in $PATH", quote(&name))
        } else {
            format!("fork/exec {}: {}", program.to_string_lossy(), go_errno_text(&e))
        }
    })?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(format!("exit status {code}")),
        (None, Some(signal)) => Err(format!("signal: {}", go_signal_name(signal))),
        (None, None) => Err(status.to_string()),
    }
}

/// SIGINT or SIGTERM, whichever comes first: etcdctl's lock and elect
/// catch both to release what they hold before exiting.
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Signals, CtlError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// How a wait cut short by a signal ends: clientv3's cancelled context.
pub fn canceled() -> CtlError {
    CtlError::error("context canceled")
}

/// Go's `%q` of a `[]string`: `["echo" "hi"]`.
pub fn quote_argv(argv: &[OsString]) -> String {
    let quoted: Vec<String> = argv.iter().map(|a| quote(&arg_bytes(a))).collect();
    format!("[{}]", quoted.join(" "))
}

/// Go's lower-case errno text, without Rust's ` (os error N)`.
fn go_errno_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Go's `syscall.Signal.String()` for the signals a command usually dies of.
fn go_signal_name(signal: i32) -> String {
    match signal {
        1 => "hangup".to_string(),
        2 => "interrupt".to_string(),
        3 => "quit".to_string(),
        6 => "aborted".to_string(),
        9 => "killed".to_string(),
        11 => "segmentation fault".to_string(),
        13 => "broken pipe".to_string(),
        15 => "terminated".to_string(),
        other => format!("signal {other}"),
    }
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
