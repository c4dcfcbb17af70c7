//! The next step of one `KvBackup`, pure: what the controller read (the
//! backup, its cluster, whether the Secrets it names hold their keys, its
//! Job and the Job's pods) in, one step out. The controller only carries
//! steps out, so every path, failures included, is a unit test here.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use super::crd::{BackupPhase, KvBackup};
use super::job::{Report, read_report};
use crate::crd::{KvCluster, ReclaimPolicy};
use crate::resources::Names;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Finished (Completed or Failed): nothing to do.
    Done,
    /// Fail the backup with this error.
    Fail(String),
    /// Start the Job against this member (name, client URL).
    StartJob { member: String, url: String },
    /// The Job runs: look again later.
    Wait,
    /// The Job succeeded with this report.
    Complete(Report),
}

/// What the controller read for one backup.
pub struct Observed<'a> {
    pub backup: &'a KvBackup,
    /// The cluster named by `spec.cluster`, if it exists.
    pub cluster: Option<&'a KvCluster>,
    /// A Secret or key the destination names that is not there.
    pub missing_secret: Option<String>,
    pub job: Option<&'a Job>,
    /// The Job's pods.
    pub pods: &'a [Pod],
}

pub fn next(o: &Observed) -> Step {
    let phase = o.backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if matches!(phase, BackupPhase::Completed | BackupPhase::Failed) {
        return Step::Done;
    }
    if let Some(job) = o.job {
        return job_outcome(job, o.pods);
    }
    if phase == BackupPhase::Running {
        // The Job went (deleted by hand, or its TTL) before its outcome was read.
        return Step::Fail("the backup Job is gone and its outcome unknown".to_owned());
    }
    let Some(kvc) = o.cluster else {
        return Step::Fail(format!("KvCluster {:?} not found in this namespace", o.backup.spec.cluster));
    };
    if let Some(missing) = &o.missing_secret {
        return Step::Fail(missing.clone());
    }
    if super::job::object_url(&o.backup.spec.destination, |_| String::new()).is_none() {
        // The schema refuses it; an API server without CEL does not.
        return Step::Fail("the destination names no store: one of s3, gcs, azure and volume".to_owned());
    }
    match source_member(kvc) {
        Some((member, url)) => Step::StartJob { member, url },
        None => Step::Fail(format!("KvCluster {:?} has no healthy member to take a snapshot from", o.backup.spec.cluster)),
    }
}

/// A healthy voting follower when there is one (the snapshot then costs
/// the leader nothing), else the healthy leader.
pub fn source_member(kvc: &KvCluster) -> Option<(String, String)> {
    let names = Names::of(kvc);
    let members = &kvc.status.as_ref()?.members;
    let healthy = || members.iter().filter(|m| m.healthy && !m.is_learner);
    let chosen = healthy().find(|m| !m.is_leader).or_else(|| healthy().next())?;
    let ordinal: u32 = chosen.name.strip_prefix(&format!("{}-", names.cluster))?.parse().ok()?;
    Some((chosen.name.clone(), names.client_url(ordinal)))
}

/// What deleting a backup takes, once its deletion started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Done: remove the finalizer; `Some((warning, note))` is an event.
    Release(Option<(bool, String)>),
    /// The backup Job still runs: stop it first (its upload, cut short,
    /// leaves no object), then delete what may be stored.
    StopBackupJob,
    /// Delete the stored snapshot at this URL with this image.
    StartDeleteJob { url: String, image: String },
    Wait,
}

/// The next step of deleting `backup`: under `Retain`, or when nothing was
/// ever stored, the finalizer just goes; otherwise a Job runs `raftkvctl
/// snapshot delete` (idempotent, so whatever the backup's phase). A store
/// that refuses the delete is told in a warning, and the backup still goes
/// (a snapshot left behind is better than a backup that cannot be deleted).
pub fn cleanup(backup: &KvBackup, backup_job: Option<&Job>, delete_job: Option<&Job>, delete_pods: &[Pod]) -> Cleanup {
    if backup.spec.reclaim_policy != ReclaimPolicy::Delete {
        return Cleanup::Release(None);
    }
    let status = backup.status.clone().unwrap_or_default();
    let (Some(url), Some(image)) = (status.location, status.image) else {
        return Cleanup::Release(None);
    };
    if backup_job.is_some_and(|j| job_outcome(j, &[]) == Step::Wait) {
        return Cleanup::StopBackupJob;
    }
    let Some(job) = delete_job else {
        return Cleanup::StartDeleteJob { url, image };
    };
    match job_outcome(job, delete_pods) {
        Step::Wait => Cleanup::Wait,
        Step::Fail(error) if !is_succeeded(job) => Cleanup::Release(Some((true, format!("the snapshot at {url} was not deleted: {error}")))),
        _ => Cleanup::Release(Some((false, format!("deleted the snapshot at {url}")))),
    }
}

