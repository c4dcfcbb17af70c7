//! The membership planner: from what the operator observes (the spec, the
//! operation recorded in status, the StatefulSet, pods and volumes, and the
//! cluster's MemberList and Status answers) it decides the one next step.
//! Pure and deterministic: no I/O, no clock, so every rule is a table test.
//!
//! The rules, as the best operators for replicated stores follow them:
//! - one membership operation at a time, recorded in status *before* each
//!   step is taken; a resumed operation re-derives where it stands from what
//!   it observes, so a step that already happened (the member was added, the
//!   learner promoted, the member removed) is never taken twice;
//! - scale out: MemberAdd as a learner, StatefulSet +1, wait until the
//!   learner started and caught up, promote;
//! - scale in (always the highest ordinal, the only one a StatefulSet can
//!   drop): move leadership off it, MemberRemove, StatefulSet -1, reclaim
//!   its volume per `reclaimPolicy`;
//! - never two learners, no step while a member is unhealthy or there is no
//!   leader (except removing the one member being replaced), never a step
//!   that leaves fewer healthy voters than a quorum;
//! - healing: a member whose volume was replaced (its id still in the
//!   cluster, its data gone) is removed, given a fresh volume and added
//!   again as a new learner;
//! - upgrade: when the pods' template changed (version, image, anything)
//!   and the size is right, restart one member at a time, the leader last
//!   after moving leadership off it.
//!
//! Scaling goes before upgrading: new members start on the new template
//! anyway, and members about to be removed are not worth restarting.

use std::collections::{BTreeMap, BTreeSet};

use crate::crd::{Operation, OperationKind, Step};

#[cfg(test)]
mod tests;

/// Maps StatefulSet ordinals to raft peer URLs and back. In Kubernetes the
/// stable pod DNS names ([`crate::resources::Names`]); in the end-to-end
/// test, loopback ports.
pub trait Naming {
    fn member_name(&self, ordinal: u32) -> String;
    fn peer_url(&self, ordinal: u32) -> String;
    fn ordinal_of(&self, peer_url: &str) -> Option<u32>;
}

impl Naming for crate::resources::Names {
    fn member_name(&self, ordinal: u32) -> String {
        self.member(ordinal)
    }

    fn peer_url(&self, ordinal: u32) -> String {
        crate::resources::Names::peer_url(self, ordinal)
    }

    fn ordinal_of(&self, peer_url: &str) -> Option<u32> {
        self.ordinal_of_peer_url(peer_url)
    }
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub replicas: u32,
    pub paused: bool,
    /// Delete a removed member's volume (`reclaimPolicy: Delete`).
    pub delete_volumes: bool,
}

/// One member's pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodObs {
    /// Runs the StatefulSet's current template.
    pub up_to_date: bool,
    /// Its volume is not the one its member started on: the member's data is
    /// gone while its id is still in the cluster.
    pub volume_replaced: bool,
    pub crash_looping: bool,
    /// Its Ready condition is True: its probes pass, and Services and the
    /// PodDisruptionBudget count it.
    pub ready: bool,
}

/// One raft member, from MemberList and its own Status answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberObs {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub is_learner: bool,
    /// It answered Status.
    pub healthy: bool,
    /// Its applied index is close enough to the leader's: a learner may be
    /// promoted, a restarted voter has caught up.
    pub in_sync: bool,
}

/// The cluster as seen through the etcd API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterObs {
    pub members: Vec<MemberObs>,
    /// The leader's id, if the members agree on one.
    pub leader: Option<u64>,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub desired: Desired,
    /// The operation recorded in status.
    pub operation: Option<Operation>,
    /// The StatefulSet's replicas (None before it exists).
    pub statefulset_replicas: Option<u32>,
    /// Pods by ordinal.
    pub pods: BTreeMap<u32, PodObs>,
    /// Ordinals that have a volume.
    pub volumes: BTreeSet<u32>,
    /// None when no member answered MemberList.
    pub cluster: Option<ClusterObs>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// MemberAdd as a learner.
    AddLearner { ordinal: u32, peer_url: String },
    /// MemberPromote.
    Promote { ordinal: u32, id: u64 },
    /// Maintenance.MoveLeader, asked of the leader.
    MoveLeader { from: u64, to: u64 },
    /// MemberRemove.
    RemoveMember { ordinal: u32, id: u64 },
    /// Set the StatefulSet's replicas.
    ScaleStatefulSet { replicas: u32 },
    /// Delete the volume of an ordinal whose pod is gone.
    DeleteVolume { ordinal: u32 },
    /// Delete an ordinal's pod; the StatefulSet starts it again on its
    /// current template.
    RestartPod { ordinal: u32 },
    /// Delete an ordinal's volume and pod; the StatefulSet starts it again
    /// on a fresh volume.
    ReplaceVolume { ordinal: u32 },
}

