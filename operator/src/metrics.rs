//! The operator's Prometheus metrics: reconcile counts, durations and
//! failures, membership steps taken, and per-cluster gauges. Served on
//! `/metrics` by the binary; nothing here decides anything.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub namespace: String,
    pub name: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub namespace: String,
    pub name: String,
    pub step: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ClusterLabels, Counter>,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub steps: Family<StepLabels, Counter>,
    pub members: Family<ClusterLabels, Gauge>,
    pub ready_members: Family<ClusterLabels, Gauge>,
    /// Per cluster (`name` is the KvCluster's): for alerting on backups
    /// that stopped succeeding.
    pub last_successful_backup: Family<ClusterLabels, Gauge>,
    pub backups_completed: Family<ClusterLabels, Counter>,
    pub backups_failed: Family<ClusterLabels, Counter>,
    pub backup_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("raftkv_operator");
        let reconciles = Family::<ClusterLabels, Counter>::default();
        let failures = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        let steps = Family::<StepLabels, Counter>::default();
        let members = Family::<ClusterLabels, Gauge>::default();
        let ready_members = Family::<ClusterLabels, Gauge>::default();
        let last_successful_backup = Family::<ClusterLabels, Gauge>::default();
        let backups_completed = Family::<ClusterLabels, Counter>::default();
        let backups_failed = Family::<ClusterLabels, Counter>::default();
        // 1 s to about 4.5 h.
        let backup_duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "reconciles",
            "Reconciliations of a KvCluster",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciliations, by error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconciliation took",
            duration.clone(),
        );
        registry.register(
            "membership_steps",
            "Membership steps taken, by step",
            steps.clone(),
        );
        registry.register("members", "Members in the raft cluster", members.clone());
        registry.register(
            "ready_members",
            "Healthy voting members",
            ready_members.clone(),
        );
        registry.register(
            "last_successful_backup_timestamp_seconds",
            "When the last backup of a KvCluster that completed was started (Unix time)",
            last_successful_backup.clone(),
        );
        registry.register("backups_completed", "Backups of a KvCluster that completed", backups_completed.clone());
        registry.register("backups_failed", "Backups of a KvCluster that failed", backups_failed.clone());
        registry.register(
            "backup_duration_seconds",
            "From a backup's start to its completion",
            backup_duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            steps,
            members,
            ready_members,
            last_successful_backup,
            backups_completed,
            backups_failed,
            backup_duration,
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, cluster: &ClusterLabels, took: Duration) {
        self.reconciles.get_or_create(cluster).inc();
        self.duration.observe(took.as_secs_f64());
    }

    pub fn failed(&self, cluster: &ClusterLabels, error: &str) {
        let labels = ErrorLabels {
            namespace: cluster.namespace.clone(),
            name: cluster.name.clone(),
            error: error.to_owned(),
        };
        self.failures.get_or_create(&labels).inc();
    }

    pub fn step(&self, cluster: &ClusterLabels, step: &str) {
        let labels = StepLabels {
            namespace: cluster.namespace.clone(),
            name: cluster.name.clone(),
            step: step.to_owned(),
        };
        self.steps.get_or_create(&labels).inc();
    }

    pub fn sizes(&self, cluster: &ClusterLabels, members: i64, ready: i64) {
        self.members.get_or_create(cluster).set(members);
        self.ready_members.get_or_create(cluster).set(ready);
    }

    /// A backup of `cluster` started at `started` (Unix seconds) completed
    /// after `took`.
    pub fn backup_completed(&self, cluster: &ClusterLabels, started: i64, took: Duration) {
        self.backups_completed.get_or_create(cluster).inc();
        let last = self.last_successful_backup.get_or_create(cluster);
        if started > last.get() {
            last.set(started);
        }
        self.backup_duration.observe(took.as_secs_f64());
    }

    pub fn backup_failed(&self, cluster: &ClusterLabels) {
        self.backups_failed.get_or_create(cluster).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_cluster_and_error() {
        let metrics = Metrics::default();
        let demo = ClusterLabels {
            namespace: "prod".into(),
            name: "demo".into(),
        };
        metrics.failed(&demo, "membership");
        metrics.failed(&demo, "membership");
        metrics.sizes(&demo, 5, 4);
        let text = metrics.encode().expect("encodes");
        assert!(
            text.contains(r#"raftkv_operator_reconcile_failures_total{namespace="prod",name="demo",error="membership"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"raftkv_operator_ready_members{namespace="prod",name="demo"} 4"#),
            "{text}"
        );
    }

    #[test]
    fn the_last_successful_backup_only_moves_forward() {
        let metrics = Metrics::default();
        let demo = ClusterLabels { namespace: "prod".into(), name: "demo".into() };
        metrics.backup_completed(&demo, 2000, Duration::from_secs(3));
        // A slower, older backup completing later does not move it back.
        metrics.backup_completed(&demo, 1000, Duration::from_secs(9));
        metrics.backup_failed(&demo);
        let text = metrics.encode().expect("encodes");
        for line in [
            r#"raftkv_operator_last_successful_backup_timestamp_seconds{namespace="prod",name="demo"} 2000"#,
            r#"raftkv_operator_backups_completed_total{namespace="prod",name="demo"} 2"#,
            r#"raftkv_operator_backups_failed_total{namespace="prod",name="demo"} 1"#,
            "raftkv_operator_backup_duration_seconds_count 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
