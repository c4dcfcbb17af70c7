//! The membership executor: the etcd Cluster and Maintenance calls that
//! carry out the planner's membership steps (MemberAdd as learner,
//! MemberPromote, MemberRemove, MoveLeader), and the observation the planner
//! decides from (MemberList, then each member's Status). It speaks only the
//! etcd v3 API, like any client, and never links the server.
//!
//! Each call is idempotent as etcd answers it: a repeated add finds its peer
//! URL taken, a repeated promote finds a voter, a repeated remove finds no
//! member; those answers count as done, so that a step retried after a lost
//! reply does not fail. The planner already avoids repeats by observing
//! first; this is the second line.
//!
//! The steps that are not membership (the StatefulSet, pods, volumes) go to
//! a [`Workloads`]: the controller's is Kubernetes, the end-to-end test's is
//! local processes.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use futures::future::join_all;

use crate::planner::{Action, ClusterObs, MemberObs, Naming};

/// How long to wait for one member to connect and answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// A learner may be promoted once its applied index reaches this share of
/// the leader's index, as etcd and raftkv require (90%).
const IN_SYNC_PERCENT: u64 = 90;

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("no member answered at {endpoints}: {last}")]
    Unreachable { endpoints: String, last: String },
    #[error("the cluster has no leader")]
    NoLeader,
    #[error("{0}")]
    Malformed(&'static str),
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        #[source]
        source: etcd_client::Error,
    },
}

impl MembershipError {
    /// Refusals that pass with time: etcd's strict reconfiguration check
    /// right after a change or a start, a learner still catching up, an
    /// election under way, a member not answering yet.
    pub fn is_transient(&self) -> bool {
        match self {
            MembershipError::Unreachable { .. } | MembershipError::NoLeader => true,
            MembershipError::Malformed(_) => false,
            MembershipError::Call { source, .. } => transient(source),
        }
    }
}

/// etcd's refusals that pass with time, by their text.
fn transient(err: &etcd_client::Error) -> bool {
    let text = err.to_string();
    [
        "unhealthy cluster",
        "in sync with leader",
        "not enough started members",
        "no leader",
        "leader changed",
        "timed out",
        "transport error",
        "Unavailable",
    ]
    .iter()
    .any(|t| text.contains(t))
}

/// etcd refuses a membership change for a few seconds after the previous one
/// (its strict reconfiguration check: every voter connected for 5 s); a call
/// retries such refusals that long before the step is given up and planned
/// again.
fn briefly() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
}

/// A member's details that the planner does not need and status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberDetail {
    pub client_urls: Vec<String>,
    pub version: Option<String>,
    pub db_size: Option<i64>,
    pub db_size_in_use: Option<i64>,
    pub applied_index: u64,
}

/// One observation of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub cluster: ClusterObs,
    pub cluster_id: u64,
    pub details: BTreeMap<u64, MemberDetail>,
    /// The highest revision a member answered with.
    pub revision: i64,
}

/// The cluster, reached through `seeds` (client URLs of members expected
/// to be in it).
#[derive(Debug, Clone)]
pub struct Membership {
    seeds: Vec<String>,
    tls: Option<ClientTls>,
}

/// What the operator trusts and presents when members serve clients over
/// TLS: PEM read from the cluster's Secrets at each reconciliation, so a
/// renewed Secret is used from the next one on.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA members' certificates are signed by.
    pub ca: Vec<u8>,
    /// The operator's client certificate and key, when members ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("identity", &self.identity.is_some()).finish_non_exhaustive()
    }
}

impl ClientTls {
    fn options(&self) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => options.identity(etcd_client::Identity::from_pem(cert, key)),
            None => options,
        }
    }
}

fn connect_options(tls: Option<&ClientTls>) -> ConnectOptions {
    let options = ConnectOptions::new().with_connect_timeout(CALL_TIMEOUT);
    match tls {
        Some(tls) => options.with_tls(tls.options()),
        None => options,
    }
}

