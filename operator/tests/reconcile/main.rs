//! Reconcile scenarios: the real reconciler against an in-memory Kubernetes
//! API (kube's tower-test mock) and a fake raft cluster behind the
//! membership trait. Between two reconciliations [`tick`] plays the
//! StatefulSet controller, the kubelet and raft: pods and claims follow the
//! StatefulSet, members answer once their pod runs, learners catch up.
//!
//! No Kubernetes API server can run on this machine; these scenarios are
//! what stands in for one.

mod backups;
mod fake_api;
mod maintenance;
mod recovery;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fake_api::FakeApi;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use raftkv_operator::controller::{Context, error_policy, reconcile};
use raftkv_operator::crd::KvCluster;
use raftkv_operator::members::{ClientTls, MemberDetail, MembershipApi, MembershipError, Report};
use raftkv_operator::metrics::Metrics;
use raftkv_operator::planner::{ClusterObs, MemberObs};
use raftkv_operator::resources::Names;
use serde_json::{Value, json};

const KVC: &str = "/apis/raftkv.io/v1alpha1/namespaces/prod/kvclusters/demo";
pub const STS: &str = "/apis/apps/v1/namespaces/prod/statefulsets/demo";
const CONFIGMAP: &str = "/api/v1/namespaces/prod/configmaps/demo-bootstrap";

fn pod_path(ordinal: u64) -> String {
    format!("/api/v1/namespaces/prod/pods/demo-{ordinal}")
}

fn claim_path(ordinal: u64) -> String {
    format!("/api/v1/namespaces/prod/persistentvolumeclaims/data-demo-{ordinal}")
}

fn names() -> Names {
    Names {
        cluster: "demo".into(),
        namespace: "prod".into(),
        client_tls: false,
        peer_tls: false,
    }
}

struct FakeMember {
    id: u64,
    ordinal: u64,
    is_learner: bool,
    healthy: bool,
    in_sync: bool,
    /// The claim it started on; None until its pod first ran.
    volume: Option<String>,
    db_size: i64,
    db_size_in_use: i64,
}

#[derive(Default)]
struct EtcdState {
    members: Vec<FakeMember>,
    leader: Option<u64>,
    next_id: u64,
    /// Fail the next status write after a MemberAdd: the operator "crashes"
    /// between taking a step and recording what followed it.
    crash_after_add: bool,
    /// Members with a NOSPACE alarm raised.
    nospace: Vec<u64>,
    revision: i64,
}

#[derive(Clone)]
struct FakeEtcd {
    state: Arc<Mutex<EtcdState>>,
    api: FakeApi,
}

impl FakeEtcd {
    fn state(&self) -> MutexGuard<'_, EtcdState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ordinal_of(&self, id: u64) -> u64 {
        self.state()
            .members
            .iter()
            .find(|m| m.id == id)
            .map_or(99, |m| m.ordinal)
    }

    fn call(&self, line: String) {
        self.api.log(format!("etcd {line}"));
    }
}

impl MembershipApi for FakeEtcd {
    async fn observe(&self) -> Result<Report, MembershipError> {
        let state = self.state();
        if !state.members.iter().any(|m| m.healthy) {
            return Err(MembershipError::NoLeader);
        }
        let n = names();
        let members = state
            .members
            .iter()
            .map(|m| MemberObs {
                id: m.id,
                name: n.member(m.ordinal as u32),
                peer_urls: vec![n.peer_url(m.ordinal as u32)],
                is_learner: m.is_learner,
                healthy: m.healthy,
                in_sync: m.in_sync,
            })
            .collect();
        let details = state
            .members
            .iter()
            .map(|m| {
                (
                    m.id,
                    MemberDetail {
                        version: m.healthy.then(|| "3.5.0".to_owned()),
                        db_size: Some(m.db_size),
                        db_size_in_use: Some(m.db_size_in_use),
                        ..MemberDetail::default()
                    },
                )
            })
            .collect();
        Ok(Report {
            cluster: ClusterObs {
                members,
                leader: state.leader,
            },
            cluster_id: 0xc1,
            details,
            revision: state.revision,
        })
    }

