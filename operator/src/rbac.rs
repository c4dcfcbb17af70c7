//! The permissions the operator needs, and no more: what the Helm chart's
//! (Cluster)Role and `operator/deploy/operator.yaml` grant. Tests hold both
//! sides to this list: the in-memory API server of the reconcile scenarios
//! refuses (403) any call it does not allow and records the calls made, and
//! a test checks every rule was needed; the chart test compares the
//! rendered rules with `raftkv-operator rbac`.

use serde::Serialize;

/// One RBAC rule: verbs on resources of an API group ("" is the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(serialize_with = "one_group")]
    pub api_groups: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

fn one_group<S: serde::Serializer>(group: &&'static str, s: S) -> Result<S::Ok, S::Error> {
    [*group].serialize(s)
}

/// In every watched namespace (cluster-wide without `WATCH_NAMESPACE`).
pub const RULES: &[Rule] = &[
    // The controller's watch; the finalizer's JSON patches; a backup reads
    // its cluster (the member to take the snapshot from).
    Rule {
        api_groups: "raftkv.io",
        resources: &["kvclusters"],
        verbs: &["get", "list", "watch", "patch"],
    },
    // Status, by server-side apply.
    Rule {
        api_groups: "raftkv.io",
        resources: &["kvclusters/status"],
        verbs: &["patch"],
    },
    // Owned objects: watched by the controller, applied server-side (an
    // apply that makes its object is authorized as a create too); the
    // StatefulSet is also read for its observed state.
    Rule {
        api_groups: "apps",
        resources: &["statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    Rule {
        api_groups: "",
        resources: &["services", "configmaps"],
        verbs: &["list", "watch", "create", "patch"],
    },
    Rule {
        api_groups: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: &["list", "watch", "create", "patch"],
    },
    // Members' pods and volumes: observed; deleted to restart (upgrade) or
    // to replace a member, and a removed member's volume per reclaimPolicy.
    Rule {
        api_groups: "",
        resources: &["pods", "persistentvolumeclaims"],
        verbs: &["list", "delete"],
    },
    // kube-runtime's event recorder (a repeated event is patched).
    Rule {
        api_groups: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    // Backups: watched; a schedule creates its own and its retention
    // deletes them; a restore reads the one it names; the snapshot
    // finalizer is patched in and out.
    Rule {
        api_groups: "raftkv.io",
        resources: &["kvbackups"],
        verbs: &["get", "list", "watch", "create", "delete", "patch"],
    },
    Rule {
        api_groups: "raftkv.io",
        resources: &["kvbackupschedules"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: "raftkv.io",
        resources: &["kvbackups/status", "kvbackupschedules/status"],
        verbs: &["patch"],
    },
    // A backup's Job and the Job deleting its snapshot: made, read and
    // watched for their outcome; a backup Job still running when its
    // backup is deleted is stopped.
    Rule {
        api_groups: "batch",
        resources: &["jobs"],
        verbs: &["get", "list", "watch", "create", "delete"],
    },
    // A destination's credentials: checked to exist before a Job that
    // could only fail is started (the values are the kubelet's to read).
    // A TLS cluster's CA and the operator's client certificate: read at
    // each reconciliation, to reach the members.
    Rule {
        api_groups: "",
        resources: &["secrets"],
        verbs: &["get"],
    },
    // spec.tls.certManager: the members' and the operator's Certificates.
    Rule {
        api_groups: "cert-manager.io",
        resources: &["certificates"],
        verbs: &["create", "patch"],
    },
];

/// In the operator's own namespace: the leader-election Lease
/// (kube-lease-manager reads, creates and patches it).
pub const LEADER_ELECTION: Rule = Rule {
    api_groups: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "patch"],
};

/// The kinds the controller lists and watches (the KvClusters and what it
/// owns): (group, resource).
pub const WATCHED: &[(&str, &str)] = &[
    ("raftkv.io", "kvclusters"),
    ("apps", "statefulsets"),
    ("", "services"),
    ("policy", "poddisruptionbudgets"),
    ("", "configmaps"),
    ("raftkv.io", "kvbackups"),
    ("raftkv.io", "kvbackupschedules"),
    ("batch", "jobs"),
];

/// Whether the namespaced rules allow `verb` on `resource` of `group`.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    RULES.iter().any(|r| {
        r.api_groups == group && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

/// Every (group, resource, verb) the namespaced rules grant.
pub fn grants() -> Vec<(&'static str, &'static str, &'static str)> {
    let mut all = Vec::new();
    for r in RULES {
        for resource in r.resources {
            for verb in r.verbs {
                all.push((r.api_groups, *resource, *verb));
            }
        }
    }
    all.sort_unstable();
    all
}

/// `raftkv-operator rbac`: the rules as JSON, for the chart's test.
pub fn to_json() -> serde_json::Value {
    serde_json::json!({ "rules": RULES, "leaderElection": [LEADER_ELECTION] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watched_kinds_may_be_listed_and_watched() {
        for (group, resource) in WATCHED {
            assert!(
                allows(group, resource, "list") && allows(group, resource, "watch"),
                "{group}/{resource}"
            );
        }
    }

    #[test]
    fn rules_serialize_as_kubernetes_policy_rules() {
        let json = to_json();
        assert_eq!(
            json["rules"][0],
            serde_json::json!({"apiGroups": ["raftkv.io"], "resources": ["kvclusters"], "verbs": ["get", "list", "watch", "patch"]})
        );
        assert_eq!(
            json["leaderElection"][0]["verbs"],
            serde_json::json!(["get", "create", "patch"])
        );
    }
}
