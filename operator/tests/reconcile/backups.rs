//! Backup scenarios: the real `KvBackup` and `KvBackupSchedule`
//! reconcilers against the in-memory API, on a converged cluster of the
//! membership scenarios. The Job controller and the kubelet are played by
//! hand: a Job's outcome is written into its status and a pod's
//! termination message, as they would write them.

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use raftkv_operator::backup::controller::{reconcile_backup, reconcile_schedule};
use raftkv_operator::backup::crd::{BackupPhase, KvBackup, KvBackupSchedule};
use serde_json::{Value, json};

use super::{Harness, STS, within};

const JOBS: &str = "/apis/batch/v1/namespaces/prod/jobs";
const BACKUPS: &str = "/apis/raftkv.io/v1alpha1/namespaces/prod/kvbackups";
const SCHEDULE: &str = "/apis/raftkv.io/v1alpha1/namespaces/prod/kvbackupschedules/nightly";

fn s3_destination() -> Value {
    json!({"s3": {"bucket": "backups", "endpoint": "http://s3.storage:9000", "forcePathStyle": true,
                  "credentials": {"accessKeyId": {"name": "s3", "key": "id"},
                                  "secretAccessKey": {"name": "s3", "key": "secret"}}}})
}

fn insert_secret(h: &Harness, keys: &[&str]) {
    let data: serde_json::Map<String, Value> = keys.iter().map(|k| ((*k).to_owned(), json!("c2VjcmV0"))).collect();
    h.api.insert("/api/v1/namespaces/prod/secrets/s3", json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s3", "namespace": "prod"}, "data": data}));
}

fn insert_backup(h: &Harness, name: &str, cluster: &str) {
    insert_backup_with(h, name, cluster, "Retain");
}

fn insert_backup_with(h: &Harness, name: &str, cluster: &str, reclaim_policy: &str) {
    h.api.insert(
        &format!("{BACKUPS}/{name}"),
        json!({"apiVersion": "raftkv.io/v1alpha1", "kind": "KvBackup",
               "metadata": {"name": name, "namespace": "prod", "creationTimestamp": "2026-12-06T03:00:00Z"},
               "spec": {"cluster": cluster, "destination": s3_destination(), "reclaimPolicy": reclaim_policy}}),
    );
}

fn backup(h: &Harness, name: &str) -> KvBackup {
    serde_json::from_value(h.api.get(&format!("{BACKUPS}/{name}")).expect("the KvBackup")).expect("a KvBackup")
}

async fn reconcile(h: &Harness, name: &str) -> Action {
    reconcile_backup(Arc::new(backup(h, name)), h.ctx.clone()).await.expect("reconcile")
}

/// The Job controller and the kubelet: the Job ends, its pod's container
/// terminated with `message`.
fn finish_job(h: &Harness, job: &str, succeeded: bool, message: &str) {
    let path = format!("{JOBS}/{job}");
    let mut j = h.api.get(&path).expect("the Job");
    j["status"] = if succeeded {
        json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    } else {
        json!({"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
               "message": "Job has reached the specified backoff limit"}]})
    };
    h.api.insert(&path, j);
    h.api.insert(
        &format!("/api/v1/namespaces/prod/pods/{job}-x7k2p"),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": format!("{job}-x7k2p"), "namespace": "prod", "labels": {"job-name": job},
                            "creationTimestamp": "2026-12-06T03:00:01Z"},
               "status": {"containerStatuses": [{"name": "backup", "image": "raftkv", "imageID": "", "ready": false,
                          "restartCount": 0, "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 },
                          "message": message}}}]}}),
    );
}

fn events(h: &Harness) -> Vec<String> {
    h.log().into_iter().filter(|l| l.starts_with("POST") && l.contains("/events")).collect()
}