    async fn add_learner(&self, peer_url: &str) -> Result<u64, MembershipError> {
        let ordinal = names().ordinal_of_peer_url(peer_url).map_or(99, u64::from);
        self.call(format!("MemberAdd demo-{ordinal}"));
        let mut state = self.state();
        state.next_id += 1;
        let id = 0x100 + state.next_id;
        state.members.push(FakeMember {
            id,
            ordinal,
            is_learner: true,
            healthy: false,
            in_sync: false,
            volume: None,
            db_size: 1 << 20,
            db_size_in_use: 1 << 20,
        });
        if state.crash_after_add {
            state.crash_after_add = false;
            self.api.fail("PATCH", "/kvclusters/demo/status", 1);
        }
        Ok(id)
    }

    async fn promote(&self, id: u64) -> Result<(), MembershipError> {
        self.call(format!("MemberPromote demo-{}", self.ordinal_of(id)));
        for m in &mut self.state().members {
            if m.id == id {
                m.is_learner = false;
            }
        }
        Ok(())
    }

    async fn remove(&self, id: u64) -> Result<(), MembershipError> {
        self.call(format!("MemberRemove demo-{} {id:x}", self.ordinal_of(id)));
        let mut state = self.state();
        state.members.retain(|m| m.id != id);
        if state.leader == Some(id) {
            state.leader = state.members.iter().find(|m| !m.is_learner).map(|m| m.id);
        }
        Ok(())
    }

    async fn move_leader(&self, from: u64, to: u64) -> Result<(), MembershipError> {
        self.call(format!(
            "MoveLeader demo-{} -> demo-{}",
            self.ordinal_of(from),
            self.ordinal_of(to)
        ));
        self.state().leader = Some(to);
        Ok(())
    }

    async fn alarms(&self) -> Result<Vec<(u64, String)>, MembershipError> {
        Ok(self.state().nospace.iter().map(|id| (*id, "NOSPACE".to_owned())).collect())
    }

    async fn disarm_nospace(&self) -> Result<(), MembershipError> {
        self.call("AlarmDisarm NOSPACE".to_owned());
        self.state().nospace.clear();
        Ok(())
    }

    /// History goes: half of what each member holds is freed.
    async fn compact(&self, revision: i64) -> Result<(), MembershipError> {
        self.call(format!("Compact {revision}"));
        for m in &mut self.state().members {
            m.db_size_in_use /= 2;
        }
        Ok(())
    }

    async fn defragment(&self, id: u64) -> Result<(), MembershipError> {
        let ordinal = self.ordinal_of(id);
        self.call(format!("Defragment demo-{ordinal}"));
        if let Some(m) = self.state().members.iter_mut().find(|m| m.id == id) {
            m.db_size = m.db_size_in_use;
        }
        Ok(())
    }
}