fn is_succeeded(job: &Job) -> bool {
    let status = job.status.as_ref();
    status.and_then(|s| s.succeeded).unwrap_or(0) > 0
        || status.and_then(|s| s.conditions.as_deref()).unwrap_or_default().iter().any(|c| c.type_ == "Complete" && c.status == "True")
}

fn terminated_message(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let terminated = statuses.iter().find(|c| c.name == "backup")?.state.as_ref()?.terminated.as_ref()?;
    Some(terminated.message.clone().unwrap_or_default())
}

fn job_outcome(job: &Job, pods: &[Pod]) -> Step {
    let status = job.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let is = |kind: &str| conditions.iter().any(|c| c.type_ == kind && c.status == "True");
    let succeeded = status.and_then(|s| s.succeeded).unwrap_or(0) > 0 || is("Complete");
    let failed = is("Failed");
    if !succeeded && !failed {
        return Step::Wait;
    }
    // The newest pod that ended carries the outcome.
    let mut ended: Vec<(&Pod, String)> = pods.iter().filter_map(|p| terminated_message(p).map(|m| (p, m))).collect();
    ended.sort_by_key(|(p, _)| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let last = ended.last().map(|(_, m)| m.as_str());
    match (succeeded, last) {
        (true, Some(message)) => match read_report(message) {
            Ok(report) => Step::Complete(report),
            Err(e) => Step::Fail(format!("the backup Job succeeded without a report: {e}")),
        },
        (true, None) => Step::Fail("the backup Job succeeded but its pod is gone, with its report".to_owned()),
        (false, Some(message)) => Step::Fail(read_report(message).err().unwrap_or_else(|| "the backup Job failed".to_owned())),
        (false, None) => {
            let reason = conditions.iter().find(|c| c.type_ == "Failed").and_then(|c| c.message.clone());
            Step::Fail(reason.unwrap_or_else(|| "the backup Job failed".to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::crd::{Destination, KvBackupSpec, KvBackupStatus, S3};
    use crate::crd::{KvClusterStatus, MemberStatus};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStatus, PodStatus};

    fn backup(phase: Option<BackupPhase>) -> KvBackup {
        let dest = Destination { s3: Some(S3 { bucket: "b".into(), ..S3::default() }), ..Destination::default() };
        let mut b = KvBackup::new("b1", KvBackupSpec { cluster: "demo".into(), destination: dest, reclaim_policy: ReclaimPolicy::Delete });
        b.metadata.namespace = Some("prod".into());
        b.status = phase.map(|phase| KvBackupStatus { phase, ..KvBackupStatus::default() });
        b
    }

    fn member(ordinal: u32, leader: bool, healthy: bool, learner: bool) -> MemberStatus {
        MemberStatus {
            name: format!("demo-{ordinal}"),
            id: format!("{ordinal:x}"),
            is_leader: leader,
            is_learner: learner,
            healthy,
            ..MemberStatus::default()
        }
    }

    fn cluster(members: Vec<MemberStatus>) -> KvCluster {
        let mut kvc = crate::resources::tests::kvcluster("demo", 3);
        kvc.metadata.namespace = Some("prod".into());
        kvc.status = Some(KvClusterStatus { members, ..KvClusterStatus::default() });
        kvc
    }

    fn observed<'a>(b: &'a KvBackup, c: Option<&'a KvCluster>, job: Option<&'a Job>, pods: &'a [Pod]) -> Observed<'a> {
        Observed { backup: b, cluster: c, missing_secret: None, job, pods }
    }

    fn job(condition: Option<&str>) -> Job {
        Job {
            status: Some(JobStatus {
                succeeded: (condition == Some("Complete")).then_some(1),
                conditions: condition.map(|c| {
                    vec![JobCondition {
                        type_: c.into(),
                        status: "True".into(),
                        message: Some("Job has reached the specified backoff limit".into()),
                        ..JobCondition::default()
                    }]
                }),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    fn pod(second: i64, message: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::from_second(second).expect("t")));
        p.status = Some(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "backup".into(),
                state: Some(ContainerState {
                    terminated: Some(ContainerStateTerminated { message: Some(message.into()), ..ContainerStateTerminated::default() }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            }]),
            ..PodStatus::default()
        });
        p
    }

    #[test]
    fn a_follower_is_chosen_then_the_leader_never_a_learner_or_an_unhealthy_member() {
        let url = |o: u32| format!("http://demo-{o}.demo-peer.prod.svc:2379");
        let c = cluster(vec![member(0, true, true, false), member(1, false, false, false), member(2, false, true, false)]);
        assert_eq!(source_member(&c), Some(("demo-2".into(), url(2))));
        let c = cluster(vec![member(0, true, true, false), member(1, false, false, false), member(2, false, true, true)]);
        assert_eq!(source_member(&c), Some(("demo-0".into(), url(0))));
        let c = cluster(vec![member(0, true, false, false), member(1, false, false, false)]);
        assert_eq!(source_member(&c), None);
    }

    #[test]
    fn a_new_backup_starts_its_job_or_fails_saying_why() {
        let b = backup(None);
        let healthy = cluster(vec![member(0, true, true, false), member(1, false, true, false)]);
        assert_eq!(
            next(&observed(&b, Some(&healthy), None, &[])),
            Step::StartJob { member: "demo-1".into(), url: "http://demo-1.demo-peer.prod.svc:2379".into() }
        );
        assert_eq!(next(&observed(&b, None, None, &[])), Step::Fail("KvCluster \"demo\" not found in this namespace".into()));
        let down = cluster(vec![member(0, false, false, false)]);
        assert_eq!(
            next(&observed(&b, Some(&down), None, &[])),
            Step::Fail("KvCluster \"demo\" has no healthy member to take a snapshot from".into())
        );
        let mut o = observed(&b, Some(&healthy), None, &[]);
        o.missing_secret = Some("Secret \"s3\" not found".into());
        assert_eq!(next(&o), Step::Fail("Secret \"s3\" not found".into()));
        let mut nowhere = backup(None);
        nowhere.spec.destination = Destination::default();
        assert_eq!(
            next(&observed(&nowhere, Some(&healthy), None, &[])),
            Step::Fail("the destination names no store: one of s3, gcs, azure and volume".into())
        );
    }

    #[test]
    fn the_jobs_outcome_completes_or_fails_the_backup() {
        let b = backup(Some(BackupPhase::Running));
        let c = cluster(vec![member(0, true, true, false)]);
        let running = job(None);
        assert_eq!(next(&observed(&b, Some(&c), Some(&running), &[])), Step::Wait);

        let done = job(Some("Complete"));
        let report = r#"{"location":"s3://b/k","size":9,"sha256":"ab","revision":7,"totalKey":3,"hash":1}"#;
        let pods = [pod(1, "Error: a first attempt failed"), pod(2, report)];
        match next(&observed(&b, Some(&c), Some(&done), &pods)) {
            Step::Complete(r) => assert_eq!((r.location.as_str(), r.size, r.revision), ("s3://b/k", 9, 7)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            next(&observed(&b, Some(&c), Some(&done), &[])),
            Step::Fail("the backup Job succeeded but its pod is gone, with its report".into())
        );

        let failed = job(Some("Failed"));
        let pods = [pod(1, "Error: first"), pod(3, "progress\nError: s3://b/k: NoSuchBucket")];
        assert_eq!(next(&observed(&b, Some(&c), Some(&failed), &pods)), Step::Fail("s3://b/k: NoSuchBucket".into()));
        assert_eq!(next(&observed(&b, Some(&c), Some(&failed), &[])), Step::Fail("Job has reached the specified backoff limit".into()));
    }

    #[test]
    fn deleting_a_backup_deletes_its_snapshot_under_delete_and_nothing_under_retain() {
        let mut b = backup(Some(BackupPhase::Completed));
        if let Some(st) = b.status.as_mut() {
            st.location = Some("s3://b/k".into());
            st.image = Some("raftkv/raftkv:0.1.0".into());
        }
        let start = Cleanup::StartDeleteJob { url: "s3://b/k".into(), image: "raftkv/raftkv:0.1.0".into() };
        assert_eq!(cleanup(&b, None, None, &[]), start);
        // The backup Job running still: stopped first.
        assert_eq!(cleanup(&b, Some(&job(None)), None, &[]), Cleanup::StopBackupJob);
        assert_eq!(cleanup(&b, Some(&job(Some("Complete"))), None, &[]), start);
        assert_eq!(cleanup(&b, None, Some(&job(None)), &[]), Cleanup::Wait);
        assert_eq!(cleanup(&b, None, Some(&job(Some("Complete"))), &[]), Cleanup::Release(Some((false, "deleted the snapshot at s3://b/k".into()))));
        let refused = [pod(1, "Error: s3://b/k: AccessDenied")];
        assert_eq!(
            cleanup(&b, None, Some(&job(Some("Failed"))), &refused),
            Cleanup::Release(Some((true, "the snapshot at s3://b/k was not deleted: s3://b/k: AccessDenied".into())))
        );
        // Nothing stored (never started), or kept by policy.
        assert_eq!(cleanup(&backup(None), None, None, &[]), Cleanup::Release(None));
        b.spec.reclaim_policy = ReclaimPolicy::Retain;
        assert_eq!(cleanup(&b, None, None, &[]), Cleanup::Release(None));
    }

    #[test]
    fn finished_backups_stay_and_a_lost_job_fails_a_running_one() {
        let c = cluster(vec![member(0, true, true, false)]);
        for phase in [BackupPhase::Completed, BackupPhase::Failed] {
            assert_eq!(next(&observed(&backup(Some(phase)), Some(&c), None, &[])), Step::Done);
        }
        assert_eq!(
            next(&observed(&backup(Some(BackupPhase::Running)), Some(&c), None, &[])),
            Step::Fail("the backup Job is gone and its outcome unknown".into())
        );
    }
}
