//! `kubectl raftkv`: the kubectl plugin of raftkv's operator (kubectl runs
//! `kubectl-raftkv` from the PATH). See `raftkv_operator::plugin`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use raftkv_operator::plugin::Plugin;

#[derive(Parser)]
#[command(name = "kubectl raftkv", version, about = "Status, backups, restores, defragmentation, leadership and etcdctl for raftkv's KvClusters")]
struct Cli {
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Wait {
    /// Return once the request is made, without following it.
    #[arg(long)]
    no_wait: bool,
    /// How long to follow it (seconds) before giving up waiting (the
    /// request itself stands).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

impl Wait {
    fn get(&self) -> Option<Duration> {
        (!self.no_wait).then(|| Duration::from_secs(self.timeout))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Members (role, raft term, index, applied index and lag, database
    /// size), alarms, the operation and maintenance in flight, the last
    /// backup and the schedules.
    Status { name: String },
    /// Take a backup now (a KvBackup to the destination of the cluster's
    /// KvBackupSchedule).
    Backup {
        name: String,
        /// The KvBackup's name (default: NAME-YYYYMMDDHHMMSS).
        #[arg(long)]
        backup_name: Option<String>,
        /// The schedule whose destination to use (default: the cluster's
        /// only one).
        #[arg(long)]
        schedule: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Create a new KvCluster from a Completed KvBackup.
    Restore {
        backup: String,
        /// The new KvCluster's name.
        #[arg(long)]
        to: String,
        /// Members (default: as the backed-up cluster).
        #[arg(long)]
        replicas: Option<i32>,
        /// raftkv version (default: as the backed-up cluster; required when
        /// it is gone).
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Defragment every member, one at a time, the leader last (run by
    /// the operator).
    Defrag {
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Move raft leadership to a member.
    MoveLeader { name: String, member: String },
    /// Run etcdctl against the cluster through port-forwards:
    /// `kubectl raftkv etcdctl demo -- get --prefix app/`.
    Etcdctl {
        name: String,
        /// The etcdctl to run.
        #[arg(long, default_value = "etcdctl")]
        etcdctl: String,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let plugin = Plugin::connect(cli.kubeconfig, cli.context, cli.namespace).await?;
    match cli.command {
        Command::Status { name } => print!("{}", plugin.status(&name).await?),
        Command::Backup { name, backup_name, schedule, wait } => plugin.backup(&name, backup_name, schedule, wait.get()).await?,
        Command::Restore { backup, to, replicas, version, wait } => plugin.restore(&backup, &to, replicas, version, wait.get()).await?,
        Command::Defrag { name, wait } => plugin.defrag(&name, wait.get()).await?,
        Command::MoveLeader { name, member } => plugin.move_leader(&name, &member).await?,
        Command::Etcdctl { name, etcdctl, args } => return plugin.etcdctl(&name, &etcdctl, &args).await,
    }
    Ok(0)
}
