//! Every planner rule as a table or a scenario, and whole scale-out,
//! scale-in, healing and upgrade sequences run against a small simulated
//! cluster that checks the invariants at every step, with the operator
//! "restarting" (losing everything but status) between steps.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

struct TestNaming;

impl Naming for TestNaming {
    fn member_name(&self, ordinal: u32) -> String {
        format!("m{ordinal}")
    }

    fn peer_url(&self, ordinal: u32) -> String {
        format!("http://m{ordinal}:2380")
    }

    fn ordinal_of(&self, peer_url: &str) -> Option<u32> {
        peer_url
            .strip_prefix("http://m")?
            .strip_suffix(":2380")?
            .parse()
            .ok()
    }
}

fn id(ordinal: u32) -> u64 {
    0x100 + u64::from(ordinal)
}

fn voter(ordinal: u32) -> MemberObs {
    MemberObs {
        id: id(ordinal),
        name: format!("m{ordinal}"),
        peer_urls: vec![TestNaming.peer_url(ordinal)],
        is_learner: false,
        healthy: true,
        in_sync: true,
    }
}

fn learner(ordinal: u32, healthy: bool, in_sync: bool) -> MemberObs {
    MemberObs {
        is_learner: true,
        healthy,
        in_sync,
        name: String::new(),
        ..voter(ordinal)
    }
}

/// `n` healthy voters m0.., the leader m0, StatefulSet and pods at `n`,
/// every pod up to date, `desired` replicas.
fn healthy(n: u32, desired: u32) -> Observed {
    Observed {
        desired: Desired {
            replicas: desired,
            paused: false,
            delete_volumes: false,
        },
        operation: None,
        statefulset_replicas: Some(n),
        pods: (0..n)
            .map(|o| {
                (
                    o,
                    PodObs {
                        up_to_date: true,
                        ready: true,
                        ..PodObs::default()
                    },
                )
            })
            .collect(),
        volumes: (0..n).collect(),
        cluster: Some(ClusterObs {
            members: (0..n).map(voter).collect(),
            leader: Some(id(0)),
        }),
    }
}

fn op_at(kind: OperationKind, ordinal: u32, step: Step) -> Operation {
    op(kind, ordinal, step)
}

fn members(obs: &mut Observed) -> &mut Vec<MemberObs> {
    &mut obs.cluster.as_mut().expect("cluster").members
}

fn set_leader(obs: &mut Observed, ordinal: u32) {
    obs.cluster.as_mut().expect("cluster").leader = Some(id(ordinal));
}

fn next(obs: &Observed) -> Next {
    plan(obs, &TestNaming).next
}

#[test]
fn quorum_is_a_strict_majority() {
    assert_eq!([1, 2, 3, 4, 5, 9].map(quorum), [1, 2, 2, 3, 3, 5]);
}

#[test]
fn a_cluster_as_asked_is_left_alone() {
    let p = plan(&healthy(3, 3), &TestNaming);
    assert_eq!(
        p,
        Plan {
            operation: None,
            next: Next::Idle,
            after: None
        }
    );
}

#[test]
fn paused_or_unreachable_clusters_get_no_step() {
    let mut obs = healthy(3, 5);
    obs.desired.paused = true;
    assert_eq!(next(&obs), Next::Wait(Wait::Paused));
    let mut obs = healthy(3, 5);
    obs.cluster = None;
    assert_eq!(next(&obs), Next::Wait(Wait::Unreachable));
}

#[test]
fn scale_out_adds_a_learner_and_records_it_first() {
    let p = plan(&healthy(3, 5), &TestNaming);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner))
    );
    assert_eq!(
        p.next,
        Next::Act(Action::AddLearner {
            ordinal: 3,
            peer_url: "http://m3:2380".to_owned()
        })
    );
}