async fn connect(endpoint: &str, tls: Option<&ClientTls>) -> Result<Client, etcd_client::Error> {
    let options = connect_options(tls).with_timeout(CALL_TIMEOUT);
    Client::connect([endpoint], Some(options)).await
}

fn call(call: &'static str) -> impl FnOnce(etcd_client::Error) -> MembershipError {
    move |source| MembershipError::Call { call, source }
}

/// etcd's answer to a call that already happened.
fn already(err: &etcd_client::Error, text: &str) -> bool {
    err.to_string().contains(text)
}

impl Membership {
    pub fn new(seeds: Vec<String>) -> Membership {
        Membership { seeds, tls: None }
    }

    /// Members serve clients over TLS: `tls` verifies them and is presented.
    pub fn with_tls(self, tls: Option<ClientTls>) -> Membership {
        Membership { tls, ..self }
    }

    /// A client of the first seed that answers MemberList, and the answer.
    async fn any_member(
        &self,
    ) -> Result<(Client, etcd_client::MemberListResponse), MembershipError> {
        let mut last = String::from("no endpoints");
        for seed in &self.seeds {
            let attempt = async {
                let mut client = connect(seed, self.tls.as_ref()).await?;
                let list = client.member_list().await?;
                Ok::<_, etcd_client::Error>((client, list))
            };
            match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(err)) => last = format!("{seed}: {err}"),
                Err(_) => last = format!("{seed}: timed out"),
            }
        }
        Err(MembershipError::Unreachable {
            endpoints: self.seeds.join(","),
            last,
        })
    }
}

/// The etcd side of the membership steps, and the observation: a trait so
/// that the controller's tests can put a fake cluster behind it.
pub trait MembershipApi: Send + Sync {
    /// MemberList, then every member's Status on its client URLs.
    fn observe(&self) -> impl Future<Output = Result<Report, MembershipError>> + Send;
    /// MemberAdd as a learner; the new member's id.
    fn add_learner(
        &self,
        peer_url: &str,
    ) -> impl Future<Output = Result<u64, MembershipError>> + Send;
    fn promote(&self, id: u64) -> impl Future<Output = Result<(), MembershipError>> + Send;
    fn remove(&self, id: u64) -> impl Future<Output = Result<(), MembershipError>> + Send;
    /// Maintenance.MoveLeader, sent to the leader as etcd requires.
    fn move_leader(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<(), MembershipError>> + Send;
    /// Every raised alarm: (member id, `NOSPACE` or `CORRUPT`).
    fn alarms(&self) -> impl Future<Output = Result<Vec<(u64, String)>, MembershipError>> + Send;
    /// Disarms every NOSPACE alarm.
    fn disarm_nospace(&self) -> impl Future<Output = Result<(), MembershipError>> + Send;
    /// Compacts the keyspace to `revision` (physical). An already compacted
    /// revision counts as done.
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), MembershipError>> + Send;
    /// Defragments one member, on its own client URLs.
    fn defragment(&self, id: u64) -> impl Future<Output = Result<(), MembershipError>> + Send;
}

