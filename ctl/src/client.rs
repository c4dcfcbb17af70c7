//! Connecting to the cluster and running one request under etcdctl's
//! command timeout.
//!
//! clientv3 waits for a connection until the command's deadline and then
//! reports `context deadline exceeded`; `call` does the same by retrying
//! requests that never reached a server. It must not retry anything a
//! server answered.

use std::future::Future;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use raftkv::tls::{ClientTls, Dial};
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::error::{CtlError, is_connection_error};

/// grpc-go's floor on the keepalive ping interval.
const MIN_KEEPALIVE_TIME: Duration = Duration::from_secs(10);

/// How to reach the cluster: etcdctl's global connection flags.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub command_timeout: Duration,
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    /// user name and password for authentication.
    pub user: Option<(String, String)>,
    /// TLS: --cacert, --cert, --key, --insecure-skip-tls-verify,
    /// --insecure-transport.
    pub tls: ClientTls,
}

impl ConnConfig {
    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            // grpc-go (etcdctl's client) never pings more often than every
            // 10 s whatever --keepalive-time says, and etcd's servers
            // enforce a 5 s minimum (--grpc-keepalive-min-time): a client
            // pinging every 2 s through a long call (a defragmentation) is
            // sent GOAWAY "too many pings" and the call fails.
            .with_keep_alive(self.keepalive_time.max(MIN_KEEPALIVE_TIME), self.keepalive_timeout);
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        options
    }

    /// The same connection without a command timeout: etcdctl runs some
    /// lease commands under `context.TODO()` and waits for a server forever.
    pub fn without_deadline(&self) -> ConnConfig {
        // A century stands for "never"; tokio clamps far deadlines.
        const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        ConnConfig { command_timeout: NEVER, ..self.clone() }
    }

    /// A client balancing over every endpoint, as etcdctl's is.
    pub async fn connect(&self) -> Result<Client, CtlError> {
        self.connect_to(&self.endpoints).await
    }

    /// A client for the given endpoints only (endpoint status and health
    /// ask each endpoint on its own).
    pub async fn connect_to(&self, endpoints: &[String]) -> Result<Client, CtlError> {
        let deadline = Instant::now() + self.command_timeout;
        retry_until(deadline, || self.dial(endpoints)).await
    }

    /// One client of `endpoints`, not retried. Over TLS (an https://
    /// endpoint, or a TLS flag given), the channel is raftkv's own, which
    /// can present a client certificate and skip verification.
    pub async fn dial(&self, endpoints: &[String]) -> Result<Client, etcd_client::Error> {
        let options = self.options();
        if !self.tls.any_tls(endpoints) {
            return Client::connect(endpoints, Some(options)).await;
        }
        let dial = Dial {
            connect_timeout: Some(self.dial_timeout),
            timeout: None,
            keep_alive: Some((self.keepalive_time.max(MIN_KEEPALIVE_TIME), self.keepalive_timeout)),
        };
        raftkv::tls::connect(endpoints, &self.tls, &dial, Some(options)).await
    }

    /// Runs one request under the command timeout.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CtlError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        retry_until(Instant::now() + self.command_timeout, f).await
    }
}

async fn retry_until<T, F, Fut>(deadline: Instant, mut f: F) -> Result<T, CtlError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    loop {
        match timeout_at(deadline, f()).await {
            Err(_elapsed) => return Err(CtlError::deadline_exceeded()),
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_connection_error(&e) => {
                let next = Instant::now() + Duration::from_millis(100);
                if next >= deadline {
                    sleep_until(deadline).await;
                    return Err(CtlError::deadline_exceeded());
                }
                sleep_until(next).await;
            }
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}
