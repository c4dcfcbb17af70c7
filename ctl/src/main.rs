//! raftkvctl: etcdctl 3.4's commands, flags and output, for raftkv or any
//! etcd v3 server.
//!
//! Layout:
//! - `main.rs`: global flags (with their `ETCDCTL_*` environment
//!   variables), parsing, dispatch, and etcdctl's `Error: ...` / exit codes.
//! - `client.rs`: connecting, and running a request under the command
//!   timeout.
//! - `command/`: one file per command group (put, get, del, txn and its
//!   grammar, compaction, lease, watch, lock, elect, endpoint, member,
//!   move-leader, snapshot: `status` and `restore` read files offline
//!   through the server crate's snapshot format, as etcdutl does).
//! - `concurrency.rs`: clientv3's session, mutex and election recipes over
//!   KV, Lease and Watch, which `lock` and `elect` stand on.
//! - `printer.rs` and `printer/`: the simple, json, fields, table and
//!   protobuf output formats.
//! - `gofmt.rs`: Go's quoting, durations and numbers, which the output and
//!   error texts depend on.
//! - `error.rs`: exit codes and error texts.
//! - `objstore.rs`: snapshot files in S3, GCS, Azure Blob Storage or a
//!   directory (`object_store`), for `snapshot save` and `restore`.

mod bench;
mod client;
mod command;
mod concurrency;
mod error;
mod gofmt;
mod objstore;
mod printer;

use std::io::Write;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Parser, Subcommand};

use crate::client::ConnConfig;
use crate::command::Ctx;
use crate::command::alarm::AlarmCommand;
use crate::command::auth::{AuthCommand, RoleCommand, UserCommand};
use crate::command::compaction::CompactionArgs;
use crate::command::defrag::DefragArgs;
use crate::command::del::DelArgs;
use crate::command::elect::ElectArgs;
use crate::command::endpoint::EndpointArgs;
use crate::command::get::GetArgs;
use crate::command::lease::LeaseCommand;
use crate::command::lock::LockArgs;
use crate::command::member::MemberCommand;
use crate::command::move_leader::MoveLeaderArgs;
use crate::command::put::PutArgs;
use crate::command::snapshot::SnapshotCommand;
use crate::command::txn::TxnArgs;
use crate::command::watch::WatchArgs;
use crate::error::{CtlError, ExitCode};
use crate::gofmt::{parse_duration, quote};
use crate::printer::{Format, Printer};

#[derive(Parser, Debug)]
#[command(name = "raftkvctl", version, about = "A simple command line client for etcd3 and raftkv.")]
struct Cli {
    #[command(flatten)]
    global: GlobalFlags,
    #[command(subcommand)]
    command: Command,
}