impl MembershipApi for Membership {
    /// MemberList, then every member's Status on its client URLs.
    async fn observe(&self) -> Result<Report, MembershipError> {
        let (_, mut list) = self.any_member().await?;
        let mut statuses = statuses_of(&list, self.tls.as_ref()).await;
        // A follower may not have applied the latest membership change yet;
        // the leader committed it. Its list is the one to plan from.
        if let Some(leader) = leader_of(&list, &statuses)
            && let Some(from_leader) =
                member_list_at(list.members().iter().find(|m| m.id() == leader), self.tls.as_ref()).await
        {
            let shape = |l: &etcd_client::MemberListResponse| -> Vec<(u64, bool)> {
                l.members()
                    .iter()
                    .map(|m| (m.id(), m.is_learner()))
                    .collect()
            };
            if shape(&from_leader) != shape(&list) {
                list = from_leader;
                statuses = statuses_of(&list, self.tls.as_ref()).await;
            }
        }
        let cluster_id = list.header().map_or(0, |h| h.cluster_id());
        let leader = leader_of(&list, &statuses);
        let leader_index = leader
            .and_then(|l| list.members().iter().position(|m| m.id() == l))
            .and_then(|i| statuses[i].as_ref())
            .map(|s| s.raft_index);
        let mut members = Vec::new();
        let mut details = BTreeMap::new();
        for (m, status) in list.members().iter().zip(&statuses) {
            // Learners must be in sync to be promoted; a restarted voter is
            // given time to catch up before the next member restarts.
            let in_sync = match (status, leader_index) {
                (Some(s), Some(index)) => s.applied_index * 100 >= index * IN_SYNC_PERCENT,
                (Some(_), None) => !m.is_learner(),
                (None, _) => false,
            };
            members.push(MemberObs {
                id: m.id(),
                name: m.name().to_owned(),
                peer_urls: m.peer_urls().to_vec(),
                is_learner: m.is_learner(),
                healthy: status.is_some(),
                in_sync,
            });
            details.insert(
                m.id(),
                MemberDetail {
                    client_urls: m.client_urls().to_vec(),
                    version: status.as_ref().map(|s| s.version.clone()),
                    db_size: status.as_ref().map(|s| s.db_size),
                    db_size_in_use: status.as_ref().map(|s| s.db_size_in_use),
                    applied_index: status.as_ref().map_or(0, |s| s.applied_index),
                },
            );
        }
        let revision = statuses.iter().flatten().map(|s| s.revision).max().unwrap_or(0);
        Ok(Report {
            cluster: ClusterObs { members, leader },
            cluster_id,
            details,
            revision,
        })
    }

    /// MemberAdd as a learner; the new member's id.
    async fn add_learner(&self, peer_url: &str) -> Result<u64, MembershipError> {
        let (mut client, list) = self.any_member().await?;
        if let Some(m) = list
            .members()
            .iter()
            .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
        {
            return Ok(m.id());
        }
        let add = || {
            let mut client = client.clone();
            let url = peer_url.to_owned();
            async move {
                client
                    .member_add([url], Some(MemberAddOptions::new().with_is_learner()))
                    .await
            }
        };
        match add.retry(briefly()).when(transient).await {
            Ok(added) => added
                .member()
                .map(|m| m.id())
                .ok_or(MembershipError::Malformed(
                    "MemberAdd answered without the new member",
                )),
            // An earlier attempt went through after all.
            Err(err) if already(&err, "Peer URLs already exists") => {
                let list = client.member_list().await.map_err(call("MemberList"))?;
                list.members()
                    .iter()
                    .find(|m| m.peer_urls().iter().any(|u| u == peer_url))
                    .map(|m| m.id())
                    .ok_or_else(|| call("MemberAdd")(err))
            }
            Err(err) => Err(call("MemberAdd")(err)),
        }
    }

    async fn promote(&self, id: u64) -> Result<(), MembershipError> {
        let (client, _) = self.any_member().await?;
        let promote = || {
            let mut client = client.clone();
            async move { client.member_promote(id).await }
        };
        match promote.retry(briefly()).when(transient).await {
            Ok(_) => Ok(()),
            Err(err)
                if already(&err, "can only promote a learner member")
                    && !already(&err, "in sync") =>
            {
                Ok(())
            }
            Err(err) => Err(call("MemberPromote")(err)),
        }
    }

    async fn remove(&self, id: u64) -> Result<(), MembershipError> {
        let (client, _) = self.any_member().await?;
        let remove = || {
            let mut client = client.clone();
            async move { client.member_remove(id).await }
        };
        match remove.retry(briefly()).when(transient).await {
            Ok(_) => Ok(()),
            Err(err) if already(&err, "member not found") => Ok(()),
            Err(err) => Err(call("MemberRemove")(err)),
        }
    }

