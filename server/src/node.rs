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

use crate::apply::request::{ConfContext, LeaseCheckpoint, LeaseCheckpointRequest, Op, RaftRequest};
use crate::apply::{Applier, Response, Waiters};
use crate::config::{Config, split_urls};
use crate::error::Error;
use crate::lease::Lessor;
use crate::membership::{Member, Membership, parse_initial_cluster};
use crate::mvcc::Store;
use crate::peer::Learned;
use crate::peer::transport::{Identity, PeerTransport};
use crate::raft::log::{BOOTSTRAP_INDEX, RaftLog};
use crate::raft::{RaftConfig, RaftHandle};
use crate::snapshot::Snapshots;
use crate::storage::rocks::RocksEngine;
use crate::storage::{Cf, Engine, StorageError, WriteBatch};
use crate::watch::WatchHub;

const FORMAT_FILE: &str = "raftkv-format";
const FORMAT: &str = "raftkv data v1\n";
/// This member's own records: never sent in, or replaced by, a snapshot.
const META_MEMBER_ID: &[u8] = b"local/member_id";
const META_CLUSTER_ID: &[u8] = b"local/cluster_id";

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
    #[error("the raft loop or the compactor stopped on a storage error (see above): this member cannot persist, replicate or apply anything; exiting so that it is restarted")]
    RaftFailed,
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
    pub membership: Arc<Membership>,
    pub learned: Learned,
    pub peer_health: crate::peer::PeerHealth,
    pub snapshots: Arc<Snapshots>,
    pub alarms: Arc<crate::alarm::Alarms>,
    /// Users, roles and the enabled flag (etcd's auth store).
    pub auth: Arc<crate::auth::AuthStore>,
    /// `--bcrypt-cost`: the cost of the password hashes this member makes.
    pub bcrypt_cost: u32,
    /// `--quota-backend-bytes` in force; None: no quota.
    pub quota: Option<u64>,
    /// When the size the quota checks was last read, and that size.
    quota_size: parking_lot::Mutex<(Option<std::time::Instant>, u64)>,
    pub election_timeout: Duration,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// `--max-watchers-per-stream` (0: none).
    pub max_watchers_per_stream: usize,
    pub request_timeout: Duration,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
    /// One peer channel per peer URL, kept: forwarded lease calls reuse
    /// it instead of opening a connection each (tonic reconnects a kept
    /// channel by itself).
    peer_clients: parking_lot::Mutex<std::collections::HashMap<String, crate::peer::proto::peer_client::PeerClient<tonic::transport::Channel>>>,
    /// One client per leader's peer URLs, for forwarded Cluster calls
    /// (the peer port serves the Cluster service too).
    leader_clients: tokio::sync::Mutex<std::collections::HashMap<Vec<String>, etcd_client::Client>>,
    /// How this member reaches other members' peer URLs (https:// ones
    /// with the peer CA and certificate).
    pub peer_tls: crate::tls::ClientTls,
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

/// What `Node::submit` hands to raft.
enum Proposal {
    Entry(Vec<u8>),
    ConfChange(raft::eraftpb::ConfChangeV2),
}

/// A founding member's first state: its id and the cluster id from the
/// token and the initial members, the member registry, and a raft log
/// whose founding conf state holds every initial member as a voter.
pub(crate) fn bootstrap(cfg: &Config, peer_urls: &[String], engine: &dyn Engine) -> Result<(u64, u64), StartError> {
    let initial = initial_cluster(cfg, peer_urls)?;
    let token = &cfg.initial_cluster_token;
    let members: Vec<Member> = initial
        .iter()
        .map(|(name, urls)| Member { id: member_id(urls, token), name: name.clone(), peer_urls: urls.clone(), ..Default::default() })
        .collect();
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let id = member_id(peer_urls, token);
    let cid = cluster_id(&ids);
    let mut b = WriteBatch::default();
    let registry = Membership::default();
    for m in members {
        registry.put(m, &mut b);
    }
    let cs = raft::eraftpb::ConfState { voters: ids, ..Default::default() };
    RaftLog::bootstrap(&cs, &mut b)?;
    crate::apply::bootstrap(BOOTSTRAP_INDEX, &mut b);
    b.put(Cf::Meta, META_MEMBER_ID, id.to_be_bytes().to_vec());
    b.put(Cf::Meta, META_CLUSTER_ID, cid.to_be_bytes().to_vec());
    engine.write(b, true)?;
    tracing::info!(member_id = %format!("{id:x}"), cluster_id = %format!("{cid:x}"), members = initial.len(), "bootstrapped a new cluster");
    Ok((id, cid))
}

