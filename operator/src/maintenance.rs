//! The maintenance planner, pure: defragmentation (on a schedule or past a
//! free-space threshold) and NOSPACE remediation, one step at a time, from
//! an observation. Like the membership planner, the run in flight is
//! recorded in status before each step, so a restarted operator resumes.
//!
//! A run starts on a schedule, past a threshold, on a NOSPACE alarm, or
//! when a person asks (the annotation [`REQUEST_ANNOTATION`], which
//! `kubectl raftkv defrag` sets): each request is a token, done once.
//!
//! A run defragments every member one at a time, followers first; the
//! leader last, after leadership moved off it (a defragmentation blocks
//! the member's writes while it runs). A run starts only while every voter
//! is healthy and no membership change is under way, and pauses while a
//! voter is not healthy. A NOSPACE remediation is etcd's documented one:
//! compact to the current revision, defragment every member, disarm the
//! alarm; if the live data still does not fit the quota, the alarm stays
//! and the operator says so instead of starting over.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{Maintenance, MaintenanceReason, MaintenanceRun, MaintenanceStatus, byte_size};
use crate::members::{MembershipApi, MembershipError, Report};

/// A member as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub id: u64,
    pub name: String,
    pub is_leader: bool,
    pub is_learner: bool,
    pub healthy: bool,
    pub db_size: i64,
    pub db_size_in_use: i64,
}

/// Asks for one defragmentation run: any value (a token; `kubectl raftkv
/// defrag` writes the time). The run started for it records the token in
/// `status.maintenance.lastRequest`, so the same value is never run twice
/// and a new value asks again.
pub const REQUEST_ANNOTATION: &str = "raftkv.io/defragment";

/// Free space below this is never worth a defragmentation by percentage.
const MIN_FREE_FOR_PERCENT: i64 = 16 << 20;
/// Live data above this share of the quota after a remediation "does not
/// fit": the alarm would go off again at once.
const FITS_PERCENT: i64 = 95;

pub struct Input<'a> {
    pub spec: Option<&'a Maintenance>,
    /// The quota in force, in bytes.
    pub quota: i64,
    pub members: &'a [MemberState],
    /// A NOSPACE alarm is raised.
    pub nospace: bool,
    /// The cluster's revision (what a remediation compacts to).
    pub revision: i64,
    pub status: &'a MaintenanceStatus,
    /// No membership operation in flight or planned.
    pub membership_idle: bool,
    /// The defragmentation schedule names a time since the last run.
    pub schedule_due: bool,
    /// A person asked for a run that has not started yet.
    pub requested: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    None,
    /// Record a new run.
    Start(MaintenanceReason),
    /// Paused: why.
    Wait(String),
    Compact(i64),
    MoveLeader { from: u64, to: u64 },
    Defragment { id: u64, name: String },
    /// Disarm the NOSPACE alarms, then finish.
    Disarm,
    /// Record the run as done.
    Finish,
    /// The live data does not fit the quota: leave the alarm, say so.
    DoesNotFit { in_use: i64 },
}

fn remediation_on(spec: Option<&Maintenance>) -> bool {
    spec.is_none_or(|m| m.nospace_remediation)
}

/// Whether a member's free space passed a threshold of `spec`.
pub fn past_threshold(spec: Option<&Maintenance>, m: &MemberState) -> bool {
    let Some(d) = spec.and_then(|s| s.defragmentation.as_ref()) else { return false };
    let free = m.db_size - m.db_size_in_use;
    let by_bytes = d.min_free_bytes.as_ref().and_then(byte_size).is_some_and(|min| free >= min);
    let by_percent = d.min_free_percent.is_some_and(|p| free >= MIN_FREE_FOR_PERCENT && free * 100 >= i64::from(p) * m.db_size);
    by_bytes || by_percent
}