    /// Maintenance.MoveLeader, sent to the leader as etcd requires.
    async fn move_leader(&self, from: u64, to: u64) -> Result<(), MembershipError> {
        let (_, list) = self.any_member().await?;
        let leader = list
            .members()
            .iter()
            .find(|m| m.id() == from)
            .ok_or(MembershipError::NoLeader)?;
        let mut last = None;
        for url in leader.client_urls() {
            match connect(url, self.tls.as_ref()).await {
                Ok(mut client) => match client.move_leader(to).await {
                    Ok(_) => return Ok(()),
                    Err(err) => last = Some(err),
                },
                Err(err) => last = Some(err),
            }
        }
        match last {
            Some(err) => Err(call("MoveLeader")(err)),
            None => Err(MembershipError::NoLeader),
        }
    }

    async fn alarms(&self) -> Result<Vec<(u64, String)>, MembershipError> {
        let (mut client, _) = self.any_member().await?;
        let answer = client
            .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
            .await
            .map_err(call("Alarm"))?;
        Ok(answer
            .alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm().as_str_name().to_owned()))
            .collect())
    }

    async fn disarm_nospace(&self) -> Result<(), MembershipError> {
        let (mut client, _) = self.any_member().await?;
        let raised = client
            .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
            .await
            .map_err(call("Alarm"))?;
        for a in raised.alarms().iter().filter(|a| a.alarm() == etcd_client::AlarmType::Nospace) {
            let mut options = etcd_client::AlarmOptions::new();
            options.with_member(a.member_id());
            client
                .alarm(etcd_client::AlarmAction::Deactivate, etcd_client::AlarmType::Nospace, Some(options))
                .await
                .map_err(call("Alarm"))?;
        }
        Ok(())
    }

    async fn compact(&self, revision: i64) -> Result<(), MembershipError> {
        let (mut client, _) = self.any_member().await?;
        match client.compact(revision, Some(etcd_client::CompactionOptions::new().with_physical())).await {
            Ok(_) => Ok(()),
            Err(err) if already(&err, "required revision has been compacted") => Ok(()),
            Err(err) => Err(call("Compact")(err)),
        }
    }

    async fn defragment(&self, id: u64) -> Result<(), MembershipError> {
        let (_, list) = self.any_member().await?;
        let member = list.members().iter().find(|m| m.id() == id).ok_or(MembershipError::Malformed("no such member to defragment"))?;
        let mut last = String::from("no client URL");
        for url in member.client_urls() {
            // A defragmentation of a large member takes a while: no call
            // timeout, only the connection's.
            let options = connect_options(self.tls.as_ref());
            match Client::connect([url], Some(options)).await {
                Ok(mut client) => match client.defragment().await {
                    Ok(_) => return Ok(()),
                    Err(err) => last = err.to_string(),
                },
                Err(err) => last = err.to_string(),
            }
        }
        Err(MembershipError::Unreachable { endpoints: member.client_urls().join(","), last })
    }
}

/// What one member's Status said.
struct StatusObs {
    leader: u64,
    raft_index: u64,
    applied_index: u64,
    version: String,
    db_size: i64,
    db_size_in_use: i64,
    revision: i64,
}

/// The raftkv version a member runs, from its Status version: raftkv tells
/// the etcd version it implements with its own as build metadata
/// (`3.4.31+raftkv.0.1.0`). Any other version is shown as it is.
pub fn raftkv_version(status_version: &str) -> &str {
    match status_version.split_once("+raftkv.") {
        Some((_, own)) if !own.is_empty() => own,
        _ => status_version,
    }
}