/// Why nothing is done now; the controller reports it and looks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    Paused,
    /// No member answered.
    Unreachable,
    NoLeader,
    /// Members that did not answer Status.
    Unhealthy {
        ordinals: Vec<u32>,
    },
    /// A member whose peer URL is no ordinal of ours: left alone.
    ForeignMember {
        id: u64,
    },
    /// A learner that no recorded operation added.
    StrayLearner {
        id: u64,
    },
    /// Member ordinals are not 0..n.
    OrdinalGap,
    /// Healing needs a quorum of healthy voters besides the member healed.
    NoQuorumToHeal {
        ordinal: u32,
    },
    /// The added member's pod has not started serving yet.
    MemberStarting {
        ordinal: u32,
    },
    LearnerCatchingUp {
        ordinal: u32,
    },
    PodStopping {
        ordinal: u32,
    },
    /// A restarted or promoted member is not healthy yet.
    MemberRecovering {
        ordinal: u32,
    },
    /// No healthy voter to hand leadership to.
    NoLeaderTarget,
    /// Scale-out to an ordinal whose volume a removed member left (kept by
    /// `reclaimPolicy: Retain`): it must be deleted first.
    RetainedVolume {
        ordinal: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Act(Action),
    Wait(Wait),
    /// Nothing to do: the cluster is as asked.
    Idle,
}

/// The planner's answer: the operation status must record (written before
/// the step is taken; None clears it) and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub operation: Option<Operation>,
    pub next: Next,
    /// What status records once the step succeeded, when that cannot be
    /// observed afterwards (a replaced volume looks like any other).
    pub after: Option<Operation>,
}

impl Plan {
    fn wait(operation: Option<Operation>, wait: Wait) -> Plan {
        Plan {
            operation,
            next: Next::Wait(wait),
            after: None,
        }
    }

    fn act(operation: Option<Operation>, action: Action) -> Plan {
        Plan {
            after: operation.clone(),
            operation,
            next: Next::Act(action),
        }
    }
}

/// Votes needed among `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// Decides the next step.
pub fn plan(obs: &Observed, naming: &impl Naming) -> Plan {
    if obs.desired.paused {
        return Plan::wait(obs.operation.clone(), Wait::Paused);
    }
    let Some(cluster) = &obs.cluster else {
        return Plan::wait(obs.operation.clone(), Wait::Unreachable);
    };
    let view = View::new(obs, cluster, naming);
    match &obs.operation {
        Some(op) => view.resume(op),
        None => view.start(),
    }
}

/// The observation arranged by ordinal.
struct View<'a, N> {
    obs: &'a Observed,
    naming: &'a N,
    by_ordinal: BTreeMap<u32, &'a MemberObs>,
    foreign: Vec<&'a MemberObs>,
    leader: Option<u64>,
}

fn op(kind: OperationKind, ordinal: u32, step: Step) -> Operation {
    Operation {
        kind,
        ordinal: ordinal as i32,
        step,
        replaced_id: None,
        started_at: None,
    }
}

impl<'a, N: Naming> View<'a, N> {
    fn new(obs: &'a Observed, cluster: &'a ClusterObs, naming: &'a N) -> Self {
        let mut by_ordinal = BTreeMap::new();
        let mut foreign = Vec::new();
        for m in &cluster.members {
            match m.peer_urls.iter().find_map(|u| naming.ordinal_of(u)) {
                Some(ordinal) => {
                    by_ordinal.insert(ordinal, m);
                }
                None => foreign.push(m),
            }
        }
        View {
            obs,
            naming,
            by_ordinal,
            foreign,
            leader: cluster.leader,
        }
    }

