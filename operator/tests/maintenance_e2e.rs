//! The operator's maintenance planner and executor (`raftkv_operator::
//! maintenance`, as the controller runs them) against a real three-member
//! raftkv cluster with a small quota: writers overwrite a few keys until
//! the members raise NOSPACE; the remediation compacts, defragments the
//! followers, moves leadership off the leader and defragments it last,
//! and disarms the alarm; writes then resume, and every acknowledged write
//! is there. A scheduled run on the healthy cluster takes the same order
//! and compacts nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use raftkv_operator::crd::{MaintenanceReason, MaintenanceStatus};
use raftkv_operator::maintenance::{self as mt, Step};
use raftkv_operator::members::{Membership, MembershipApi};
use raftkv_tests::{Cluster, Flavor};

const QUOTA: i64 = 16 << 20;

/// Runs the planner and executor until the run ends; the steps taken.
async fn run_to_the_end(membership: &Membership, status: &mut MaintenanceStatus, schedule_due: bool) -> anyhow::Result<Vec<(Step, Option<String>)>> {
    let mut taken = Vec::new();
    for _ in 0..60 {
        let report = membership.observe().await?;
        let nospace = membership.alarms().await?.iter().any(|(_, a)| a == "NOSPACE");
        let members = mt::members_of(&report);
        let leader = members.iter().find(|m| m.is_leader).map(|m| m.name.clone());
        let step = mt::next(&mt::Input {
            spec: None,
            quota: QUOTA,
            members: &members,
            nospace,
            revision: report.revision,
            status,
            membership_idle: true,
            schedule_due: schedule_due && taken.is_empty(),
            requested: false,
        });
        if step == Step::None {
            return Ok(taken);
        }
        if let Step::Wait(why) = &step {
            // A member answering slowly after its defragmentation.
            tracing_wait(why);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        mt::take(&step, membership, status, QUOTA, k8s_openapi::jiff::Timestamp::now()).await?;
        taken.push((step, leader));
    }
    bail!("the maintenance run did not end: {taken:#?}")
}

fn tracing_wait(why: &str) {
    eprintln!("maintenance waits: {why}");
}

fn defragmented(taken: &[(Step, Option<String>)]) -> Vec<(String, bool)> {
    taken
        .iter()
        .filter_map(|(s, leader)| match s {
            Step::Defragment { name, .. } => Some((name.clone(), leader.as_deref() == Some(name.as_str()))),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nospace_on_a_real_cluster_is_remediated_leader_last_and_nothing_acknowledged_is_lost() -> anyhow::Result<()> {
    let quota = QUOTA.to_string();
    let cluster = Cluster::start(Flavor::Raftkv, 3, &["--quota-backend-bytes", &quota]).await?;
    let membership = Membership::new(cluster.endpoints());
    let mut c = cluster.client(0).await?;

    // Overwrites of eight keys until NOSPACE: history fills the quota.
    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut refused = None;
    for i in 0..4096u64 {
        let key = format!("k/{}", i % 8);
        let value = raftkv_tests::noise(i, 64 << 10);
        match c.put(key.clone(), value.clone(), None).await {
            Ok(_) => {
                acked.insert(key, value);
            }
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.context("the quota was never reached")?;
    ensure!(refused.contains("database space exceeded"), "writes refused with {refused}");
    ensure!(membership.alarms().await?.iter().any(|(_, a)| a == "NOSPACE"), "no NOSPACE alarm");

    let mut status = MaintenanceStatus::default();
    let taken = run_to_the_end(&membership, &mut status, false).await?;
    let steps: Vec<&Step> = taken.iter().map(|(s, _)| s).collect();
    ensure!(matches!(steps.first(), Some(Step::Start(MaintenanceReason::NoSpace))), "{steps:#?}");
    ensure!(matches!(steps.get(1), Some(Step::Compact(_))), "{steps:#?}");
    ensure!(matches!(steps.last(), Some(Step::Disarm)), "{steps:#?}");
    let defrags = defragmented(&taken);
    ensure!(defrags.len() == 3 && defrags.iter().all(|(_, was_leader)| !was_leader), "a member was defragmented while it led: {taken:#?}");
    ensure!(steps.iter().any(|s| matches!(s, Step::MoveLeader { .. })), "leadership never moved: {steps:#?}");
    ensure!(membership.alarms().await?.is_empty(), "alarms left");
    ensure!(status.run.is_none() && status.last_defragmentation.is_some() && status.data_exceeds_quota.is_none(), "{status:?}");

    // Writes resume, and every acknowledged write is there.
    c.put("after", "remediation", None).await.context("a write after the remediation")?;
    for i in cluster.members() {
        let mut m = cluster.client(i).await?;
        for (key, value) in &acked {
            let got = m.get(key.as_str(), Some(etcd_client::GetOptions::new().with_serializable())).await?;
            let stored = got.kvs().first().map(|kv| kv.value().to_vec());
            ensure!(stored.as_deref() == Some(value.as_slice()), "member {i}: {key} is not its last acknowledged value");
        }
    }

    // A scheduled run: the same order, no compaction, no disarm.
    let taken = run_to_the_end(&membership, &mut status, true).await?;
    let steps: Vec<&Step> = taken.iter().map(|(s, _)| s).collect();
    ensure!(matches!(steps.first(), Some(Step::Start(MaintenanceReason::Schedule))), "{steps:#?}");
    ensure!(!steps.iter().any(|s| matches!(s, Step::Compact(_) | Step::Disarm)), "{steps:#?}");
    let defrags = defragmented(&taken);
    ensure!(defrags.len() == 3 && defrags.iter().all(|(_, was_leader)| !was_leader), "{taken:#?}");
    Ok(())
}