#[test]
fn scale_out_steps_in_order() {
    // (learner state, StatefulSet replicas) -> recorded step, next.
    let table: Vec<(MemberObs, u32, Step, Next)> = vec![
        (
            learner(3, false, false),
            3,
            Step::StartPod,
            Next::Act(Action::ScaleStatefulSet { replicas: 4 }),
        ),
        (
            learner(3, false, false),
            4,
            Step::StartPod,
            Next::Wait(Wait::MemberStarting { ordinal: 3 }),
        ),
        (
            learner(3, true, false),
            4,
            Step::Promote,
            Next::Wait(Wait::LearnerCatchingUp { ordinal: 3 }),
        ),
        (
            learner(3, true, true),
            4,
            Step::Promote,
            Next::Act(Action::Promote {
                ordinal: 3,
                id: id(3),
            }),
        ),
        (
            MemberObs {
                healthy: false,
                ..voter(3)
            },
            4,
            Step::WaitHealthy,
            Next::Wait(Wait::MemberRecovering { ordinal: 3 }),
        ),
    ];
    for (member, sts, step, expected) in table {
        let mut obs = healthy(3, 5);
        obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner));
        obs.statefulset_replicas = Some(sts);
        members(&mut obs).push(member.clone());
        let p = plan(&obs, &TestNaming);
        assert_eq!(p.next, expected, "{member:?} sts {sts}");
        assert_eq!(
            p.operation.map(|o| o.step),
            Some(step),
            "{member:?} sts {sts}"
        );
    }
}

#[test]
fn a_promoted_healthy_member_ends_the_operation_and_the_next_one_starts() {
    let mut obs = healthy(4, 5);
    obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::Promote));
    let p = plan(&obs, &TestNaming);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleOut, 4, Step::AddLearner))
    );
    let mut obs = healthy(5, 5);
    obs.operation = Some(op_at(OperationKind::ScaleOut, 4, Step::Promote));
    assert_eq!(
        plan(&obs, &TestNaming),
        Plan {
            operation: None,
            next: Next::Idle,
            after: None
        }
    );
}

#[test]
fn scale_out_onto_a_retained_volume_waits_for_an_administrator() {
    let mut obs = healthy(3, 4);
    obs.volumes.insert(3);
    let p = plan(&obs, &TestNaming);
    assert_eq!(p.next, Next::Wait(Wait::RetainedVolume { ordinal: 3 }));
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner))
    );
    obs.volumes.remove(&3);
    assert!(matches!(
        next(&obs),
        Next::Act(Action::AddLearner { ordinal: 3, .. })
    ));
}

#[test]
fn never_two_learners() {
    // A learner nobody recorded blocks every new operation.
    let mut obs = healthy(3, 5);
    members(&mut obs).push(MemberObs {
        peer_urls: vec!["http://m7:2380".into()],
        ..learner(7, true, true)
    });
    assert_eq!(next(&obs), Next::Wait(Wait::StrayLearner { id: id(7) }));
    // And an operation about to add one waits for it.
    obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner));
    assert_eq!(next(&obs), Next::Wait(Wait::StrayLearner { id: id(7) }));
}

#[test]
fn no_membership_step_while_unhealthy_or_leaderless() {
    for desired in [2, 5] {
        let mut obs = healthy(3, desired);
        members(&mut obs)[1].healthy = false;
        assert_eq!(
            next(&obs),
            Next::Wait(Wait::Unhealthy { ordinals: vec![1] }),
            "desired {desired}"
        );
        let mut obs = healthy(3, desired);
        obs.cluster.as_mut().expect("cluster").leader = None;
        assert_eq!(next(&obs), Next::Wait(Wait::NoLeader), "desired {desired}");
    }
    // Nor a promotion.
    let mut obs = healthy(3, 5);
    obs.statefulset_replicas = Some(4);
    obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::Promote));
    members(&mut obs).push(learner(3, true, true));
    members(&mut obs)[2].healthy = false;
    assert_eq!(
        next(&obs),
        Next::Wait(Wait::Unhealthy { ordinals: vec![2] })
    );
}

#[test]
fn scale_in_moves_leadership_off_the_highest_ordinal_first() {
    let mut obs = healthy(5, 3);
    set_leader(&mut obs, 4);
    let p = plan(&obs, &TestNaming);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleIn, 4, Step::MoveLeader))
    );
    assert_eq!(
        p.next,
        Next::Act(Action::MoveLeader {
            from: id(4),
            to: id(0)
        })
    );
    // Not to an unhealthy or lagging member: none of those here, so m0.
    set_leader(&mut obs, 0);
    let p = plan(&obs, &TestNaming);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleIn, 4, Step::RemoveMember))
    );
    assert_eq!(
        p.next,
        Next::Act(Action::RemoveMember {
            ordinal: 4,
            id: id(4)
        })
    );
}

