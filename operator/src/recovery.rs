//! Quorum-loss recovery, triggered by a person, pure: when most members are
//! gone for good, the annotation `raftkv.io/force-new-cluster: <member>`
//! names the survivor; the operator restarts it with `--force-new-cluster`
//! (etcd's meaning: a one-member cluster with the data it had, the others
//! removed), deletes the lost members' volumes, and lets the membership
//! planner grow the cluster back one learner at a time. Never automatic,
//! and refused while the cluster has a leader.
//!
//! Only the member at ordinal 0 can be forced in place: the StatefulSet
//! keeps its members at ordinals 0..n, so a cluster of ordinal 2 alone
//! cannot grow back. A survivor at another ordinal still serves its data
//! without a quorum: the refusal says how to move it (snapshot it, restore
//! into a new KvCluster).

use crate::crd::{KvCluster, KvClusterStatus, Recovery, RecoveryStep};
use crate::resources::Names;

/// The annotation a person sets.
pub const ANNOTATION: &str = "raftkv.io/force-new-cluster";

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing asked, or nothing in flight.
    None,
    /// Refuse the annotation (it is removed): why.
    Refuse(String),
    /// Record the recovery, scale the StatefulSet to the survivor alone with
    /// `RAFTKV_FORCE_NEW_CLUSTER=true` in its bootstrap, restart it.
    Start(Recovery),
    /// Wait for the survivor to lead a cluster of one.
    Wait,
    /// Forced: drop the flag, delete the lost members' volumes, remove the
    /// annotation, record what was lost.
    Finish,
}

/// What the controller observed.
pub struct Input<'a> {
    pub kvc: &'a KvCluster,
    pub names: &'a Names,
    /// The leader, when members answered with one.
    pub leader: Option<u64>,
    /// Members in the cluster as the survivor reports them (name, id), when
    /// a member answered.
    pub members: Option<&'a [(String, u64)]>,
}

pub fn next(i: &Input) -> Step {
    let status = i.kvc.status.clone().unwrap_or_default();
    if let Some(r) = status.recovery.as_ref().filter(|r| r.step == RecoveryStep::Forcing) {
        let alone = i.members.is_some_and(|m| m.len() == 1 && m[0].0 == r.member);
        return if alone && i.leader.is_some() { Step::Finish } else { Step::Wait };
    }
    let Some(member) = i.kvc.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION)) else {
        return Step::None;
    };
    if i.leader.is_some() {
        return Step::Refuse(format!("the cluster has a leader: {ANNOTATION} is only for a cluster that lost its quorum"));
    }
    let founding = i.names.member(0);
    if *member != founding {
        if !status.members.iter().any(|m| m.name == *member) {
            return Step::Refuse(format!("{member:?} is not a member of this cluster"));
        }
        return Step::Refuse(format!(
            "only {founding} can be forced into a new cluster in place (members live at ordinals 0..n); {member} still serves its data without a quorum: \
             save it (raftkvctl --endpoints {} snapshot save URL) and restore it into a new KvCluster (spec.bootstrap.restore.source)",
            i.names.client_url(i.names.ordinal_of_member(member).unwrap_or(0))
        ));
    }
    let lost = status.members.iter().filter(|m| m.name != *member).map(|m| m.name.clone()).collect();
    Step::Start(Recovery { member: member.clone(), step: RecoveryStep::Forcing, lost, started_at: None, completed_at: None })
}

/// Status once the recovery is done.
pub fn finished(previous: &KvClusterStatus, now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<Recovery> {
    previous.recovery.clone().map(|r| Recovery { step: RecoveryStep::Done, completed_at: Some(now), ..r })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MemberStatus;

    fn cluster(annotation: Option<&str>, recovery: Option<Recovery>) -> KvCluster {
        let mut kvc = crate::resources::tests::kvcluster("demo", 3);
        if let Some(a) = annotation {
            kvc.metadata.annotations = Some([(ANNOTATION.to_owned(), a.to_owned())].into());
        }
        kvc.status = Some(KvClusterStatus {
            members: (0..3).map(|o| MemberStatus { name: format!("demo-{o}"), ..MemberStatus::default() }).collect(),
            recovery,
            ..KvClusterStatus::default()
        });
        kvc
    }

    fn input<'a>(kvc: &'a KvCluster, names: &'a Names, leader: Option<u64>, members: Option<&'a [(String, u64)]>) -> Input<'a> {
        Input { kvc, names, leader, members }
    }

    #[test]
    fn nothing_happens_without_the_annotation() {
        let kvc = cluster(None, None);
        let names = Names::of(&kvc);
        assert_eq!(next(&input(&kvc, &names, None, None)), Step::None);
    }

    #[test]
    fn the_founding_member_is_forced_when_quorum_is_lost_and_the_rest_is_recorded_lost() {
        let kvc = cluster(Some("demo-0"), None);
        let names = Names::of(&kvc);
        match next(&input(&kvc, &names, None, None)) {
            Step::Start(r) => {
                assert_eq!(r.member, "demo-0");
                assert_eq!(r.lost, ["demo-1", "demo-2"]);
            }
            other => panic!("{other:?}"),
        }
        let forcing = Recovery {
            member: "demo-0".into(),
            step: RecoveryStep::Forcing,
            lost: vec!["demo-1".into(), "demo-2".into()],
            started_at: None,
            completed_at: None,
        };
        let kvc = cluster(Some("demo-0"), Some(forcing));
        let still_three = [("demo-0".to_owned(), 1), ("demo-1".to_owned(), 2), ("demo-2".to_owned(), 3)];
        assert_eq!(next(&input(&kvc, &names, None, Some(&still_three))), Step::Wait);
        let alone = [("demo-0".to_owned(), 1)];
        assert_eq!(next(&input(&kvc, &names, None, Some(&alone))), Step::Wait, "alone but no leader yet");
        assert_eq!(next(&input(&kvc, &names, Some(1), Some(&alone))), Step::Finish);
    }

    #[test]
    fn a_recovery_done_is_not_taken_again() {
        let done = Recovery { member: "demo-0".into(), step: RecoveryStep::Done, lost: vec![], started_at: None, completed_at: None };
        let kvc = cluster(None, Some(done));
        let names = Names::of(&kvc);
        assert_eq!(next(&input(&kvc, &names, None, None)), Step::None);
    }

    #[test]
    fn a_cluster_with_a_leader_another_ordinal_or_a_stranger_is_refused() {
        let names = Names::of(&cluster(None, None));
        let with_leader = cluster(Some("demo-0"), None);
        assert!(matches!(next(&input(&with_leader, &names, Some(1), None)), Step::Refuse(m) if m.contains("has a leader")));
        let other = cluster(Some("demo-2"), None);
        assert!(matches!(next(&input(&other, &names, None, None)), Step::Refuse(m) if m.contains("snapshot save") && m.contains("demo-2.demo-peer")));
        let stranger = cluster(Some("nobody"), None);
        assert!(matches!(next(&input(&stranger, &names, None, None)), Step::Refuse(m) if m.contains("not a member")));
    }
}
