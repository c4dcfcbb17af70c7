//! The reconcilers of `KvBackup` and `KvBackupSchedule`: read, ask the pure
//! parts ([`super::decide`], [`super::schedule`], [`super::retention`]) what
//! to do, do it, write status, publish events. Thin, so that the
//! mocked-API scenarios cover it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::crd::{BackupPhase, KvBackup, KvBackupSchedule, KvBackupScheduleStatus, KvBackupSpec, KvBackupStatus};
use super::decide::{self, Cleanup, Observed, Step};
use super::job::{self, backup_job, job_name, object_key, object_url};
use super::retention::{self, Owned};
use super::schedule::{self, Schedule};
use crate::controller::{Context, Error, scoped};
use crate::crd::{KvCluster, ReclaimPolicy};
use crate::members::MembershipApi;
use crate::metrics::ClusterLabels;
use crate::resources::MANAGER;
use crate::watch::{self, OwnsEach};

/// The label on the backups a schedule made, naming it.
pub const SCHEDULE_LABEL: &str = "raftkv.io/schedule";
/// How often a running backup's Job is looked at (its changes also wake it).
const WHILE_RUNNING: Duration = Duration::from_secs(10);
/// A schedule is looked at at least this often, to refresh its status.
const SCHEDULE_IDLE: Duration = Duration::from_secs(300);

fn now() -> Timestamp {
    Timestamp::now()
}

async fn event<M>(ctx: &Context<M>, obj: &impl Resource<DynamicType = ()>, type_: EventType, reason: &str, note: String) {
    crate::controller::publish(ctx, obj, type_, reason, reason, note).await;
}

/// The pods of a Job (the Job controller labels them with its name).
async fn job_pods(client: &kube::Client, ns: &str, job: Option<&Job>) -> Result<Vec<Pod>, Error> {
    let Some(j) = job else { return Ok(Vec::new()) };
    let selector = format!("job-name={}", j.name_any());
    Ok(Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels(&selector)).await?.items)
}

/// The first Secret or key the destination names that is missing.
async fn missing_secret(client: &kube::Client, ns: &str, backup: &KvBackup, cluster: &KvCluster) -> Result<Option<String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    // The cluster's TLS material the Job mounts (job::client_tls).
    for (_, name, keys) in job::tls_secret_keys(cluster) {
        match secrets.get_opt(&name).await? {
            None => return Ok(Some(format!("Secret {name:?} (the cluster's TLS) not found"))),
            Some(s) => {
                if let Some(key) = keys.iter().find(|k| !s.data.as_ref().is_some_and(|d| d.contains_key(**k))) {
                    return Ok(Some(format!("Secret {name:?} has no key {key:?}")));
                }
            }
        }
    }
    for key in job::secret_keys(&backup.spec.destination) {
        match secrets.get_opt(&key.name).await? {
            None => return Ok(Some(format!("Secret {:?} (the destination's credentials) not found", key.name))),
            Some(s) => {
                let has = s.data.as_ref().is_some_and(|d| d.contains_key(&key.key))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(&key.key));
                if !has {
                    return Ok(Some(format!("Secret {:?} has no key {:?}", key.name, key.key)));
                }
            }
        }
    }
    Ok(None)
}

/// Status through server-side apply: fields no longer set go away.
async fn apply_status<K>(api: &Api<K>, name: &str, kind: &str, status: &impl serde::Serialize) -> Result<(), Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let body = json!({ "apiVersion": "raftkv.io/v1alpha1", "kind": kind, "status": status });
    api.patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

async fn patch_backup_status(api: &Api<KvBackup>, name: &str, status: &KvBackupStatus) -> Result<(), Error> {
    apply_status(api, name, "KvBackup", status).await
}

/// Held on a backup whose stored snapshot goes with it (`reclaimPolicy:
/// Delete`) until the snapshot is deleted.
pub const SNAPSHOT_FINALIZER: &str = "raftkv.io/snapshot";

fn finalizers(backup: &KvBackup) -> &[String] {
    backup.metadata.finalizers.as_deref().unwrap_or_default()
}