#[test]
fn scale_in_after_removal_shrinks_the_statefulset_then_reclaims_per_policy() {
    let removed = |sts: u32, pod: bool, volume: bool, delete: bool| {
        let mut obs = healthy(4, 3);
        obs.operation = Some(op_at(OperationKind::ScaleIn, 4, Step::RemoveMember));
        obs.statefulset_replicas = Some(sts);
        if pod {
            obs.pods.insert(
                4,
                PodObs {
                    up_to_date: true,
                    ready: true,
                    ..PodObs::default()
                },
            );
        }
        if volume {
            obs.volumes.insert(4);
        }
        obs.desired.delete_volumes = delete;
        plan(&obs, &TestNaming)
    };
    let p = removed(5, true, true, true);
    assert_eq!(p.next, Next::Act(Action::ScaleStatefulSet { replicas: 4 }));
    assert_eq!(p.operation.map(|o| o.step), Some(Step::StopPod));
    assert_eq!(
        removed(4, true, true, true).next,
        Next::Wait(Wait::PodStopping { ordinal: 4 })
    );
    let p = removed(4, false, true, true);
    assert_eq!(p.next, Next::Act(Action::DeleteVolume { ordinal: 4 }));
    assert_eq!(p.operation.map(|o| o.step), Some(Step::DeleteVolume));
    // Retain keeps the volume; the operation ends and the next starts
    // (4 members, 3 wanted: ordinal 3 goes).
    let p = removed(4, false, true, false);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::ScaleIn, 3, Step::RemoveMember))
    );
}

#[test]
fn an_operator_restarted_mid_step_resumes_and_does_not_repeat() {
    // Each recorded step whose effect is already visible: the planner takes
    // the step after it, never the recorded one again.
    let mut added = healthy(3, 5);
    added.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner));
    members(&mut added).push(learner(3, false, false));
    assert_eq!(
        next(&added),
        Next::Act(Action::ScaleStatefulSet { replicas: 4 })
    );

    let mut promoted = healthy(4, 4);
    promoted.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::Promote));
    assert_eq!(next(&promoted), Next::Idle);

    let mut removed = healthy(4, 3);
    removed.operation = Some(op_at(OperationKind::ScaleIn, 4, Step::RemoveMember));
    removed.statefulset_replicas = Some(5);
    assert_eq!(
        next(&removed),
        Next::Act(Action::ScaleStatefulSet { replicas: 4 })
    );

    let mut moved = healthy(5, 3);
    moved.operation = Some(op_at(OperationKind::ScaleIn, 4, Step::MoveLeader));
    set_leader(&mut moved, 1);
    assert_eq!(
        next(&moved),
        Next::Act(Action::RemoveMember {
            ordinal: 4,
            id: id(4)
        })
    );

    let mut restarted = healthy(3, 3);
    restarted.operation = Some(op_at(OperationKind::Upgrade, 2, Step::RestartPod));
    members(&mut restarted)[2].healthy = false;
    assert_eq!(
        next(&restarted),
        Next::Wait(Wait::MemberRecovering { ordinal: 2 })
    );
    // Answering is not enough: it must have caught up before the next one.
    members(&mut restarted)[2] = MemberObs {
        in_sync: false,
        ..voter(2)
    };
    assert_eq!(
        next(&restarted),
        Next::Wait(Wait::MemberRecovering { ordinal: 2 })
    );

    let mut readded = healthy(3, 3);
    let mut replace = op_at(OperationKind::Replace, 1, Step::AddLearner);
    replace.replaced_id = Some(format!("{:x}", id(1)));
    readded.operation = Some(replace);
    members(&mut readded)[1] = MemberObs {
        id: 0x999,
        ..learner(1, false, false)
    };
    assert_eq!(
        next(&readded),
        Next::Wait(Wait::MemberStarting { ordinal: 1 })
    );
}

#[test]
fn a_recorded_operation_finishes_before_a_changed_spec_is_followed() {
    // Learner added for 5, then the user asked for 3 again: promote it
    // first (removing it again is a later, separate operation).
    let mut obs = healthy(3, 3);
    obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::Promote));
    obs.statefulset_replicas = Some(4);
    members(&mut obs).push(learner(3, true, true));
    assert_eq!(
        next(&obs),
        Next::Act(Action::Promote {
            ordinal: 3,
            id: id(3)
        })
    );
    // Recorded but not yet added: dropped.
    let mut obs = healthy(3, 3);
    obs.operation = Some(op_at(OperationKind::ScaleOut, 3, Step::AddLearner));
    assert_eq!(
        plan(&obs, &TestNaming),
        Plan {
            operation: None,
            next: Next::Idle,
            after: None
        }
    );
}