    fn members(&self) -> impl Iterator<Item = (u32, &'a MemberObs)> + '_ {
        self.by_ordinal.iter().map(|(&o, &m)| (o, m))
    }

    fn voters(&self) -> usize {
        self.members().filter(|(_, m)| !m.is_learner).count()
            + self.foreign.iter().filter(|m| !m.is_learner).count()
    }

    /// Healthy voters other than `except`.
    fn healthy_voters_except(&self, except: Option<u32>) -> usize {
        self.members()
            .filter(|&(o, m)| !m.is_learner && m.healthy && Some(o) != except)
            .count()
            + self
                .foreign
                .iter()
                .filter(|m| !m.is_learner && m.healthy)
                .count()
    }

    fn unhealthy(&self) -> Vec<u32> {
        self.members()
            .filter(|(_, m)| !m.healthy)
            .map(|(o, _)| o)
            .collect()
    }

    fn learners(&self) -> Vec<&'a MemberObs> {
        self.by_ordinal
            .values()
            .chain(self.foreign.iter())
            .filter(|m| m.is_learner)
            .copied()
            .collect()
    }

    fn is_leader(&self, m: &MemberObs) -> bool {
        self.leader == Some(m.id)
    }

    fn sts_replicas(&self) -> u32 {
        self.obs.statefulset_replicas.unwrap_or(0)
    }

    /// Why the cluster is not fit for a membership change, if it is not: a
    /// leader, every member healthy.
    fn unfit(&self) -> Option<Wait> {
        if self.leader.is_none() {
            return Some(Wait::NoLeader);
        }
        let unhealthy = self.unhealthy();
        if !unhealthy.is_empty() {
            return Some(Wait::Unhealthy {
                ordinals: unhealthy,
            });
        }
        if let Some(m) = self.foreign.iter().find(|m| !m.healthy) {
            return Some(Wait::ForeignMember { id: m.id });
        }
        None
    }

    /// The voter to hand leadership to, away from `from`: healthy, lowest
    /// ordinal (the one that stays longest on scale-in).
    fn leader_target(&self, from: u32) -> Option<u64> {
        self.members()
            .find(|&(o, m)| o != from && !m.is_learner && m.healthy && m.in_sync)
            .map(|(_, m)| m.id)
    }

    /// Starts the next operation, if one is due.
    fn start(&self) -> Plan {
        // Healing first: a member that lost its data must not vote.
        if let Some(plan) = self.start_replace() {
            return plan;
        }
        if let Some(m) = self.foreign.first() {
            return Plan::wait(None, Wait::ForeignMember { id: m.id });
        }
        if let Some(m) = self.learners().first() {
            return Plan::wait(None, Wait::StrayLearner { id: m.id });
        }
        if let Some(wait) = self.unfit() {
            return Plan::wait(None, wait);
        }
        let n = self.by_ordinal.len() as u32;
        if self.by_ordinal.keys().copied().ne(0..n) {
            return Plan::wait(None, Wait::OrdinalGap);
        }
        if self.sts_replicas() != n {
            // Pods that are no member go, members' pods come back.
            return Plan::act(None, Action::ScaleStatefulSet { replicas: n });
        }
        let desired = self.obs.desired.replicas;
        if desired > n {
            return self.resume(&op(OperationKind::ScaleOut, n, Step::AddLearner));
        }
        if desired < n && n > 1 {
            return self.resume(&op(OperationKind::ScaleIn, n - 1, Step::MoveLeader));
        }
        // Outdated pods: followers from the highest ordinal down, the leader
        // last.
        let outdated = (0..n)
            .rev()
            .filter(|o| self.obs.pods.get(o).is_some_and(|p| !p.up_to_date));
        let (leader, followers): (Vec<u32>, Vec<u32>) =
            outdated.partition(|o| self.by_ordinal.get(o).is_some_and(|m| self.is_leader(m)));
        if let Some(&ordinal) = followers.first().or(leader.first()) {
            return self.resume(&op(OperationKind::Upgrade, ordinal, Step::RestartPod));
        }
        Plan {
            operation: None,
            next: Next::Idle,
            after: None,
        }
    }

