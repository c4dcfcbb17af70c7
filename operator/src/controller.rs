//! The reconciler: for each `KvCluster`, read the owned objects and the
//! cluster, apply the owned objects (server-side apply), ask the planner for
//! the one next step, record the operation in status, take the step, write
//! status, publish events on transitions. Everything it decides is in
//! [`crate::planner`] and [`crate::status`]; this file is the thin layer
//! that talks to the API server, kept thin so that the mocked-API scenarios
//! cover it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::crd::{KvCluster, KvClusterStatus, ReclaimPolicy};
use crate::members::{
    ClientTls, MembershipApi, StepError, WorkloadError, Workloads, execute, initial_cluster,
};
use crate::metrics::{ClusterLabels, Metrics};
use crate::planner::{Desired, Next, Observed, plan};
use crate::resources::{self, Bootstrap, InitialClusterState, MANAGER, Names};
use crate::status::{self, StatusInput};
use crate::watch::{self, OwnsEach};

pub const FINALIZER: &str = "raftkv.io/cleanup";

/// Requeue after a step, to take the next one.
const AFTER_STEP: Duration = Duration::from_secs(1);
/// Requeue while waiting for the cluster (a pod starting, a learner catching up).
const WHILE_WAITING: Duration = Duration::from_secs(5);
/// Requeue of a settled cluster, to notice failures no Kubernetes event tells of.
const WHEN_IDLE: Duration = Duration::from_secs(60);
/// Requeue after a failed reconciliation.
const AFTER_ERROR: Duration = Duration::from_secs(10);

/// What every reconciliation shares. `connect` reaches a cluster's members
/// through the given client URLs (with TLS, when they serve it).
pub struct Context<M> {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub connect: Box<dyn Fn(Vec<String>, Option<ClientTls>) -> M + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("membership step: {0}")]
    Step(#[from] StepError),
    #[error("cannot encode an object: {0}")]
    Encode(#[from] serde_json::Error),
    /// A spec the CRD refuses, met under an API server that did not
    /// enforce the CRD's rules: nothing is created for it.
    #[error("{0}")]
    Invalid(&'static str),
    /// TLS the cluster needs is not there: a Secret or a key in it, or
    /// cert-manager.
    #[error("{0}")]
    Tls(String),
}

impl Error {
    /// The `error` label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.metric_label(),
                _ => "finalizer",
            },
            Error::Step(_) => "step",
            Error::Encode(_) => "encode",
            Error::Invalid(_) => "invalid",
            Error::Tls(_) => "tls",
        }
    }
}

fn labels(kvc: &KvCluster) -> ClusterLabels {
    ClusterLabels {
        namespace: kvc.namespace().unwrap_or_default(),
        name: kvc.name_any(),
    }
}

