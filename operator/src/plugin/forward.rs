//! A local port forwarded to a pod's port through the API server, as
//! `kubectl port-forward` does: a listener on 127.0.0.1 whose every
//! connection gets a port-forward stream of its own (kube's WebSocket
//! port-forward), so any etcd client can dial the pod.

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Forwards while alive; dropping it stops accepting connections.
pub struct Forward {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub pod: String,
    task: JoinHandle<()>,
}

impl Forward {
    pub async fn start(pods: Api<Pod>, pod: &str, port: u16) -> anyhow::Result<Forward> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("cannot listen on 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let name = pod.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let mut conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of file descriptors, say: the next may work.
                        eprintln!("port-forward to pod/{name}:{port}: cannot accept a connection: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let pods = pods.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    let mut forwarder = match pods.portforward(&name, &[port]).await {
                        Ok(f) => f,
                        Err(e) => {
                            eprintln!("port-forward to pod/{name}:{port} failed: {e}");
                            return;
                        }
                    };
                    let errors = forwarder.take_error(port);
                    if let Some(mut upstream) = forwarder.take_stream(port) {
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
                    }
                    // What the kubelet said of the connection to the pod's
                    // port (refused, say), in its words.
                    let ended = async {
                        if let Some(errors) = errors
                            && let Some(e) = errors.await
                        {
                            eprintln!("port-forward to pod/{name}:{port}: {e}");
                        }
                        let _ = forwarder.join().await;
                    };
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), ended).await;
                });
            }
        });
        Ok(Forward { endpoint: format!("http://{addr}"), pod: pod.to_owned(), task })
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}
