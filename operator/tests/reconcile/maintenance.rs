//! Maintenance scenarios: defragmentation past a threshold and NOSPACE
//! remediation, through the real reconciler on the in-memory API and the
//! fake raft cluster (whose compaction frees half of each member's data
//! and whose defragmentation returns the free space).

use serde_json::json;

use super::{Harness, position, within};

const MIB: i64 = 1 << 20;

fn set_sizes(h: &Harness, size: i64, in_use: i64) {
    for m in &mut h.etcd.state().members {
        m.db_size = size;
        m.db_size_in_use = in_use;
    }
}

async fn run_maintenance(h: &Harness, rounds: usize) {
    for _ in 0..rounds {
        h.reconcile().await.expect("reconcile");
        super::tick(&h.api, &h.etcd);
    }
}

fn maintenance_condition(h: &Harness) -> (String, String) {
    let c = h.kvc().status.expect("status").conditions.into_iter().find(|c| c.type_ == "Maintenance").expect("a Maintenance condition");
    (c.status, c.reason)
}

#[tokio::test]
pub async fn a_threshold_defragments_followers_first_and_the_leader_last() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        let leader = h.etcd.state().leader.expect("a leader");
        let leader_name = format!("demo-{}", h.etcd.ordinal_of(leader));
        set_sizes(&h, 100 * MIB, 40 * MIB);
        h.edit(|k| k["spec"]["maintenance"] = json!({"defragmentation": {"minFreeBytes": "50Mi"}}));
        run_maintenance(&h, 12).await;

        let calls = h.etcd_calls();
        let defrags: Vec<&String> = calls.iter().filter(|c| c.starts_with("Defragment")).collect();
        assert_eq!(defrags.len(), 3, "{calls:#?}");
        assert_eq!(defrags[2], &format!("Defragment {leader_name}"), "the leader is not last: {calls:#?}");
        let moved = position(&calls, &format!("MoveLeader {leader_name}"));
        assert!(moved < position(&calls, &format!("Defragment {leader_name}")), "{calls:#?}");
        assert!(!calls.iter().any(|c| c.starts_with("Compact")), "a threshold run compacted: {calls:#?}");
        let status = h.kvc().status.expect("status");
        let m = status.maintenance.expect("maintenance status");
        assert!(m.run.is_none() && m.last_defragmentation.is_some(), "{m:?}");
        assert_eq!(maintenance_condition(&h), ("False".into(), "Idle".into()));
        // The free space went: no second run.
        run_maintenance(&h, 3).await;
        assert_eq!(h.etcd_calls().iter().filter(|c| c.starts_with("Defragment")).count(), 3);
    })
    .await;
}

#[tokio::test]
pub async fn nospace_is_remediated_and_data_that_does_not_fit_is_said_once() {
    within(async {
        let h = Harness::new(3);
        h.converge().await;
        // 150 MiB in use of a 256 MiB quota: compaction halves it, it fits.
        h.edit(|k| k["spec"]["server"] = json!({"quotaBackendBytes": "256Mi"}));
        h.converge().await;
        set_sizes(&h, 256 * MIB, 150 * MIB);
        let first = h.etcd.state().members[0].id;
        h.etcd.state().nospace = vec![first];
        h.etcd.state().revision = 4242;
        run_maintenance(&h, 12).await;
        let calls = h.etcd_calls();
        let compact = position(&calls, "Compact 4242");
        let defrags: Vec<usize> = calls.iter().enumerate().filter(|(_, c)| c.starts_with("Defragment")).map(|(i, _)| i).collect();
        let disarm = position(&calls, "AlarmDisarm NOSPACE");
        assert_eq!(defrags.len(), 3, "{calls:#?}");
        assert!(compact < defrags[0] && defrags[2] < disarm, "compact, defragment, disarm: {calls:#?}");
        assert!(h.etcd.state().nospace.is_empty());
        assert!(h.log().iter().any(|l| l.contains("AlarmDisarmed")), "no event");

        // Again, with more live data than the quota: said, not looped.
        set_sizes(&h, 256 * MIB, 500 * MIB);
        h.etcd.state().nospace = vec![first];
        run_maintenance(&h, 15).await;
        let calls = h.etcd_calls();
        assert_eq!(calls.iter().filter(|c| c.starts_with("AlarmDisarm")).count(), 1, "disarmed data that does not fit: {calls:#?}");
        assert_eq!(calls.iter().filter(|c| c.starts_with("Compact")).count(), 2, "remediated twice: {calls:#?}");
        assert_eq!(maintenance_condition(&h), ("False".into(), "DataExceedsQuota".into()));
        assert!(h.log().iter().any(|l| l.contains("DataExceedsQuota")), "no warning");
        assert_eq!(h.kvc().status.expect("status").maintenance.expect("m").data_exceeds_quota, Some(256 * MIB));
    })
    .await;
}