/// One reconciliation, through the finalizer.
pub async fn reconcile<M: MembershipApi + 'static>(
    kvc: Arc<KvCluster>,
    ctx: Arc<Context<M>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let cluster = labels(&kvc);
    let api: Api<KvCluster> = Api::namespaced(ctx.client.clone(), &cluster.namespace);
    let step_ctx = ctx.clone();
    let outcome = finalizer(&api, FINALIZER, kvc, |event| async move {
        match event {
            Finalizer::Apply(kvc) => apply(&kvc, &step_ctx).await,
            Finalizer::Cleanup(kvc) => cleanup(&kvc, &step_ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(&cluster, started.elapsed());
    outcome
}

/// Counts the failure and tries again later.
pub fn error_policy<M>(kvc: Arc<KvCluster>, error: &Error, ctx: Arc<Context<M>>) -> Action {
    tracing::warn!(namespace = %kvc.namespace().unwrap_or_default(), name = %kvc.name_any(), %error, "reconcile failed");
    ctx.metrics.failed(&labels(&kvc), error.metric_label());
    Action::requeue(AFTER_ERROR)
}

async fn ssa<K>(client: &kube::Client, namespace: &str, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Server-side apply of a cert-manager Certificate (a type this crate does
/// not link).
async fn apply_certificate(client: &kube::Client, namespace: &str, obj: &DynamicObject) -> Result<(), Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resources::certificate_resource());
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await?;
    Ok(())
}

/// What the operator trusts and presents to a cluster serving clients
/// over TLS, read from its Secrets now (a renewed Secret is used from the
/// next reconciliation on).
async fn operator_tls(client: &kube::Client, kvc: &KvCluster, names: &Names) -> Result<Option<ClientTls>, Error> {
    let Some(tls) = &kvc.spec.tls else { return Ok(None) };
    let secrets = tls.secrets(&names.cluster);
    let Some(client_secret) = secrets.client else { return Ok(None) };
    let api: Api<Secret> = Api::namespaced(client.clone(), &names.namespace);
    let key = async |secret: &str, key: &str| -> Result<Vec<u8>, Error> {
        let found = api.get_opt(secret).await?;
        let data = found
            .as_ref()
            .ok_or_else(|| Error::Tls(format!("the TLS Secret {secret} does not exist (yet)")))?
            .data
            .as_ref()
            .and_then(|d| d.get(key));
        match data {
            Some(bytes) if !bytes.0.is_empty() => Ok(bytes.0.clone()),
            _ => Err(Error::Tls(format!("the TLS Secret {secret} has no {key}"))),
        }
    };
    let ca = key(&client_secret, "ca.crt").await?;
    let identity = match &secrets.operator {
        Some(secret) => Some((key(secret, "tls.crt").await?, key(secret, "tls.key").await?)),
        None => None,
    };
    Ok(Some(ClientTls { ca, identity }))
}

fn selector(names: &Names) -> String {
    names
        .selector_labels()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn apply<M: MembershipApi>(kvc: &KvCluster, ctx: &Context<M>) -> Result<Action, Error> {
    if let Some(tls) = &kvc.spec.tls {
        tls.check().map_err(Error::Invalid)?;
    }
    let client = &ctx.client;
    let names = Names::of(kvc);
    let ns = names.namespace.as_str();
    if let Some(tls) = &kvc.spec.tls
        && let Some(issuer) = &tls.cert_manager
        && !kvc.spec.paused
    {
        for certificate in resources::certificates(kvc, issuer) {
            match apply_certificate(client, ns, &certificate).await {
                Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
                    let why = format!(
                        "spec.tls.certManager names issuer {}, but this API server does not serve cert-manager's Certificates (cert-manager.io/v1): install cert-manager",
                        issuer.name
                    );
                    publish(ctx, kvc, EventType::Warning, "TLSNotReady", "Reconcile", why.clone()).await;
                    return Err(Error::Tls(why));
                }
                other => other?,
            }
        }
    }
    let client_tls = match operator_tls(client, kvc, &names).await {
        Err(Error::Tls(why)) => {
            publish(ctx, kvc, EventType::Warning, "TLSNotReady", "Reconcile", why.clone()).await;
            return Err(Error::Tls(why));
        }
        other => other?,
    };
    let previous = kvc.status.clone().unwrap_or_default();

    // What is there.
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .get_opt(&names.statefulset())
        .await?;
    let by_label = ListParams::default().labels(&selector(&names));
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&by_label)
        .await?
        .items;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .list(&by_label)
        .await?
        .items;

    // A restored cluster: the snapshot its founding member starts from,
    // resolved and recorded before any member exists.
    let mut previous = previous;
    let restore = match restore_source(kvc, &names, &claims, ctx).await? {
        RestoreOutcome::None => None,
        RestoreOutcome::Ready(from) => {
            if previous.restored_from.is_none() {
                previous.restored_from = Some(crate::backup::restore::recorded(&from));
                patch_status(&Api::namespaced(client.clone(), ns), kvc, &previous).await?;
            }
            Some(from)
        }
        RestoreOutcome::NotYet(action) => return Ok(action),
    };
    let sts_replicas = sts
        .as_ref()
        .and_then(|s| s.spec.as_ref()?.replicas)
        .map(|r| r.max(0) as u32);
    let update_revision = sts
        .as_ref()
        .and_then(|s| s.status.as_ref()?.update_revision.clone());
    let membership = (ctx.connect)(
        (0..sts_replicas.unwrap_or(1).max(1))
            .map(|o| names.client_url(o))
            .collect(),
        client_tls,
    );
    let report = match sts {
        Some(_) => match membership.observe().await {
            Ok(report) => Some(report),
            Err(e) => {
                tracing::info!(namespace = ns, name = %names.cluster, error = %e, "cluster not reachable");
                None
            }
        },
        None => None,
    };

    // Quorum-loss recovery, when a person asked for it.
    if !kvc.spec.paused
        && let Some(action) = recover(kvc, ctx, &names, report.as_ref(), &claims, &mut previous).await?
    {
        return Ok(action);
    }

    // The owned objects. Ordinal 0 founds the cluster alone; once the
    // cluster answered, any member started joins the member list.
    let bootstrap = match (&report, &previous.cluster_id) {
        (Some(r), _) => Some(Bootstrap {
            state: InitialClusterState::Existing,
            initial_cluster: initial_cluster(&r.cluster, &names),
        }),
        (None, None) => Some(Bootstrap::founding(&names)),
        (None, Some(_)) => None,
    };
    // Paused: nothing changes, status still reports.
    let sts_replicas = sts_replicas.unwrap_or(1);
    if !kvc.spec.paused {
        ssa(client, ns, &resources::peer_service(kvc)).await?;
        ssa(client, ns, &resources::client_service(kvc)).await?;
        if let Some(bootstrap) = &bootstrap {
            ssa(client, ns, &resources::configmap(kvc, bootstrap)).await?;
        }
        ssa(client, ns, &resources::pdb(kvc)).await?;
        ssa(client, ns, &member_statefulset(kvc, sts_replicas as i32, restore.as_deref())).await?;
    }

    // The next step.
    let claim_uids = status::claims_by_ordinal(&names, &claims);
    let replaced = report
        .as_ref()
        .map(|r| status::replaced_volumes(&names, r, &previous.members, &claim_uids))
        .unwrap_or_default();
    let pod_obs = status::pod_observations(&names, &pods, update_revision.as_deref(), &replaced);
    let observed = Observed {
        desired: Desired {
            replicas: kvc.spec.replicas.max(1) as u32,
            paused: kvc.spec.paused,
            delete_volumes: kvc.spec.storage.reclaim_policy == ReclaimPolicy::Delete,
        },
        operation: previous.operation.clone(),
        statefulset_replicas: Some(sts_replicas),
        pods: pod_obs.clone(),
        volumes: claim_uids.keys().copied().collect(),
        cluster: report.as_ref().map(|r| r.cluster.clone()),
    };
    let mut plan = plan(&observed, &names);
    let status_api: Api<KvCluster> = Api::namespaced(client.clone(), ns);

    // The operation is recorded before its step is taken.
    if plan.operation != previous.operation {
        let recorded = KvClusterStatus {
            operation: plan.operation.clone(),
            ..previous.clone()
        };
        patch_status(&status_api, kvc, &recorded).await?;
    }
    let mut step = Ok(());
    if let (Next::Act(action), Some(report)) = (&plan.next, &report) {
        tracing::info!(namespace = ns, name = %names.cluster, ?action, "membership step");
        let mut workloads = KubeWorkloads {
            client: client.clone(),
            kvc,
            names: &names,
            restore: restore.as_deref(),
        };
        step = execute(action, &membership, &mut workloads, &report.cluster, &names).await;
        if step.is_ok() {
            ctx.metrics.step(&labels(kvc), step_name(action));
            plan.operation = plan.after.clone();
        }
    }

    let mut next = status::next_status(&StatusInput {
        names: &names,
        previous: &previous,
        generation: kvc.metadata.generation,
        paused: kvc.spec.paused,
        report: report.as_ref(),
        claims: &claim_uids,
        pods: &pod_obs,
        plan: &plan,
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    });
    ctx.metrics.sizes(
        &labels(kvc),
        i64::from(next.replicas),
        i64::from(next.ready_replicas),
    );
    // Maintenance, once the membership side has nothing to do.
    let idle = plan.operation.is_none() && matches!(plan.next, Next::Idle);
    let mut maintained = false;
    if let (Some(report), false, true) = (&report, kvc.spec.paused, step.is_ok()) {
        maintained = maintain(kvc, ctx, &membership, report, idle, &mut next).await?;
    }
    patch_status(&status_api, kvc, &next).await?;
    publish_transitions(ctx, kvc, &previous, &next).await;

    match step {
        Err(e) if e.is_transient() => {
            tracing::info!(namespace = ns, name = %names.cluster, error = %e, "step refused for now");
            Ok(Action::requeue(WHILE_WAITING))
        }
        Err(e) => Err(e.into()),
        Ok(()) => Ok(Action::requeue(match plan.next {
            Next::Act(_) => AFTER_STEP,
            _ if maintained => AFTER_STEP,
            Next::Wait(_) => WHILE_WAITING,
            Next::Idle => WHEN_IDLE,
        })),
    }
}

/// Publishes an event about `obj`; a failure to publish is only logged.
pub(crate) async fn publish<M>(ctx: &Context<M>, obj: &impl Resource<DynamicType = ()>, type_: EventType, reason: &str, action: &str, note: String) {
    publish_about(ctx, obj, None, type_, reason, action, note).await;
}

/// [`publish`] with a related object (`secondary`).
async fn publish_about<M>(
    ctx: &Context<M>,
    obj: &impl Resource<DynamicType = ()>,
    secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = KubeEvent { type_, reason: reason.to_owned(), note: Some(note), action: action.to_owned(), secondary };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
}

/// A member's Pod, as an event's related object. kube-runtime's recorder
/// merges events of one reason about one object into a series (the note is
/// not part of its key): naming the member keeps "member demo-1
/// defragmented" and "member demo-2 defragmented" two events.
fn member_pod(kvc: &KvCluster, pod: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        name: Some(pod.to_owned()),
        namespace: kvc.namespace(),
        ..Default::default()
    }
}

/// The quota the members run with: `spec.server.quotaBackendBytes`, or
/// raftkv's (etcd's) 2 GiB default.
fn quota(kvc: &KvCluster) -> i64 {
    kvc.spec
        .server
        .as_ref()
        .and_then(|s| s.quota_backend_bytes.as_ref())
        .and_then(crate::crd::byte_size)
        .filter(|q| *q > 0)
        .unwrap_or(2 << 30)
}

/// Whether the defragmentation schedule named a time since the last run
/// (or since the cluster was created); a schedule that does not parse is
/// said in the `Maintenance` condition instead.
fn defrag_due(kvc: &KvCluster, last: Option<&Time>, now: k8s_openapi::jiff::Timestamp) -> Result<bool, String> {
    let Some(expr) = kvc.spec.maintenance.as_ref().and_then(|m| m.defragmentation.as_ref()).and_then(|d| d.schedule.as_deref()) else {
        return Ok(false);
    };
    let schedule = crate::backup::schedule::Schedule::parse(expr)?;
    let since = last.map(|t| t.0).or_else(|| kvc.metadata.creation_timestamp.as_ref().map(|t| t.0)).unwrap_or(now);
    Ok(schedule.last_at_or_before(now).is_some_and(|t| t > since))
}

/// One maintenance step (`crate::maintenance`), taken and recorded in
/// `next`; every step is idempotent, so one taken twice after a crash is
/// harmless. True when a step was taken or a run is in flight.
async fn maintain<M: MembershipApi>(
    kvc: &KvCluster,
    ctx: &Context<M>,
    membership: &M,
    report: &crate::members::Report,
    idle: bool,
    next: &mut KvClusterStatus,
) -> Result<bool, Error> {
    use crate::crd::MaintenanceStatus;
    use crate::maintenance::{self as mt, Step as MtStep};
    let now = k8s_openapi::jiff::Timestamp::now();
    // Without the alarms nothing is decided this round (status still goes out).
    let alarms = match membership.alarms().await {
        Ok(alarms) => alarms,
        Err(e) => {
            tracing::info!(name = %kvc.name_any(), error = %e, "alarms not listed; maintenance waits");
            return Ok(false);
        }
    };
    let nospace = alarms.iter().any(|(_, a)| a == "NOSPACE");
    let mut status = next.maintenance.clone().unwrap_or_default();
    if !nospace {
        status.data_exceeds_quota = None;
    }
    let members = mt::members_of(report);
    let quota = quota(kvc);
    let (due, schedule_error) = match defrag_due(kvc, status.last_defragmentation.as_ref(), now) {
        Ok(due) => (due, None),
        Err(e) => (false, Some(e)),
    };
    let request = kvc.annotations().get(mt::REQUEST_ANNOTATION).filter(|token| status.last_request.as_ref() != Some(*token)).cloned();
    let step = mt::next(&mt::Input {
        spec: kvc.spec.maintenance.as_ref(),
        quota,
        members: &members,
        nospace,
        revision: report.revision,
        status: &status,
        membership_idle: idle,
        schedule_due: due,
        requested: request.is_some(),
    });
    if step == MtStep::Start(crate::crd::MaintenanceReason::Requested) {
        status.last_request = request;
    }
    if let Some((warning, reason, text)) = mt::take(&step, membership, &mut status, quota, now).await.map_err(StepError::from)? {
        let type_ = if warning { EventType::Warning } else { EventType::Normal };
        let secondary = match &step {
            MtStep::Defragment { name, .. } => Some(member_pod(kvc, name)),
            _ => None,
        };
        publish_about(ctx, kvc, secondary, type_, reason, "Maintenance", text).await;
    }
    let (state, reason, message) = match (&status.run, &schedule_error, status.data_exceeds_quota, &step) {
        (_, Some(e), _, _) => (false, "InvalidSchedule", e.clone()),
        (_, _, Some(q), _) => (false, "DataExceedsQuota", format!("the live data does not fit the quota of {q} bytes; the NOSPACE alarm stays")),
        (Some(run), _, _, MtStep::Wait(why)) => (true, "Paused", format!("{:?} run paused: {why}", run.reason)),
        (Some(run), _, _, _) => (true, if run.reason == crate::crd::MaintenanceReason::NoSpace { "RemediatingNoSpace" } else { "Defragmenting" }, format!("{:?} run: {} defragmented", run.reason, run.defragmented.len())),
        (None, _, _, _) if nospace => (false, "NoSpace", "a NOSPACE alarm is raised".to_owned()),
        (None, _, _, _) => (false, "Idle", "no maintenance under way".to_owned()),
    };
    let condition = status::condition(&next.conditions, "Maintenance", state, reason, message, kvc.metadata.generation, &Time(now));
    next.conditions.retain(|c| c.type_ != "Maintenance");
    next.conditions.push(condition);
    let active = status.run.is_some() && !matches!(step, MtStep::Wait(_));
    next.maintenance = (status != MaintenanceStatus::default()).then_some(status);
    Ok(active || !matches!(step, MtStep::None | MtStep::Wait(_)))
}

/// The members' StatefulSet, with the restore init container of a
/// restored cluster (kept for its life: the template must not change).
fn member_statefulset(kvc: &KvCluster, replicas: i32, restore: Option<&resources::RestoreFrom>) -> StatefulSet {
    let mut statefulset = resources::statefulset(kvc, replicas);
    if let Some(from) = restore {
        resources::add_restore(&mut statefulset, kvc, from);
    }
    statefulset
}

/// Removes the recovery annotation (done, or refused).
async fn clear_recovery_annotation(api: &Api<KvCluster>, kvc: &KvCluster) -> Result<(), Error> {
    let patch = serde_json::json!({"metadata": {"annotations": {crate::recovery::ANNOTATION: null}}});
    api.patch(&kvc.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The quorum-loss recovery a person asked for (`crate::recovery`): Some
/// while it runs (the membership planner waits), None otherwise.
async fn recover<M>(
    kvc: &KvCluster,
    ctx: &Context<M>,
    names: &Names,
    report: Option<&crate::members::Report>,
    claims: &[PersistentVolumeClaim],
    previous: &mut KvClusterStatus,
) -> Result<Option<Action>, Error> {
    use crate::recovery::{self, Step as Rs};
    let client = &ctx.client;
    let ns = names.namespace.as_str();
    let api: Api<KvCluster> = Api::namespaced(client.clone(), ns);
    let members: Option<Vec<(String, u64)>> = report.map(|r| r.cluster.members.iter().map(|m| (m.name.clone(), m.id)).collect());
    let step = recovery::next(&recovery::Input {
        kvc,
        names,
        leader: report.and_then(|r| r.cluster.leader),
        members: members.as_deref(),
    });
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let publish = async |type_: EventType, reason: &str, note: String| publish(ctx, kvc, type_, reason, "Recovery", note).await;
    let restore = previous.restored_from.as_ref().map(|r| resources::RestoreFrom { url: r.location.clone(), destination: r.destination.clone() });
    // The survivor alone, restarted with --force-new-cluster in its bootstrap.
    let forcing = async || -> Result<(), Error> {
        let mut cm = resources::configmap(kvc, &Bootstrap::founding(names));
        cm.data.get_or_insert_with(Default::default).insert("RAFTKV_FORCE_NEW_CLUSTER".to_owned(), "true".to_owned());
        ssa(client, ns, &cm).await?;
        ssa(client, ns, &member_statefulset(kvc, 1, restore.as_ref())).await
    };
    match step {
        Rs::None => Ok(None),
        Rs::Refuse(why) => {
            tracing::warn!(namespace = ns, name = %names.cluster, %why, "recovery refused");
            publish(EventType::Warning, "RecoveryRefused", why).await;
            clear_recovery_annotation(&api, kvc).await?;
            Ok(Some(Action::requeue(AFTER_STEP)))
        }
        Rs::Start(mut r) => {
            r.started_at = Some(now);
            let note = format!("forcing {} into a new cluster of one; lost for good: {}", r.member, r.lost.join(", "));
            previous.recovery = Some(r);
            previous.operation = None;
            patch_status(&api, kvc, previous).await?;
            forcing().await?;
            // Restarted on the new bootstrap (the others go with the scale-down).
            match Api::<Pod>::namespaced(client.clone(), ns).delete(&names.member(0), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            publish(EventType::Warning, "ForcingNewCluster", note).await;
            Ok(Some(Action::requeue(WHILE_WAITING)))
        }
        Rs::Wait => {
            forcing().await?;
            Ok(Some(Action::requeue(WHILE_WAITING)))
        }
        Rs::Finish => {
            ssa(client, ns, &resources::configmap(kvc, &Bootstrap::founding(names))).await?;
            // The lost members' volumes hold their old identities.
            let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
            for claim in claims.iter().map(ResourceExt::name_any).filter(|c| *c != names.claim(0)) {
                match claims_api.delete(&claim, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            previous.recovery = recovery::finished(previous, now);
            patch_status(&api, kvc, previous).await?;
            clear_recovery_annotation(&api, kvc).await?;
            let lost = previous.recovery.as_ref().map(|r| r.lost.join(", ")).unwrap_or_default();
            publish(EventType::Normal, "Recovered", format!("a cluster of one again; the members lost ({lost}) are added back one at a time")).await;
            Ok(Some(Action::requeue(AFTER_STEP)))
        }
    }
}

enum RestoreOutcome {
    None,
    Ready(Box<resources::RestoreFrom>),
    NotYet(Action),
}

/// `spec.bootstrap.restore`, resolved; while it cannot be, the reason is a
/// `Restored` condition and an event, and nothing is created.
async fn restore_source<M>(
    kvc: &KvCluster,
    names: &Names,
    claims: &[PersistentVolumeClaim],
    ctx: &Context<M>,
) -> Result<RestoreOutcome, Error> {
    use crate::backup::restore::{Resolved, resolve};
    let Some(spec) = kvc.spec.bootstrap.as_ref().and_then(|b| b.restore.as_ref()) else {
        return Ok(RestoreOutcome::None);
    };
    let backup = match &spec.backup {
        Some(r) if kvc.status.as_ref().is_none_or(|s| s.restored_from.is_none()) => {
            Api::<crate::backup::crd::KvBackup>::namespaced(ctx.client.clone(), &names.namespace)
                .get_opt(&r.name)
                .await?
        }
        _ => None,
    };
    let founding_claim = claims.iter().any(|c| c.name_any() == names.claim(0));
    let (reason, message, requeue) = match resolve(kvc, backup.as_ref(), founding_claim) {
        None => return Ok(RestoreOutcome::None),
        Some(Resolved::Ready(from)) => return Ok(RestoreOutcome::Ready(from)),
        Some(Resolved::Wait(m)) => ("RestoreWaiting", m, Action::requeue(WHILE_WAITING)),
        Some(Resolved::Refuse(m)) => ("RestoreRefused", m, Action::requeue(WHEN_IDLE)),
    };
    let mut status = kvc.status.clone().unwrap_or_default();
    let condition = k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: "Restored".to_owned(),
        status: "False".to_owned(),
        reason: reason.to_owned(),
        message: message.clone(),
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
        observed_generation: kvc.metadata.generation,
    };
    let changed = status.conditions.iter().find(|c| c.type_ == "Restored").is_none_or(|c| c.reason != reason || c.message != message);
    if changed {
        status.conditions.retain(|c| c.type_ != "Restored");
        status.conditions.push(condition);
        patch_status(&Api::namespaced(ctx.client.clone(), &names.namespace), kvc, &status).await?;
        let type_ = if reason == "RestoreRefused" { EventType::Warning } else { EventType::Normal };
        publish(ctx, kvc, type_, reason, "Restore", message).await;
    }
    Ok(RestoreOutcome::NotYet(requeue))
}

fn step_name(action: &crate::planner::Action) -> &'static str {
    use crate::planner::Action as A;
    match action {
        A::AddLearner { .. } => "AddLearner",
        A::Promote { .. } => "Promote",
        A::MoveLeader { .. } => "MoveLeader",
        A::RemoveMember { .. } => "RemoveMember",
        A::ScaleStatefulSet { .. } => "ScaleStatefulSet",
        A::DeleteVolume { .. } => "DeleteVolume",
        A::RestartPod { .. } => "RestartPod",
        A::ReplaceVolume { .. } => "ReplaceVolume",
    }
}

/// Status through server-side apply on the status subresource: fields the
/// operator no longer sets (a finished operation) go away.
async fn patch_status(
    api: &Api<KvCluster>,
    kvc: &KvCluster,
    status: &KvClusterStatus,
) -> Result<(), Error> {
    let body = serde_json::json!({
        "apiVersion": "raftkv.io/v1alpha1",
        "kind": "KvCluster",
        "status": status,
    });
    api.patch_status(
        &kvc.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Events only when something changed: an operation started or finished,
/// the cluster became degraded or recovered.
async fn publish_transitions<M>(
    ctx: &Context<M>,
    kvc: &KvCluster,
    before: &KvClusterStatus,
    after: &KvClusterStatus,
) {
    let mut events = Vec::new();
    let names = Names::of(kvc);
    let pod = |op: &crate::crd::Operation| Some(member_pod(kvc, &names.member(op.ordinal as u32)));
    match (&before.operation, &after.operation) {
        (None, Some(op)) => events.push((
            EventType::Normal,
            format!("{:?}Started", op.kind),
            format!("ordinal {}", op.ordinal),
            pod(op),
        )),
        (Some(op), None) => events.push((
            EventType::Normal,
            format!("{:?}Finished", op.kind),
            format!("ordinal {}", op.ordinal),
            pod(op),
        )),
        (Some(a), Some(b)) if a.kind != b.kind || a.ordinal != b.ordinal => events.push((
            EventType::Normal,
            format!("{:?}Started", b.kind),
            format!("ordinal {}", b.ordinal),
            pod(b),
        )),
        _ => {}
    }
    let degraded = |s: &KvClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Degraded")
            .map(|c| (c.status == "True", c.reason.clone()))
    };
    match (degraded(before), degraded(after)) {
        (Some((false, _)) | None, Some((true, reason))) => {
            events.push((EventType::Warning, reason, "the cluster is degraded".into(), None))
        }
        (Some((true, _)), Some((false, _))) => events.push((
            EventType::Normal,
            "Recovered".into(),
            "every member answers".into(),
            None,
        )),
        _ => {}
    }
    for (type_, reason, note, secondary) in events {
        publish_about(ctx, kvc, secondary, type_, &reason, "Reconcile", note).await;
    }
}

/// Deletion: the owned objects go with their owner (garbage collection),
/// the volumes as `reclaimPolicy` told the StatefulSet.
async fn cleanup<M>(kvc: &KvCluster, ctx: &Context<M>) -> Result<Action, Error> {
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "Deleting".into(),
        note: Some(format!("volumes: {:?}", kvc.spec.storage.reclaim_policy)),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &kvc.object_ref(&())).await {
        tracing::warn!(error = %e, "cannot publish an event");
    }
    Ok(Action::await_change())
}

/// The StatefulSet side of the steps.
struct KubeWorkloads<'a> {
    client: kube::Client,
    kvc: &'a KvCluster,
    names: &'a Names,
    /// A restored cluster's snapshot: its StatefulSet keeps the restore
    /// init container for life, at every scale, or each scale would change
    /// the template and roll every member.
    restore: Option<&'a resources::RestoreFrom>,
}

fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), WorkloadError> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Box::new(e)),
    }
}

