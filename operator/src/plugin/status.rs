//! `kubectl raftkv status`: what the operator last recorded (phase,
//! operation, maintenance, recovery, conditions), what the members say
//! right now (each one's Status through a port-forward: role, raft term,
//! index and applied index, the lag behind the leader, database size,
//! errors; the alarms), and the backups. The observation is gathered in
//! [`observe`]; [`render`] is pure, so its text is unit-tested.

use std::fmt::Write as _;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::backup::crd::{BackupPhase, KvBackup, KvBackupSchedule};
use crate::crd::KvCluster;
use crate::plugin::forward::Forward;

/// How long one member gets to answer.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the members answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    pub members: Vec<LiveMember>,
    /// (member id, alarm) pairs; None when they could not be listed.
    pub alarms: Option<Vec<(u64, String)>>,
    pub revision: Option<i64>,
    /// Why the member list or the alarms could not be read.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LiveMember {
    /// Empty for a member added but not started yet.
    pub name: String,
    pub id: u64,
    pub is_learner: bool,
    pub answer: Result<MemberAnswer, String>,
}

impl LiveMember {
    /// Its name, or its id while it has none (not started).
    pub fn label(&self) -> String {
        if self.name.is_empty() { format!("{:x}", self.id) } else { self.name.clone() }
    }
}

/// One member's Status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberAnswer {
    pub version: String,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub raft_applied_index: u64,
    pub errors: Vec<String>,
    /// The member's revision (Status headers carry it; the Cluster
    /// service's do not, in etcd as here).
    pub revision: i64,
}

impl Live {
    /// The leader as the member with the highest term sees it (a member
    /// cut off may still name an old one).
    pub fn leader(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| m.answer.as_ref().ok()).filter(|a| a.leader != 0).max_by_key(|a| a.raft_term).map(|a| a.leader)
    }
}

/// `call` within the member timeout: the port-forward's upgrade and the
/// HTTP/2 handshake have no deadline of their own (the local listener
/// always accepts).
async fn bounded<T>(what: &str, call: impl std::future::Future<Output = Result<T, etcd_client::Error>>) -> Result<T, String> {
    match tokio::time::timeout(MEMBER_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("{what}: no answer within {} s", MEMBER_TIMEOUT.as_secs())),
    }
}

async fn connect(endpoint: &str) -> Result<Client, String> {
    let options = ConnectOptions::new().with_connect_timeout(MEMBER_TIMEOUT).with_timeout(MEMBER_TIMEOUT);
    bounded("connect", Client::connect([endpoint], Some(options))).await
}

async fn answer(endpoint: &str) -> Result<MemberAnswer, String> {
    let mut client = connect(endpoint).await?;
    let s = bounded("status", client.status()).await?;
    Ok(MemberAnswer {
        version: s.version().to_owned(),
        db_size: s.db_size(),
        db_size_in_use: s.raft_used_db_size(),
        leader: s.leader(),
        raft_term: s.raft_term(),
        raft_index: s.raft_index(),
        raft_applied_index: s.raft_applied_index(),
        errors: s.errors().to_vec(),
        revision: s.header().map(|h| h.revision()).unwrap_or_default(),
    })
}

