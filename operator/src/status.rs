//! Pure translations for the controller: Kubernetes objects into the
//! planner's observations (pods by ordinal, replaced volumes), and the
//! cluster report and plan into `KvCluster` status (members, conditions,
//! phase). No I/O and no clock: `now` is an argument.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{KvClusterStatus, MemberStatus, OperationKind, Phase};
use crate::members::Report;
use crate::planner::{Naming, Next, Plan, PodObs, Wait, quorum};
use crate::resources::Names;

/// The label a StatefulSet puts on each pod: the template revision it runs.
const REVISION_LABEL: &str = "controller-revision-hash";

/// `<cluster>-<ordinal>` with exactly that cluster name.
fn ordinal_after(prefix: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    let ordinal: u32 = digits.parse().ok()?;
    (ordinal.to_string() == digits).then_some(ordinal)
}

pub fn ordinal_of_pod(names: &Names, pod: &str) -> Option<u32> {
    ordinal_after(&format!("{}-", names.cluster), pod)
}

pub fn ordinal_of_claim(names: &Names, claim: &str) -> Option<u32> {
    ordinal_after(
        &format!("{}-{}-", crate::resources::VOLUME_NAME, names.cluster),
        claim,
    )
}

/// Volume claim UIDs by ordinal.
pub fn claims_by_ordinal(names: &Names, claims: &[PersistentVolumeClaim]) -> BTreeMap<u32, String> {
    claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| {
            let ordinal = ordinal_of_claim(names, c.metadata.name.as_deref()?)?;
            Some((ordinal, c.metadata.uid.clone()?))
        })
        .collect()
}

/// Ordinals whose member is still in the cluster but whose volume is not
/// the one that member was first seen on: its data is gone.
pub fn replaced_volumes(
    names: &Names,
    report: &Report,
    previous: &[MemberStatus],
    claims: &BTreeMap<u32, String>,
) -> BTreeSet<u32> {
    report
        .cluster
        .members
        .iter()
        .filter_map(|m| {
            let ordinal = m.peer_urls.iter().find_map(|u| names.ordinal_of(u))?;
            let recorded = previous
                .iter()
                .find(|p| p.id == format!("{:x}", m.id))?
                .volume_uid
                .as_ref()?;
            let current = claims.get(&ordinal)?;
            (current != recorded).then_some(ordinal)
        })
        .collect()
}

/// The planner's view of the pods.
pub fn pod_observations(
    names: &Names,
    pods: &[Pod],
    update_revision: Option<&str>,
    replaced: &BTreeSet<u32>,
) -> BTreeMap<u32, PodObs> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let ordinal = ordinal_of_pod(names, p.metadata.name.as_deref()?)?;
            let revision = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL));
            let up_to_date = match update_revision {
                Some(update) => revision.is_some_and(|r| r == update),
                None => true,
            };
            let crash_looping = p
                .status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
                });
            let ready = p
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Some((
                ordinal,
                PodObs {
                    up_to_date,
                    volume_replaced: replaced.contains(&ordinal),
                    crash_looping,
                    ready,
                },
            ))
        })
        .collect()
}

/// Members as status shows them; each keeps the volume UID it was first
/// seen on.
pub fn members_status(
    names: &Names,
    report: &Report,
    previous: &[MemberStatus],
    claims: &BTreeMap<u32, String>,
) -> Vec<MemberStatus> {
    report
        .cluster
        .members
        .iter()
        .map(|m| {
            let id = format!("{:x}", m.id);
            let ordinal = m.peer_urls.iter().find_map(|u| names.ordinal_of(u));
            let detail = report.details.get(&m.id);
            let recorded = previous
                .iter()
                .find(|p| p.id == id)
                .and_then(|p| p.volume_uid.clone());
            MemberStatus {
                name: ordinal.map_or_else(|| m.name.clone(), |o| names.member(o)),
                id,
                peer_url: m.peer_urls.first().cloned().unwrap_or_default(),
                is_leader: report.cluster.leader == Some(m.id),
                is_learner: m.is_learner,
                healthy: m.healthy,
                version: detail.and_then(|d| d.version.clone()),
                db_size: detail.and_then(|d| d.db_size),
                volume_uid: recorded.or_else(|| ordinal.and_then(|o| claims.get(&o).cloned())),
            }
        })
        .collect()
}