impl Workloads for KubeWorkloads<'_> {
    async fn scale(
        &mut self,
        replicas: u32,
        initial_cluster: &[(String, String)],
    ) -> Result<(), WorkloadError> {
        let ns = self.names.namespace.as_str();
        let bootstrap = Bootstrap {
            state: InitialClusterState::Existing,
            initial_cluster: initial_cluster.to_vec(),
        };
        ssa(
            &self.client,
            ns,
            &resources::configmap(self.kvc, &bootstrap),
        )
        .await
        .map_err(Box::new)?;
        ssa(
            &self.client,
            ns,
            &member_statefulset(self.kvc, replicas as i32, self.restore),
        )
        .await
        .map_err(Box::new)?;
        Ok(())
    }

    async fn restart_pod(&mut self, ordinal: u32) -> Result<(), WorkloadError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.names.namespace);
        ignore_not_found(
            pods.delete(&self.names.member(ordinal), &DeleteParams::default())
                .await,
        )
    }

    async fn delete_volume(&mut self, ordinal: u32) -> Result<(), WorkloadError> {
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.names.namespace);
        ignore_not_found(
            claims
                .delete(&self.names.claim(ordinal), &DeleteParams::default())
                .await,
        )
    }

    async fn replace_volume(&mut self, ordinal: u32) -> Result<(), WorkloadError> {
        // The claim is protected while the pod uses it: deleted first, it goes
        // with the pod, and the StatefulSet makes a fresh one.
        self.delete_volume(ordinal).await?;
        self.restart_pod(ordinal).await
    }
}

/// Runs the controller over `namespaces` (every namespace when empty) until
/// `shutdown` fires.
pub async fn run<M: MembershipApi + 'static>(
    ctx: Arc<Context<M>>,
    namespaces: Vec<String>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = ctx.client.clone();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|ns| {
        let ns = ns.as_deref();
        let (kvcs, statefulsets, services, pdbs, configmaps) = (
            scoped::<KvCluster>(&client, ns),
            scoped::<StatefulSet>(&client, ns),
            scoped::<Service>(&client, ns),
            scoped::<PodDisruptionBudget>(&client, ns),
            scoped::<ConfigMap>(&client, ns),
        );
        let mut stop = shutdown.clone();
        let ctx = ctx.clone();
        watch::controller(kvcs)
            .owning(statefulsets)
            .owning(services)
            .owning(pdbs)
            .owning(configmaps)
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            })
            .run(reconcile, error_policy, ctx)
            .for_each(|outcome| async move {
                if let Err(e) = outcome {
                    tracing::debug!(error = %e, "reconcile");
                }
            })
    });
    futures::future::join_all(controllers).await;
}

/// An API over one namespace, or all of them.
pub(crate) fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}