/// etcdctl's global flags; each can also be set as `ETCDCTL_<FLAG>`.
#[derive(Args, Debug)]
struct GlobalFlags {
    /// gRPC endpoints
    #[arg(long, global = true, env = "ETCDCTL_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// dial timeout for client connections
    #[arg(long = "dial-timeout", global = true, env = "ETCDCTL_DIAL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    dial_timeout: Duration,
    /// timeout for short running command (excluding dial timeout)
    #[arg(long = "command-timeout", global = true, env = "ETCDCTL_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    command_timeout: Duration,
    /// keepalive time for client connections
    #[arg(long = "keepalive-time", global = true, env = "ETCDCTL_KEEPALIVE_TIME", default_value = "2s", value_parser = parse_duration)]
    keepalive_time: Duration,
    /// keepalive timeout for client connections
    #[arg(long = "keepalive-timeout", global = true, env = "ETCDCTL_KEEPALIVE_TIMEOUT", default_value = "6s", value_parser = parse_duration)]
    keepalive_timeout: Duration,
    /// set the output format (fields, json, protobuf, simple, table)
    #[arg(short = 'w', long = "write-out", global = true, env = "ETCDCTL_WRITE_OUT", default_value = "simple")]
    write_out: String,
    /// print byte strings as hex encoded strings
    #[arg(long, global = true, env = "ETCDCTL_HEX", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    hex: bool,
    /// enable client-side debug logging (accepted, no effect)
    #[arg(long, global = true, env = "ETCDCTL_DEBUG", num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    debug: bool,
    /// disable transport security for client connections
    #[arg(long = "insecure-transport", global = true, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    insecure_transport: bool,
    /// accept insecure SRV records describing cluster endpoints (accepted, no effect)
    #[arg(long = "insecure-discovery", global = true, num_args = 0..=1, require_equals = true, default_value = "true", default_missing_value = "true")]
    insecure_discovery: bool,
    /// skip server certificate verification (CAUTION: this option should be enabled only for testing purposes)
    #[arg(long = "insecure-skip-tls-verify", global = true, num_args = 0..=1, require_equals = true, default_value = "false", default_missing_value = "true")]
    insecure_skip_tls_verify: bool,
    /// identify secure client using this TLS certificate file
    #[arg(long, global = true, env = "ETCDCTL_CERT", default_value = "")]
    cert: String,
    /// identify secure client using this TLS key file
    #[arg(long, global = true, env = "ETCDCTL_KEY", default_value = "")]
    key: String,
    /// verify certificates of TLS-enabled secure servers using this CA bundle
    #[arg(long, global = true, env = "ETCDCTL_CACERT", default_value = "")]
    cacert: String,
    /// username[:password] for authentication (prompt if password is not supplied)
    #[arg(long, global = true, env = "ETCDCTL_USER", default_value = "")]
    user: String,
    /// password for authentication (if this option is used, --user option shouldn't include password)
    #[arg(long, global = true, env = "ETCDCTL_PASSWORD", default_value = "")]
    password: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Puts the given key into the store
    Put(PutArgs),
    /// Gets the key or a range of keys
    Get(GetArgs),
    /// Removes the specified key or range of keys [key, range_end)
    Del(DelArgs),
    /// Txn processes all the requests in one transaction
    Txn(TxnArgs),
    /// Compacts the event history in etcd
    Compaction(CompactionArgs),
    /// Watches events stream on keys or prefixes
    Watch(WatchArgs),
    /// Acquires a named lock
    Lock(LockArgs),
    /// Observes and participates in leader election
    Elect(ElectArgs),
    /// Lease related commands
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Endpoint related commands
    Endpoint(EndpointArgs),
    /// Membership related commands
    #[command(subcommand)]
    Member(MemberCommand),
    /// Transfers leadership to another etcd cluster member.
    #[command(name = "move-leader")]
    MoveLeader(MoveLeaderArgs),
    /// Alarm related commands
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Defragments the storage of the etcd members with given endpoints
    Defrag(DefragArgs),
    /// Manages etcd node snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// User related commands
    #[command(subcommand)]
    User(UserCommand),
    /// Role related commands
    #[command(subcommand)]
    Role(RoleCommand),
    /// Enable or disable authentication
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Benchmarks a cluster: put, range, txn-put, lease-keepalive, lock and watch workloads
    Bench(bench::BenchArgs),
}

impl GlobalFlags {
    fn user(&self) -> Result<Option<(String, String)>, CtlError> {
        if self.user.is_empty() {
            return Ok(None);
        }
        if !self.password.is_empty() {
            if self.user.contains(':') {
                return Err(CtlError::bad_args(
                    "Username and Password flags can not be used together",
                ));
            }
            return Ok(Some((self.user.clone(), self.password.clone())));
        }
        if let Some((user, password)) = self.user.split_once(':') {
            return Ok(Some((user.to_string(), password.to_string())));
        }
        eprint!("Password: ");
        let mut password = String::new();
        std::io::stdin().read_line(&mut password)?;
        Ok(Some((self.user.clone(), password.trim_end_matches(['\r', '\n']).to_string())))
    }