/// The StatefulSet controller, the kubelet and raft, one step of time.
fn tick(api: &FakeApi, etcd: &FakeEtcd) {
    let Some(mut sts) = api.get(STS) else { return };
    let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(0);
    let image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let revision = format!("rev-{}", image.replace([':', '/'], "-"));
    sts["status"] = json!({"replicas": replicas, "updateRevision": revision});
    api.insert(STS, sts);

    // Raft first, from the pods as they are now: a deleted pod's member is
    // down until its pod is back.
    {
        let mut state = etcd.state();
        for m in &mut state.members {
            let pod = api.get(&pod_path(m.ordinal));
            let claim = api
                .get(&claim_path(m.ordinal))
                .and_then(|c| c["metadata"]["uid"].as_str().map(str::to_owned));
            let was_healthy = m.healthy;
            if pod.is_some() && m.volume.is_none() {
                m.volume = claim.clone();
            }
            // A member whose claim changed under it lost its data: it crash-loops.
            m.healthy = pod.is_some() && m.volume.is_some() && m.volume == claim;
            if m.is_learner && was_healthy && m.healthy {
                m.in_sync = true;
            }
            if !m.is_learner {
                m.in_sync = true;
            }
        }
        let lost: Vec<u64> = state
            .members
            .iter()
            .filter(|m| m.volume.is_some() && !m.healthy)
            .map(|m| m.ordinal)
            .collect();
        drop(state);
        for ordinal in lost {
            if let Some(mut pod) = api.get(&pod_path(ordinal)) {
                pod["status"] = json!({"containerStatuses": [{"name": "raftkv", "image": image, "imageID": "", "ready": false,
                    "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
                api.insert(&pod_path(ordinal), pod);
            }
        }
    }

    // Pods and claims follow the StatefulSet.
    for ordinal in 0..10u64 {
        let path = pod_path(ordinal);
        if ordinal >= replicas {
            api.remove(&path);
            continue;
        }
        if api.get(&claim_path(ordinal)).is_none() {
            api.insert(
                &claim_path(ordinal),
                json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                       "metadata": {"name": format!("data-demo-{ordinal}"), "namespace": "prod",
                                    "labels": {"app.kubernetes.io/name": "raftkv", "app.kubernetes.io/instance": "demo"}}}),
            );
        }
        if api.get(&path).is_none() {
            api.insert(
                &path,
                json!({"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": format!("demo-{ordinal}"), "namespace": "prod",
                                    "labels": {"app.kubernetes.io/name": "raftkv", "app.kubernetes.io/instance": "demo",
                                               "controller-revision-hash": revision}},
                       "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
            );
        }
    }

    // Ordinal 0 founds the cluster once its pod runs.
    let mut state = etcd.state();
    if state.members.is_empty() && api.get(&pod_path(0)).is_some() {
        state.next_id += 1;
        let id = 0x100 + state.next_id;
        state.members.push(FakeMember {
            id,
            ordinal: 0,
            is_learner: false,
            healthy: true,
            in_sync: true,
            volume: None,
            db_size: 1 << 20,
            db_size_in_use: 1 << 20,
        });
        state.leader = Some(id);
    }
}

struct Harness {
    api: FakeApi,
    etcd: FakeEtcd,
    ctx: Arc<Context<FakeEtcd>>,
}

impl Harness {
    fn new(replicas: u64) -> Harness {
        let api = FakeApi::default();
        api.insert(
            KVC,
            json!({"apiVersion": "raftkv.io/v1alpha1", "kind": "KvCluster",
                   "metadata": {"name": "demo", "namespace": "prod", "generation": 1},
                   "spec": {"replicas": replicas, "version": "0.1.0"}}),
        );
        let etcd = FakeEtcd {
            state: Arc::default(),
            api: api.clone(),
        };
        let ctx = Harness::context(&api, &etcd);
        Harness { api, etcd, ctx }
    }

    /// A fresh operator process: new client, recorder and metrics; only
    /// what the API server holds survives.
    fn context(api: &FakeApi, etcd: &FakeEtcd) -> Arc<Context<FakeEtcd>> {
        let client = api.client();
        let etcd = etcd.clone();
        Arc::new(Context {
            client: client.clone(),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "raftkv-operator".into(),
                    instance: None,
                },
            ),
            metrics: Arc::new(Metrics::default()),
            connect: Box::new(move |_, _| etcd.clone()),
        })
    }

    fn kvc(&self) -> KvCluster {
        serde_json::from_value(self.api.get(KVC).expect("the KvCluster")).expect("a KvCluster")
    }

    fn edit(&self, edit: impl FnOnce(&mut Value)) {
        let mut kvc = self.api.get(KVC).expect("the KvCluster");
        edit(&mut kvc);
        kvc["metadata"]["generation"] =
            json!(kvc["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
        self.api.insert(KVC, kvc);
    }

    async fn reconcile(&self) -> Result<Action, raftkv_operator::controller::Error> {
        reconcile(Arc::new(self.kvc()), self.ctx.clone()).await
    }

    fn settled(&self) -> bool {
        let kvc = self.kvc();
        let Some(status) = &kvc.status else {
            return false;
        };
        let state = self.etcd.state();
        let voters = state
            .members
            .iter()
            .filter(|m| !m.is_learner && m.healthy)
            .count();
        let sts = self.api.get(STS).unwrap_or_default();
        let revision = sts["status"]["updateRevision"].clone();
        let pods_current = (0..kvc.spec.replicas as u64).all(|o| {
            self.api
                .get(&pod_path(o))
                .is_some_and(|p| p["metadata"]["labels"]["controller-revision-hash"] == revision)
        });
        status.operation.is_none()
            && voters == kvc.spec.replicas as usize
            && state.members.len() == voters
            && sts["spec"]["replicas"] == json!(kvc.spec.replicas)
            && pods_current
            && status.ready_replicas == kvc.spec.replicas
    }

    /// Reconciles and lets time pass until the cluster is as asked.
    async fn converge(&self) {
        for _ in 0..200 {
            let outcome = self.reconcile().await;
            assert!(outcome.is_ok(), "reconcile failed: {outcome:?}");
            tick(&self.api, &self.etcd);
            if self.settled() {
                // One more round writes the settled status.
                self.reconcile().await.expect("reconcile");
                return;
            }
        }
        panic!("no convergence; log:\n{}", self.log().join("\n"));
    }

    fn log(&self) -> Vec<String> {
        self.api.state().log.clone()
    }

    fn etcd_calls(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter_map(|l| l.strip_prefix("etcd ").map(str::to_owned))
            .collect()
    }

    fn member_id(&self, ordinal: u64) -> u64 {
        self.etcd
            .state()
            .members
            .iter()
            .find(|m| m.ordinal == ordinal)
            .map(|m| m.id)
            .expect("member")
    }
}

async fn within<F: std::future::Future>(scenario: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), scenario)
        .await
        .expect("the scenario timed out")
}

fn position(log: &[String], what: &str) -> usize {
    log.iter()
        .position(|l| l.contains(what))
        .unwrap_or_else(|| panic!("{what} not in {log:#?}"))
}

#[tokio::test]
async fn create_founds_with_ordinal_zero_and_grows_one_learner_at_a_time() {
    within(async {
        let h = Harness::new(3);
        // The first reconciliation only adds the finalizer.
        assert_eq!(
            h.reconcile().await.expect("reconcile"),
            Action::await_change()
        );
        assert_eq!(
            h.kvc().metadata.finalizers,
            Some(vec!["raftkv.io/cleanup".to_owned()])
        );
        assert!(h.api.get(STS).is_none());
        // The next creates the objects: one founding pod, told to found.
        h.reconcile().await.expect("reconcile");
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["replicas"], 1);
        assert_eq!(
            h.api.get(CONFIGMAP).expect("cm")["data"]["RAFTKV_INITIAL_CLUSTER_STATE"],
            "new"
        );
        for path in [
            "/api/v1/namespaces/prod/services/demo",
            "/api/v1/namespaces/prod/services/demo-peer",
            "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/demo",
        ] {
            let object = h.api.get(path).unwrap_or_else(|| panic!("{path} missing"));
            assert_eq!(
                object["metadata"]["ownerReferences"][0]["kind"],
                "KvCluster"
            );
        }
        h.converge().await;

        assert_eq!(
            h.etcd_calls(),
            [
                "MemberAdd demo-1",
                "MemberPromote demo-1",
                "MemberAdd demo-2",
                "MemberPromote demo-2"
            ]
        );
        let cm = h.api.get(CONFIGMAP).expect("cm");
        assert_eq!(cm["data"]["RAFTKV_INITIAL_CLUSTER_STATE"], "existing");
        assert!(
            cm["data"]["RAFTKV_INITIAL_CLUSTER"]
                .as_str()
                .expect("initial cluster")
                .contains("demo-2=")
        );
        let status = h.kvc().status.expect("status");
        assert_eq!(status.leader.as_deref(), Some("demo-0"));
        assert_eq!((status.replicas, status.ready_replicas), (3, 3));
        assert_eq!(status.observed_generation, Some(1));
        let available = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .expect("Available");
        assert_eq!(available.status, "True");
        // Each MemberAdd came after the status recording it.
        let log = h.log();
        for ordinal in [1, 2] {
            let add = position(&log, &format!("etcd MemberAdd demo-{ordinal}"));
            let recorded = log[..add]
                .iter()
                .rev()
                .find(|l| l.contains("/status operation="))
                .expect("a status write");
            assert!(
                recorded.contains("ScaleOut")
                    && recorded.contains(&format!("\"ordinal\":{ordinal}")),
                "{recorded}"
            );
        }
        assert!(
            log.iter()
                .any(|l| l.starts_with("POST") && l.contains("ScaleOutStarted")),
            "events: {log:#?}"
        );
    })
    .await;
}