/// Adds the finalizer as kube-runtime's helper does (a JSON patch that
/// fails if the list changed meanwhile).
async fn add_finalizer(api: &Api<KvBackup>, backup: &KvBackup) -> Result<(), Error> {
    use json_patch::{AddOperation, PatchOperation, TestOperation, jsonptr::PointerBuf};
    let ops = match &backup.metadata.finalizers {
        None => vec![
            PatchOperation::Test(TestOperation { path: PointerBuf::from_tokens(["metadata", "finalizers"]), value: serde_json::Value::Null }),
            PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(["metadata", "finalizers"]), value: json!([SNAPSHOT_FINALIZER]) }),
        ],
        Some(_) => vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "finalizers", "-"]),
            value: json!(SNAPSHOT_FINALIZER),
        })],
    };
    api.patch::<KvBackup>(&backup.name_any(), &PatchParams::default(), &Patch::Json(json_patch::Patch(ops))).await?;
    Ok(())
}

async fn remove_finalizer(api: &Api<KvBackup>, backup: &KvBackup) -> Result<(), Error> {
    use json_patch::{PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf};
    let Some(i) = finalizers(backup).iter().position(|f| f == SNAPSHOT_FINALIZER) else { return Ok(()) };
    let index = i.to_string();
    let path = PointerBuf::from_tokens(["metadata", "finalizers", index.as_str()]);
    let ops = vec![
        PatchOperation::Test(TestOperation { path: path.clone(), value: json!(SNAPSHOT_FINALIZER) }),
        PatchOperation::Remove(RemoveOperation { path }),
    ];
    api.patch::<KvBackup>(&backup.name_any(), &PatchParams::default(), &Patch::Json(json_patch::Patch(ops))).await?;
    Ok(())
}