/// How long a founding member with an empty data dir waits for the other
/// initial members' answer to "am I already in your cluster?" (etcd's
/// bootstrap timeout): members of a new cluster start at about the same
/// time, so silence means nobody has bootstrapped yet.
const BOOTSTRAP_CHECK: Duration = Duration::from_secs(1);

/// etcd's maxGapBetweenApplyAndCommitIndex: proposals are refused with
/// "etcdserver: too many requests" while the committed index is this far
/// ahead of the applied one.
const MAX_APPLY_GAP: u64 = 5000;

/// etcd's isMemberBootstrapped: a founding member that starts on an empty
/// data dir while the cluster it names already has it as a started member
/// (it published its client URLs) lost its data; bootstrapping again would
/// make a second member with the same id and no log. Refused: remove the
/// member and add it back, or restore its data dir.
async fn refuse_if_bootstrapped(cfg: &Config, peer_urls: &[String]) -> Result<(), StartError> {
    let initial = initial_cluster(cfg, peer_urls)?;
    let others: Vec<String> = initial.iter().filter(|(n, _)| *n != cfg.name).flat_map(|(_, u)| u.clone()).collect();
    if others.is_empty() {
        return Ok(());
    }
    let id = member_id(peer_urls, &cfg.initial_cluster_token);
    let Ok(Ok(resp)) = tokio::time::timeout(BOOTSTRAP_CHECK, crate::peer::client::members(&others, &cfg.peer_tls_as_client())).await else {
        return Ok(());
    };
    if resp.members.iter().any(|m| m.id == id && !m.client_urls.is_empty()) {
        return Err(StartError::DataDir(format!(
            "member {id:x} has already been bootstrapped (its data dir {} is empty, but the cluster has it as a started member: \
             restore the data dir, or remove the member and add it back with --initial-cluster-state existing)",
            cfg.data_dir()
        )));
    }
    Ok(())
}

/// A data dir from another cluster (volumes mixed up between clusters): the
/// members this one's `--initial-cluster` names answer for a cluster other
/// than the data dir's. Started, the member would serve the other
/// cluster's data on this one's client URLs. Peers that do not answer
/// (the whole cluster restarting) prove nothing: the member starts.
async fn refuse_if_another_cluster(cfg: &Config, peer_urls: &[String], cid: u64) -> Result<(), StartError> {
    let Ok(initial) = initial_cluster(cfg, peer_urls) else { return Ok(()) };
    let asked = initial.iter().filter(|(n, _)| *n != cfg.name).map(|(_, urls)| async move {
        tokio::time::timeout(BOOTSTRAP_CHECK, crate::peer::client::members(urls, &cfg.peer_tls_as_client())).await.ok().and_then(Result::ok).map(|r| r.cluster_id)
    });
    let answers: Vec<u64> = futures::future::join_all(asked).await.into_iter().flatten().collect();
    match answers.first() {
        Some(&other) if !answers.contains(&cid) => Err(StartError::DataDir(format!(
            "data dir {} belongs to cluster {cid:x}, but the members of --initial-cluster that answered belong to cluster \
             {other:x}: it is another cluster's data dir (start this member on its own, or remove it from the cluster and add it \
             back with an empty one)",
            cfg.data_dir()
        ))),
        _ => Ok(()),
    }
}