#[tokio::test]
async fn scale_three_to_five_and_back_moves_leadership_first_and_reclaims_volumes() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        h.edit(|k| k["spec"]["replicas"] = json!(5));
        h.converge().await;
        assert_eq!(h.etcd.state().members.len(), 5);
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["replicas"], 5);

        let top = h.member_id(4);
        h.etcd.state().leader = Some(top);
        h.edit(|k| {
            k["spec"]["replicas"] = json!(3);
            k["spec"]["storage"] = json!({"size": "8Gi", "reclaimPolicy": "Delete"});
        });
        h.converge().await;
        let calls = h.etcd_calls();
        let shrink: Vec<&String> = calls
            .iter()
            .skip_while(|c| !c.starts_with("MoveLeader"))
            .collect();
        assert!(
            shrink[0].starts_with("MoveLeader demo-4 -> demo-0"),
            "{calls:?}"
        );
        assert!(shrink[1].starts_with("MemberRemove demo-4"), "{calls:?}");
        assert!(shrink[2].starts_with("MemberRemove demo-3"), "{calls:?}");
        assert_eq!(shrink.len(), 3, "{calls:?}");
        assert!(h.api.get(&claim_path(4)).is_none() && h.api.get(&claim_path(3)).is_none());
        assert!(h.api.get(&claim_path(2)).is_some());
        // The StatefulSet shrank only after each removal.
        let log = h.log();
        assert!(
            position(&log, "MemberRemove demo-4")
                < position(
                    &log,
                    "DELETE /api/v1/namespaces/prod/persistentvolumeclaims/data-demo-4"
                )
        );
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_restarts_one_member_at_a_time_the_leader_last() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        let before = h.log().len();
        h.edit(|k| k["spec"]["version"] = json!("0.2.0"));
        h.converge().await;
        let log: Vec<String> = h.log()[before..].to_vec();
        let deletes: Vec<&String> = log
            .iter()
            .filter(|l| l.starts_with("DELETE /api/v1/namespaces/prod/pods/"))
            .collect();
        assert_eq!(deletes.len(), 3, "{deletes:?}");
        assert!(
            deletes[0].ends_with("demo-2")
                && deletes[1].ends_with("demo-1")
                && deletes[2].ends_with("demo-0")
        );
        assert!(
            position(&log, "MoveLeader demo-0") < position(&log, "pods/demo-0"),
            "{log:#?}"
        );
        assert!(
            h.etcd_calls()
                .iter()
                .all(|c| !c.starts_with("MemberAdd demo-0"))
        );
        let sts = h.api.get(STS).expect("sts");
        assert_eq!(
            sts["spec"]["template"]["spec"]["containers"][0]["image"],
            "raftkv/raftkv:0.2.0"
        );
    })
    .await;
}