/// Status on the first of `urls` that answers; None if none does (a
/// learner that has not started has no client URLs yet).
async fn status_of(urls: Vec<String>, tls: Option<&ClientTls>) -> Option<StatusObs> {
    for url in urls {
        let attempt = async {
            let mut client = connect(&url, tls).await?;
            client.status().await
        };
        if let Ok(Ok(s)) = tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            return Some(StatusObs {
                leader: s.leader(),
                raft_index: s.raft_index(),
                applied_index: s.raft_applied_index(),
                version: raftkv_version(s.version()).to_owned(),
                db_size: s.db_size(),
                db_size_in_use: s.raft_used_db_size(),
                revision: s.header().map_or(0, |h| h.revision()),
            });
        }
    }
    None
}

/// Every member's Status, in MemberList order.
async fn statuses_of(list: &etcd_client::MemberListResponse, tls: Option<&ClientTls>) -> Vec<Option<StatusObs>> {
    join_all(
        list.members()
            .iter()
            .map(|m| status_of(m.client_urls().to_vec(), tls)),
    )
    .await
}

/// The leader most answering members name, if it is a member.
fn leader_of(
    list: &etcd_client::MemberListResponse,
    statuses: &[Option<StatusObs>],
) -> Option<u64> {
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for s in statuses.iter().flatten() {
        if s.leader != 0 {
            *votes.entry(s.leader).or_default() += 1;
        }
    }
    votes
        .iter()
        .max_by_key(|&(_, n)| *n)
        .map(|(&id, _)| id)
        .filter(|id| list.members().iter().any(|m| m.id() == *id))
}

/// MemberList asked of one member.
async fn member_list_at(
    member: Option<&etcd_client::Member>,
    tls: Option<&ClientTls>,
) -> Option<etcd_client::MemberListResponse> {
    for url in member?.client_urls() {
        let attempt = async { connect(url, tls).await?.member_list().await };
        if let Ok(Ok(list)) = tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            return Some(list);
        }
    }
    None
}

/// `--initial-cluster` for a member started now: every member under its
/// name (ours by ordinal, since a member that has not started yet has none).
pub fn initial_cluster(cluster: &ClusterObs, naming: &impl Naming) -> Vec<(String, String)> {
    cluster
        .members
        .iter()
        .flat_map(|m| {
            let ordinal = m.peer_urls.iter().find_map(|u| naming.ordinal_of(u));
            let name = ordinal.map_or_else(|| m.name.clone(), |o| naming.member_name(o));
            m.peer_urls.iter().map(move |u| (name.clone(), u.clone()))
        })
        .collect()
}

/// Workload errors are the implementation's own.
pub type WorkloadError = Box<dyn std::error::Error + Send + Sync>;

/// The non-membership side of the steps. The futures are not required to be
/// `Send` here: the controller's implementation is, and the compiler checks
/// that where the controller needs it; the end-to-end test's is not.
pub trait Workloads {
    /// Sets the number of member pods; a pod started now joins with
    /// `initial_cluster` and `--initial-cluster-state existing`.
    fn scale(
        &mut self,
        replicas: u32,
        initial_cluster: &[(String, String)],
    ) -> impl Future<Output = Result<(), WorkloadError>>;
    /// Restarts a member's pod on the current template, keeping its volume.
    fn restart_pod(&mut self, ordinal: u32) -> impl Future<Output = Result<(), WorkloadError>>;
    /// Deletes a removed member's volume.
    fn delete_volume(&mut self, ordinal: u32) -> impl Future<Output = Result<(), WorkloadError>>;
    /// Deletes a member's volume and pod so it starts again empty.
    fn replace_volume(&mut self, ordinal: u32) -> impl Future<Output = Result<(), WorkloadError>>;
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("{0}")]
    Workloads(WorkloadError),
}

impl StepError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Membership(e) if e.is_transient())
    }
}

