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
        Metrics {
            registry,
            reconciles,
            failures,
            duration,
            steps,
            members,
            ready_members,
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
}