/// etcd's `--force-new-cluster`: a member restarted on its data dir becomes
/// the sole voter of its cluster, when most members are lost for good.
/// Committed conf changes that remove every other member (after promoting
/// this one, were it a learner) follow the commit index, and the entries
/// past it go; applied as any conf change, they move raft's configuration
/// and the member registry together, and the removed members are refused
/// should they come back. The cluster id and the data stay.
/// `membership` is the registry as loaded from the data dir.
fn force_new_cluster(engine: Arc<dyn Engine>, me: u64, membership: &Membership) -> Result<(), StartError> {
    use raft::Storage as _;
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType};

    let mut log = RaftLog::open(engine.clone())?;
    let applied = crate::apply::applied_index(engine.as_ref())?;
    let commit = log.hard_state().commit;
    // Who is in the cluster once everything committed is applied: the
    // configuration as of the applied index, the changes committed after
    // it (raftkv proposes version 2 conf changes only), and the registry.
    let cs = log.conf_state();
    let mut voters: std::collections::BTreeSet<u64> = cs.voters.iter().copied().collect();
    let mut everyone: std::collections::BTreeSet<u64> = cs.voters.iter().chain(cs.learners.iter()).copied().collect();
    everyone.extend(membership.list().iter().map(|m| m.id));
    if commit > applied {
        let entries = log
            .entries(applied + 1, commit + 1, None, raft::GetEntriesContext::empty(false))
            .map_err(|e| StartError::DataDir(format!("--force-new-cluster: cannot read the committed entries: {e}")))?;
        for e in entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryConfChangeV2) {
            let Ok(cc) = <ConfChangeV2 as protobuf::Message>::parse_from_bytes(&e.data) else { continue };
            for c in cc.get_changes() {
                match c.get_change_type() {
                    ConfChangeType::AddNode => {
                        voters.insert(c.node_id);
                        everyone.insert(c.node_id);
                    }
                    ConfChangeType::AddLearnerNode => {
                        voters.remove(&c.node_id);
                        everyone.insert(c.node_id);
                    }
                    ConfChangeType::RemoveNode => {
                        voters.remove(&c.node_id);
                        everyone.remove(&c.node_id);
                    }
                }
            }
        }
    }
    let change = |kind: ConfChangeType, id: u64| {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        // Nobody waits for these: no request id, no proposer.
        cc.context = ConfContext::default().encode_to_vec().into();
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.data = protobuf::Message::write_to_bytes(&cc).unwrap_or_default().into();
        e
    };
    let mut entries = Vec::new();
    if !voters.contains(&me) {
        entries.push(change(ConfChangeType::AddNode, me));
    }
    let removed: Vec<u64> = everyone.into_iter().filter(|&id| id != me).collect();
    entries.extend(removed.iter().map(|&id| change(ConfChangeType::RemoveNode, id)));
    let mut batch = WriteBatch::default();
    let new_commit = log.force_commit(entries, &mut batch)?;
    engine.write(batch, true)?;
    tracing::warn!(
        removed = ?removed.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        commit = new_commit,
        "--force-new-cluster: this member is now the sole voter of its cluster (remove the flag once the cluster is recovered)"
    );
    Ok(())
}

/// `--initial-cluster` (by default `NAME=ADVERTISED-PEER-URLS`), checked
/// against this member's name and advertised peer URLs as etcd checks it.
fn initial_cluster(cfg: &Config, peer_urls: &[String]) -> Result<Vec<(String, Vec<String>)>, StartError> {
    let spec = cfg.initial_cluster.clone().unwrap_or_else(|| format!("{}={}", cfg.name, peer_urls.join(&format!(",{}=", cfg.name))));
    let initial = parse_initial_cluster(&spec).map_err(StartError::Config)?;
    let Some((_, mine)) = initial.iter().find(|(n, _)| *n == cfg.name) else {
        return Err(StartError::Config(format!(
            "couldn't find local name {:?} in the initial cluster configuration (--initial-cluster={spec})",
            cfg.name
        )));
    };
    let (mut a, mut b) = (mine.clone(), peer_urls.to_vec());
    a.sort();
    b.sort();
    if a != b {
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} (the URLs must be the same)",
            cfg.name,
            mine.join(","),
            peer_urls.join(",")
        )));
    }
    Ok(initial)
}