/// Asks the members, each through its own port-forward (`forwards`, by
/// pod name, which is the member name), all at once.
pub async fn observe(forwards: &[Forward]) -> Live {
    let mut live = Live::default();
    let mut any = None;
    let mut last_error = "no running member pods".to_owned();
    for f in forwards {
        let listed = async {
            let mut c = connect(&f.endpoint).await?;
            let list = bounded("member list", c.member_list()).await?;
            Ok::<_, String>((c, list))
        };
        match listed.await {
            Ok(found) => {
                any = Some(found);
                break;
            }
            Err(e) => last_error = format!("{}: {e}", f.pod),
        }
    }
    let Some((mut client, list)) = any else {
        live.error = Some(last_error);
        return live;
    };
    let mut members = list.members().to_vec();
    members.sort_by(|a, b| a.name().cmp(b.name()));
    let answers = futures::future::join_all(members.iter().map(|m| async move {
        match forwards.iter().find(|f| !m.name().is_empty() && f.pod == m.name()) {
            None if m.name().is_empty() => Err("not started".to_owned()),
            None => Err("no running pod of that name".to_owned()),
            Some(f) => answer(&f.endpoint).await,
        }
    }))
    .await;
    for (m, answer) in members.iter().zip(answers) {
        if let Ok(a) = &answer {
            live.revision = live.revision.max(Some(a.revision));
        }
        live.members.push(LiveMember { name: m.name().to_owned(), id: m.id(), is_learner: m.is_learner(), answer });
    }
    match bounded("alarm list", client.alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)).await {
        Ok(r) => {
            live.alarms = Some(r.alarms().iter().map(|a| (a.member_id(), format!("{:?}", a.alarm()).to_uppercase())).collect());
        }
        Err(e) => live.error = Some(format!("alarms not listed: {e}")),
    }
    live
}

