//! The operator's own membership code against real raftkv processes on
//! loopback: a 3-member cluster scaled to 5 and back to 3 by the planner
//! and the executor, exactly as the controller runs them, with the
//! StatefulSet step played by starting and stopping local raftkv processes
//! (`--initial-cluster-state existing` for joiners, as the pods get it from
//! the bootstrap ConfigMap). Clients write through every founding member
//! the whole time; every acknowledged write must be on every member at the
//! end. A second scenario rolls a template change over a real cluster: each
//! member restarted once (kill -9 and start on its data, as a deleted pod
//! comes back), the leader last after leadership moved off it.
//!
//! Needs the server binary: `cargo build -p raftkv --bin raftkv` first (the
//! harness finds it next to the test executable).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use raftkv_operator::crd::Operation;
use raftkv_operator::members::{Membership, MembershipApi, WorkloadError, Workloads, execute};
use raftkv_operator::planner::{Action, Desired, Naming, Next, Observed, PodObs, plan};
use raftkv_tests::acked::{self, Ack};
use raftkv_tests::cluster::{Joining, eventually};
use raftkv_tests::{Cluster, Flavor};

/// How long one scaling may take, learners catching up included.
const CONVERGE: Duration = Duration::from_secs(180);
/// How long a member may take to hold everything committed.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Ordinal `o` is harness member `m{o}` on its proxy's peer URL.
struct Loopback {
    peer_urls: Vec<String>,
}

impl Naming for Loopback {
    fn member_name(&self, ordinal: u32) -> String {
        format!("m{ordinal}")
    }

    fn peer_url(&self, ordinal: u32) -> String {
        self.peer_urls
            .get(ordinal as usize)
            .cloned()
            .unwrap_or_default()
    }

    fn ordinal_of(&self, peer_url: &str) -> Option<u32> {
        self.peer_urls
            .iter()
            .position(|u| u == peer_url)
            .map(|o| o as u32)
    }
}

/// The StatefulSet, as processes: scaling up starts the next ordinals with
/// the initial cluster the operator computed, scaling down stops the
/// highest ones (already removed from raft by then).
struct Processes<'a> {
    cluster: &'a mut Cluster,
    joining: BTreeMap<u32, Joining>,
    replicas: u32,
    /// While rolling, the ordinals already restarted (on the "new template").
    rolled: Option<BTreeSet<u32>>,
}

impl Workloads for Processes<'_> {
    async fn scale(
        &mut self,
        replicas: u32,
        initial_cluster: &[(String, String)],
    ) -> Result<(), WorkloadError> {
        let initial_cluster: Vec<String> = initial_cluster
            .iter()
            .map(|(n, u)| format!("{n}={u}"))
            .collect();
        while self.replicas < replicas {
            let ordinal = self.replicas;
            let joining = self
                .joining
                .remove(&ordinal)
                .ok_or("no ports prepared for this ordinal")?;
            let index = self
                .cluster
                .join(joining, &format!("m{ordinal}"), &initial_cluster.join(","))
                .await?;
            if index != ordinal as usize {
                return Err(format!("harness index {index} for ordinal {ordinal}").into());
            }
            self.replicas += 1;
        }
        while self.replicas > replicas {
            self.cluster.removed(self.replicas as usize - 1).await?;
            self.replicas -= 1;
        }
        Ok(())
    }

    /// The pod deleted and started again by the StatefulSet: the process
    /// killed and restarted on its data.
    async fn restart_pod(&mut self, ordinal: u32) -> Result<(), WorkloadError> {
        let rolled = self.rolled.as_mut().ok_or("no rolling restart under way")?;
        rolled.insert(ordinal);
        self.cluster.kill9(ordinal as usize)?;
        self.cluster.restart(ordinal as usize).await?;
        Ok(())
    }

    async fn delete_volume(&mut self, _: u32) -> Result<(), WorkloadError> {
        Err("the scenario keeps volumes (reclaimPolicy Retain)".into())
    }

    async fn replace_volume(&mut self, _: u32) -> Result<(), WorkloadError> {
        Err("healing is not part of this scenario".into())
    }
}