/// A member added with `member add` and started with
/// `--initial-cluster-state existing`: it asks the other members for the
/// cluster id and finds its own id by its peer URLs. Its state arrives as a
/// snapshot from the leader.
async fn join(cfg: &Config, peer_urls: &[String], engine: &dyn Engine, learned: &Learned) -> Result<(u64, u64), StartError> {
    let initial = initial_cluster(cfg, peer_urls)?;
    let others: Vec<String> = initial.iter().filter(|(n, _)| *n != cfg.name).flat_map(|(_, u)| u.clone()).collect();
    if others.is_empty() {
        return Err(StartError::Config(
            "--initial-cluster-state existing needs the other members in --initial-cluster".into(),
        ));
    }
    let resp = crate::peer::client::members(&others, &cfg.peer_tls_as_client()).await.map_err(StartError::Config)?;
    let me = resp.members.iter().find(|m| m.peer_urls.iter().any(|u| peer_urls.contains(u))).ok_or_else(|| {
        StartError::Config(format!(
            "no member of the existing cluster has peer URLs {}: add this member first (raftkvctl member add {} --peer-urls={})",
            peer_urls.join(","),
            cfg.name,
            peer_urls.join(",")
        ))
    })?;
    let (id, cid) = (me.id, resp.cluster_id);
    {
        let mut l = learned.lock();
        for m in &resp.members {
            l.insert(m.id, m.peer_urls.clone());
        }
    }
    let mut b = WriteBatch::default();
    b.put(Cf::Meta, META_MEMBER_ID, id.to_be_bytes().to_vec());
    b.put(Cf::Meta, META_CLUSTER_ID, cid.to_be_bytes().to_vec());
    engine.write(b, true)?;
    tracing::info!(member_id = %format!("{id:x}"), cluster_id = %format!("{cid:x}"), "joining an existing cluster");
    Ok((id, cid))
}

