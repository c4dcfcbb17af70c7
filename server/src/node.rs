//! Wiring: the data dir, the engine, MVCC, the state machine and raft, and
//! what the API adapters call (propose a write, wait for a linearizable
//! read). `run(config, shutdown)` is the whole server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::proto::PbResponseHeader as ResponseHeader;
use prost::Message;
use sha1::{Digest, Sha1};

use crate::apply::request::{Op, RaftRequest};
use crate::apply::{Applier, Response, Waiters};
use crate::config::{Config, split_urls};
use crate::error::Error;
use crate::lease::Lessor;
use crate::mvcc::{RangeEnd, RangeOptions, Store};
use crate::raft::{RaftConfig, RaftError, RaftHandle};
use crate::storage::rocks::RocksEngine;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};
use crate::watch::WatchHub;

const FORMAT_FILE: &str = "raftkv-format";
const FORMAT: &str = "raftkv data v1\n";
const META_MEMBER_ID: &[u8] = b"cluster/member_id";
const META_CLUSTER_ID: &[u8] = b"cluster/cluster_id";

/// Responses that carry etcd's ResponseHeader.
pub trait WithHeader {
    fn header_mut(&mut self) -> &mut Option<ResponseHeader>;
}

macro_rules! with_header {
    ($($t:ty),* $(,)?) => {
        $(impl WithHeader for $t {
            fn header_mut(&mut self) -> &mut Option<ResponseHeader> {
                &mut self.header
            }
        })*
    };
}

with_header!(
    etcd_client::proto::PbRangeResponse,
    etcd_client::proto::PbPutResponse,
    etcd_client::proto::PbDeleteResponse,
    etcd_client::proto::PbTxnResponse,
    etcd_client::proto::PbCompactionResponse,
    etcd_client::proto::PbLeaseGrantResponse,
    etcd_client::proto::PbLeaseRevokeResponse,
);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    DataDir(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {url}: {error}")]
    Listen { url: String, error: std::io::Error },
}

/// This member as the Cluster API shows it.
#[derive(Debug, Clone)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

pub struct Node {
    pub member: MemberInfo,
    pub cluster_id: u64,
    pub store: Arc<Store>,
    pub engine: Arc<dyn Engine>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub raft: RaftHandle,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    pub request_timeout: Duration,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
}

/// etcd's member id: SHA-1 of the sorted peer URLs and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = Sha1::new();
    h.update(urls.join("").as_bytes());
    h.update(token.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or_default())
}

/// etcd's cluster id: SHA-1 of the sorted member ids.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = Sha1::new();
    for id in ids {
        h.update(id.to_be_bytes());
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().unwrap_or_default())
}

/// Checks that `dir` is empty, missing or a raftkv data dir, and returns the
/// database path inside it.
pub fn prepare_data_dir(dir: &Path) -> Result<PathBuf, StartError> {
    let member = dir.join("member");
    let db = member.join("db");
    let format = member.join(FORMAT_FILE);
    let shown = dir.display();
    if member.join("wal").exists() || member.join("snap").exists() {
        return Err(StartError::DataDir(format!(
            "data dir {shown} was written by etcd (member/wal, member/snap): raftkv cannot open it; \
             restore an etcd snapshot into a new raftkv data dir instead"
        )));
    }
    if format.exists() {
        let content = std::fs::read_to_string(&format).map_err(|e| StartError::DataDir(format!("cannot read {}: {e}", format.display())))?;
        if content != FORMAT {
            return Err(StartError::DataDir(format!(
                "data dir {shown} has an unknown format {:?} (this raftkv reads {:?})",
                content.trim(),
                FORMAT.trim()
            )));
        }
        return Ok(db);
    }
    let non_empty = |p: &Path| std::fs::read_dir(p).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty(dir) {
        return Err(StartError::DataDir(format!(
            "data dir {shown} is not empty and is not a raftkv data dir (no member/{FORMAT_FILE}); \
             refusing to touch it: point --data-dir at an empty or new directory"
        )));
    }
    std::fs::create_dir_all(&member).map_err(|e| StartError::DataDir(format!("cannot create {}: {e}", member.display())))?;
    std::fs::write(&format, FORMAT).map_err(|e| StartError::DataDir(format!("cannot write {}: {e}", format.display())))?;
    Ok(db)
}

fn read_u64(engine: &dyn Engine, key: &[u8]) -> Result<Option<u64>, StorageError> {
    Ok(engine.get(Cf::Meta, key)?.and_then(|b| b.as_slice().try_into().ok()).map(u64::from_be_bytes))
}

