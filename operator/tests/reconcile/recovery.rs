//! Quorum-loss recovery scenarios: two of three members gone for good, a
//! person names the survivor with the annotation, the operator forces it
//! into a cluster of one and the planner grows the cluster back; and the
//! annotation refused where it must be.

use serde_json::json;

use super::{Harness, STS, within};

const CONFIGMAP: &str = "/api/v1/namespaces/prod/configmaps/demo-bootstrap";

fn lose_all_but_ordinal_zero(h: &Harness) {
    let mut state = h.etcd.state();
    for m in &mut state.members {
        if m.ordinal != 0 {
            m.healthy = false;
        }
    }
    state.leader = None;
}

fn annotate(h: &Harness, member: &str) {
    h.edit(|k| k["metadata"]["annotations"] = json!({"raftkv.io/force-new-cluster": member}));
}

fn annotation(h: &Harness) -> Option<String> {
    h.kvc().metadata.annotations.and_then(|a| a.get("raftkv.io/force-new-cluster").cloned())
}

#[tokio::test]
pub async fn the_survivor_is_forced_into_a_new_cluster_and_the_cluster_grows_back() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        lose_all_but_ordinal_zero(&h);
        // Without the annotation nothing is forced, however long it lasts.
        for _ in 0..3 {
            h.reconcile().await.expect("reconcile");
        }
        assert!(h.kvc().status.expect("status").recovery.is_none());
        assert!(h.api.get(CONFIGMAP).expect("configmap")["data"]["RAFTKV_FORCE_NEW_CLUSTER"].is_null());

        annotate(&h, "demo-0");
        h.reconcile().await.expect("reconcile");
        let recovery = h.kvc().status.expect("status").recovery.expect("a recovery");
        assert_eq!((recovery.member.as_str(), recovery.lost.clone()), ("demo-0", vec!["demo-1".to_owned(), "demo-2".to_owned()]));
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["replicas"], 1);
        assert_eq!(h.api.get(CONFIGMAP).expect("configmap")["data"]["RAFTKV_FORCE_NEW_CLUSTER"], "true");
        assert!(h.log().iter().any(|l| l.starts_with("DELETE") && l.ends_with("/pods/demo-0")), "the survivor was not restarted");

        // raftkv forced itself: a cluster of one with the survivor leading.
        {
            let mut state = h.etcd.state();
            state.members.retain(|m| m.ordinal == 0);
            state.leader = state.members.first().map(|m| m.id);
        }
        // The restarted pod comes back (the kubelet), then the operator
        // sees a cluster of one.
        for _ in 0..5 {
            super::tick(&h.api, &h.etcd);
            h.reconcile().await.expect("reconcile");
            if h.kvc().status.and_then(|s| s.recovery).is_some_and(|r| r.completed_at.is_some()) {
                break;
            }
        }
        let status = h.kvc().status.expect("status");
        assert!(status.recovery.as_ref().is_some_and(|r| r.completed_at.is_some()), "{:?}", status.recovery);
        assert!(h.api.get(CONFIGMAP).expect("configmap")["data"]["RAFTKV_FORCE_NEW_CLUSTER"].is_null(), "the flag stayed");
        assert_eq!(annotation(&h), None, "the annotation stayed");
        for o in [1, 2] {
            assert!(h.api.get(&format!("/api/v1/namespaces/prod/persistentvolumeclaims/data-demo-{o}")).is_none(), "the lost member {o}'s volume stayed");
        }
        let before = h.etcd_calls().len();
        h.converge().await;
        let regrowth: Vec<String> = h.etcd_calls()[before..].iter().filter(|c| c.starts_with("MemberAdd")).cloned().collect();
        assert_eq!(regrowth, ["MemberAdd demo-1", "MemberAdd demo-2"]);
        assert!(h.log().iter().any(|l| l.contains("ForcingNewCluster")) && h.log().iter().any(|l| l.contains("Recovered")));
    })
    .await;
}

#[tokio::test]
pub async fn forcing_a_cluster_that_has_a_leader_or_another_ordinal_is_refused() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        annotate(&h, "demo-0");
        h.reconcile().await.expect("reconcile");
        assert_eq!(annotation(&h), None, "a refused annotation stayed");
        assert!(h.kvc().status.expect("status").recovery.is_none());
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["replicas"], 3);

        lose_all_but_ordinal_zero(&h);
        annotate(&h, "demo-2");
        h.reconcile().await.expect("reconcile");
        assert!(h.kvc().status.expect("status").recovery.is_none());
        assert_eq!(h.api.get(STS).expect("sts")["spec"]["replicas"], 3);
        assert_eq!(h.log().iter().filter(|l| l.contains("RecoveryRefused")).count(), 1, "kube's recorder patches a repeated event");
    })
    .await;
}