impl Node {
    /// Opens the data dir (bootstrapping a new cluster, or joining an
    /// existing one, the first time) and starts raft. Returns the node and
    /// raft's thread.
    pub async fn start(cfg: &Config) -> Result<(Arc<Node>, std::thread::JoinHandle<()>), StartError> {
        cfg.validate().map_err(StartError::Config)?;
        let data_dir = PathBuf::from(cfg.data_dir());
        let db = prepare_data_dir(&data_dir)?;
        let engine: Arc<dyn Engine> = Arc::new(RocksEngine::open(&db)?);
        // First: it completes a snapshot install that a stop interrupted.
        let snapshots = Arc::new(Snapshots::open(data_dir.join("member").join("raft-snapshots"), engine.clone())?);
        let membership = Arc::new(Membership::default());
        let learned: Learned = Learned::default();

        let peer_urls = split_urls(&cfg.initial_advertise_peer_urls);
        let mut had_state = false;
        let (id, cid) = match (read_u64(engine.as_ref(), META_MEMBER_ID)?, read_u64(engine.as_ref(), META_CLUSTER_ID)?) {
            (Some(id), Some(cid)) => {
                // Forced, the member leaves the cluster its peers are of.
                if !cfg.force_new_cluster {
                    refuse_if_another_cluster(cfg, &peer_urls, cid).await?;
                }
                had_state = true;
                (id, cid)
            }
            _ if cfg.initial_cluster_state == "existing" => join(cfg, &peer_urls, engine.as_ref(), &learned).await?,
            _ => {
                refuse_if_bootstrapped(cfg, &peer_urls).await?;
                bootstrap(cfg, &peer_urls, engine.as_ref())?
            }
        };
        membership.load(engine.as_ref())?;
        // The forced conf changes move the registry only once applied.
        if cfg.force_new_cluster {
            if had_state {
                force_new_cluster(engine.clone(), id, &membership)?;
            } else {
                tracing::warn!("--force-new-cluster on an empty data dir: nothing to force, a new cluster is bootstrapped");
            }
        }
        // A data dir is one member's: started under another member's name it
        // was most likely swapped (volumes mixed up), and would speak for
        // the member it belongs to.
        if let Some(owner) = membership.get(id)
            && !owner.name.is_empty()
            && owner.name != cfg.name
        {
            return Err(StartError::DataDir(format!(
                "data dir {} belongs to member {:?} ({id:x}), not to --name {:?}: start that member on it, or give this one its own data dir",
                data_dir.display(),
                owner.name,
                cfg.name
            )));
        }

        let store = Arc::new(Store::open(engine.clone()).map_err(|e| StartError::DataDir(format!("cannot load the key-value store: {e}")))?);
        // etcd's minimum TTL: 1.5 election timeouts, in whole seconds.
        let lessor = Arc::new(Lessor::new((cfg.election_timeout * 3 / 2).div_ceil(1000) as i64));
        crate::apply::load_leases(engine.as_ref(), &store, &lessor)?;
        let waiters = Arc::new(Waiters::default());
        let status = Arc::new(crate::raft::RaftStatus::default());
        let compactor_status = status.clone();
        store
            .spawn_compactor(move || compactor_status.failed.store(true, Ordering::Release))
            .map_err(|e| StorageError::Engine(format!("cannot start the compactor: {e}")))?;
        let header_status = status.clone();
        let header = Box::new(move |revision| ResponseHeader { cluster_id: cid, member_id: id, revision, raft_term: header_status.term() });
        let hub = Arc::new(WatchHub::new(store.clone(), header, cfg.max_request_bytes));
        hub.spawn_fanout().map_err(|e| StorageError::Engine(format!("cannot start the watch fan-out: {e}")))?;
        let alarms = Arc::new(crate::alarm::Alarms::default());
        alarms.load(engine.as_ref())?;
        let auth = Arc::new(crate::auth::AuthStore::default());
        auth.load(engine.as_ref())?;
        auth.set_token_ttl(Duration::from_secs(cfg.auth_token_ttl));
        if let Some(jwt) = crate::auth::JwtConfig::parse(&cfg.auth_token).map_err(StartError::Config)? {
            auth.set_jwt(crate::auth::Jwt::new(&jwt).map_err(StartError::Config)?);
        }
        let applier = Applier::new(
            id,
            engine.clone(),
            store.clone(),
            lessor.clone(),
            waiters.clone(),
            hub.clone(),
            membership.clone(),
            snapshots.clone(),
            alarms.clone(),
            auth.clone(),
        )?;
        let heartbeat = Duration::from_millis(cfg.heartbeat_interval);
        let raft_cfg = RaftConfig {
            id,
            tick: heartbeat,
            election_ticks: (cfg.election_timeout / cfg.heartbeat_interval) as usize,
            heartbeat_ticks: 1,
            snapshot_count: cfg.snapshot_count.max(1),
            catch_up_entries: cfg.snapshot_catchup_entries,
            max_election_ticks: 0,
        };
        let handle_cell = Arc::new(std::sync::OnceLock::new());
        let peer_health = crate::peer::PeerHealth::default();
        let transport = PeerTransport::new(
            Identity {
                id,
                cluster_id: cid,
                peer_urls: peer_urls.clone(),
                status: status.clone(),
                health: peer_health.clone(),
                tls: cfg.peer_tls_as_client(),
            },
            membership.clone(),
            learned.clone(),
            snapshots.clone(),
            handle_cell.clone(),
            tokio::runtime::Handle::current(),
        );
        let (raft, stepped) = crate::raft::node::start(raft_cfg, engine.clone(), applier, transport, snapshots.clone(), status.clone())?;
        let thread = stepped.spawn()?;
        let _ = handle_cell.set(raft.clone());
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
            membership,
            learned,
            peer_health,
            snapshots,
            alarms,
            auth,
            bcrypt_cost: cfg.bcrypt_cost,
            quota: cfg.quota(),
            quota_size: parking_lot::Mutex::new((None, 0)),
            election_timeout: Duration::from_millis(cfg.election_timeout),
            max_request_bytes: cfg.max_request_bytes,
            max_txn_ops: cfg.max_txn_ops,
            max_watchers_per_stream: cfg.max_watchers_per_stream,
            request_timeout: cfg.request_timeout(),
            waiters,
            next_id: AtomicU64::new(now << 22),
            peer_clients: parking_lot::Mutex::default(),
            leader_clients: tokio::sync::Mutex::default(),
            peer_tls: cfg.peer_tls_as_client(),
        };
        Ok((Arc::new(node), thread))
    }

    /// Renews a lease on this member, the leader: its TTL, 0 when unknown.
    /// A checkpointed lease first has its checkpoint cleared through raft
    /// (as etcd does), so a new leader cannot count from the older one.
    pub async fn renew_lease(&self, id: i64) -> Result<i64, Error> {
        match self.lessor.renew_as_leader(id, self.election_timeout) {
            None => Ok(0),
            Some(r) if !r.clear_checkpoint => Ok(r.ttl),
            Some(r) => {
                let checkpoints = vec![LeaseCheckpoint { id, remaining_ttl: 0 }];
                self.propose(Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints })).await?;
                Ok(r.ttl)
            }
        }
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
    /// The Cluster API's header, as etcd's cluster server fills it: no
    /// revision.
    pub fn cluster_header(&self) -> ResponseHeader {
        ResponseHeader { revision: 0, ..self.header(1) }
    }

    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member.id,
            revision: if revision == 0 { self.store.current_revision() } else { revision },
            raft_term: self.raft.status.term(),
        }
    }

    /// Puts a write through raft and waits for its outcome (refused with
    /// "etcdserver: too many requests" past MAX_APPLY_GAP or
    /// `apply::MAX_PENDING_PROPOSALS`).
    pub async fn propose(&self, op: Op) -> Result<Response, Error> {
        self.propose_as(op, &None).await
    }

    /// [`Node::propose`] for a caller whose rights were checked: applied
    /// only if no auth change came in between (etcd's "revision of auth
    /// store is old" otherwise).
    pub async fn propose_as(&self, op: Op, caller: &Option<crate::auth::Caller>) -> Result<Response, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let auth_revision = caller.as_ref().map_or(0, |c| c.revision);
        let data = RaftRequest { id, op: Some(op), proposer: self.member.id, auth_revision }.encode_to_vec();
        if data.len() > self.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        // etcd's own bound: committed entries far ahead of the applied
        // ones mean the state machine cannot keep up.
        if self.raft.status.commit() > self.raft.status.applied() + MAX_APPLY_GAP {
            return Err(Error::TooManyRequests);
        }
        let result = self.submit(id, Proposal::Entry(data)).await;
        if let Err(Error::Timeout | Error::LeaderChanged | Error::NoLeader | Error::Stopped) = &result {
            crate::metrics::METRICS.proposals_failed.inc();
        }
        result
    }

    /// Proposes one membership change and waits for the member list it
    /// produced.
    pub async fn change_membership(&self, change: raft::eraftpb::ConfChangeSingle, member: Option<Member>) -> Result<Vec<Member>, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut cc = raft::eraftpb::ConfChangeV2::default();
        cc.mut_changes().push(change);
        cc.context = ConfContext { request_id: id, member, proposer: self.member.id }.encode_to_vec().into();
        match self.submit(id, Proposal::ConfChange(cc)).await? {
            Response::Members(list) => Ok(list),
            _ => Err(Error::Internal("unexpected apply result for a membership change".into())),
        }
    }

    /// Hands proposal `id` to raft, retrying while there is no leader (as
    /// etcd waits for one) until the request deadline, then waits for its
    /// outcome.
    async fn submit(&self, id: u64, proposal: Proposal) -> Result<Response, Error> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        loop {
            let rx = self.waiters.register(id)?;
            let waiters = self.waiters.clone();
            let refused = Box::new(move || waiters.refused(id));
            let handed = match &proposal {
                Proposal::Entry(data) => self.raft.propose(data.clone(), refused),
                Proposal::ConfChange(cc) => self.raft.propose_conf_change(cc.clone(), refused),
            };
            if handed.is_err() {
                self.waiters.forget(id);
                return Err(Error::Stopped);
            }
            match self.outcome(id, rx, deadline).await? {
                Some(result) => return result,
                None if tokio::time::Instant::now() < deadline => self.leader_may_take(deadline).await,
                None => return Err(Error::NoLeader),
            }
        }
    }

    /// After raft refused a proposal: returns when the leader changes, or
    /// at the deadline, or to try again anyway after 100 ms without a
    /// leader (20 ms while one is known: leadership is moving, and a
    /// transfer that gives up changes nothing).
    async fn leader_may_take(&self, deadline: tokio::time::Instant) {
        let status = &self.raft.status;
        let changed = status.leader_changed.notified();
        tokio::pin!(changed);
        // Registered before the leader is read: a change between is seen.
        changed.as_mut().enable();
        let wait = if status.leader() == 0 { Duration::from_millis(100) } else { Duration::from_millis(20) };
        let retry = deadline.min(tokio::time::Instant::now() + wait);
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(retry) => {}
        }
    }

    /// Waits for the state machine's outcome of proposal `id`. If the
    /// leader changes meanwhile and the proposal is not applied within an
    /// election timeout, it was most likely lost with the old leader: the
    /// client hears "leader changed" (Unavailable) and retries, rather than
    /// waiting out the whole request timeout.
    async fn outcome(
        &self,
        id: u64,
        rx: tokio::sync::oneshot::Receiver<crate::apply::Outcome>,
        deadline: tokio::time::Instant,
    ) -> Result<crate::apply::Outcome, Error> {
        let status = &self.raft.status;
        let leader = status.leader();
        let mut changed_at: Option<tokio::time::Instant> = None;
        tokio::pin!(rx);
        loop {
            // Woken by the outcome, a leader change or a deadline; never
            // polled. Registered before the leader is read, so a change
            // in between is not missed.
            let changed = status.leader_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = tokio::time::Instant::now();
            let current = status.leader();
            if current != leader && changed_at.is_none() {
                changed_at = Some(now);
            }
            let failed = if now >= deadline {
                Some(if current == 0 { Error::NoLeader } else { Error::Timeout })
            } else if changed_at.is_some_and(|t| now - t > self.election_timeout) {
                Some(Error::LeaderChanged)
            } else {
                None
            };
            if let Some(e) = failed {
                self.waiters.forget(id);
                return Err(e);
            }
            let wake = match changed_at {
                Some(t) => deadline.min(t + self.election_timeout + Duration::from_millis(1)),
                None => deadline,
            };
            tokio::select! {
                r = &mut rx => return r.map_err(|_| Error::Stopped),
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The leader's peer URLs (None without a known leader).
    pub fn leader_peer_urls(&self) -> Option<Vec<String>> {
        let leader = self.raft.status.leader();
        if leader == 0 {
            return None;
        }
        match self.membership.get(leader) {
            Some(m) => Some(m.peer_urls),
            None => self.learned.lock().get(&leader).cloned(),
        }
    }

    /// A peer client to the leader, for the lease calls only it answers.
    pub fn leader_peer(&self) -> Result<crate::peer::proto::peer_client::PeerClient<tonic::transport::Channel>, Error> {
        let urls = self.leader_peer_urls().ok_or(Error::NoLeader)?;
        let url = urls.first().ok_or(Error::NoLeader)?;
        let mut clients = self.peer_clients.lock();
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let client = crate::peer::client::connect(&urls, self.request_timeout, &self.peer_tls).map_err(Error::Internal)?;
        clients.insert(url.clone(), client.clone());
        Ok(client)
    }

    /// A client of the leader's peer URLs, kept for the next forwarded
    /// call (the leader's Cluster service, served on its peer port as
    /// etcd's peer handlers, answers membership changes): the peer port's
    /// TLS, never the client port's, so a member needs no client
    /// certificate of its own cluster's client CA.
    pub async fn leader_client(&self) -> Result<etcd_client::Client, Error> {
        let urls = self.leader_peer_urls().ok_or(Error::NoLeader)?;
        let mut clients = self.leader_clients.lock().await;
        if let Some(client) = clients.get(&urls) {
            return Ok(client.clone());
        }
        let dial = crate::tls::Dial { connect_timeout: Some(Duration::from_secs(2)), timeout: Some(self.request_timeout), keep_alive: None };
        let client = crate::tls::connect(&urls, &self.peer_tls, &dial, None).await.map_err(|_| Error::NoLeader)?;
        clients.insert(urls, client.clone());
        Ok(client)
    }

    /// Publishes this member's name and client URLs through raft once a
    /// leader exists, as etcd does at start; retries until it succeeds.
    pub async fn publish(&self) {
        let me = Member {
            id: self.member.id,
            name: self.member.name.clone(),
            client_urls: self.member.client_urls.clone(),
            ..Default::default()
        };
        loop {
            if let Some(m) = self.membership.get(me.id)
                && m.name == me.name
                && m.client_urls == me.client_urls
            {
                return;
            }
            if self.raft.status.removed() {
                return;
            }
            match self.propose(Op::MemberAttributes(me.clone())).await {
                Ok(_) => tracing::info!(name = %me.name, client_urls = %me.client_urls.join(","), "published this member's attributes"),
                // Not in the registry yet: a new member before its snapshot.
                Err(e) => {
                    tracing::debug!(error = %e, "publishing this member's attributes failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
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

    /// Whether this member knows a leader.
    pub fn has_leader(&self) -> bool {
        self.raft.status.leader() != 0
    }

    pub fn is_leader(&self) -> bool {
        self.raft.status.leader() == self.member.id
    }

    /// etcd's quota check before a request that adds `cost` bytes goes to
    /// raft: past `--quota-backend-bytes`, this member raises NOSPACE
    /// through raft (every member then refuses such requests until it is
    /// disarmed) and the request is refused. With the alarm already active
    /// the applier refuses it anyway.
    pub async fn check_quota(&self, cost: u64) -> Result<(), Error> {
        let Some(quota) = self.quota else { return Ok(()) };
        if cost == 0 || self.quota_size() + cost < quota {
            return Ok(());
        }
        if !self.alarms.has(crate::alarm::NOSPACE) {
            let raise = etcd_client::proto::PbAlarmRequest {
                action: crate::alarm::ACTIVATE,
                member_id: self.member.id,
                alarm: crate::alarm::NOSPACE,
            };
            if let Err(e) = self.propose(Op::Alarm(raise)).await {
                tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
            }
        }
        Err(Error::NoSpace)
    }

    /// The database size the quota checks against, read from the engine at
    /// most every 50 ms: its properties take RocksDB's mutex, too much for
    /// every put (etcd reads an atomic).
    fn quota_size(&self) -> u64 {
        const FRESH: Duration = Duration::from_millis(50);
        let mut cached = self.quota_size.lock();
        if cached.0.is_none_or(|at| at.elapsed() > FRESH) {
            *cached = (Some(std::time::Instant::now()), self.engine.state_size().total);
        }
        cached.1
    }

    /// Learners serve Status and serializable reads only.
    pub fn refuse_learner(&self) -> Result<(), Error> {
        if self.raft.status.is_learner() { Err(Error::NotSupportedForLearner) } else { Ok(()) }
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