/// The controller's loop without Kubernetes: observe, plan, record the
/// operation ("status"), take the step, until the plan is idle. Returns the
/// steps taken.
async fn converge(
    desired: u32,
    operation: &mut Option<Operation>,
    membership: &Membership,
    processes: &mut Processes<'_>,
    naming: &Loopback,
) -> anyhow::Result<Vec<Action>> {
    let deadline = Instant::now() + CONVERGE;
    let mut taken = Vec::new();
    let mut last = String::new();
    while Instant::now() < deadline {
        let report = membership.observe().await.ok();
        let obs = Observed {
            desired: Desired {
                replicas: desired,
                paused: false,
                delete_volumes: false,
            },
            operation: operation.clone(),
            statefulset_replicas: Some(processes.replicas),
            pods: (0..processes.replicas)
                .map(|o| {
                    (
                        o,
                        PodObs {
                            up_to_date: processes.rolled.as_ref().is_none_or(|r| r.contains(&o)),
                            // Its process runs: raft health says the rest.
                            ready: true,
                            ..PodObs::default()
                        },
                    )
                })
                .collect(),
            volumes: BTreeSet::new(),
            cluster: report.as_ref().map(|r| r.cluster.clone()),
        };
        let plan = plan(&obs, naming);
        *operation = plan.operation.clone();
        match (plan.next, &obs.cluster) {
            (Next::Idle, _) => return Ok(taken),
            (Next::Act(action), Some(cluster)) => {
                match execute(&action, membership, processes, cluster, naming).await {
                    Ok(()) => {
                        eprintln!("step {action:?}");
                        taken.push(action);
                        *operation = plan.after;
                    }
                    Err(err) if err.is_transient() => {
                        // etcd's strict reconfiguration check refuses a change
                        // for 5 s after the previous one: retried.
                        let refused = format!("refused {action:?}: {err}");
                        if refused != last {
                            eprintln!("{refused}");
                            last = refused;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(err) => bail!("{action:?} failed: {err}"),
                }
            }
            (next, _) => {
                let now = format!("{next:?}");
                if now != last {
                    eprintln!("wait {now}");
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    bail!("not converged to {desired} members within {CONVERGE:?}; last: {last}")
}

/// One writer per founding member putting distinct keys until stopped.
/// Membership changes may fail a put in flight (leader moved): only what
/// was acknowledged counts.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<Vec<Ack>>>>,
}

impl Writers {
    async fn start(cluster: &Cluster) -> anyhow::Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(AtomicBool::new(true));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let writer = acked::put_until(
                cluster.client(i).await?,
                format!("w{i}"),
                stop.clone(),
                fault.clone(),
            );
            tasks.push(tokio::spawn(writer));
        }
        Ok(Writers { stop, tasks })
    }

    /// Stops the writers; what they had acknowledged.
    async fn stop(self) -> anyhow::Result<Vec<Ack>> {
        self.stop.store(true, Ordering::SeqCst);
        let mut acks = Vec::new();
        for task in self.tasks {
            acks.extend(task.await.context("a writer panicked")??);
        }
        Ok(acks)
    }
}

fn count(steps: &[Action], what: fn(&Action) -> bool) -> usize {
    steps.iter().filter(|a| what(a)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_membership_scales_a_real_cluster_3_5_3_under_writes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let outcome = scenario(&mut cluster).await;
    outcome.with_context(|| format!("end of each member's log:\n{}", cluster.log_tails(30)))
}

async fn scenario(cluster: &mut Cluster) -> anyhow::Result<()> {
    let mut peer_urls: Vec<String> = (0..3)
        .map(|i| cluster.member(i).server().peer_url().to_owned())
        .collect();
    let mut joining = BTreeMap::new();
    for ordinal in 3..5 {
        let j = cluster.prepare_member()?;
        peer_urls.push(j.peer_url.clone());
        joining.insert(ordinal, j);
    }
    let naming = Loopback { peer_urls };
    let membership = Membership::new(cluster.endpoints());

    let writers = Writers::start(cluster).await?;
    let started = Instant::now();

    let mut operation = None;
    let mut processes = Processes {
        cluster,
        joining,
        replicas: 3,
        rolled: None,
    };
    let out = converge(5, &mut operation, &membership, &mut processes, &naming)
        .await
        .context("scaling 3 -> 5")?;
    let grown_at = Instant::now();
    ensure!(operation.is_none(), "an operation left over: {operation:?}");
    ensure!(
        count(&out, |a| matches!(a, Action::AddLearner { .. })) == 2,
        "{out:?}"
    );
    ensure!(
        count(&out, |a| matches!(a, Action::Promote { .. })) == 2,
        "{out:?}"
    );
    let report = membership.observe().await?;
    ensure!(report.cluster.members.len() == 5, "{:?}", report.cluster);
    ensure!(
        report
            .cluster
            .members
            .iter()
            .all(|m| !m.is_learner && m.healthy),
        "{:?}",
        report.cluster
    );

    // Leadership on the member scale-in removes first: the planner must move
    // it away before removing it.
    let top = report
        .cluster
        .members
        .iter()
        .find(|m| naming.ordinal_of(&m.peer_urls[0]) == Some(4))
        .context("m4")?;
    let leader = report.cluster.leader.context("a leader")?;
    if leader != top.id {
        membership.move_leader(leader, top.id).await?;
    }
    eventually(CATCH_UP, async || {
        let led_by = membership.observe().await?.cluster.leader;
        ensure!(led_by == Some(top.id), "leader {led_by:?}");
        Ok(())
    })
    .await?;

    let back = converge(3, &mut operation, &membership, &mut processes, &naming)
        .await
        .context("scaling 5 -> 3")?;
    ensure!(operation.is_none(), "an operation left over: {operation:?}");
    ensure!(
        matches!(back.first(), Some(Action::MoveLeader { from, .. }) if *from == top.id),
        "{back:?}"
    );
    ensure!(
        count(&back, |a| matches!(a, Action::RemoveMember { .. })) == 2,
        "{back:?}"
    );
    ensure!(
        count(&back, |a| matches!(a, Action::ScaleStatefulSet { .. })) == 2,
        "{back:?}"
    );
    let report = membership.observe().await?;
    let ordinals: BTreeSet<Option<u32>> = report
        .cluster
        .members
        .iter()
        .map(|m| naming.ordinal_of(&m.peer_urls[0]))
        .collect();
    ensure!(
        ordinals == BTreeSet::from([Some(0), Some(1), Some(2)]),
        "{:?}",
        report.cluster
    );

    // Writes went on the whole time, then nothing acknowledged is missing on
    // any member.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writers.stop().await?;
    let during_growth = acks
        .iter()
        .filter(|a| a.at > started && a.at < grown_at)
        .count();
    let during_shrink = acks.iter().filter(|a| a.at > grown_at).count();
    eprintln!(
        "{} acknowledged puts: {during_growth} while growing, {during_shrink} while shrinking",
        acks.len()
    );
    ensure!(during_growth > 0 && during_shrink > 0, "writers stalled");
    let cluster = &*processes.cluster;
    for i in 0..3 {
        let mut client = cluster.client(i).await?;
        eventually(CATCH_UP, async || {
            let (_, store) = acked::whole_store(&mut client, true).await?;
            acked::all_present(&store, &acks)
        })
        .await
        .with_context(|| format!("m{i} does not hold every acknowledged put"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_membership_rolls_a_real_cluster_leader_last_under_writes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(Flavor::Raftkv, 3, &[]).await?;
    let outcome = rolling(&mut cluster).await;
    outcome.with_context(|| format!("end of each member's log:\n{}", cluster.log_tails(30)))
}

/// A template change: every member restarted once, followers from the top,
/// the leader last after leadership moved off it, writes going on.
async fn rolling(cluster: &mut Cluster) -> anyhow::Result<()> {
    let naming = Loopback {
        peer_urls: (0..3)
            .map(|i| cluster.member(i).server().peer_url().to_owned())
            .collect(),
    };
    let membership = Membership::new(cluster.endpoints());
    // Every member answered once started, but on a loaded machine one
    // observation may still miss the leader (a Status timed out).
    let report = eventually(CATCH_UP, async || {
        let report = membership.observe().await?;
        report.cluster.leader.context("a leader")?;
        Ok(report)
    })
    .await?;
    let leader = report.cluster.leader.context("a leader")?;
    let leader_ordinal = report
        .cluster
        .members
        .iter()
        .find(|m| m.id == leader)
        .and_then(|m| naming.ordinal_of(&m.peer_urls[0]))
        .context("the leader's ordinal")?;

    let writers = Writers::start(cluster).await?;

    let mut operation = None;
    let mut processes = Processes {
        cluster,
        joining: BTreeMap::new(),
        replicas: 3,
        rolled: Some(BTreeSet::new()),
    };
    let steps = converge(3, &mut operation, &membership, &mut processes, &naming)
        .await
        .context("rolling restart")?;
    ensure!(operation.is_none(), "an operation left over: {operation:?}");
    let restarts: Vec<u32> = steps
        .iter()
        .filter_map(|a| match a {
            Action::RestartPod { ordinal } => Some(*ordinal),
            _ => None,
        })
        .collect();
    ensure!(restarts.len() == 3, "{steps:?}");
    ensure!(
        restarts.last() == Some(&leader_ordinal),
        "the leader m{leader_ordinal} not last: {steps:?}"
    );
    let moved = steps
        .iter()
        .position(|a| matches!(a, Action::MoveLeader { from, .. } if *from == leader));
    let last_restart = steps
        .iter()
        .rposition(|a| matches!(a, Action::RestartPod { .. }));
    ensure!(
        moved.is_some() && moved < last_restart,
        "leadership not moved first: {steps:?}"
    );

    let acks = writers.stop().await?;
    eprintln!(
        "{} acknowledged puts during the rolling restart",
        acks.len()
    );
    ensure!(!acks.is_empty(), "writers stalled");
    let cluster = &*processes.cluster;
    for i in 0..3 {
        let mut client = cluster.client(i).await?;
        eventually(CATCH_UP, async || {
            let (_, store) = acked::whole_store(&mut client, true).await?;
            acked::all_present(&store, &acks)
        })
        .await
        .with_context(|| format!("m{i} does not hold every acknowledged put"))?;
    }
    Ok(())
}