/// Carries out one planned step. `cluster` is the observation it was
/// planned from.
pub async fn execute(
    action: &Action,
    membership: &impl MembershipApi,
    workloads: &mut impl Workloads,
    cluster: &ClusterObs,
    naming: &impl Naming,
) -> Result<(), StepError> {
    match action {
        Action::AddLearner { peer_url, .. } => membership.add_learner(peer_url).await.map(drop)?,
        Action::Promote { id, .. } => membership.promote(*id).await?,
        Action::MoveLeader { from, to } => membership.move_leader(*from, *to).await?,
        Action::RemoveMember { id, .. } => membership.remove(*id).await?,
        Action::ScaleStatefulSet { replicas } => workloads
            .scale(*replicas, &initial_cluster(cluster, naming))
            .await
            .map_err(StepError::Workloads)?,
        Action::RestartPod { ordinal } => workloads
            .restart_pod(*ordinal)
            .await
            .map_err(StepError::Workloads)?,
        Action::DeleteVolume { ordinal } => workloads
            .delete_volume(*ordinal)
            .await
            .map_err(StepError::Workloads)?,
        Action::ReplaceVolume { ordinal } => workloads
            .replace_volume(*ordinal)
            .await
            .map_err(StepError::Workloads)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_version_shown_is_raftkvs_own() {
        assert_eq!(raftkv_version("3.4.31+raftkv.0.1.0"), "0.1.0");
        assert_eq!(raftkv_version("3.4.31+raftkv.1.2.0-rc.1"), "1.2.0-rc.1");
        assert_eq!(raftkv_version("3.5.13"), "3.5.13");
        assert_eq!(raftkv_version("3.4.31+raftkv."), "3.4.31+raftkv.");
    }

    use super::*;

    struct Names;

    impl Naming for Names {
        fn member_name(&self, ordinal: u32) -> String {
            format!("demo-{ordinal}")
        }
        fn peer_url(&self, ordinal: u32) -> String {
            format!("http://demo-{ordinal}:2380")
        }
        fn ordinal_of(&self, peer_url: &str) -> Option<u32> {
            peer_url
                .strip_prefix("http://demo-")?
                .strip_suffix(":2380")?
                .parse()
                .ok()
        }
    }

    fn member(id: u64, name: &str, url: &str, is_learner: bool) -> MemberObs {
        MemberObs {
            id,
            name: name.to_owned(),
            peer_urls: vec![url.to_owned()],
            is_learner,
            healthy: true,
            in_sync: true,
        }
    }

    #[test]
    fn initial_cluster_names_a_member_that_has_not_started_by_its_ordinal() {
        let cluster = ClusterObs {
            members: vec![
                member(1, "demo-0", "http://demo-0:2380", false),
                member(2, "", "http://demo-1:2380", true),
                member(3, "manual", "http://elsewhere:2380", false),
            ],
            leader: Some(1),
        };
        assert_eq!(
            initial_cluster(&cluster, &Names),
            vec![
                ("demo-0".to_owned(), "http://demo-0:2380".to_owned()),
                ("demo-1".to_owned(), "http://demo-1:2380".to_owned()),
                ("manual".to_owned(), "http://elsewhere:2380".to_owned()),
            ]
        );
    }

    #[test]
    fn refusals_that_pass_with_time_are_transient() {
        let status = |msg: &str| MembershipError::Call {
            call: "MemberAdd",
            source: etcd_client::Error::InvalidArgs(msg.to_owned()),
        };
        assert!(status("etcdserver: unhealthy cluster").is_transient());
        assert!(
            status("etcdserver: can only promote a learner member which is in sync with leader")
                .is_transient()
        );
        assert!(
            status("etcdserver: re-configuration failed due to not enough started members")
                .is_transient()
        );
        assert!(!status("etcdserver: Peer URLs already exists").is_transient());
        assert!(!status("etcdserver: too many learner members in cluster").is_transient());
        assert!(MembershipError::NoLeader.is_transient());
    }
}