#[tokio::test]
pub async fn a_backup_runs_a_job_against_a_follower_and_records_its_report() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        insert_secret(&h, &["id", "secret"]);
        insert_backup(&h, "b1", "demo");
        assert_eq!(reconcile(&h, "b1").await, Action::requeue(Duration::from_secs(10)));

        let job = h.api.get(&format!("{JOBS}/b1-backup")).expect("the backup Job");
        let leader = h.kvc().status.expect("status").leader.expect("a leader");
        let args: Vec<String> = serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args");
        let endpoint = args[0].strip_prefix("--endpoints=http://").expect("an endpoint");
        assert!(!endpoint.starts_with(&format!("{leader}.")), "the snapshot is taken from the leader {leader}: {args:?}");
        assert_eq!(args[4], "s3://backups/prod/demo/b1.snap");
        assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "KvBackup");
        let status = backup(&h, "b1").status.expect("status");
        assert_eq!(status.phase, BackupPhase::Running);
        assert_eq!(status.location.as_deref(), Some("s3://backups/prod/demo/b1.snap"));
        assert_eq!(status.member.as_deref(), endpoint.split('.').next());

        // Still running: the Job is waited for, not started again.
        assert_eq!(reconcile(&h, "b1").await, Action::requeue(Duration::from_secs(10)));
        assert_eq!(h.log().iter().filter(|l| l.starts_with("POST") && l.contains("/jobs")).count(), 1);

        let report = r#"{"location":"s3://backups/prod/demo/b1.snap","size":1049088,"sha256":"5e1f","revision":4242,"totalKey":900,"hash":7}"#;
        finish_job(&h, "b1-backup", true, report);
        assert_eq!(reconcile(&h, "b1").await, Action::await_change());
        let status = backup(&h, "b1").status.expect("status");
        assert_eq!(status.phase, BackupPhase::Completed);
        assert_eq!((status.size, status.revision, status.sha256.as_deref()), (Some(1049088), Some(4242), Some("5e1f")));
        assert!(status.completed_at.is_some() && status.error.is_none());
        let events = events(&h);
        assert!(events.iter().any(|e| e.contains("BackupStarted")) && events.iter().any(|e| e.contains("BackupCompleted")), "{events:#?}");
        let metrics = h.ctx.metrics.encode().expect("metrics");
        assert!(metrics.contains(r#"raftkv_operator_backups_completed_total{namespace="prod",name="demo"} 1"#), "{metrics}");
        assert!(metrics.contains("raftkv_operator_last_successful_backup_timestamp_seconds{namespace=\"prod\",name=\"demo\"} 17"), "{metrics}");
        // Finished: nothing more happens.
        assert_eq!(reconcile(&h, "b1").await, Action::await_change());
    })
    .await;
}