#[tokio::test]
async fn a_member_that_lost_its_volume_is_removed_and_joins_again_as_a_new_member() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        let old = h.member_id(1);
        // The node under demo-1 died with its disk: new pod, new empty claim.
        h.api.remove(&claim_path(1));
        h.api.remove(&pod_path(1));
        tick(&h.api, &h.etcd);
        tick(&h.api, &h.etcd);
        h.converge().await;
        let calls = h.etcd_calls();
        let heal: Vec<&String> = calls
            .iter()
            .skip_while(|c| !c.starts_with("MemberRemove"))
            .collect();
        assert_eq!(heal.len(), 3, "{calls:?}");
        assert_eq!(*heal[0], format!("MemberRemove demo-1 {old:x}"));
        assert_eq!(*heal[1], "MemberAdd demo-1");
        assert_eq!(*heal[2], "MemberPromote demo-1");
        assert_ne!(h.member_id(1), old);
        // Removed, then a fresh volume, then added again.
        let log = h.log();
        let removed = position(&log, "MemberRemove demo-1");
        let after: Vec<String> = log[removed..].to_vec();
        let claim_deleted = position(
            &after,
            "DELETE /api/v1/namespaces/prod/persistentvolumeclaims/data-demo-1",
        );
        assert!(claim_deleted < position(&after, "DELETE /api/v1/namespaces/prod/pods/demo-1"));
        assert!(claim_deleted < position(&after, "MemberAdd demo-1"));
        assert!(
            log.iter()
                .any(|l| l.starts_with("POST") && l.contains("MemberCrashLooping")),
            "{log:#?}"
        );
    })
    .await;
}