impl Node {
    /// Opens the data dir and starts raft. Returns the node and raft's thread.
    pub fn start(cfg: &Config) -> Result<(Arc<Node>, std::thread::JoinHandle<()>), StartError> {
        cfg.validate().map_err(StartError::Config)?;
        let db = prepare_data_dir(Path::new(&cfg.data_dir()))?;
        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&db)?);

        let peer_urls = split_urls(&cfg.initial_advertise_peer_urls);
        let (id, cid) = match (read_u64(engine.as_ref(), META_MEMBER_ID)?, read_u64(engine.as_ref(), META_CLUSTER_ID)?) {
            (Some(id), Some(cid)) => (id, cid),
            _ => {
                let id = member_id(&peer_urls, &cfg.initial_cluster_token);
                let cid = cluster_id(&[id]);
                let mut b = WriteBatch::default();
                b.put(Cf::Meta, META_MEMBER_ID, id.to_be_bytes().to_vec());
                b.put(Cf::Meta, META_CLUSTER_ID, cid.to_be_bytes().to_vec());
                engine.write(b, true)?;
                (id, cid)
            }
        };

        let store = Arc::new(Store::open(engine.clone()).map_err(|e| StartError::DataDir(format!("cannot load the key-value store: {e}")))?);
        // etcd's minimum TTL: 1.5 election timeouts, in whole seconds.
        let lessor = Arc::new(Lessor::new((cfg.election_timeout * 3 / 2).div_ceil(1000) as i64));
        let all = store
            .range(&[0], &RangeEnd::Infinity, &RangeOptions::default())
            .map_err(|e| StartError::DataDir(format!("cannot load the key-value store: {e}")))?;
        lessor.load(engine.as_ref(), all.kvs.into_iter().filter(|kv| kv.lease != 0).map(|kv| (kv.key, kv.lease)))?;
        let waiters = Arc::new(Waiters::default());
        let status = Arc::new(crate::raft::RaftStatus::default());
        let header_status = status.clone();
        let header = Box::new(move |revision| ResponseHeader { cluster_id: cid, member_id: id, revision, raft_term: header_status.term() });
        let hub = Arc::new(WatchHub::new(store.clone(), header, cfg.max_request_bytes));
        let applier = Applier::new(engine.clone(), store.clone(), lessor.clone(), waiters.clone(), hub.clone())?;
        let heartbeat = Duration::from_millis(cfg.heartbeat_interval);
        let raft_cfg = RaftConfig {
            id,
            initial_voters: vec![id],
            tick: heartbeat,
            election_ticks: (cfg.election_timeout / cfg.heartbeat_interval) as usize,
            heartbeat_ticks: 1,
            snapshot_count: cfg.snapshot_count.max(1),
            catch_up_entries: 5000,
        };
        let (raft, thread) = crate::raft::node::start(raft_cfg, engine.clone(), applier, status)?;
        // Ids are unique across restarts: the start time fills the high bits.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let node = Node {
            member: MemberInfo { id, name: cfg.name.clone(), peer_urls, client_urls: split_urls(&cfg.advertise_client_urls) },
            cluster_id: cid,
            store,
            engine,
            lessor,
            hub,
            raft,
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            request_timeout: cfg.request_timeout(),
            waiters,
            next_id: AtomicU64::new(now << 22),
        };
        Ok((Arc::new(node), thread))
    }

    /// A fresh lease id: positive, unique across restarts and members.
    pub fn new_lease_id(&self) -> i64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) ^ self.member.id.rotate_left(32);
        (id & (i64::MAX as u64)).max(1) as i64
    }

    /// Completes the header of a response the state machine produced: the
    /// revision it set, plus this member's ids and the raft term.
    pub fn complete<T: WithHeader>(&self, mut resp: T) -> T {
        let rev = resp.header_mut().as_ref().map_or(0, |h| h.revision);
        *resp.header_mut() = Some(self.header(rev));
        resp
    }

    /// A response header as etcd fills it.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision: if revision == 0 { self.store.current_revision() } else { revision },
            raft_term: self.raft.status.term(),
        }
    }

    /// Puts a write through raft and waits for its outcome.
    pub async fn propose(&self, op: Op) -> Result<Response, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = RaftRequest { id, op: Some(op) }.encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let rx = self.waiters.register(id);
        let proposed = async {
            loop {
                match self.raft.propose(data.clone()).await {
                    Ok(()) => return Ok(()),
                    // No leader yet: wait for one, as etcd does, until the deadline.
                    Err(RaftError::Dropped) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Err(_) => return Err(Error::Stopped),
                }
            }
        };
        let outcome = tokio::time::timeout_at(deadline, async {
            proposed.await?;
            rx.await.map_err(|_| Error::Stopped)?
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.waiters.forget(id);
                Err(if self.raft.status.leader() == 0 { Error::NoLeader } else { Error::Timeout })
            }
        }
    }

    /// Waits until a read here would be linearizable (ReadIndex).
    pub async fn linearizable_read(&self) -> Result<(), Error> {
        match tokio::time::timeout(self.request_timeout, self.raft.read_index()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(if self.raft.status.leader() == 0 { Error::NoLeader } else { Error::Timeout }),
        }
    }

    /// Waits until raft has a leader and has applied what it had committed
    /// at start, so that the first client sees every earlier write.
    pub async fn wait_ready(&self) {
        loop {
            let s = &self.raft.status;
            if s.leader() != 0 && s.applied() >= s.commit() && s.commit() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.status.leader() == self.member.id
    }

    pub fn stop(&self) {
        self.raft.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_peer_urls_and_token() {
        let a = member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster");
        assert_eq!(a, member_id(&["http://127.0.0.1:2380".into()], "etcd-cluster"));
        assert_ne!(a, member_id(&["http://127.0.0.1:2380".into()], "other-token"));
        assert_eq!(cluster_id(&[1, 2]), cluster_id(&[2, 1]));
    }

    #[test]
    fn a_foreign_data_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("member/wal")).expect("mkdir");
        let err = prepare_data_dir(dir.path()).expect_err("etcd dir refused");
        assert!(err.to_string().contains("written by etcd"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("notes.txt"), "x").expect("write");
        let err = prepare_data_dir(dir.path()).expect_err("foreign dir refused");
        assert!(err.to_string().contains("not a raftkv data dir"), "{err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let db = prepare_data_dir(&dir.path().join("new")).expect("new dir accepted");
        assert!(db.ends_with("member/db"));
        prepare_data_dir(&dir.path().join("new")).expect("own dir accepted again");
    }
}