#[test]
fn a_member_that_lost_its_volume_is_removed_and_added_again() {
    let mut obs = healthy(3, 3);
    obs.pods.insert(
        1,
        PodObs {
            up_to_date: true,
            volume_replaced: true,
            crash_looping: true,
            ready: false,
        },
    );
    members(&mut obs)[1].healthy = false;
    let p = plan(&obs, &TestNaming);
    let mut expected = op_at(OperationKind::Replace, 1, Step::RemoveMember);
    expected.replaced_id = Some(format!("{:x}", id(1)));
    assert_eq!(p.operation, Some(expected.clone()));
    assert_eq!(
        p.next,
        Next::Act(Action::RemoveMember {
            ordinal: 1,
            id: id(1)
        })
    );

    // Removed: a fresh volume, and only then (recorded after it) the add.
    let mut obs = healthy(3, 3);
    obs.operation = Some(expected.clone());
    members(&mut obs).remove(1);
    let p = plan(&obs, &TestNaming);
    assert_eq!(p.next, Next::Act(Action::ReplaceVolume { ordinal: 1 }));
    assert_eq!(p.operation.map(|o| o.step), Some(Step::DeleteVolume));
    assert_eq!(p.after.clone().map(|o| o.step), Some(Step::AddLearner));
    obs.operation = p.after;
    assert_eq!(
        next(&obs),
        Next::Act(Action::AddLearner {
            ordinal: 1,
            peer_url: "http://m1:2380".to_owned()
        })
    );

    // The new learner (another id) is promoted like any joiner.
    members(&mut obs).insert(
        1,
        MemberObs {
            id: 0x999,
            ..learner(1, true, true)
        },
    );
    assert_eq!(
        next(&obs),
        Next::Act(Action::Promote {
            ordinal: 1,
            id: 0x999
        })
    );
}

#[test]
fn healing_needs_a_quorum_of_the_members_that_stay() {
    let mut obs = healthy(3, 3);
    obs.pods.insert(
        1,
        PodObs {
            up_to_date: true,
            volume_replaced: true,
            crash_looping: false,
            ready: true,
        },
    );
    members(&mut obs)[1].healthy = false;
    members(&mut obs)[2].healthy = false;
    assert_eq!(next(&obs), Next::Wait(Wait::NoQuorumToHeal { ordinal: 1 }));
}

#[test]
fn upgrades_roll_followers_from_the_top_and_the_leader_last() {
    let mut obs = healthy(3, 3);
    set_leader(&mut obs, 2);
    for pod in obs.pods.values_mut() {
        pod.up_to_date = false;
    }
    let p = plan(&obs, &TestNaming);
    assert_eq!(
        p.operation,
        Some(op_at(OperationKind::Upgrade, 1, Step::RestartPod))
    );
    assert_eq!(p.next, Next::Act(Action::RestartPod { ordinal: 1 }));
    obs.pods.insert(
        1,
        PodObs {
            up_to_date: true,
            ready: true,
            ..PodObs::default()
        },
    );
    obs.pods.insert(
        0,
        PodObs {
            up_to_date: true,
            ready: true,
            ..PodObs::default()
        },
    );
    // Only the leader is left: leadership moves first.
    let p = plan(&obs, &TestNaming);
    assert_eq!(
        p.next,
        Next::Act(Action::MoveLeader {
            from: id(2),
            to: id(0)
        })
    );
    set_leader(&mut obs, 0);
    assert_eq!(next(&obs), Next::Act(Action::RestartPod { ordinal: 2 }));
}

#[test]
fn an_upgrade_moves_on_only_once_the_restarted_pod_is_ready() {
    let mut obs = healthy(3, 3);
    set_leader(&mut obs, 2);
    for pod in obs.pods.values_mut() {
        pod.up_to_date = false;
    }
    obs.operation = Some(op_at(OperationKind::Upgrade, 1, Step::RestartPod));
    // Restarted on the new template, healthy in raft, probes not passing yet.
    obs.pods.insert(1, PodObs { up_to_date: true, ready: false, ..PodObs::default() });
    assert_eq!(next(&obs), Next::Wait(Wait::MemberRecovering { ordinal: 1 }));
    obs.pods.insert(1, PodObs { up_to_date: true, ready: true, ..PodObs::default() });
    assert_eq!(next(&obs), Next::Act(Action::RestartPod { ordinal: 0 }));
}