#[tokio::test]
async fn an_operator_restarted_mid_step_resumes_without_repeating_it() {
    within(async {
        let mut h = Harness::new(3);
        h.converge().await;
        h.edit(|k| k["spec"]["replicas"] = json!(4));
        // MemberAdd succeeds, then the operator dies before it writes status.
        h.etcd.state().crash_after_add = true;
        assert!(h.reconcile().await.is_err());
        assert_eq!(
            h.etcd_calls()
                .iter()
                .filter(|c| *c == "MemberAdd demo-3")
                .count(),
            1
        );
        // A new operator process: only the recorded operation survives.
        h.ctx = Harness::context(&h.api, &h.etcd);
        h.converge().await;
        assert_eq!(
            h.etcd_calls()
                .iter()
                .filter(|c| *c == "MemberAdd demo-3")
                .count(),
            1,
            "{:?}",
            h.etcd_calls()
        );
        assert_eq!(h.etcd.state().members.len(), 4);
    })
    .await;
}

#[tokio::test]
async fn a_paused_cluster_is_reported_but_not_changed() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        h.edit(|k| {
            k["spec"]["paused"] = json!(true);
            k["spec"]["replicas"] = json!(5);
            k["spec"]["version"] = json!("0.2.0");
        });
        let before = h.log().len();
        for _ in 0..5 {
            h.reconcile().await.expect("reconcile");
            tick(&h.api, &h.etcd);
        }
        let log = h.log()[before..].to_vec();
        let writes: Vec<&String> = log
            .iter()
            .filter(|l| {
                (l.starts_with("PATCH") && !l.contains("/status"))
                    || l.starts_with("DELETE")
                    || l.starts_with("etcd")
            })
            .collect();
        assert!(writes.is_empty(), "{writes:#?}");
        let status = h.kvc().status.expect("status");
        assert_eq!(status.phase, raftkv_operator::crd::Phase::Paused);
        assert_eq!(status.ready_replicas, 3);
    })
    .await;
}

/// A spec.tls the CRD refuses (members requiring client certificates, and
/// none named for the operator) is refused by the operator too under an API
/// server that did not enforce the CRD's rules, creating nothing.
#[tokio::test]
async fn a_cluster_with_tls_the_crd_refuses_is_refused_and_nothing_is_made() {
    within(async {
        let h = Harness::new(3);
        h.edit(|k| k["spec"]["tls"] = json!({"clientSecretName": "client-tls"}));
        // The first reconciliation only adds the finalizer.
        h.reconcile().await.expect("the finalizer added");
        let err = h.reconcile().await.expect_err("spec.tls must be refused");
        assert!(err.to_string().contains("operatorSecretName must name the client certificate"), "{err}");
        let made: Vec<String> = h.log().into_iter().filter(|l| l.starts_with("PATCH") && !l.contains("/kvclusters/")).collect();
        assert!(made.is_empty(), "{made:#?}");
    })
    .await;
}

/// A cluster whose TLS Secret does not exist yet: the operator says which,
/// and makes no member that could not start.
#[tokio::test]
async fn a_cluster_whose_tls_secret_is_missing_waits_for_it_and_says_so() {
    within(async {
        let h = Harness::new(3);
        h.edit(|k| k["spec"]["tls"] = json!({"clientSecretName": "client-tls", "clientCertAuth": false}));
        h.reconcile().await.expect("the finalizer added");
        let err = h.reconcile().await.expect_err("a missing Secret");
        assert!(err.to_string().contains("the TLS Secret client-tls does not exist"), "{err}");
        let made: Vec<String> = h.log().into_iter().filter(|l| l.starts_with("PATCH") && !l.contains("/kvclusters/")).collect();
        assert!(made.is_empty(), "{made:#?}");
        // Said where kubectl describe shows it, not only in the log.
        assert!(h.log().iter().any(|l| l.starts_with("POST") && l.contains("TLSNotReady")), "{:#?}", h.log());
    })
    .await;
}