/// Reason and message of a wait, for conditions and logs.
pub fn describe_wait(wait: &Wait) -> (&'static str, String) {
    match wait {
        Wait::Paused => ("Paused", "spec.paused is set".to_owned()),
        Wait::Unreachable => ("Unreachable", "no member answered MemberList".to_owned()),
        Wait::NoLeader => ("NoLeader", "the members agree on no leader".to_owned()),
        Wait::Unhealthy { ordinals } => (
            "MemberUnhealthy",
            format!("members at ordinals {ordinals:?} do not answer Status"),
        ),
        Wait::ForeignMember { id } => (
            "ForeignMember",
            format!("member {id:x} is not on one of this cluster's pods"),
        ),
        Wait::StrayLearner { id } => (
            "StrayLearner",
            format!("learner {id:x} was not added by a recorded operation"),
        ),
        Wait::OrdinalGap => ("OrdinalGap", "member ordinals are not 0..n".to_owned()),
        Wait::NoQuorumToHeal { ordinal } => (
            "QuorumLost",
            format!(
                "ordinal {ordinal} lost its data and the other voters are not a healthy quorum"
            ),
        ),
        Wait::MemberStarting { ordinal } => (
            "MemberStarting",
            format!("waiting for ordinal {ordinal} to start"),
        ),
        Wait::LearnerCatchingUp { ordinal } => (
            "LearnerCatchingUp",
            format!("learner at ordinal {ordinal} catching up"),
        ),
        Wait::PodStopping { ordinal } => (
            "PodStopping",
            format!("waiting for ordinal {ordinal}'s pod to go"),
        ),
        Wait::MemberRecovering { ordinal } => (
            "MemberRecovering",
            format!("waiting for ordinal {ordinal} to be healthy"),
        ),
        Wait::NoLeaderTarget => (
            "NoLeaderTarget",
            "no healthy voter to move leadership to".to_owned(),
        ),
        Wait::RetainedVolume { ordinal } => (
            "RetainedVolume",
            format!(
                "the claim of ordinal {ordinal} holds a removed member's data (reclaimPolicy Retain): delete it to scale out"
            ),
        ),
    }
}

fn is_degraded(wait: &Wait) -> bool {
    matches!(
        wait,
        Wait::Unreachable
            | Wait::NoLeader
            | Wait::Unhealthy { .. }
            | Wait::ForeignMember { .. }
            | Wait::StrayLearner { .. }
            | Wait::OrdinalGap
            | Wait::NoQuorumToHeal { .. }
            | Wait::NoLeaderTarget
            | Wait::RetainedVolume { .. }
    )
}

/// A condition, keeping its transition time while its status holds.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_owned();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Everything status says after one reconciliation.
pub struct StatusInput<'a> {
    pub names: &'a Names,
    pub previous: &'a KvClusterStatus,
    pub generation: Option<i64>,
    pub paused: bool,
    pub report: Option<&'a Report>,
    pub claims: &'a BTreeMap<u32, String>,
    pub pods: &'a BTreeMap<u32, PodObs>,
    pub plan: &'a Plan,
    pub now: Time,
}

