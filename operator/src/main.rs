//! `raftkv-operator`: `run` is the operator (leader election, the
//! controller, `/metrics` and `/health`); `render -f kvcluster.yaml` prints
//! the objects the operator would create for a manifest.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use kube_lease_manager::LeaseManagerBuilder;
use raftkv_operator::controller::{self, Context};
use raftkv_operator::members::Membership;
use raftkv_operator::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "raftkv-operator",
    version,
    about = "Kubernetes operator for raftkv clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of the current kubeconfig or
    /// service account.
    Run {
        /// Namespaces to watch, comma-separated; every namespace if empty.
        #[arg(
            long,
            env = "WATCH_NAMESPACE",
            value_delimiter = ',',
            default_value = ""
        )]
        watch_namespace: Vec<String>,
        /// `/metrics` and `/health`.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Where the leader-election Lease lives.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// This replica's name in the Lease.
        #[arg(long, env = "POD_NAME", default_value = "raftkv-operator")]
        identity: String,
        /// `text` or `json` logs.
        #[arg(long, default_value = "text")]
        log_format: String,
    },
    /// Print the objects the operator creates for a KvCluster manifest, as
    /// multi-document YAML.
    Render {
        /// The KvCluster manifest ("-" for stdin).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Print the RBAC rules the operator needs, as JSON: `rules` in every
    /// watched namespace, `leaderElection` in its own.
    Rbac,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Rbac => {
            println!("{:#}", raftkv_operator::rbac::to_json());
            Ok(())
        }
        Command::Render { file } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("cannot read stdin")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let kvc = raftkv_operator::render::parse_manifest(&yaml)?;
            print!("{}", raftkv_operator::render::render(&kvc)?);
            Ok(())
        }
        Command::Run {
            watch_namespace,
            listen,
            lease_namespace,
            identity,
            log_format,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let logs = tracing_subscriber::fmt().with_env_filter(filter);
            if log_format == "json" {
                logs.json().init();
            } else {
                logs.init();
            }
            let namespaces: Vec<String> = watch_namespace
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect();
            run(namespaces, listen, lease_namespace, identity).await
        }
    }
}

async fn run(
    namespaces: Vec<String>,
    listen: SocketAddr,
    lease_namespace: String,
    identity: String,
) -> anyhow::Result<()> {
    // kube's TLS (an API server is always https) takes rustls' process-wide
    // provider; with two compiled in (aws-lc-rs comes with object_store in a
    // workspace build) rustls would panic at the first connection.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration")?;
    let metrics = Arc::new(Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let served = metrics.clone();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = served.clone();
                async move {
                    match metrics.encode() {
                        Ok(text) => (axum::http::StatusCode::OK, text),
                        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let mut http_stopped = stopped.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stopped.wait_for(|s| *s).await;
            })
            .await
    });

    // Signals stop everything.
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = signal_stop.send(true);
    });

    // Only the Lease holder reconciles; losing the Lease stops this replica
    // (its pod restarts and stands in line again).
    let manager = LeaseManagerBuilder::new(client.clone(), "raftkv-operator")
        .with_namespace(lease_namespace)
        .with_identity(identity.clone())
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, "waiting for the leader Lease");
    let mut waiting = stopped.clone();
    tokio::select! {
        became = leading.wait_for(|l| *l) => { became.context("leader election ended")?; }
        _ = waiting.wait_for(|s| *s) => { return Ok(()); }
    }
    tracing::info!(%identity, "leading");
    let lost_stop = stop.clone();
    tokio::spawn(async move {
        let _ = leading.wait_for(|l| !*l).await;
        tracing::warn!("lost the leader Lease");
        let _ = lost_stop.send(true);
    });

    let reporter = Reporter {
        controller: "raftkv-operator".into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        metrics,
        connect: Box::new(|seeds, tls| Membership::new(seeds).with_tls(tls)),
    });
    futures::future::join(
        controller::run(ctx.clone(), namespaces.clone(), stopped.clone()),
        raftkv_operator::backup::controller::run(ctx, namespaces, stopped),
    )
    .await;
    let _ = stop.send(true);
    lease_task.abort();
    http.await
        .context("the HTTP server panicked")?
        .context("the HTTP server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