/// With a cert-manager issuer: the three Certificates are applied first;
/// until cert-manager has written their Secrets the operator makes no
/// member and says which Secret it waits for; then the members are made,
/// the operator reaching them with the client CA and its own
/// certificate read from the Secrets, a renewed Secret used from the next
/// reconciliation on.
#[tokio::test]
async fn a_cert_manager_cluster_gets_its_certificates_and_is_reached_with_their_secrets() {
    within(async {
        let mut h = Harness::new(3);
        let seen: Arc<Mutex<Vec<Option<ClientTls>>>> = Arc::default();
        let (etcd, record) = (h.etcd.clone(), seen.clone());
        let mut ctx = Harness::context(&h.api, &h.etcd);
        if let Some(c) = Arc::get_mut(&mut ctx) {
            c.connect = Box::new(move |_, tls| {
                record.lock().unwrap_or_else(PoisonError::into_inner).push(tls);
                etcd.clone()
            });
        }
        h.ctx = ctx;
        h.edit(|k| k["spec"]["tls"] = json!({"certManager": {"name": "ca", "kind": "ClusterIssuer"}}));
        h.reconcile().await.expect("the finalizer added");
        let err = h.reconcile().await.expect_err("no Secret yet");
        assert!(err.to_string().contains("the TLS Secret demo-client-tls does not exist"), "{err}");
        for name in ["demo-client-tls", "demo-peer-tls", "demo-operator-tls"] {
            let cert = h.api.get(&format!("/apis/cert-manager.io/v1/namespaces/prod/certificates/{name}")).expect(name);
            assert_eq!(cert["spec"]["secretName"], name);
            assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        }
        assert!(h.api.get(STS).is_none(), "a StatefulSet before its Secrets exist");

        // cert-manager issues them.
        let secret = |name: &str, crt: &str| {
            let b64 = |s: &str| json!(k8s_openapi::ByteString(s.as_bytes().to_vec()));
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": name, "namespace": "prod"},
                   "data": {"tls.crt": b64(crt), "tls.key": b64(&format!("{crt} key")), "ca.crt": b64("the CA")}})
        };
        for name in ["demo-client-tls", "demo-peer-tls"] {
            h.api.insert(&format!("/api/v1/namespaces/prod/secrets/{name}"), secret(name, "member"));
        }
        h.api.insert("/api/v1/namespaces/prod/secrets/demo-operator-tls", secret("demo-operator-tls", "operator v1"));
        // (The fake cluster's members advertise http URLs: the scenario
        // stops at the founding member, reached over TLS.)
        for _ in 0..3 {
            h.reconcile().await.expect("reconcile");
            tick(&h.api, &h.etcd);
        }
        let sts = h.api.get(STS).expect("the StatefulSet");
        let args = sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains("--listen-client-urls=https://") && args.contains("--peer-client-cert-auth"), "{args}");
        let expected = |crt: &str| ClientTls { ca: b"the CA".to_vec(), identity: Some((crt.as_bytes().to_vec(), format!("{crt} key").into_bytes())) };
        let last = seen.lock().unwrap_or_else(PoisonError::into_inner).last().cloned().flatten();
        assert_eq!(last, Some(expected("operator v1")));

        // Renewed: the next reconciliation presents the new certificate.
        h.api.insert("/api/v1/namespaces/prod/secrets/demo-operator-tls", secret("demo-operator-tls", "operator v2"));
        h.reconcile().await.expect("reconcile");
        let last = seen.lock().unwrap_or_else(PoisonError::into_inner).last().cloned().flatten();
        assert_eq!(last, Some(expected("operator v2")));
    })
    .await;
}

#[tokio::test]
async fn deletion_runs_cleanup_then_releases_the_finalizer() {
    within(async {
        let h = Harness::new(1);
        h.converge().await;
        h.edit(|k| k["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z"));
        assert_eq!(
            h.reconcile().await.expect("reconcile"),
            Action::await_change()
        );
        // The last finalizer released, the API server removes the object.
        assert!(h.api.get(KVC).is_none(), "the finalizer was not released");
        assert!(
            h.log()
                .iter()
                .any(|l| l.starts_with("POST") && l.contains("Deleting"))
        );
    })
    .await;
}

