//! The Cluster service, with etcd's rules: a member is added as a learner
//! (or, when the cluster can afford it, as a voter), one learner at a time;
//! a learner is promoted only once in sync with the leader; a change that
//! would leave too few started members for a quorum is refused. Changes are
//! decided by the leader, which knows every member's progress: a follower
//! forwards them to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::proto::{
    PbClusterService, PbMemberAddRequest as MemberAddRequest, PbMemberAddResponse as MemberAddResponse,
    PbMemberListRequest as MemberListRequest, PbMemberListResponse as MemberListResponse,
    PbMemberPromoteRequest as MemberPromoteRequest, PbMemberPromoteResponse as MemberPromoteResponse,
    PbMemberRemoveRequest as MemberRemoveRequest, PbMemberRemoveResponse as MemberRemoveResponse,
    PbMemberUpdateRequest as MemberUpdateRequest, PbMemberUpdateResponse as MemberUpdateResponse,
};
use raft::eraftpb::{ConfChangeSingle, ConfChangeType};
use tonic::{Request, Response, Status};

use super::{Reply, status};
use crate::apply::{self, request::Op};
use crate::error::Error;
use crate::membership::Member;
use crate::node::Node;
use crate::raft::node::Progress;

/// etcd's readiness bar for promotion: a learner whose log has reached 90%
/// of the leader's.
const LEARNER_READY_PERCENT: f64 = 0.9;

pub struct ClusterService {
    node: Arc<Node>,
    /// Served on the peer port (calls forwarded by other members, checked
    /// there): no auth check.
    peer: bool,
}

fn pb(list: Vec<Member>) -> Vec<etcd_client::proto::PbMember> {
    list.iter().map(Member::to_pb).collect()
}

fn change(kind: ConfChangeType, id: u64) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(kind);
    c.node_id = id;
    c
}

/// etcd's HealthInterval: how long a peer must have been reachable to
/// count as connected for a membership change.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// The majority of `n` voters.
fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// etcd's "started": the member has published its name.
fn started(m: &Member) -> bool {
    !m.name.is_empty()
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, peer: false }
    }

    /// The service on the peer port, for the membership changes other
    /// members forward (their own callers were checked by them).
    pub fn for_peers(node: Arc<Node>) -> Self {
        Self { node, peer: true }
    }

    /// etcd's checkMembershipOperationPermission: the root role, once
    /// authentication is enabled.
    fn admin<T>(&self, req: &Request<T>) -> impl Future<Output = Result<(), Status>> + Send + '_ {
        let caller = (!self.peer).then(|| super::caller(&self.node, req));
        async move {
            let Some(caller) = caller else { return Ok(()) };
            self.node.auth.check_admin(&caller.await?).map_err(status)
        }
    }

    /// The leader's client, when this member is not the leader (None when
    /// it is).
    async fn forward(&self) -> Result<Option<etcd_client::ClusterClient>, Status> {
        if self.node.is_leader() {
            return Ok(None);
        }
        let client = self.node.leader_client().await.map_err(status)?;
        Ok(Some(client.cluster_client()))
    }

    fn voters(&self) -> Vec<Member> {
        self.node.membership.list().into_iter().filter(|m| !m.is_learner).collect()
    }

    /// Whether `id` has been reachable since `since` (this member always is).
    fn connected_since(&self, id: u64, since: Option<Instant>) -> bool {
        if id == self.node.member.id {
            return true;
        }
        let Some(since) = since else { return false };
        self.node.peer_health.lock().get(&id).copied().flatten().is_some_and(|t| t <= since)
    }

    fn health_horizon() -> Option<Instant> {
        Instant::now().checked_sub(HEALTH_INTERVAL)
    }

    async fn progress(&self) -> Result<Progress, Status> {
        let p = self.node.raft.progress().await.map_err(|_| status(Error::Stopped))?;
        if p.peers.is_empty() {
            // Lost leadership between the check and the question.
            return Err(status(Error::LeaderChanged));
        }
        Ok(p)
    }

    async fn apply(&self, kind: ConfChangeType, id: u64, member: Option<Member>) -> Result<Vec<Member>, Status> {
        self.node.change_membership(change(kind, id), member).await.map_err(status)
    }
}