pub fn next(i: &Input) -> Step {
    let voters_healthy = i.members.iter().filter(|m| !m.is_learner).all(|m| m.healthy);
    let Some(run) = &i.status.run else {
        if i.nospace && remediation_on(i.spec) && i.status.data_exceeds_quota != Some(i.quota) && i.membership_idle {
            return Step::Start(MaintenanceReason::NoSpace);
        }
        if !i.membership_idle || !voters_healthy {
            return Step::None;
        }
        if i.requested {
            return Step::Start(MaintenanceReason::Requested);
        }
        if i.schedule_due {
            return Step::Start(MaintenanceReason::Schedule);
        }
        if i.members.iter().any(|m| m.healthy && past_threshold(i.spec, m)) {
            return Step::Start(MaintenanceReason::Threshold);
        }
        return Step::None;
    };
    if !voters_healthy {
        return Step::Wait("a voting member is not healthy".to_owned());
    }
    if run.reason == MaintenanceReason::NoSpace && run.compacted.is_none() {
        return Step::Compact(i.revision);
    }
    let todo: Vec<&MemberState> = i.members.iter().filter(|m| m.healthy && !run.defragmented.contains(&m.name)).collect();
    if let Some(follower) = todo.iter().find(|m| !m.is_leader) {
        return Step::Defragment { id: follower.id, name: follower.name.clone() };
    }
    if let Some(leader) = todo.first() {
        let successor = i.members.iter().find(|m| !m.is_leader && !m.is_learner && m.healthy);
        return match successor {
            Some(to) => Step::MoveLeader { from: leader.id, to: to.id },
            None => Step::Defragment { id: leader.id, name: leader.name.clone() },
        };
    }
    if run.reason != MaintenanceReason::NoSpace {
        return Step::Finish;
    }
    let in_use = i.members.iter().map(|m| m.db_size_in_use).max().unwrap_or(0);
    if in_use * 100 >= i.quota * FITS_PERCENT {
        return Step::DoesNotFit { in_use };
    }
    if i.nospace { Step::Disarm } else { Step::Finish }
}

/// The members as the planner sees them, from an observation.
pub fn members_of(report: &Report) -> Vec<MemberState> {
    report
        .cluster
        .members
        .iter()
        .map(|m| {
            let d = report.details.get(&m.id).cloned().unwrap_or_default();
            MemberState {
                id: m.id,
                name: m.name.clone(),
                is_leader: report.cluster.leader == Some(m.id),
                is_learner: m.is_learner,
                healthy: m.healthy,
                db_size: d.db_size.unwrap_or(0),
                db_size_in_use: d.db_size_in_use.unwrap_or(0),
            }
        })
        .collect()
}