    fn start_replace(&self) -> Option<Plan> {
        let (ordinal, m) = self
            .members()
            .find(|(o, _)| self.obs.pods.get(o).is_some_and(|p| p.volume_replaced))?;
        let mut op = op(OperationKind::Replace, ordinal, Step::RemoveMember);
        op.replaced_id = Some(format!("{:x}", m.id));
        Some(self.resume(&op))
    }

    /// The next step of a recorded operation, judged from what is observed.
    fn resume(&self, op: &Operation) -> Plan {
        let ordinal = op.ordinal.max(0) as u32;
        match op.kind {
            OperationKind::ScaleOut => self.scale_out(op, ordinal),
            OperationKind::ScaleIn => self.scale_in(op, ordinal),
            OperationKind::Replace => self.replace(op, ordinal),
            OperationKind::Upgrade => self.upgrade(op, ordinal),
        }
    }

    /// The operation is over: clear it, and start whatever is due next.
    fn finished(&self) -> Plan {
        self.start()
    }

    fn with_step(op: &Operation, step: Step) -> Operation {
        Operation { step, ..op.clone() }
    }

    fn scale_out(&self, op: &Operation, ordinal: u32) -> Plan {
        let Some(m) = self.by_ordinal.get(&ordinal) else {
            // Not added yet: the user may have changed their mind.
            if self.obs.desired.replicas <= ordinal {
                return self.finished();
            }
            // A volume kept (reclaimPolicy Retain) from a member removed
            // earlier holds that member's identity: a pod started on it
            // would be the removed member, refused by the others. Kept for
            // an administrator, so the administrator deletes it.
            if self.obs.volumes.contains(&ordinal) && self.sts_replicas() <= ordinal {
                return Plan::wait(Some(op.clone()), Wait::RetainedVolume { ordinal });
            }
            return self.add_learner(op, ordinal);
        };
        self.join(op, ordinal, m)
    }

    /// A learner that was added for `ordinal`: its pod started, caught up,
    /// promoted.
    fn join(&self, op: &Operation, ordinal: u32, m: &MemberObs) -> Plan {
        if self.sts_replicas() < ordinal + 1 {
            return Plan::act(
                Some(Self::with_step(op, Step::StartPod)),
                Action::ScaleStatefulSet {
                    replicas: ordinal + 1,
                },
            );
        }
        if m.is_learner {
            if !m.healthy {
                return Plan::wait(
                    Some(Self::with_step(op, Step::StartPod)),
                    Wait::MemberStarting { ordinal },
                );
            }
            let promote = Some(Self::with_step(op, Step::Promote));
            if !m.in_sync {
                return Plan::wait(promote, Wait::LearnerCatchingUp { ordinal });
            }
            if let Some(wait) = self.unfit() {
                return Plan::wait(promote, wait);
            }
            return Plan::act(promote, Action::Promote { ordinal, id: m.id });
        }
        if !m.healthy {
            return Plan::wait(
                Some(Self::with_step(op, Step::WaitHealthy)),
                Wait::MemberRecovering { ordinal },
            );
        }
        self.finished()
    }

    fn add_learner(&self, op: &Operation, ordinal: u32) -> Plan {
        if let Some(learner) = self.learners().first() {
            return Plan::wait(Some(op.clone()), Wait::StrayLearner { id: learner.id });
        }
        if let Some(wait) = self.unfit() {
            return Plan::wait(Some(op.clone()), wait);
        }
        Plan::act(
            Some(Self::with_step(op, Step::AddLearner)),
            Action::AddLearner {
                ordinal,
                peer_url: self.naming.peer_url(ordinal),
            },
        )
    }