#[test]
fn upgrades_wait_for_size_changes_and_health() {
    let mut obs = healthy(3, 5);
    obs.pods.insert(2, PodObs::default());
    assert!(matches!(next(&obs), Next::Act(Action::AddLearner { .. })));
    let mut obs = healthy(3, 3);
    obs.pods.insert(2, PodObs::default());
    members(&mut obs)[0].healthy = false;
    assert_eq!(
        next(&obs),
        Next::Wait(Wait::Unhealthy { ordinals: vec![0] })
    );
}

#[test]
fn members_that_are_not_ours_or_not_contiguous_block_changes() {
    let mut obs = healthy(3, 5);
    members(&mut obs).push(MemberObs {
        peer_urls: vec!["http://elsewhere:2380".into()],
        ..voter(9)
    });
    assert_eq!(next(&obs), Next::Wait(Wait::ForeignMember { id: id(9) }));
    let mut obs = healthy(3, 5);
    members(&mut obs).remove(1);
    assert_eq!(next(&obs), Next::Wait(Wait::OrdinalGap));
}

#[test]
fn a_statefulset_that_drifted_from_the_membership_is_put_back() {
    let mut obs = healthy(3, 3);
    obs.statefulset_replicas = Some(4);
    assert_eq!(
        next(&obs),
        Next::Act(Action::ScaleStatefulSet { replicas: 3 })
    );
}

/// A simulated cluster driven by plans, as the controller drives the real
/// one. Pods start one tick after the StatefulSet asks for them and a
/// learner catches up one tick after it started.
struct World {
    obs: Observed,
    next_id: u64,
    /// (what, member id) of every membership change made.
    log: Vec<(&'static str, u64)>,
    volume_generation: BTreeMap<u32, u32>,
}

impl World {
    fn new(n: u32, desired: u32) -> World {
        World {
            obs: healthy(n, desired),
            next_id: 0x1000,
            log: Vec::new(),
            volume_generation: BTreeMap::new(),
        }
    }

    fn cluster(&mut self) -> &mut ClusterObs {
        self.obs.cluster.as_mut().expect("cluster")
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::AddLearner { peer_url, .. } => {
                self.next_id += 1;
                let id = self.next_id;
                self.log.push(("add", id));
                self.cluster().members.push(MemberObs {
                    id,
                    name: String::new(),
                    peer_urls: vec![peer_url.clone()],
                    is_learner: true,
                    healthy: false,
                    in_sync: false,
                });
            }
            Action::Promote { id, .. } => {
                self.log.push(("promote", *id));
                for m in &mut self.cluster().members {
                    if m.id == *id {
                        assert!(m.is_learner, "promoted a voter");
                        m.is_learner = false;
                    }
                }
            }
            Action::MoveLeader { to, .. } => self.cluster().leader = Some(*to),
            Action::RemoveMember { id, .. } => {
                self.log.push(("remove", *id));
                let cluster = self.cluster();
                cluster.members.retain(|m| m.id != *id);
                if cluster.leader == Some(*id) {
                    cluster.leader = cluster.members.first().map(|m| m.id);
                }
            }
            Action::ScaleStatefulSet { replicas } => {
                self.obs.statefulset_replicas = Some(*replicas)
            }
            Action::DeleteVolume { ordinal } => {
                self.obs.volumes.remove(ordinal);
            }
            Action::RestartPod { ordinal } => {
                self.obs.pods.remove(ordinal);
            }
            Action::ReplaceVolume { ordinal } => {
                *self.volume_generation.entry(*ordinal).or_default() += 1;
                self.obs.pods.remove(ordinal);
            }
        }
    }

    /// Time passes: the StatefulSet creates and deletes pods, started
    /// members answer, learners catch up.
    fn tick(&mut self) {
        let sts = self.obs.statefulset_replicas.unwrap_or(0);
        self.obs.pods.retain(|&o, _| o < sts);
        for o in 0..sts {
            if let std::collections::btree_map::Entry::Vacant(e) = self.obs.pods.entry(o) {
                e.insert(PodObs {
                    up_to_date: true,
                    ready: true,
                    ..PodObs::default()
                });
                self.obs.volumes.insert(o);
                return self.settle();
            }
        }
        self.settle();
    }

    fn settle(&mut self) {
        let pods: BTreeSet<u32> = self.obs.pods.keys().copied().collect();
        for m in &mut self.obs.cluster.as_mut().expect("cluster").members {
            let ordinal = TestNaming.ordinal_of(&m.peer_urls[0]).expect("ours");
            if m.healthy && m.is_learner {
                m.in_sync = true;
            }
            m.healthy = pods.contains(&ordinal);
            if !m.is_learner {
                m.in_sync = true;
            }
        }
    }