#[tokio::test]
pub async fn bad_backups_fail_with_a_clear_error_and_start_no_job() {
    within(async {
        let h = Harness::new(1);
        h.converge().await;
        let cases = [
            ("no-cluster", "nope", &["id", "secret"][..], "KvCluster \"nope\" not found in this namespace"),
            ("no-key", "demo", &["id"][..], "Secret \"s3\" has no key \"secret\""),
        ];
        for (name, cluster, keys, error) in cases {
            insert_secret(&h, keys);
            insert_backup(&h, name, cluster);
            assert_eq!(reconcile(&h, name).await, Action::await_change());
            let status = backup(&h, name).status.expect("status");
            assert_eq!((status.phase, status.error.as_deref()), (BackupPhase::Failed, Some(error)), "{name}");
            assert!(h.api.get(&format!("{JOBS}/{name}-backup")).is_none(), "{name}: a Job was started");
        }
        h.api.remove("/api/v1/namespaces/prod/secrets/s3");
        insert_backup(&h, "no-secret", "demo");
        reconcile(&h, "no-secret").await;
        let status = backup(&h, "no-secret").status.expect("status");
        assert_eq!(status.error.as_deref(), Some("Secret \"s3\" (the destination's credentials) not found"));

        // A Job that failed: the store's own error, from its last words.
        insert_secret(&h, &["id", "secret"]);
        insert_backup(&h, "refused", "demo");
        reconcile(&h, "refused").await;
        finish_job(&h, "refused-backup", false, "snapshot save\nError: s3://backups/prod/demo/refused.snap: SignatureDoesNotMatch\n");
        assert_eq!(reconcile(&h, "refused").await, Action::await_change());
        let status = backup(&h, "refused").status.expect("status");
        assert_eq!(status.phase, BackupPhase::Failed);
        assert_eq!(status.error.as_deref(), Some("s3://backups/prod/demo/refused.snap: SignatureDoesNotMatch"));
        let warnings = events(&h).into_iter().filter(|e| e.contains("BackupFailed")).count();
        assert_eq!(warnings, 4);
        let metrics = h.ctx.metrics.encode().expect("metrics");
        assert!(metrics.contains(r#"raftkv_operator_backups_failed_total{namespace="prod",name="demo"} 3"#), "{metrics}");

        // A cluster serving clients over TLS: the Job would mount its CA
        // and the operator's certificate; without them it fails at once.
        h.edit(|k| k["spec"]["tls"] = json!({"clientSecretName": "client-tls", "operatorSecretName": "op-tls"}));
        insert_backup(&h, "no-tls", "demo");
        reconcile(&h, "no-tls").await;
        let status = backup(&h, "no-tls").status.expect("status");
        assert_eq!(status.error.as_deref(), Some("Secret \"client-tls\" (the cluster's TLS) not found"));
        assert!(h.api.get(&format!("{JOBS}/no-tls-backup")).is_none(), "a Job was started without its TLS Secrets");
    })
    .await;
}

fn insert_schedule(h: &Harness, spec: Value) {
    h.api.insert(
        SCHEDULE,
        json!({"apiVersion": "raftkv.io/v1alpha1", "kind": "KvBackupSchedule",
               "metadata": {"name": "nightly", "namespace": "prod", "generation": 1,
                            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().to_string()},
               "spec": spec}),
    );
}

fn schedule(h: &Harness) -> KvBackupSchedule {
    serde_json::from_value(h.api.get(SCHEDULE).expect("the schedule")).expect("a KvBackupSchedule")
}

fn owned_backups(h: &Harness) -> Vec<(String, Value)> {
    let prefix = format!("{BACKUPS}/");
    h.api
        .state()
        .objects
        .iter()
        .filter(|(k, v)| k.starts_with(&prefix) && v["metadata"]["labels"]["raftkv.io/schedule"] == "nightly")
        .map(|(k, v)| (k[prefix.len()..].to_owned(), v.clone()))
        .collect()
}

/// The backup controller's part, played by hand: every backup the schedule
/// made completes.
fn complete_all(h: &Harness) {
    for (name, mut b) in owned_backups(h) {
        if b["status"].is_null() {
            b["status"] = json!({"phase": "Completed", "location": format!("s3://backups/prod/demo/{name}.snap")});
            h.api.insert(&format!("{BACKUPS}/{name}"), b);
        }
    }
}

#[tokio::test]
pub async fn a_schedule_takes_backups_one_at_a_time_and_prunes_to_its_retention() {
    within(async {
        let h = Harness::new(1);
        h.converge().await;
        // Every second, a first one at once, two kept.
        insert_schedule(&h, json!({"cluster": "demo", "schedule": "* * * * * *", "immediate": true,
                                   "retention": {"count": 2}, "destination": s3_destination()}));
        reconcile_schedule(Arc::new(schedule(&h)), h.ctx.clone()).await.expect("reconcile");
        let first = owned_backups(&h);
        assert_eq!(first.len(), 1, "the immediate backup");
        let (name, b) = &first[0];
        assert!(name.starts_with("nightly-"), "{name}");
        assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "KvBackupSchedule");
        assert_eq!(b["spec"]["cluster"], "demo");

        // While it runs, no other starts, however many seconds pass.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        reconcile_schedule(Arc::new(schedule(&h)), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(owned_backups(&h).len(), 1, "a second backup started while the first ran");

        for _ in 0..4 {
            complete_all(&h);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            reconcile_schedule(Arc::new(schedule(&h)), h.ctx.clone()).await.expect("reconcile");
        }
        // Suspended (so that no further second starts one): the retention
        // still prunes, nothing starts and no next time is named.
        complete_all(&h);
        let mut s = h.api.get(SCHEDULE).expect("schedule");
        s["spec"]["suspend"] = json!(true);
        h.api.insert(SCHEDULE, s);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        reconcile_schedule(Arc::new(schedule(&h)), h.ctx.clone()).await.expect("reconcile");
        let kept = owned_backups(&h);
        assert_eq!(kept.len(), 2, "retention keeps two: {:?}", kept.iter().map(|k| &k.0).collect::<Vec<_>>());
        let status = schedule(&h).status.expect("status");
        let mut names: Vec<String> = kept.iter().map(|k| k.0.clone()).collect();
        names.sort();
        assert_eq!(status.backups, names);
        assert!(status.last_schedule_time.is_some() && status.last_successful_time.is_some());
        let log = h.log();
        let created = log.iter().filter(|l| l.starts_with("POST ") && l.contains("/kvbackups ")).count();
        let deleted = log.iter().filter(|l| l.starts_with("DELETE ") && l.contains("/kvbackups/")).count();
        assert_eq!((created, deleted), (5, 3), "{log:#?}");
        // kube's recorder posts an event once, then patches its count.
        let events = events(&h);
        assert!(events.iter().any(|e| e.contains("BackupScheduled")) && events.iter().any(|e| e.contains("BackupPruned")), "{events:#?}");
        assert_eq!(status.next_schedule_time, None);
        assert_eq!(status.conditions[0].reason, "Suspended");
    })
    .await;
}

#[tokio::test]
pub async fn a_schedule_that_does_not_parse_says_so_and_takes_nothing() {
    within(async {
        let h = Harness::new(1);
        h.converge().await;
        insert_schedule(&h, json!({"cluster": "demo", "schedule": "every night", "immediate": true, "destination": s3_destination()}));
        let action = reconcile_schedule(Arc::new(schedule(&h)), h.ctx.clone()).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert!(owned_backups(&h).is_empty());
        let status = schedule(&h).status.expect("status");
        let ready = &status.conditions[0];
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "InvalidSpec"));
        assert!(ready.message.starts_with("schedule \"every night\" does not parse"), "{}", ready.message);
        assert!(events(&h).iter().any(|e| e.contains("InvalidSpec")));
    })
    .await;
}