/// A backup being deleted: its stored snapshot goes first, under `Delete`.
async fn clean_up<M>(backup: &KvBackup, ctx: &Context<M>, jobs: &Api<Job>, backup_job: Option<&Job>) -> Result<Action, Error> {
    let ns = backup.namespace().unwrap_or_else(|| "default".to_owned());
    let name = backup.name_any();
    let api: Api<KvBackup> = Api::namespaced(ctx.client.clone(), &ns);
    let delete_job = jobs.get_opt(&job::delete_job_name(&name)).await?;
    let pods = job_pods(&ctx.client, &ns, delete_job.as_ref()).await?;
    match decide::cleanup(backup, backup_job, delete_job.as_ref(), &pods) {
        Cleanup::Wait => Ok(Action::requeue(WHILE_RUNNING)),
        Cleanup::StopBackupJob => {
            if let Some(j) = backup_job {
                match jobs.delete(&j.name_any(), &DeleteParams::foreground()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Action::requeue(WHILE_RUNNING))
        }
        Cleanup::StartDeleteJob { url, image } => {
            match jobs.create(&PostParams::default(), &job::delete_job(backup, &image, &url)).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(Action::requeue(WHILE_RUNNING))
        }
        Cleanup::Release(note) => {
            if let Some((warning, note)) = note {
                let (type_, reason) = if warning { (EventType::Warning, "SnapshotNotDeleted") } else { (EventType::Normal, "SnapshotDeleted") };
                event(ctx, backup, type_, reason, note).await;
            }
            remove_finalizer(&api, backup).await?;
            Ok(Action::await_change())
        }
    }
}

/// One reconciliation of a `KvBackup`.
pub async fn reconcile_backup<M: MembershipApi + 'static>(backup: Arc<KvBackup>, ctx: Arc<Context<M>>) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = backup.namespace().unwrap_or_else(|| "default".to_owned());
    let name = backup.name_any();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let job = jobs.get_opt(&job_name(&name)).await?;
    let held = finalizers(&backup).iter().any(|f| f == SNAPSHOT_FINALIZER);
    if backup.metadata.deletion_timestamp.is_some() {
        return if held { clean_up(&backup, &ctx, &jobs, job.as_ref()).await } else { Ok(Action::await_change()) };
    }
    let phase = backup.status.as_ref().map(|s| s.phase).unwrap_or_default();
    let terminal = matches!(phase, BackupPhase::Completed | BackupPhase::Failed);
    let cluster = if terminal || job.is_some() {
        None
    } else {
        Api::<KvCluster>::namespaced(client.clone(), &ns).get_opt(&backup.spec.cluster).await?
    };
    let missing = match &cluster {
        Some(kvc) => missing_secret(client, &ns, &backup, kvc).await?,
        None => None,
    };
    let pods = job_pods(client, &ns, job.as_ref()).await?;
    let step = decide::next(&Observed { backup: &backup, cluster: cluster.as_ref(), missing_secret: missing, job: job.as_ref(), pods: &pods });
    let api: Api<KvBackup> = Api::namespaced(client.clone(), &ns);
    let labels = ClusterLabels { namespace: ns.clone(), name: backup.spec.cluster.clone() };
    let mut status = backup.status.clone().unwrap_or_default();
    match step {
        Step::Done => Ok(Action::await_change()),
        Step::Wait => Ok(Action::requeue(WHILE_RUNNING)),
        Step::Fail(error) => {
            tracing::warn!(namespace = ns, name, %error, "backup failed");
            status.phase = BackupPhase::Failed;
            status.error = Some(error.clone());
            status.completed_at = Some(Time(now()));
            patch_backup_status(&api, &name, &status).await?;
            ctx.metrics.backup_failed(&labels);
            event(&ctx, backup.as_ref(), EventType::Warning, "BackupFailed", error).await;
            Ok(Action::await_change())
        }
        Step::StartJob { member, url } => {
            let Some(kvc) = &cluster else { return Ok(Action::requeue(WHILE_RUNNING)) };
            let Some(job) = backup_job(&backup, kvc, &url) else {
                return Ok(Action::await_change());
            };
            // The finalizer before anything can be stored.
            if backup.spec.reclaim_policy == ReclaimPolicy::Delete && !held {
                add_finalizer(&api, &backup).await?;
            }
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            status.phase = BackupPhase::Running;
            status.member = Some(member.clone());
            status.job = job.metadata.name.clone();
            status.location = object_url(&backup.spec.destination, |p| object_key(p, &ns, &backup.spec.cluster, &name));
            status.started_at = Some(Time(now()));
            status.image = Some(kvc.spec.image());
            patch_backup_status(&api, &name, &status).await?;
            event(&ctx, backup.as_ref(), EventType::Normal, "BackupStarted", format!("snapshot of {member} to {}", status.location.clone().unwrap_or_default())).await;
            Ok(Action::requeue(WHILE_RUNNING))
        }
        Step::Complete(report) => {
            let finished = now();
            status.phase = BackupPhase::Completed;
            status.location = Some(report.location.clone());
            status.size = Some(report.size);
            status.revision = Some(report.revision);
            status.sha256 = Some(report.sha256.clone());
            status.completed_at = Some(Time(finished));
            status.error = None;
            patch_backup_status(&api, &name, &status).await?;
            let started = status.started_at.as_ref().map_or(finished, |t| t.0);
            let took = finished.duration_since(started).unsigned_abs();
            ctx.metrics.backup_completed(&labels, started.as_second(), took);
            event(
                &ctx,
                backup.as_ref(),
                EventType::Normal,
                "BackupCompleted",
                format!("{} bytes at revision {} stored at {}", report.size, report.revision, report.location),
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

/// The name of the backup a schedule takes for `at`.
pub fn scheduled_backup_name(schedule: &str, at: Timestamp) -> String {
    format!("{schedule}-{}", at.strftime("%Y%m%d%H%M%S"))
}

fn owned_backup(s: &KvBackupSchedule, name: String) -> KvBackup {
    let mut b = KvBackup::new(&name, KvBackupSpec { cluster: s.spec.cluster.clone(), destination: s.spec.destination.clone(), reclaim_policy: s.spec.reclaim_policy });
    b.metadata = ObjectMeta {
        name: Some(name),
        namespace: s.namespace(),
        labels: Some(BTreeMap::from([(SCHEDULE_LABEL.to_owned(), s.name_any())])),
        owner_references: s.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    b
}

fn ready(status: bool, reason: &str, message: String, generation: Option<i64>) -> Condition {
    Condition {
        type_: "Ready".to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: Time(now()),
        observed_generation: generation,
    }
}

/// Keeps the transition time of a condition that did not change.
fn merge_condition(previous: &[Condition], mut next: Condition) -> Vec<Condition> {
    if let Some(p) = previous.iter().find(|c| c.type_ == next.type_)
        && p.status == next.status
        && p.reason == next.reason
    {
        next.last_transition_time = p.last_transition_time.clone();
    }
    vec![next]
}

/// One reconciliation of a `KvBackupSchedule`.
pub async fn reconcile_schedule<M: MembershipApi + 'static>(s: Arc<KvBackupSchedule>, ctx: Arc<Context<M>>) -> Result<Action, Error> {
    let client = &ctx.client;
    let ns = s.namespace().unwrap_or_else(|| "default".to_owned());
    let name = s.name_any();
    let api: Api<KvBackupSchedule> = Api::namespaced(client.clone(), &ns);
    let previous = s.status.clone().unwrap_or_default();
    let generation = s.metadata.generation;
    let mut status = KvBackupScheduleStatus { observed_generation: generation, ..previous.clone() };

    let parsed = Schedule::parse(&s.spec.schedule);
    let age_error = s.spec.retention.as_ref().and_then(|r| r.max_age.as_deref()).and_then(|a| retention::parse_age(a).err());
    let invalid = match (&parsed, age_error) {
        (Err(e), _) => Some(e.clone()),
        (Ok(_), Some(e)) => Some(e),
        _ => None,
    };
    if let Some(error) = invalid {
        status.next_schedule_time = None;
        status.conditions = merge_condition(&previous.conditions, ready(false, "InvalidSpec", error.clone(), generation));
        if status != previous {
            apply_status(&api, &name, "KvBackupSchedule", &status).await?;
            event(&ctx, s.as_ref(), EventType::Warning, "InvalidSpec", error).await;
        }
        return Ok(Action::await_change());
    }
    let Ok(parsed) = parsed else { return Ok(Action::await_change()) };

    let backups: Api<KvBackup> = Api::namespaced(client.clone(), &ns);
    let listed = backups.list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}"))).await?.items;
    let owned: Vec<Owned> = listed
        .iter()
        .filter(|b| b.metadata.deletion_timestamp.is_none())
        .map(|b| Owned {
            name: b.name_any(),
            started: b.metadata.creation_timestamp.as_ref().map_or_else(now, |t| t.0),
            phase: b.status.as_ref().map(|st| st.phase).unwrap_or_default(),
        })
        .collect();
    let running = owned.iter().any(|b| matches!(b.phase, BackupPhase::Pending | BackupPhase::Running));
    let t = now();
    let decision = schedule::decide(
        &parsed,
        schedule::State {
            suspend: s.spec.suspend,
            immediate: s.spec.immediate,
            created: s.metadata.creation_timestamp.as_ref().map_or(t, |c| c.0),
            last_scheduled: previous.last_schedule_time.as_ref().map(|c| c.0),
            running,
        },
        t,
    );
    let mut names: Vec<(Timestamp, String)> = owned.iter().map(|b| (b.started, b.name.clone())).collect();
    if let Some(at) = decision.start {
        let backup_name = scheduled_backup_name(&name, at);
        // The time is recorded first: a restart between the two never takes
        // the same run twice (the name would collide anyway).
        status.last_schedule_time = Some(Time(at));
        apply_status(&api, &name, "KvBackupSchedule", &status).await?;
        match backups.create(&PostParams::default(), &owned_backup(&s, backup_name.clone())).await {
            Ok(_) => event(&ctx, s.as_ref(), EventType::Normal, "BackupScheduled", format!("backup {backup_name} of {}", s.spec.cluster)).await,
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        names.push((t, backup_name));
    }
    if let Some(retention) = &s.spec.retention {
        let doomed = retention::prune(&owned, retention, t).unwrap_or_default();
        for victim in &doomed {
            match backups.delete(victim, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            event(&ctx, s.as_ref(), EventType::Normal, "BackupPruned", format!("backup {victim} removed by the retention")).await;
        }
        names.retain(|(_, n)| !doomed.contains(n));
    }
    names.sort();
    status.backups = names.into_iter().map(|(_, n)| n).collect();
    status.last_successful_time = owned.iter().filter(|b| b.phase == BackupPhase::Completed).map(|b| b.started).max().map(Time).or(previous.last_successful_time.clone());
    status.next_schedule_time = decision.next.map(Time);
    let message = if s.spec.suspend { "suspended".to_owned() } else { format!("next backup at {}", decision.next.map(|n| n.to_string()).unwrap_or_default()) };
    status.conditions = merge_condition(&previous.conditions, ready(true, if s.spec.suspend { "Suspended" } else { "Scheduled" }, message, generation));
    if status != previous {
        apply_status(&api, &name, "KvBackupSchedule", &status).await?;
    }
    let wait = decision
        .next
        .map(|n| n.duration_since(now()).unsigned_abs().min(SCHEDULE_IDLE))
        .unwrap_or(SCHEDULE_IDLE)
        .max(Duration::from_millis(200));
    Ok(Action::requeue(wait))
}

fn labels_of_backup(b: &KvBackup) -> ClusterLabels {
    ClusterLabels { namespace: b.namespace().unwrap_or_default(), name: b.spec.cluster.clone() }
}

/// Runs both controllers over `namespaces` (every namespace when empty)
/// until `shutdown` fires.
pub async fn run<M: MembershipApi + 'static>(ctx: Arc<Context<M>>, namespaces: Vec<String>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    let mut tasks = Vec::new();
    for ns in scopes {
        let ns = ns.as_deref();
        let (mut stop1, mut stop2) = (shutdown.clone(), shutdown.clone());
        let backups = watch::controller(scoped::<KvBackup>(&client, ns))
            .owning(scoped::<Job>(&client, ns))
            .graceful_shutdown_on(async move {
                let _ = stop1.wait_for(|stop| *stop).await;
            })
            .run(reconcile_backup, backup_error_policy, ctx.clone())
            .for_each(|outcome| async move {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "reconcile backup");
                }
            });
        let schedules = watch::controller(scoped::<KvBackupSchedule>(&client, ns))
            .owning(scoped::<KvBackup>(&client, ns))
            .graceful_shutdown_on(async move {
                let _ = stop2.wait_for(|stop| *stop).await;
            })
            .run(reconcile_schedule, schedule_error_policy, ctx.clone())
            .for_each(|outcome| async move {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "reconcile schedule");
                }
            });
        tasks.push(futures::future::join(backups, schedules));
    }
    futures::future::join_all(tasks).await;
}

fn backup_error_policy<M>(b: Arc<KvBackup>, error: &Error, ctx: Arc<Context<M>>) -> Action {
    tracing::warn!(namespace = %b.namespace().unwrap_or_default(), name = %b.name_any(), %error, "backup reconcile failed");
    ctx.metrics.failed(&labels_of_backup(&b), error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

fn schedule_error_policy<M>(s: Arc<KvBackupSchedule>, error: &Error, ctx: Arc<Context<M>>) -> Action {
    tracing::warn!(namespace = %s.namespace().unwrap_or_default(), name = %s.name_any(), %error, "schedule reconcile failed");
    ctx.metrics.failed(&ClusterLabels { namespace: s.namespace().unwrap_or_default(), name: s.spec.cluster.clone() }, error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_backups_are_named_after_their_time() {
        let at: Timestamp = "2026-12-06T03:00:00Z".parse().expect("t");
        assert_eq!(scheduled_backup_name("nightly", at), "nightly-20261206030000");
    }
}