    /// What must come first before member `m` at `ordinal` is removed or
    /// restarted: a fit cluster, and leadership moved off it. None when it
    /// can go now.
    fn before_taking_down(&self, op: &Operation, m: &MemberObs, ordinal: u32) -> Option<Plan> {
        if let Some(wait) = self.unfit() {
            return Some(Plan::wait(Some(op.clone()), wait));
        }
        if self.is_leader(m) && self.voters() > 1 {
            let step = Some(Self::with_step(op, Step::MoveLeader));
            return Some(match self.leader_target(ordinal) {
                Some(to) => Plan::act(step, Action::MoveLeader { from: m.id, to }),
                None => Plan::wait(step, Wait::NoLeaderTarget),
            });
        }
        None
    }

    fn scale_in(&self, op: &Operation, ordinal: u32) -> Plan {
        if let Some(m) = self.by_ordinal.get(&ordinal) {
            if let Some(plan) = self.before_taking_down(op, m, ordinal) {
                return plan;
            }
            // Every member is healthy, so the voters left are a quorum.
            return Plan::act(
                Some(Self::with_step(op, Step::RemoveMember)),
                Action::RemoveMember { ordinal, id: m.id },
            );
        }
        if self.sts_replicas() > ordinal {
            return Plan::act(
                Some(Self::with_step(op, Step::StopPod)),
                Action::ScaleStatefulSet { replicas: ordinal },
            );
        }
        if self.obs.pods.contains_key(&ordinal) {
            return Plan::wait(
                Some(Self::with_step(op, Step::StopPod)),
                Wait::PodStopping { ordinal },
            );
        }
        if self.obs.desired.delete_volumes && self.obs.volumes.contains(&ordinal) {
            return Plan::act(
                Some(Self::with_step(op, Step::DeleteVolume)),
                Action::DeleteVolume { ordinal },
            );
        }
        self.finished()
    }

    fn replace(&self, op: &Operation, ordinal: u32) -> Plan {
        let replaced = op
            .replaced_id
            .as_deref()
            .and_then(|id| u64::from_str_radix(id, 16).ok());
        match self.by_ordinal.get(&ordinal) {
            Some(m) if Some(m.id) == replaced => {
                // The member may well be down (that is why it is replaced); a
                // quorum of the voters that stay must be up.
                let staying = self.voters() - usize::from(!m.is_learner);
                if self.leader.is_none()
                    || self.healthy_voters_except(Some(ordinal)) < quorum(staying.max(1))
                {
                    return Plan::wait(Some(op.clone()), Wait::NoQuorumToHeal { ordinal });
                }
                Plan::act(
                    Some(Self::with_step(op, Step::RemoveMember)),
                    Action::RemoveMember { ordinal, id: m.id },
                )
            }
            Some(m) => self.join(op, ordinal, m),
            None => match op.step {
                // Removed: its volume still holds the removed identity.
                Step::RemoveMember | Step::DeleteVolume => Plan {
                    operation: Some(Self::with_step(op, Step::DeleteVolume)),
                    next: Next::Act(Action::ReplaceVolume { ordinal }),
                    after: Some(Self::with_step(op, Step::AddLearner)),
                },
                _ => self.add_learner(op, ordinal),
            },
        }
    }

    fn upgrade(&self, op: &Operation, ordinal: u32) -> Plan {
        let Some(m) = self.by_ordinal.get(&ordinal) else {
            return self.finished();
        };
        let up_to_date = self.obs.pods.get(&ordinal).is_some_and(|p| p.up_to_date);
        if up_to_date {
            // Healthy in raft is not enough: until its pod is Ready, clients
            // of the Service and the PodDisruptionBudget count it as down,
            // and taking the next one down would leave two out.
            let ready = self.obs.pods.get(&ordinal).is_some_and(|p| p.ready);
            if !m.healthy || !m.in_sync || self.leader.is_none() || !ready {
                return Plan::wait(
                    Some(Self::with_step(op, Step::WaitHealthy)),
                    Wait::MemberRecovering { ordinal },
                );
            }
            return self.finished();
        }
        if let Some(plan) = self.before_taking_down(op, m, ordinal) {
            return plan;
        }
        Plan::act(
            Some(Self::with_step(op, Step::RestartPod)),
            Action::RestartPod { ordinal },
        )
    }
}