    fn ctx(&self) -> Result<Ctx, CtlError> {
        let path = |s: &str| (!s.is_empty()).then(|| std::path::PathBuf::from(s));
        let tls = raftkv::tls::ClientTls {
            ca_file: path(&self.cacert),
            cert_file: path(&self.cert),
            key_file: path(&self.key),
            skip_verify: self.insecure_skip_tls_verify,
            // etcdctl: secure when given a TLS file or told not to be
            // insecure; http:// and https:// endpoints say for themselves.
            by_default: !self.cacert.is_empty() || !self.cert.is_empty() || !self.key.is_empty() || !self.insecure_transport,
        };
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(CtlError::bad_args("--cert and --key must be given together"));
        }
        let format = Format::parse(&self.write_out)?;
        Ok(Ctx {
            conn: ConnConfig {
                endpoints: self.endpoints.clone(),
                dial_timeout: self.dial_timeout,
                command_timeout: self.command_timeout,
                keepalive_time: self.keepalive_time,
                keepalive_timeout: self.keepalive_timeout,
                user: self.user()?,
                tls,
            },
            printer: Printer::new(format, self.hex),
        })
    }
}

async fn dispatch(cli: Cli) -> Result<(), CtlError> {
    let ctx = cli.global.ctx()?;
    match cli.command {
        Command::Put(args) => command::put::run(args, &ctx).await,
        Command::Get(args) => command::get::run(args, &ctx).await,
        Command::Del(args) => command::del::run(args, &ctx).await,
        Command::Txn(args) => command::txn::run(args, &ctx).await,
        Command::Compaction(args) => command::compaction::run(args, &ctx).await,
        Command::Watch(args) => command::watch::run(args, &ctx).await,
        Command::Lock(args) => command::lock::run(args, &ctx).await,
        Command::Elect(args) => command::elect::run(args, &ctx).await,
        Command::Lease(cmd) => command::lease::run(cmd, &ctx).await,
        Command::Endpoint(args) => command::endpoint::run(args, &ctx).await,
        Command::Member(cmd) => command::member::run(cmd, &ctx).await,
        Command::MoveLeader(args) => command::move_leader::run(args, &ctx).await,
        Command::Alarm(cmd) => command::alarm::run(cmd, &ctx).await,
        Command::Defrag(args) => command::defrag::run(args, &ctx).await,
        Command::Snapshot(cmd) => command::snapshot::run(cmd, &ctx).await,
        Command::User(cmd) => command::auth::user(cmd, &ctx).await,
        Command::Role(cmd) => command::auth::role(cmd, &ctx).await,
        Command::Auth(cmd) => command::auth::auth(cmd, &ctx).await,
        Command::Bench(args) => bench::run(args, &ctx).await,
    }
}

/// A clap parse error in pflag's words, e.g. `unknown flag: --x`.
fn usage_error(err: &clap::Error) -> String {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    match err.kind() {
        ErrorKind::UnknownArgument => {
            format!("unknown flag: {}", context(ContextKind::InvalidArg).unwrap_or_default())
        }
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => {
            let flag = context(ContextKind::InvalidArg).unwrap_or_default();
            let flag = flag.split_whitespace().next().unwrap_or_default().to_string();
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let cause = std::error::Error::source(err).map(|e| e.to_string()).unwrap_or_default();
            format!("invalid argument {} for {} flag: {cause}", quote(value.as_bytes()), quote(flag.as_bytes()))
        }
        _ => {
            let text = err.to_string();
            let first = text.lines().next().unwrap_or_default();
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        }
    }
}

fn main() -> std::process::ExitCode {
    raftkv::tls::install_default_provider();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if matches!(err.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = err.print();
            return std::process::ExitCode::SUCCESS;
        }
        Err(err) => {
            // cobra reports a usage error once, etcdctl's main once more.
            let message = usage_error(&err);
            eprintln!("Error: {message}\n\nError: {message}");
            return std::process::ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            if e.code == ExitCode::Panic {
                eprintln!("panic: {}", e.message);
            } else if !e.message.is_empty() {
                eprintln!("Error: {}", e.message);
            }
            std::process::ExitCode::from(e.code.status())
        }
    }
}
