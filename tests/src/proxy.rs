//! Fault injection between cluster members: a TCP proxy in front of each
//! member's peer port. Every member advertises its proxy's URL as its peer
//! URL, so all peer traffic crosses a proxy, and [`Network::cut`] can isolate
//! one member without touching its process.
//!
//! A cut must stop traffic in both directions, whatever the transport. etcd's
//! rafthttp carries the messages for member B mostly on stream connections
//! that B itself dials to the sender; dropping only the connections into B
//! leaves those up (and B's own messages go out over pipeline connections
//! it dials), so B would not even lag. The proxies therefore tell who dialed
//! a connection by its source port: the process holding the other end of
//! the socket, found in `/proc` (loopback connections all come from
//! 127.0.0.1, so the address says nothing). Linux only, like the rest of the
//! harness.
//!
//! The proxies run on a runtime of their own, so peer traffic keeps flowing
//! while a test blocks its own thread (running etcdctl, reaping a process).
//! This module knows ports and process ids, never raft or etcd.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

/// The proxies of one cluster, one link per member.
pub struct Network {
    /// `None` only while dropping.
    runtime: Option<Runtime>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    links: Vec<Link>,
    next_connection: u64,
    /// One-way cuts: connections the member behind the first link dials
    /// into the second are refused (what it sends there is lost).
    blocked: HashSet<(usize, usize)>,
}

/// The proxy in front of one member.
struct Link {
    /// Where the other members dial (the advertised peer port).
    listen_port: u16,
    /// The member process, to recognise the connections it dials.
    pid: Option<u32>,
    cut: bool,
    /// Added to everything forwarded into the member.
    delay: Duration,
    connections: Vec<Connection>,
    /// Connections accepted into the link since it was made.
    accepted: u64,
}

/// One forwarded connection, dialed by `source_port` into a link.
struct Connection {
    id: u64,
    source_port: u16,
    task: AbortHandle,
}