#[tokio::test]
pub async fn a_restored_cluster_waits_for_its_backup_then_restores_its_founding_member() {
    within(async {
        let h = Harness::new(3);
        h.edit(|k| k["spec"]["bootstrap"] = json!({"restore": {"backup": {"name": "b0"}}}));
        // The backup does not exist yet: nothing is created, and the
        // condition says why.
        h.reconcile().await.expect("the finalizer");
        h.reconcile().await.expect("reconcile");
        assert!(h.api.get(STS).is_none(), "a StatefulSet before the backup resolved");
        let restored = |h: &Harness| h.kvc().status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Restored");
        let c = restored(&h).expect("a Restored condition");
        assert_eq!((c.status.as_str(), c.reason.as_str(), c.message.as_str()), ("False", "RestoreWaiting", "KvBackup \"b0\" not found"));

        insert_backup(&h, "b0", "old");
        let mut b = h.api.get(&format!("{BACKUPS}/b0")).expect("b0");
        b["status"] = json!({"phase": "Completed", "location": "s3://backups/prod/old/b0.snap"});
        h.api.insert(&format!("{BACKUPS}/b0"), b);
        h.converge().await;

        let status = h.kvc().status.expect("status");
        let from = status.restored_from.expect("restoredFrom");
        assert_eq!(from.location, "s3://backups/prod/old/b0.snap");
        let sts = h.api.get(STS).expect("the StatefulSet");
        let init = &sts["spec"]["template"]["spec"]["initContainers"][0];
        assert_eq!(init["name"], "restore");
        let args: Vec<String> = serde_json::from_value(init["args"].clone()).expect("args");
        assert_eq!(args[..3], ["snapshot", "restore", "s3://backups/prod/old/b0.snap"]);
        assert!(args.contains(&"--keep-existing-data-dir".to_owned()) && args.contains(&"--initial-cluster-state=$(RAFTKV_INITIAL_CLUSTER_STATE)".to_owned()), "{args:?}");
        let env: Vec<String> = init["env"].as_array().expect("env").iter().filter_map(|e| e["name"].as_str().map(str::to_owned)).collect();
        assert!(env.contains(&"AWS_SECRET_ACCESS_KEY".to_owned()) && env.contains(&"POD_NAME".to_owned()), "{env:?}");

        // The backup pruned later: the template stays as it was.
        h.api.remove(&format!("{BACKUPS}/b0"));
        h.reconcile().await.expect("reconcile");
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["template"], sts["spec"]["template"]);
    })
    .await;
}