/// An event a step calls for: (warning, reason, note).
pub type Note = (bool, &'static str, String);

/// Takes `step` and records it in `status` (after: every step is
/// idempotent, so one taken again after a crash is harmless).
pub async fn take(
    step: &Step,
    membership: &impl MembershipApi,
    status: &mut MaintenanceStatus,
    quota: i64,
    now: Timestamp,
) -> Result<Option<Note>, MembershipError> {
    Ok(match step {
        Step::None | Step::Wait(_) => None,
        Step::Start(reason) => {
            status.run = Some(MaintenanceRun { reason: *reason, started_at: Time(now), compacted: None, defragmented: Vec::new() });
            Some((false, "MaintenanceStarted", format!("{reason:?}: defragmenting every member, one at a time")))
        }
        Step::Compact(revision) => {
            membership.compact(*revision).await?;
            if let Some(run) = status.run.as_mut() {
                run.compacted = Some(*revision);
            }
            Some((false, "Compacted", format!("compacted to revision {revision}")))
        }
        Step::MoveLeader { from, to } => {
            membership.move_leader(*from, *to).await?;
            None
        }
        Step::Defragment { id, name } => {
            membership.defragment(*id).await?;
            if let Some(run) = status.run.as_mut() {
                run.defragmented.push(name.clone());
            }
            Some((false, "Defragmented", format!("member {name} defragmented")))
        }
        Step::Disarm | Step::Finish => {
            let disarmed = *step == Step::Disarm;
            if disarmed {
                membership.disarm_nospace().await?;
            }
            status.run = None;
            status.last_defragmentation = Some(Time(now));
            disarmed.then(|| (false, "AlarmDisarmed", "NOSPACE remediated: compacted, every member defragmented, alarm disarmed".to_owned()))
        }
        Step::DoesNotFit { in_use } => {
            status.run = None;
            status.data_exceeds_quota = Some(quota);
            Some((
                true,
                "DataExceedsQuota",
                format!(
                    "{in_use} bytes of live data after compaction and defragmentation do not fit the quota of {quota} bytes: raise spec.server.quotaBackendBytes or delete keys; the NOSPACE alarm stays"
                ),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Defragmentation;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    const MIB: i64 = 1 << 20;

    fn member(id: u64, leader: bool, size: i64, in_use: i64) -> MemberState {
        MemberState { id, name: format!("demo-{id}"), is_leader: leader, is_learner: false, healthy: true, db_size: size, db_size_in_use: in_use }
    }

    fn three() -> Vec<MemberState> {
        vec![member(0, true, 100 * MIB, 90 * MIB), member(1, false, 100 * MIB, 90 * MIB), member(2, false, 100 * MIB, 90 * MIB)]
    }

    fn run(reason: MaintenanceReason, compacted: Option<i64>, done: &[&str]) -> MaintenanceStatus {
        MaintenanceStatus {
            run: Some(MaintenanceRun {
                reason,
                started_at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                compacted,
                defragmented: done.iter().map(|s| (*s).to_owned()).collect(),
            }),
            ..MaintenanceStatus::default()
        }
    }

    fn input<'a>(members: &'a [MemberState], status: &'a MaintenanceStatus, spec: Option<&'a Maintenance>) -> Input<'a> {
        Input { spec, quota: 200 * MIB, members, nospace: false, revision: 77, status, membership_idle: true, schedule_due: false, requested: false }
    }

    fn spec(bytes: Option<&str>, percent: Option<u32>) -> Maintenance {
        Maintenance {
            compaction: None,
            defragmentation: Some(Defragmentation { schedule: None, min_free_bytes: bytes.map(|b| Quantity(b.into())), min_free_percent: percent }),
            nospace_remediation: true,
        }
    }

    #[test]
    fn a_run_starts_on_schedule_or_past_a_threshold_only_when_all_is_well() {
        let members = three();
        let idle = MaintenanceStatus::default();
        assert_eq!(next(&input(&members, &idle, None)), Step::None);
        let due = Input { schedule_due: true, ..input(&members, &idle, None) };
        assert_eq!(next(&due), Step::Start(MaintenanceReason::Schedule));
        // 10 MiB free: past 8Mi, not past 16Mi; 10% is under the 16 MiB floor.
        assert_eq!(next(&input(&members, &idle, Some(&spec(Some("8Mi"), None)))), Step::Start(MaintenanceReason::Threshold));
        assert_eq!(next(&input(&members, &idle, Some(&spec(Some("16Mi"), None)))), Step::None);
        assert_eq!(next(&input(&members, &idle, Some(&spec(None, Some(10))))), Step::None);
        let mut roomy = three();
        roomy[2].db_size_in_use = 50 * MIB;
        assert_eq!(next(&input(&roomy, &idle, Some(&spec(None, Some(40))))), Step::Start(MaintenanceReason::Threshold));
        // Not while a membership change runs or a voter is down.
        assert_eq!(next(&Input { membership_idle: false, ..due }), Step::None);
        let mut down = three();
        down[1].healthy = false;
        assert_eq!(next(&Input { schedule_due: true, ..input(&down, &idle, None) }), Step::None);
    }

    #[test]
    fn a_requested_run_starts_when_all_is_well_and_waits_otherwise() {
        let members = three();
        let idle = MaintenanceStatus::default();
        let asked = Input { requested: true, ..input(&members, &idle, None) };
        assert_eq!(next(&asked), Step::Start(MaintenanceReason::Requested));
        // Before a due schedule (one run serves both).
        assert_eq!(next(&Input { schedule_due: true, ..asked }), Step::Start(MaintenanceReason::Requested));
        // Not during a membership change, nor with a voter down: the
        // request stays pending (the token is recorded only on start).
        assert_eq!(next(&Input { membership_idle: false, ..asked }), Step::None);
        let mut down = three();
        down[0].healthy = false;
        assert_eq!(next(&Input { requested: true, ..input(&down, &idle, None) }), Step::None);
        // A NOSPACE alarm is remediated first.
        assert_eq!(next(&Input { nospace: true, ..asked }), Step::Start(MaintenanceReason::NoSpace));
        // During a run the request waits for the next one.
        let st = run(MaintenanceReason::Schedule, None, &[]);
        assert_eq!(next(&Input { requested: true, ..input(&members, &st, None) }), Step::Defragment { id: 1, name: "demo-1".into() });
    }

    #[test]
    fn followers_go_first_and_the_leader_last_after_moving_leadership() {
        let members = three();
        let st = run(MaintenanceReason::Schedule, None, &[]);
        assert_eq!(next(&input(&members, &st, None)), Step::Defragment { id: 1, name: "demo-1".into() });
        let st = run(MaintenanceReason::Schedule, None, &["demo-1"]);
        assert_eq!(next(&input(&members, &st, None)), Step::Defragment { id: 2, name: "demo-2".into() });
        let st = run(MaintenanceReason::Schedule, None, &["demo-1", "demo-2"]);
        assert_eq!(next(&input(&members, &st, None)), Step::MoveLeader { from: 0, to: 1 });
        // Once it is a follower, demo-0 goes.
        let mut moved = three();
        moved[0].is_leader = false;
        moved[1].is_leader = true;
        assert_eq!(next(&input(&moved, &st, None)), Step::Defragment { id: 0, name: "demo-0".into() });
        let st = run(MaintenanceReason::Schedule, None, &["demo-1", "demo-2", "demo-0"]);
        assert_eq!(next(&input(&moved, &st, None)), Step::Finish);
        // A single member is defragmented in place.
        let one = [member(0, true, MIB, MIB)];
        assert_eq!(next(&input(&one, &run(MaintenanceReason::Threshold, None, &[]), None)), Step::Defragment { id: 0, name: "demo-0".into() });
        // A voter down pauses the run.
        let mut down = three();
        down[2].healthy = false;
        assert!(matches!(next(&input(&down, &run(MaintenanceReason::Schedule, None, &[]), None)), Step::Wait(_)));
    }

    #[test]
    fn nospace_is_remediated_compact_defragment_disarm() {
        let members = three();
        let idle = MaintenanceStatus::default();
        let alarm = |st: &MaintenanceStatus| next(&Input { nospace: true, ..input(&members, st, None) });
        assert_eq!(alarm(&idle), Step::Start(MaintenanceReason::NoSpace));
        assert_eq!(alarm(&run(MaintenanceReason::NoSpace, None, &[])), Step::Compact(77));
        assert_eq!(alarm(&run(MaintenanceReason::NoSpace, Some(77), &[])), Step::Defragment { id: 1, name: "demo-1".into() });
        let all = run(MaintenanceReason::NoSpace, Some(77), &["demo-1", "demo-2", "demo-0"]);
        assert_eq!(alarm(&all), Step::Disarm);
        // Turned off: nothing.
        let off = Maintenance { compaction: None, defragmentation: None, nospace_remediation: false };
        assert_eq!(next(&Input { nospace: true, ..input(&members, &idle, Some(&off)) }), Step::None);
    }

    #[test]
    fn data_that_does_not_fit_is_said_once_and_not_remediated_again_until_the_quota_changes() {
        let full = vec![member(0, true, 200 * MIB, 195 * MIB)];
        let all = run(MaintenanceReason::NoSpace, Some(77), &["demo-0"]);
        assert_eq!(next(&Input { nospace: true, ..input(&full, &all, None) }), Step::DoesNotFit { in_use: 195 * MIB });
        let said = MaintenanceStatus { data_exceeds_quota: Some(200 * MIB), ..MaintenanceStatus::default() };
        assert_eq!(next(&Input { nospace: true, ..input(&full, &said, None) }), Step::None);
        let raised = Input { nospace: true, quota: 400 * MIB, ..input(&full, &said, None) };
        assert_eq!(next(&raised), Step::Start(MaintenanceReason::NoSpace));
    }
}