/// Bytes as etcdctl's humanised sizes are read: binary units, one decimal.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// A time and how long ago it was: `2026-12-06T14:00:00Z (3m ago)`.
pub fn when(t: &Time, now: Timestamp) -> String {
    let secs = now.as_second() - t.0.as_second();
    let ago = match secs {
        s if s < 0 => "in the future".to_owned(),
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    };
    format!("{} ({ago})", t.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
}

fn table(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The status text.
pub fn render(kvc: &KvCluster, live: &Live, backups: &[KvBackup], schedules: &[KvBackupSchedule], now: Timestamp) -> String {
    let status = kvc.status.clone().unwrap_or_default();
    let name_of = |id: u64| live.members.iter().find(|m| m.id == id).map(LiveMember::label).unwrap_or_else(|| format!("{id:x}"));
    let mut out = String::new();
    let mut field = |label: &str, value: String| {
        let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
    };
    field("Cluster", format!("{}/{}", kvc.namespace().unwrap_or_default(), kvc.name_any()));
    field("Phase", format!("{:?}{}", status.phase, if kvc.spec.paused { " (spec.paused: the operator changes nothing)" } else { "" }));
    let version = match &status.version {
        Some(v) if *v == kvc.spec.version => v.clone(),
        Some(v) => format!("{v} (spec asks for {})", kvc.spec.version),
        None => format!("mixed (spec asks for {})", kvc.spec.version),
    };
    field("Version", version);
    if let Some(id) = &status.cluster_id {
        field("Cluster ID", id.clone());
    }
    let voters = live.members.iter().filter(|m| !m.is_learner).count();
    field("Members", format!("{} ready of {} asked ({} in the cluster)", status.ready_replicas, kvc.spec.replicas, live.members.len().max(status.replicas as usize)));
    let leader = live.leader();
    field("Leader", match leader {
        Some(id) => name_of(id),
        None if live.error.is_some() && live.members.is_empty() => status.leader.clone().map(|l| format!("{l} (last recorded)")).unwrap_or_else(|| "unknown".to_owned()),
        None => "none".to_owned(),
    });
    if let Some(rev) = live.revision {
        field("Revision", rev.to_string());
    }
    let alarms = match &live.alarms {
        None => "unknown (not listed)".to_owned(),
        Some(a) if a.is_empty() => "none".to_owned(),
        Some(a) => a.iter().map(|(id, a)| format!("{a} on {}", name_of(*id))).collect::<Vec<_>>().join(", "),
    };
    field("Alarms", alarms);
    let operation = match &status.operation {
        None => "none".to_owned(),
        Some(op) => format!(
            "{:?} of {}-{}: step {:?}{}",
            op.kind,
            kvc.name_any(),
            op.ordinal,
            op.step,
            op.started_at.as_ref().map(|t| format!(", since {}", when(t, now))).unwrap_or_default()
        ),
    };
    field("Operation", operation);
    let maintenance = status.maintenance.clone().unwrap_or_default();
    let run = match &maintenance.run {
        None => "none in flight".to_owned(),
        Some(run) => format!(
            "{:?} run since {}: {} of {} defragmented{}{}",
            run.reason,
            when(&run.started_at, now),
            run.defragmented.len(),
            voters,
            if run.defragmented.is_empty() { String::new() } else { format!(" ({})", run.defragmented.join(", ")) },
            run.compacted.map(|r| format!(", compacted to {r}")).unwrap_or_default()
        ),
    };
    let last = maintenance.last_defragmentation.as_ref().map(|t| format!("; last defragmentation {}", when(t, now))).unwrap_or_default();
    field("Maintenance", format!("{run}{last}"));
    if let Some(q) = maintenance.data_exceeds_quota {
        field("Quota", format!("the live data does not fit the quota of {}", bytes(q)));
    }
    if let Some(r) = &status.recovery {
        field("Recovery", format!("{:?}: {} forced into a new cluster; lost {}", r.step, r.member, if r.lost.is_empty() { "none".to_owned() } else { r.lost.join(", ") }));
    }
    if let Some(r) = &status.restored_from {
        field("Restored from", r.location.clone());
    }
    let mut mine: Vec<&KvBackup> = backups.iter().filter(|b| b.spec.cluster == kvc.name_any()).collect();
    mine.sort_by_key(|b| b.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let completed = mine.iter().rev().find(|b| b.status.as_ref().is_some_and(|s| s.phase == BackupPhase::Completed));
    field("Last backup", match completed {
        None => "none".to_owned(),
        Some(b) => {
            let s = b.status.clone().unwrap_or_default();
            format!(
                "{} at {}: {}, {} at revision {}",
                b.name_any(),
                s.completed_at.as_ref().map(|t| when(t, now)).unwrap_or_else(|| "?".to_owned()),
                s.location.unwrap_or_default(),
                s.size.map(bytes).unwrap_or_else(|| "?".to_owned()),
                s.revision.map(|r| r.to_string()).unwrap_or_else(|| "?".to_owned())
            )
        }
    });
    for b in mine.iter().filter(|b| b.status.as_ref().is_none_or(|s| matches!(s.phase, BackupPhase::Pending | BackupPhase::Running))) {
        field("Backup running", format!("{} ({:?})", b.name_any(), b.status.clone().unwrap_or_default().phase));
    }
    if let Some(failed) = mine.last().filter(|b| b.status.as_ref().is_some_and(|s| s.phase == BackupPhase::Failed)) {
        field("Latest backup", format!("{} Failed: {}", failed.name_any(), failed.status.clone().unwrap_or_default().error.unwrap_or_default()));
    }
    for s in schedules.iter().filter(|s| s.spec.cluster == kvc.name_any()) {
        let next = s.status.as_ref().and_then(|st| st.next_schedule_time.as_ref()).map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        field(
            "Schedule",
            format!(
                "{} \"{}\"{}",
                s.name_any(),
                s.spec.schedule,
                if s.spec.suspend { " (suspended)".to_owned() } else { next.map(|n| format!(", next at {n}")).unwrap_or_default() }
            ),
        );
    }
    if let Some(e) = &live.error {
        field("Not answered", e.clone());
    }

    let leader_index = leader.and_then(|id| live.members.iter().find(|m| m.id == id)).and_then(|m| m.answer.as_ref().ok()).map(|a| a.raft_index);
    let mut rows = vec![
        ["MEMBER", "ID", "ROLE", "STATUS", "VERSION", "DB SIZE", "IN USE", "RAFT TERM", "RAFT INDEX", "APPLIED", "LAG"].map(str::to_owned).to_vec(),
    ];
    let mut notes = Vec::new();
    for m in &live.members {
        let role = if m.is_learner {
            "learner"
        } else if Some(m.id) == leader {
            "leader"
        } else {
            "follower"
        };
        let mut row = vec![m.label(), format!("{:x}", m.id), role.to_owned()];
        match &m.answer {
            Ok(a) => {
                let health = if a.errors.is_empty() { "ok".to_owned() } else { a.errors.join("; ") };
                let lag = leader_index.map(|l| l.saturating_sub(a.raft_applied_index).to_string()).unwrap_or_else(|| "-".to_owned());
                row.extend([
                    health,
                    crate::members::raftkv_version(&a.version).to_owned(),
                    bytes(a.db_size),
                    bytes(a.db_size_in_use),
                    a.raft_term.to_string(),
                    a.raft_index.to_string(),
                    a.raft_applied_index.to_string(),
                    lag,
                ]);
            }
            Err(e) => {
                row.push("unreachable".to_owned());
                notes.push(format!("{}: {e}", m.label()));
            }
        }
        rows.push(row);
    }
    out.push_str("\nMembers:\n");
    out.push_str(&table(&rows));
    for note in notes {
        let _ = writeln!(out, "  {note}");
    }
    if !status.conditions.is_empty() {
        let mut rows = vec![["TYPE", "STATUS", "REASON", "MESSAGE"].map(str::to_owned).to_vec()];
        for c in &status.conditions {
            rows.push(vec![c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone()]);
        }
        out.push_str("\nConditions:\n");
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::crd::{Destination, KvBackupScheduleSpec, KvBackupSpec, KvBackupStatus, Volume};
    use crate::crd::{KvClusterStatus, MaintenanceReason, MaintenanceRun, MaintenanceStatus, Operation, OperationKind, Phase, Step};
    use kube::api::ObjectMeta;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("a time"))
    }

    fn meta(name: &str, created: i64) -> ObjectMeta {
        ObjectMeta { name: Some(name.into()), namespace: Some("prod".into()), creation_timestamp: Some(at(created)), ..Default::default() }
    }

    fn answer(leader: u64, index: u64, applied: u64) -> Result<MemberAnswer, String> {
        Ok(MemberAnswer {
            version: "3.4.31+raftkv.0.1.0".into(),
            db_size: 3 << 20,
            db_size_in_use: 1 << 20,
            leader,
            raft_term: 4,
            raft_index: index,
            raft_applied_index: applied,
            errors: vec![],
            revision: 61,
        })
    }

    fn backup(name: &str, created: i64, phase: BackupPhase) -> KvBackup {
        let destination = Destination { volume: Some(Volume { claim_name: "backups".into(), prefix: None }), ..Default::default() };
        KvBackup {
            metadata: meta(name, created),
            spec: KvBackupSpec { cluster: "demo".into(), destination, reclaim_policy: Default::default() },
            status: Some(KvBackupStatus {
                phase,
                location: Some(format!("/backups/prod/demo/{name}.snap")),
                size: Some(2048),
                revision: Some(57),
                completed_at: (phase == BackupPhase::Completed).then(|| at(created + 5)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_shows_roles_lag_alarms_the_work_in_flight_and_the_last_backup() {
        let now = Timestamp::from_second(10_000).expect("a time");
        let mut kvc = crate::resources::tests::kvcluster("demo", 3);
        kvc.status = Some(KvClusterStatus {
            phase: Phase::Running,
            version: Some("0.1.0".into()),
            ready_replicas: 2,
            replicas: 3,
            operation: Some(Operation { kind: OperationKind::Upgrade, ordinal: 2, step: Step::RestartPod, replaced_id: None, started_at: Some(at(9_940)) }),
            maintenance: Some(MaintenanceStatus {
                run: Some(MaintenanceRun { reason: MaintenanceReason::Requested, started_at: at(9_990), compacted: None, defragmented: vec!["demo-1".into()] }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let live = Live {
            members: vec![
                LiveMember { name: "demo-0".into(), id: 0xa, is_learner: false, answer: answer(0xa, 120, 120) },
                LiveMember { name: "demo-1".into(), id: 0xb, is_learner: false, answer: answer(0xa, 120, 100) },
                LiveMember { name: "demo-2".into(), id: 0xc, is_learner: false, answer: Err("connection refused".into()) },
            ],
            alarms: Some(vec![(0xb, "NOSPACE".into())]),
            revision: Some(61),
            error: None,
        };
        let backups = [backup("old", 1_000, BackupPhase::Completed), backup("newer", 2_000, BackupPhase::Completed), backup("now", 9_000, BackupPhase::Running)];
        let schedules = [KvBackupSchedule::new(
            "nightly",
            KvBackupScheduleSpec {
                cluster: "demo".into(),
                schedule: "0 3 * * *".into(),
                suspend: true,
                immediate: false,
                retention: None,
                destination: Default::default(),
                reclaim_policy: Default::default(),
            },
        )];
        let text = render(&kvc, &live, &backups, &schedules, now);
        let line = |start: &str| text.lines().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line {start:?} in\n{text}")).to_owned();
        assert_eq!(line("Cluster:"), "Cluster:        prod/demo");
        assert_eq!(line("Leader:"), "Leader:         demo-0");
        assert_eq!(line("Alarms:"), "Alarms:         NOSPACE on demo-1");
        assert_eq!(line("Operation:"), "Operation:      Upgrade of demo-2: step RestartPod, since 1970-01-01T02:45:40Z (60s ago)");
        assert!(line("Maintenance:").contains("Requested run since") && line("Maintenance:").contains("1 of 3 defragmented (demo-1)"), "{text}");
        assert!(line("Last backup:").starts_with("Last backup:    newer at 1970-01-01T00:33:25Z"), "{text}");
        assert!(line("Last backup:").ends_with("/backups/prod/demo/newer.snap, 2.0 KiB at revision 57"), "{text}");
        assert_eq!(line("Backup running:"), "Backup running: now (Running)");
        assert_eq!(line("Schedule:"), "Schedule:       nightly \"0 3 * * *\" (suspended)");
        // The members' table: role, raft figures and the lag behind the
        // leader's index; an unreachable member says why.
        let row = |name: &str| line(name).split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(row("demo-0"), ["demo-0", "a", "leader", "ok", "0.1.0", "3.0", "MiB", "1.0", "MiB", "4", "120", "120", "0"]);
        assert_eq!(row("demo-1")[2..4], ["follower", "ok"]);
        assert_eq!(row("demo-1").last().map(String::as_str), Some("20"));
        assert_eq!(row("demo-2"), ["demo-2", "c", "follower", "unreachable"]);
        assert_eq!(line("  demo-2:"), "  demo-2: connection refused");
    }

    #[test]
    fn the_leader_is_the_one_named_at_the_highest_term() {
        let mut stale = answer(0xa, 50, 50);
        if let Ok(a) = stale.as_mut() {
            a.raft_term = 3;
        }
        let mut current = answer(0xb, 90, 90);
        if let Ok(a) = current.as_mut() {
            a.raft_term = 5;
        }
        let live = Live {
            members: vec![
                LiveMember { name: "demo-0".into(), id: 0xa, is_learner: false, answer: stale },
                LiveMember { name: "demo-1".into(), id: 0xb, is_learner: false, answer: current },
                LiveMember { name: String::new(), id: 0xc, is_learner: true, answer: Err("not started".into()) },
            ],
            ..Live::default()
        };
        assert_eq!(live.leader(), Some(0xb));
        assert_eq!(live.members[2].label(), "c");
        // Alarms not listed are not "none".
        let text = render(&crate::resources::tests::kvcluster("demo", 3), &live, &[], &[], Timestamp::UNIX_EPOCH);
        assert!(text.contains("Alarms:         unknown (not listed)"), "{text}");
        assert!(text.contains("Leader:         demo-1"), "{text}");
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(8 << 30), "8.0 GiB");
    }
}