#[tokio::test]
pub async fn a_restore_onto_a_volume_from_before_is_refused() {
    within(async {
        let h = Harness::new(1);
        h.edit(|k| k["spec"]["bootstrap"] = json!({"restore": {"source": {"s3": {"bucket": "b"}, "key": "etcd.db"}}}));
        h.api.insert("/api/v1/namespaces/prod/persistentvolumeclaims/data-demo-0", json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-demo-0", "namespace": "prod", "labels": {"app.kubernetes.io/name": "raftkv", "app.kubernetes.io/instance": "demo"}}}));
        h.reconcile().await.expect("the finalizer");
        h.reconcile().await.expect("reconcile");
        assert!(h.api.get(STS).is_none(), "a StatefulSet over a volume from before");
        let c = h.kvc().status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Restored").expect("condition");
        assert_eq!(c.reason, "RestoreRefused");
        assert!(events(&h).iter().any(|e| e.contains("RestoreRefused")));
    })
    .await;
}

#[tokio::test]
pub async fn deleting_a_backup_deletes_its_stored_snapshot_under_delete_only() {
    within(async {
        let h = Harness::new(1);
        h.converge().await;
        insert_secret(&h, &["id", "secret"]);
        insert_backup_with(&h, "kept", "demo", "Retain");
        insert_backup_with(&h, "pruned", "demo", "Delete");
        for name in ["kept", "pruned"] {
            reconcile(&h, name).await;
            finish_job(&h, &format!("{name}-backup"), true,
                &format!(r#"{{"location":"s3://backups/prod/demo/{name}.snap","size":1,"sha256":"00","revision":2}}"#));
            reconcile(&h, name).await;
            assert_eq!(backup(&h, name).status.expect("status").phase, BackupPhase::Completed);
        }
        assert_eq!(backup(&h, "kept").metadata.finalizers, None, "a Retain backup holds a finalizer");
        assert_eq!(backup(&h, "pruned").metadata.finalizers, Some(vec!["raftkv.io/snapshot".to_owned()]));
        assert_eq!(backup(&h, "pruned").status.expect("status").image.as_deref(), Some("raftkv/raftkv:0.1.0"));

        // Deleted through the API: the Retain one goes at once; the Delete
        // one waits for a Job that deletes its snapshot.
        let api: kube::Api<KvBackup> = kube::Api::namespaced(h.api.client(), "prod");
        for name in ["kept", "pruned"] {
            api.delete(name, &Default::default()).await.expect("delete");
        }
        assert!(h.api.get(&format!("{BACKUPS}/kept")).is_none());
        assert_eq!(reconcile(&h, "pruned").await, Action::requeue(Duration::from_secs(10)));
        let job = h.api.get(&format!("{JOBS}/pruned-delete")).expect("the delete Job");
        let args: Vec<String> = serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args");
        assert_eq!(args, ["snapshot", "delete", "s3://backups/prod/demo/pruned.snap"]);
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["image"], "raftkv/raftkv:0.1.0");
        assert_eq!(reconcile(&h, "pruned").await, Action::requeue(Duration::from_secs(10)));
        assert!(h.api.get(&format!("{BACKUPS}/pruned")).is_some(), "the backup went before its snapshot");
        finish_job(&h, "pruned-delete", true, "Snapshot deleted at s3://backups/prod/demo/pruned.snap");
        assert_eq!(reconcile(&h, "pruned").await, Action::await_change());
        assert!(h.api.get(&format!("{BACKUPS}/pruned")).is_none(), "the finalizer was not released");
        assert!(events(&h).iter().any(|e| e.contains("SnapshotDeleted")), "{:#?}", events(&h));

        // Deleted while its Job still uploads: the Job is stopped first,
        // then whatever may be stored is deleted.
        insert_backup_with(&h, "cut", "demo", "Delete");
        reconcile(&h, "cut").await;
        assert!(h.api.get(&format!("{JOBS}/cut-backup")).is_some());
        api.delete("cut", &Default::default()).await.expect("delete");
        reconcile(&h, "cut").await;
        assert!(h.api.get(&format!("{JOBS}/cut-backup")).is_none(), "the running backup Job was not stopped");
        assert!(h.api.get(&format!("{JOBS}/cut-delete")).is_none(), "deleting before the upload stopped");
        reconcile(&h, "cut").await;
        assert!(h.api.get(&format!("{JOBS}/cut-delete")).is_some(), "no delete Job after the upload stopped");
    })
    .await;
}