pub fn next_status(input: &StatusInput<'_>) -> KvClusterStatus {
    let previous = input.previous;
    let members = match input.report {
        Some(report) => members_status(input.names, report, &previous.members, input.claims),
        None => previous
            .members
            .iter()
            .map(|m| MemberStatus {
                healthy: false,
                is_leader: false,
                ..m.clone()
            })
            .collect(),
    };
    let voters = members.iter().filter(|m| !m.is_learner).count();
    let leader = members.iter().find(|m| m.is_leader);
    let ready = members
        .iter()
        .filter(|m| !m.is_learner && m.healthy)
        .count();
    let versions: BTreeSet<&String> = members.iter().filter_map(|m| m.version.as_ref()).collect();
    let available = leader.is_some() && voters > 0 && ready >= quorum(voters);
    let crash_looping: Vec<u32> = input
        .pods
        .iter()
        .filter(|(_, p)| p.crash_looping)
        .map(|(o, _)| *o)
        .collect();
    let (degraded, degraded_reason, degraded_message) = match &input.plan.next {
        Next::Wait(wait) if is_degraded(wait) => {
            let (reason, message) = describe_wait(wait);
            (true, reason, message)
        }
        _ if !crash_looping.is_empty() => (
            true,
            "MemberCrashLooping",
            format!("pods at ordinals {crash_looping:?} are crash-looping"),
        ),
        _ => (false, "Healthy", "every member answers".to_owned()),
    };
    let (progressing_reason, progressing_message) = match (&input.plan.operation, &input.plan.next)
    {
        (Some(op), _) => (
            match op.kind {
                OperationKind::ScaleOut => "ScalingOut",
                OperationKind::ScaleIn => "ScalingIn",
                OperationKind::Replace => "ReplacingMember",
                OperationKind::Upgrade => "Upgrading",
            },
            format!("{:?} of ordinal {}: {:?}", op.kind, op.ordinal, op.step),
        ),
        (None, Next::Wait(wait)) => describe_wait(wait),
        (None, _) => ("Idle", "the cluster is as asked".to_owned()),
    };
    let phase = match &input.plan.operation {
        _ if input.paused => Phase::Paused,
        Some(op) => match op.kind {
            OperationKind::ScaleOut | OperationKind::ScaleIn => Phase::Scaling,
            OperationKind::Replace => Phase::Healing,
            OperationKind::Upgrade => Phase::Upgrading,
        },
        None if input.report.is_none() && previous.cluster_id.is_none() => Phase::Creating,
        None if degraded => Phase::Degraded,
        None => Phase::Running,
    };
    let old = &previous.conditions;
    let (generation, now) = (input.generation, &input.now);
    KvClusterStatus {
        observed_generation: generation,
        phase,
        replicas: members.len() as i32,
        ready_replicas: ready as i32,
        version: (versions.len() == 1).then(|| versions.iter().map(|v| (*v).clone()).collect()),
        cluster_id: input
            .report
            .map(|r| format!("{:x}", r.cluster_id))
            .or_else(|| previous.cluster_id.clone()),
        leader: leader.map(|m| m.name.clone()),
        conditions: [
            condition(
                old,
                "Available",
                available,
                if available {
                    "QuorumHealthy"
                } else {
                    "QuorumUnavailable"
                },
                format!("{ready} of {voters} voters healthy"),
                generation,
                now,
            ),
            condition(
                old,
                "Progressing",
                input.plan.operation.is_some(),
                progressing_reason,
                progressing_message,
                generation,
                now,
            ),
            condition(
                old,
                "Degraded",
                degraded,
                degraded_reason,
                degraded_message,
                generation,
                now,
            ),
        ]
        .into_iter()
        // Conditions others keep (Restored, Maintenance) stay as they were.
        .chain(old.iter().filter(|c| !["Available", "Progressing", "Degraded"].contains(&c.type_.as_str())).cloned())
        .collect(),
        members,
        operation: input.plan.operation.clone(),
        restored_from: previous.restored_from.clone(),
        maintenance: previous.maintenance.clone(),
        recovery: previous.recovery.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberDetail;
    use crate::planner::{ClusterObs, MemberObs};
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn names() -> Names {
        Names {
            cluster: "demo".into(),
            namespace: "prod".into(),
            client_tls: false,
            peer_tls: false,
        }
    }

    fn report(members: &[(u64, u32, bool)], leader: u64) -> Report {
        let n = names();
        Report {
            cluster: ClusterObs {
                members: members
                    .iter()
                    .map(|&(id, o, healthy)| MemberObs {
                        id,
                        name: n.member(o),
                        peer_urls: vec![n.peer_url(o)],
                        is_learner: false,
                        healthy,
                        in_sync: true,
                    })
                    .collect(),
                leader: Some(leader),
            },
            cluster_id: 0xc1,
            revision: 0,
            details: members
                .iter()
                .map(|&(id, _, _)| {
                    (
                        id,
                        MemberDetail {
                            version: Some("3.5.0".into()),
                            ..MemberDetail::default()
                        },
                    )
                })
                .collect(),
        }
    }

    fn pod(name: &str, revision: &str, waiting: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(REVISION_LABEL.to_owned(), revision.to_owned())].into()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                container_statuses: Some(vec![ContainerStatus {
                    name: "raftkv".into(),
                    state: Some(ContainerState {
                        waiting: waiting.map(|r| ContainerStateWaiting {
                            reason: Some(r.into()),
                            message: None,
                        }),
                        ..ContainerState::default()
                    }),
                    ..ContainerStatus::default()
                }]),
                // Ready as the kubelet says it once probes pass; a
                // crash-looping pod is not.
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if waiting.is_some() { "False" } else { "True" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
            spec: None,
        }
    }

    #[test]
    fn pods_and_claims_are_matched_by_exact_ordinal() {
        let n = names();
        assert_eq!(ordinal_of_pod(&n, "demo-12"), Some(12));
        assert_eq!(ordinal_of_pod(&n, "demo-x-1"), None);
        assert_eq!(ordinal_of_pod(&n, "demo-01"), None);
        assert_eq!(ordinal_of_claim(&n, "data-demo-3"), Some(3));
        assert_eq!(ordinal_of_claim(&n, "data-demox-3"), None);
    }

    #[test]
    fn pods_on_an_old_revision_or_crash_looping_are_seen_as_such() {
        let pods = [
            pod("demo-0", "r2", None),
            pod("demo-1", "r1", Some("CrashLoopBackOff")),
        ];
        let obs = pod_observations(&names(), &pods, Some("r2"), &BTreeSet::from([1]));
        assert_eq!(
            obs[&0],
            PodObs {
                up_to_date: true,
                volume_replaced: false,
                crash_looping: false,
                ready: true,
            }
        );
        assert_eq!(
            obs[&1],
            PodObs {
                up_to_date: false,
                volume_replaced: true,
                crash_looping: true,
                ready: false,
            }
        );
    }

    #[test]
    fn a_member_on_another_claim_than_it_was_first_seen_on_lost_its_volume() {
        let n = names();
        let report = report(&[(0xa, 0, true), (0xb, 1, false)], 0xa);
        let first = BTreeMap::from([(0, "uid-0".to_owned()), (1, "uid-1".to_owned())]);
        let recorded = members_status(&n, &report, &[], &first);
        assert_eq!(recorded[1].volume_uid.as_deref(), Some("uid-1"));
        assert!(replaced_volumes(&n, &report, &recorded, &first).is_empty());
        let now = BTreeMap::from([(0, "uid-0".to_owned()), (1, "uid-1-new".to_owned())]);
        assert_eq!(
            replaced_volumes(&n, &report, &recorded, &now),
            BTreeSet::from([1])
        );
        // The record keeps the first claim, so the loss stays visible.
        assert_eq!(
            members_status(&n, &report, &recorded, &now)[1]
                .volume_uid
                .as_deref(),
            Some("uid-1")
        );
    }

    #[test]
    fn status_reports_leader_readiness_and_conditions() {
        let n = names();
        let report = report(&[(0xa, 0, true), (0xb, 1, true), (0xc, 2, false)], 0xb);
        let plan = Plan {
            operation: None,
            next: Next::Wait(Wait::Unhealthy { ordinals: vec![2] }),
            after: None,
        };
        let previous = KvClusterStatus::default();
        let claims = BTreeMap::new();
        let pods = BTreeMap::new();
        let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let status = next_status(&StatusInput {
            names: &n,
            previous: &previous,
            generation: Some(4),
            paused: false,
            report: Some(&report),
            claims: &claims,
            pods: &pods,
            plan: &plan,
            now: now.clone(),
        });
        assert_eq!(status.leader.as_deref(), Some("demo-1"));
        assert_eq!((status.replicas, status.ready_replicas), (3, 2));
        assert_eq!(status.version.as_deref(), Some("3.5.0"));
        assert_eq!(status.cluster_id.as_deref(), Some("c1"));
        assert_eq!(status.phase, Phase::Degraded);
        let get = |t: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == t)
                .expect("condition")
                .clone()
        };
        assert_eq!(
            (
                get("Available").status.as_str(),
                get("Available").reason.as_str()
            ),
            ("True", "QuorumHealthy")
        );
        assert_eq!(
            (
                get("Degraded").status.as_str(),
                get("Degraded").reason.as_str()
            ),
            ("True", "MemberUnhealthy")
        );
        assert_eq!(get("Progressing").status, "False");
        // A condition that holds keeps its transition time.
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(60).expect("time"));
        let again = next_status(&StatusInput {
            previous: &status,
            now: later.clone(),
            ..StatusInput {
                names: &n,
                previous: &previous,
                generation: Some(4),
                paused: false,
                report: Some(&report),
                claims: &claims,
                pods: &pods,
                plan: &plan,
                now: later,
            }
        });
        assert!(
            again
                .conditions
                .iter()
                .all(|c| c.last_transition_time == now)
        );
    }
}
