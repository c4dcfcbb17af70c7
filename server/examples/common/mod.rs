//! What every example needs and nothing more: the `--endpoints` flag and a
//! connection, a lease kept alive for as long as the process lives (etcd's
//! `concurrency.Session`), and stopping on SIGINT/SIGTERM or after
//! `--duration`.
//!
//! It lives in `common/mod.rs`, not `common.rs`, so that cargo does not take
//! it for an example of its own.

// Each example uses only part of this module.
#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use etcd_client::{Client, ConnectOptions};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Where the cluster is.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Client URLs of the cluster, comma-separated (`http://` may be left out).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    pub endpoints: Vec<String>,
}

impl ClusterArgs {
    pub async fn connect(&self) -> Result<Client> {
        // No per-request timeout: Lock and Campaign legitimately block until
        // the lock or the leadership is ours. HTTP/2 keep-alives notice a dead
        // server instead.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        Client::connect(&self.endpoints, Some(options))
            .await
            .with_context(|| format!("cannot connect to {}", self.endpoints.join(",")))
    }
}

/// A lease kept alive in the background. Everything attached to it (a
/// registry entry, a lock, a candidacy) lives as long as this process keeps
/// the lease alive, and disappears at most one TTL after the process dies,
/// however it dies.
pub struct Session {
    client: Client,
    lease: i64,
    ttl: i64,
    keeper: JoinHandle<Result<()>>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts refreshing it every third
    /// of its TTL, so that one lost refresh does not lose the lease.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session> {
        let mut client = client.clone();
        let granted = client
            .lease_grant(ttl, None)
            .await
            .context("cannot grant a lease")?;
        let (lease, ttl) = (granted.id(), granted.ttl());
        let (mut keeper, mut responses) = client
            .lease_keep_alive(lease)
            .await
            .context("cannot open the lease keep-alive stream")?;
        let period = Duration::from_millis(u64::try_from(ttl * 1000 / 3).unwrap_or(0).max(300));
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                keeper.keep_alive().await?;
                match responses.message().await? {
                    // A TTL of 0 means the lease no longer exists.
                    Some(response) if response.ttl() > 0 => {}
                    Some(_) => bail!("lease {lease:x} expired"),
                    None => bail!("the server closed the keep-alive stream of lease {lease:x}"),
                }
            }
        });
        Ok(Session {
            client,
            lease,
            ttl,
            keeper,
        })
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The TTL the server granted (it may raise the one asked for).
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Completes, with the reason, when the lease can no longer be kept
    /// alive. Whatever the lease protected must then be assumed gone; the
    /// caller stops instead of awaiting this again.
    pub async fn lost(&mut self) -> anyhow::Error {
        match (&mut self.keeper).await {
            Ok(Err(err)) => err,
            Ok(Ok(())) => anyhow!("lease {:x} keep-alive stopped", self.lease),
            Err(err) => anyhow!("lease {:x} keep-alive task failed: {err}", self.lease),
        }
    }

    /// Stops refreshing and revokes the lease, which deletes every key
    /// attached to it now rather than one TTL later.
    pub async fn close(mut self) -> Result<()> {
        self.keeper.abort();
        self.client
            .lease_revoke(self.lease)
            .await
            .with_context(|| format!("cannot revoke lease {:x}", self.lease))?;
        Ok(())
    }
}

/// Tells a long-running example to stop: on SIGINT (Ctrl-C), on SIGTERM (what
/// a process supervisor or Kubernetes sends), or once `--duration` has passed.
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
    deadline: Option<Instant>,
}

impl Shutdown {
    /// Installs the signal handlers now, so that a signal arriving before the
    /// first wait is not lost.
    pub fn new(duration: Option<Duration>) -> Result<Shutdown> {
        Ok(Shutdown {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            deadline: duration.map(|d| Instant::now() + d),
        })
    }

    /// Completes when it is time to stop. Cancel-safe: use it in a
    /// `tokio::select!` loop.
    pub async fn requested(&mut self) {
        let deadline = self.deadline;
        let deadline = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
            () = deadline => {}
        }
    }
}

/// `<what>-<pid>`: a default name that differs between processes.
pub fn default_name(what: &str) -> String {
    format!("{what}-{}", std::process::id())
}