    /// Plans and acts until idle, as a controller that restarts before every
    /// step: only `obs.operation` (status) survives. Returns the actions.
    fn run(&mut self, crash_before_after: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        for round in 0..200 {
            let p = plan(&self.obs, &TestNaming);
            let learners = self
                .obs
                .cluster
                .as_ref()
                .map_or(0, |c| c.members.iter().filter(|m| m.is_learner).count());
            assert!(learners <= 1, "two learners at round {round}");
            self.obs.operation = p.operation.clone();
            match p.next {
                Next::Idle => return actions,
                Next::Wait(_) => self.tick(),
                Next::Act(action) => {
                    self.apply(&action);
                    actions.push(action);
                    // A crash right after the step loses the `after` record
                    // every other time; the step must still not repeat.
                    if !(crash_before_after && round % 2 == 0) {
                        self.obs.operation = p.after;
                    }
                    self.tick();
                }
            }
        }
        panic!("no convergence: {:?}", self.obs);
    }

    fn voters(&self) -> usize {
        self.obs
            .cluster
            .as_ref()
            .map_or(0, |c| c.members.iter().filter(|m| !m.is_learner).count())
    }

    fn assert_no_repeats(&self) {
        let mut seen = BTreeSet::new();
        for entry in &self.log {
            assert!(seen.insert(*entry), "{entry:?} twice in {:?}", self.log);
        }
    }
}

#[test]
fn simulated_scale_three_to_five_and_back_never_repeats_a_step() {
    for crash in [false, true] {
        let mut world = World::new(3, 5);
        world.run(crash);
        assert_eq!(world.voters(), 5);
        assert_eq!(world.obs.statefulset_replicas, Some(5));
        world.obs.desired.replicas = 3;
        world.obs.desired.delete_volumes = true;
        let highest = members(&mut world.obs)
            .iter()
            .find(|m| m.peer_urls[0] == TestNaming.peer_url(4))
            .map(|m| m.id)
            .expect("ordinal 4 joined");
        world.cluster().leader = Some(highest);
        let actions = world.run(crash);
        assert_eq!(world.voters(), 3);
        assert_eq!(world.obs.statefulset_replicas, Some(3));
        assert_eq!(world.obs.volumes, BTreeSet::from([0, 1, 2]));
        assert!(
            matches!(actions[0], Action::MoveLeader { from, .. } if from == highest),
            "{actions:?}"
        );
        world.assert_no_repeats();
        assert_eq!(
            world.log.iter().filter(|(what, _)| *what == "add").count(),
            2
        );
        assert_eq!(
            world
                .log
                .iter()
                .filter(|(what, _)| *what == "remove")
                .count(),
            2
        );
    }
}

#[test]
fn simulated_healing_replaces_the_volume_once_and_rejoins() {
    for crash in [false, true] {
        let mut world = World::new(3, 3);
        world.obs.pods.insert(
            2,
            PodObs {
                up_to_date: true,
                volume_replaced: true,
                crash_looping: true,
                ready: false,
            },
        );
        members(&mut world.obs)[2].healthy = false;
        let actions = world.run(crash);
        let kinds: Vec<&str> = actions
            .iter()
            .map(|a| match a {
                Action::RemoveMember { .. } => "remove",
                Action::ReplaceVolume { .. } => "replace-volume",
                Action::AddLearner { .. } => "add",
                Action::Promote { .. } => "promote",
                _ => "other",
            })
            .collect();
        // With a crash between replacing the volume and recording it, the
        // volume may be replaced twice (harmless: the member is out of the
        // cluster then); membership steps never repeat.
        let membership: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| *k != "replace-volume")
            .collect();
        assert_eq!(
            membership,
            ["remove", "add", "promote"],
            "crash {crash}: {kinds:?}"
        );
        let replaced = kinds.iter().filter(|k| **k == "replace-volume").count();
        assert!(
            replaced == 1 || (crash && replaced == 2),
            "crash {crash}: {kinds:?}"
        );
        let add = kinds.iter().position(|k| *k == "add");
        assert!(
            kinds.iter().rposition(|k| *k == "replace-volume") < add,
            "a fresh volume before the add: {kinds:?}"
        );
        world.assert_no_repeats();
        assert_eq!(world.voters(), 3);
    }
}