impl Network {
    pub fn new() -> anyhow::Result<Network> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("e2e-peer-proxy")
            .enable_all()
            .build()
            .context("cannot start the peer proxies' runtime")?;
        Ok(Network {
            runtime: Some(runtime),
            state: Arc::default(),
        })
    }

    /// A proxy forwarding to `target_port` on loopback; returns its index
    /// (for [`Network::cut`]) and the port it listens on.
    pub fn add_link(&self, target_port: u16) -> anyhow::Result<(usize, u16)> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind a peer proxy")?;
        listener
            .set_nonblocking(true)
            .context("cannot make the peer proxy's listener non-blocking")?;
        let listen_port = listener
            .local_addr()
            .context("peer proxy has no address")?
            .port();
        let mut state = lock(&self.state);
        let index = state.links.len();
        state.links.push(Link {
            listen_port,
            pid: None,
            cut: false,
            delay: Duration::ZERO,
            connections: Vec::new(),
            accepted: 0,
        });
        let runtime = self.runtime()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).context("cannot register the peer proxy")?
        };
        runtime.spawn(accept_loop(
            listener,
            index,
            target_port,
            self.state.clone(),
        ));
        Ok((index, listen_port))
    }

    /// How many connections the link has accepted (and forwarded) since it
    /// was made: what the other members dialed into its member.
    pub fn accepted(&self, link: usize) -> u64 {
        lock(&self.state).links.get(link).map_or(0, |l| l.accepted)
    }

    /// Tells the link which process now serves behind it (`None` while the
    /// member is down), so that a cut also catches what that process dials.
    pub fn set_pid(&self, link: usize, pid: Option<u32>) {
        if let Some(link) = lock(&self.state).links.get_mut(link) {
            link.pid = pid;
        }
    }

    /// Isolates the member behind `link`: drops every connection into it and
    /// every connection its process dialed to another member, and refuses
    /// both kinds from now on, until [`Network::heal`].
    pub fn cut(&self, link: usize) {
        let mut state = lock(&self.state);
        let Some(cut) = state.links.get_mut(link) else {
            return;
        };
        cut.cut = true;
        for connection in cut.connections.drain(..) {
            connection.task.abort();
        }
        let pid = cut.pid;
        for other in &mut state.links {
            let listen_port = other.listen_port;
            other.connections.retain(|connection| {
                let dialed_by_cut =
                    pid.is_some_and(|pid| dialed_by(pid, connection.source_port, listen_port));
                if dialed_by_cut {
                    connection.task.abort();
                }
                !dialed_by_cut
            });
        }
    }

    /// Lets traffic to and from the member behind `link` through again.
    pub fn heal(&self, link: usize) {
        if let Some(link) = lock(&self.state).links.get_mut(link) {
            link.cut = false;
        }
    }

    /// A one-way cut: what the member behind `from` dials into the member
    /// behind `to` is dropped and refused until [`Network::unblock`]; the
    /// other direction flows. (raftkv sends a peer its messages on
    /// connections it dials itself, so this loses `from`'s messages to
    /// `to`; etcd also sends on streams the receiver dials.)
    pub fn block(&self, from: usize, to: usize) {
        let mut state = lock(&self.state);
        state.blocked.insert((from, to));
        let Some(pid) = state.links.get(from).and_then(|l| l.pid) else {
            return;
        };
        let Some(into) = state.links.get_mut(to) else {
            return;
        };
        let listen_port = into.listen_port;
        into.connections.retain(|connection| {
            let dialed = dialed_by(pid, connection.source_port, listen_port);
            if dialed {
                connection.task.abort();
            }
            !dialed
        });
    }

    pub fn unblock(&self, from: usize, to: usize) {
        lock(&self.state).blocked.remove(&(from, to));
    }

    /// Delays everything forwarded into the member behind `link` by
    /// `delay` (zero: none), on connections made from now on and on those
    /// open.
    pub fn delay(&self, link: usize, delay: Duration) {
        if let Some(link) = lock(&self.state).links.get_mut(link) {
            link.delay = delay;
        }
    }

    fn runtime(&self) -> anyhow::Result<&Runtime> {
        self.runtime
            .as_ref()
            .context("the peer proxies are shutting down")
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropping a runtime blocks, which panics inside the test's
            // async context; the proxies' tasks hold nothing to flush.
            runtime.shutdown_background();
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere leaves the bookkeeping consistent: every update
    // is a single push, retain or flag store.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn accept_loop(
    listener: TcpListener,
    index: usize,
    target_port: u16,
    state: Arc<Mutex<State>>,
) {
    loop {
        // An accept error (out of descriptors) is transient; the member
        // sees a refused connection and retries, as with a real network.
        let Ok((inbound, source)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut guard = lock(&state);
        if refused(&guard, index, source) {
            // Dropping the accepted socket closes it: the dialer sees the
            // connection end before a byte is forwarded.
            continue;
        }
        let id = guard.next_connection;
        guard.next_connection += 1;
        guard.links[index].accepted += 1;
        let task = tokio::spawn(forward(inbound, target_port, index, id, state.clone()));
        // Registered under the same lock as the check, so a cut between
        // the two cannot miss this connection.
        guard.links[index].connections.push(Connection {
            id,
            source_port: source.port(),
            task: task.abort_handle(),
        });
    }
}

/// Whether a connection from `source` into link `index` crosses a cut.
fn refused(state: &State, index: usize, source: SocketAddr) -> bool {
    let into = &state.links[index];
    if into.cut {
        return true;
    }
    state.links.iter().enumerate().any(|(from, link)| {
        (link.cut || state.blocked.contains(&(from, index)))
            && link
                .pid
                .is_some_and(|pid| dialed_by(pid, source.port(), into.listen_port))
    })
}

async fn forward(
    inbound: TcpStream,
    target_port: u16,
    index: usize,
    id: u64,
    state: Arc<Mutex<State>>,
) {
    // A member that is down refuses the connection; closing the inbound
    // side passes that on.
    if let Ok(outbound) = TcpStream::connect((Ipv4Addr::LOCALHOST, target_port)).await {
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        // Either side closing or failing ends the connection, as it would
        // end a direct one.
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let delay = {
            let state = state.clone();
            move || lock(&state).links[index].delay
        };
        tokio::select! {
            () = delayed_copy(out_read, in_write, || Duration::ZERO) => {}
            () = delayed_copy(in_read, out_write, delay) => {}
        }
    }
    lock(&state).links[index]
        .connections
        .retain(|connection| connection.id != id);
}

/// Copies `reader` to `writer` until either ends, each chunk written
/// `delay()` after it was read (latency, not a throughput limit: reading
/// goes on while earlier chunks wait).
async fn delayed_copy(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    delay: impl Fn() -> Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((tokio::time::Instant::now() + delay(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    // The reader ending lets the writer drain what is queued, then close.
    tokio::join!(read, write);
}

/// Whether process `pid` holds the TCP socket with local port `source_port`
/// connected to `remote_port` on loopback.
fn dialed_by(pid: u32, source_port: u16, remote_port: u16) -> bool {
    let inodes = socket_inodes(source_port, remote_port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        })
    })
}

/// Inodes of the TCP sockets (IPv4 or IPv6) from local port `local_port` to
/// remote port `remote_port`, from `/proc/net/tcp{,6}`.
fn socket_inodes(local_port: u16, remote_port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode`,
        // addresses as `HEXADDR:HEXPORT`; the first line is the heading.
        for fields in text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
        {
            let [_, local, remote, _, _, _, _, _, _, inode, ..] = fields.as_slice() else {
                continue;
            };
            if hex_port(local) == Some(local_port)
                && hex_port(remote) == Some(remote_port)
                && let Ok(inode) = inode.parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

fn hex_port(address: &str) -> Option<u16> {
    let (_, port) = address.rsplit_once(':')?;
    u16::from_str_radix(port, 16).ok()
}