#[tokio::test]
async fn the_error_policy_counts_the_failure_and_requeues() {
    within(async {
        let h = Harness::new(3);
        h.reconcile().await.expect("the finalizer");
        h.api.fail("GET", "/statefulsets/demo", 1);
        let error = h.reconcile().await.expect_err("the API failed");
        assert_eq!(error.metric_label(), "kube");
        let action = error_policy(Arc::new(h.kvc()), &error, h.ctx.clone());
        assert_eq!(action, Action::requeue(Duration::from_secs(10)));
        let metrics = h.ctx.metrics.encode().expect("metrics");
        assert!(metrics.contains(r#"raftkv_operator_reconcile_failures_total{namespace="prod",name="demo",error="kube"} 1"#), "{metrics}");
        // And the next reconciliation goes on.
        h.reconcile().await.expect("reconcile");
    })
    .await;
}

/// The RBAC rules (`raftkv_operator::rbac`, which the chart grants) are
/// exactly what the operator uses: the fake API refuses any call they do
/// not allow (so every scenario above also proves they cover its calls),
/// and after every scenario has run, each granted verb was either called
/// or is the controller's list and watch of a kind it watches.
#[test]
fn the_rbac_rules_grant_exactly_the_calls_the_operator_makes() {
    create_founds_with_ordinal_zero_and_grows_one_learner_at_a_time();
    scale_three_to_five_and_back_moves_leadership_first_and_reclaims_volumes();
    an_upgrade_restarts_one_member_at_a_time_the_leader_last();
    a_member_that_lost_its_volume_is_removed_and_joins_again_as_a_new_member();
    an_operator_restarted_mid_step_resumes_without_repeating_it();
    a_paused_cluster_is_reported_but_not_changed();
    deletion_runs_cleanup_then_releases_the_finalizer();
    a_cert_manager_cluster_gets_its_certificates_and_is_reached_with_their_secrets();
    the_error_policy_counts_the_failure_and_requeues();
    backups::a_backup_runs_a_job_against_a_follower_and_records_its_report();
    backups::bad_backups_fail_with_a_clear_error_and_start_no_job();
    backups::a_schedule_takes_backups_one_at_a_time_and_prunes_to_its_retention();
    backups::a_schedule_that_does_not_parse_says_so_and_takes_nothing();
    backups::a_restored_cluster_waits_for_its_backup_then_restores_its_founding_member();
    backups::a_restore_onto_a_volume_from_before_is_refused();
    backups::deleting_a_backup_deletes_its_stored_snapshot_under_delete_only();
    maintenance::a_threshold_defragments_followers_first_and_the_leader_last();
    maintenance::nospace_is_remediated_and_data_that_does_not_fit_is_said_once();
    recovery::the_survivor_is_forced_into_a_new_cluster_and_the_cluster_grows_back();
    recovery::forcing_a_cluster_that_has_a_leader_or_another_ordinal_is_refused();

    let mut used: std::collections::BTreeSet<(String, String, String)> = fake_api::CALLS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (group, resource) in raftkv_operator::rbac::WATCHED {
        for verb in ["list", "watch"] {
            used.insert((group.to_string(), resource.to_string(), verb.to_owned()));
        }
    }
    let granted: std::collections::BTreeSet<(String, String, String)> =
        raftkv_operator::rbac::grants()
            .into_iter()
            .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
            .collect();
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?}");
    let refused: Vec<_> = used.difference(&granted).collect();
    assert!(refused.is_empty(), "used but not granted: {refused:?}");
}

#[test]
fn requests_map_to_rbac_attributes_as_the_api_server_sees_them() {
    use fake_api::rbac_attributes as attrs;
    let t = |g: &str, r: &str, v: &str| (g.to_owned(), r.to_owned(), v.to_owned());
    assert_eq!(
        attrs("GET", "/api/v1/namespaces/prod/pods", ""),
        t("", "pods", "list")
    );
    assert_eq!(
        attrs(
            "GET",
            "/apis/apps/v1/statefulsets",
            "watch=true&resourceVersion=1"
        ),
        t("apps", "statefulsets", "watch")
    );
    assert_eq!(
        attrs("GET", "/apis/apps/v1/namespaces/prod/statefulsets/demo", ""),
        t("apps", "statefulsets", "get")
    );
    assert_eq!(
        attrs(
            "PATCH",
            "/apis/raftkv.io/v1alpha1/namespaces/prod/kvclusters/demo/status",
            ""
        ),
        t("raftkv.io", "kvclusters/status", "patch")
    );
    assert_eq!(
        attrs(
            "DELETE",
            "/api/v1/namespaces/prod/persistentvolumeclaims/data-demo-4",
            ""
        ),
        t("", "persistentvolumeclaims", "delete")
    );
    assert_eq!(
        attrs("POST", "/apis/events.k8s.io/v1/namespaces/prod/events", ""),
        t("events.k8s.io", "events", "create")
    );
}