fn from_client(m: &etcd_client::Member) -> etcd_client::proto::PbMember {
    etcd_client::proto::PbMember {
        id: m.id(),
        name: m.name().to_owned(),
        peer_ur_ls: m.peer_urls().to_vec(),
        client_ur_ls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

fn forwarded(e: etcd_client::Error) -> Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => status(Error::Internal(other.to_string())),
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Reply<MemberAddResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        if let Some(mut leader) = self.forward().await? {
            let opts = r.is_learner.then(|| etcd_client::MemberAddOptions::new().with_is_learner());
            let resp = leader.member_add(r.peer_ur_ls, opts).await.map_err(forwarded)?;
            return Ok(Response::new(MemberAddResponse {
                header: Some(self.node.cluster_header()),
                member: resp.member().map(from_client),
                members: resp.member_list().iter().map(from_client).collect(),
            }));
        }
        let node = &self.node;
        if r.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument("etcdserver: member peer URLs are not provided"));
        }
        if node.membership.by_peer_url(&r.peer_ur_ls).is_some() {
            return Err(status(Error::PeerUrlExists));
        }
        let members = node.membership.list();
        if r.is_learner && members.iter().any(|m| m.is_learner) {
            return Err(status(Error::TooManyLearners));
        }
        // etcd's strict reconfiguration checks: a new voter must leave
        // enough started voters for a quorum, and every voter must have been
        // reachable for a while.
        let voters = self.voters();
        let started_voters = voters.iter().filter(|m| started(m)).count();
        // etcd's exception: a second voter may join a one-member cluster (a
        // cluster restored from a snapshot, or forced into a new one, grows
        // back this way), though the two cannot form a quorum until it starts.
        let growing_from_one = started_voters == 1 && voters.len() == 1;
        if !r.is_learner && !growing_from_one && started_voters < quorum(voters.len() + 1) {
            return Err(status(Error::NotEnoughStartedMembers));
        }
        let horizon = Self::health_horizon();
        if !voters.iter().all(|m| self.connected_since(m.id, horizon)) {
            return Err(status(Error::UnhealthyCluster));
        }
        // etcd's id for an added member: the peer URLs plus the time.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let id = crate::node::member_id(&r.peer_ur_ls, &format!("{:x}{now}", node.cluster_id));
        if node.membership.get(id).is_some() || node.membership.is_removed(id) {
            return Err(status(Error::MemberExists));
        }
        let member = Member { id, peer_urls: r.peer_ur_ls.clone(), is_learner: r.is_learner, ..Default::default() };
        let kind = if r.is_learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
        let list = self.apply(kind, id, Some(member.clone())).await?;
        tracing::info!(member = %format!("{id:x}"), peer_urls = %r.peer_ur_ls.join(","), learner = r.is_learner, "added a member");
        Ok(Response::new(MemberAddResponse { header: Some(node.cluster_header()), member: Some(member.to_pb()), members: pb(list) }))
    }

    async fn member_remove(&self, req: Request<MemberRemoveRequest>) -> Reply<MemberRemoveResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        if let Some(mut leader) = self.forward().await? {
            let resp = leader.member_remove(r.id).await.map_err(forwarded)?;
            return Ok(Response::new(MemberRemoveResponse {
                header: Some(self.node.cluster_header()),
                members: resp.members().iter().map(from_client).collect(),
            }));
        }
        let node = &self.node;
        let target = node.membership.get(r.id).ok_or_else(|| status(Error::MemberNotFound))?;
        if !target.is_learner {
            // etcd's checks: the voters left must hold a quorum of started
            // members; a member that is down may always go; otherwise the
            // voters still reachable without it must make a quorum.
            let voters = self.voters();
            let remaining = voters.len() - 1;
            let started_after = voters.iter().filter(|m| m.id != r.id && started(m)).count();
            if started_after < quorum(remaining) {
                return Err(status(Error::NotEnoughStartedMembers));
            }
            let down = r.id != node.member.id && node.peer_health.lock().get(&r.id).copied().flatten().is_none();
            if !down {
                let horizon = Self::health_horizon();
                let active = voters.iter().filter(|m| self.connected_since(m.id, horizon)).count();
                if active.saturating_sub(1) < quorum(voters.len() - 1) {
                    return Err(status(Error::UnhealthyCluster));
                }
            }
        }
        let list = self.apply(ConfChangeType::RemoveNode, r.id, None).await?;
        tracing::info!(member = %format!("{:x}", r.id), "removed a member");
        Ok(Response::new(MemberRemoveResponse { header: Some(node.cluster_header()), members: pb(list) }))
    }

    async fn member_update(&self, req: Request<MemberUpdateRequest>) -> Reply<MemberUpdateResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        let node = &self.node;
        if node.membership.get(r.id).is_none() {
            return Err(status(Error::MemberNotFound));
        }
        let update = Member { id: r.id, peer_urls: r.peer_ur_ls, ..Default::default() };
        match node.propose(Op::MemberPeerUrls(update)).await.map_err(status)? {
            apply::Response::Members(list) => Ok(Response::new(MemberUpdateResponse { header: Some(node.cluster_header()), members: pb(list) })),
            _ => Err(status(Error::Internal("unexpected apply result for a member update".into()))),
        }
    }

    async fn member_list(&self, _req: Request<MemberListRequest>) -> Reply<MemberListResponse> {
        self.node.refuse_learner().map_err(status)?;
        // etcd answers from the local registry unless asked to linearize.
        Ok(Response::new(MemberListResponse { header: Some(self.node.cluster_header()), members: pb(self.node.membership.list()) }))
    }

    async fn member_promote(&self, req: Request<MemberPromoteRequest>) -> Reply<MemberPromoteResponse> {
        self.admin(&req).await?;
        self.node.refuse_learner().map_err(status)?;
        let r = req.into_inner();
        if let Some(mut leader) = self.forward().await? {
            let resp = leader.member_promote(r.id).await.map_err(forwarded)?;
            return Ok(Response::new(MemberPromoteResponse {
                header: Some(self.node.cluster_header()),
                members: resp.members().iter().map(from_client).collect(),
            }));
        }
        let node = &self.node;
        let target = node.membership.get(r.id).ok_or_else(|| status(Error::MemberNotFound))?;
        if !target.is_learner {
            return Err(status(Error::NotLearner));
        }
        let p = self.progress().await?;
        let leader_match = p.peers.iter().find(|x| x.id == node.member.id).map_or(p.last_index, |x| x.matched.max(p.last_index));
        let learner_match = p.peers.iter().find(|x| x.id == r.id).map_or(0, |x| x.matched);
        if (learner_match as f64) < (leader_match as f64) * LEARNER_READY_PERCENT {
            return Err(status(Error::LearnerNotReady));
        }
        // The promoted learner counts as a started member of the future quorum.
        let voters = self.voters();
        if voters.iter().filter(|m| started(m)).count() + 1 < quorum(voters.len() + 1) {
            return Err(status(Error::NotEnoughStartedMembers));
        }
        let list = self.apply(ConfChangeType::AddNode, r.id, None).await?;
        tracing::info!(member = %format!("{:x}", r.id), "promoted a learner");
        Ok(Response::new(MemberPromoteResponse { header: Some(node.cluster_header()), members: pb(list) }))
    }
}
