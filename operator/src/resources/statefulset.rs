//! The members' StatefulSet. Its replicas are the planner's to decide (one
//! member at a time, after the matching MemberAdd or MemberRemove), never
//! `spec.replicas` directly; pods restart only when the operator deletes
//! them (`OnDelete`), so an upgrade rolls in the order the planner picks,
//! the leader last.
//!
//! Every pod runs the same command line; what differs per member is its pod
//! name, which Kubernetes substitutes for `$(POD_NAME)` in the arguments,
//! and, on the first start only, the bootstrap ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, SecretVolumeSource, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CLIENT_PORT, DATA_DIR, METRICS_PORT, Names, PEER_PORT, VOLUME_MOUNT, VOLUME_NAME, metadata};
use crate::backup::crd::Destination;
use crate::crd::{AutoCompaction, CompactionMode, KvCluster, ReclaimPolicy, ServerSettings, byte_size};

/// How long a member may take to start serving: it listens for clients only
/// once the cluster has a leader, which after a full restart waits for a
/// majority of pods to be scheduled. Ten minutes, not a liveness kill loop.
const STARTUP_PROBE_PERIOD: i32 = 5;
const STARTUP_PROBE_FAILURES: i32 = 120;

/// The StatefulSet with `replicas` pods.
pub fn statefulset(kvc: &KvCluster, replicas: i32) -> StatefulSet {
    let names = Names::of(kvc);
    let spec = &kvc.spec;
    let template = spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = template.labels.clone();
    pod_labels.extend(names.labels());
    let annotations = (!template.annotations.is_empty()).then(|| template.annotations.clone());
    let policy = match spec.storage.reclaim_policy {
        ReclaimPolicy::Delete => "Delete",
        ReclaimPolicy::Retain => "Retain",
    };
    StatefulSet {
        metadata: metadata(kvc, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peer_service()),
            selector: LabelSelector {
                match_labels: Some(names.selector_labels()),
                ..LabelSelector::default()
            },
            // Parallel: after a full restart pod 0 cannot become ready without
            // a quorum, so OrderedReady would never start pods 1 and 2.
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_owned()),
                rolling_update: None,
            }),
            // Scale-in reclaims volumes itself, after the member left raft;
            // deleting the KvCluster follows the reclaim policy.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(policy.to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations,
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(kvc, &names)],
                    volumes: Some(tls_volumes(kvc, &names)).filter(|v| !v.is_empty()),
                    affinity: Some(
                        template
                            .affinity
                            .clone()
                            .unwrap_or_else(|| spread_over_nodes(&names)),
                    ),
                    node_selector: (!template.node_selector.is_empty())
                        .then(|| template.node_selector.clone()),
                    tolerations: (!template.tolerations.is_empty())
                        .then(|| template.tolerations.clone()),
                    topology_spread_constraints: (!template.topology_spread_constraints.is_empty())
                        .then(|| template.topology_spread_constraints.clone()),
                    priority_class_name: template.priority_class_name.clone(),
                    // No preStop hook: a member never removes itself, a
                    // restart or drain must not change membership.
                    termination_grace_period_seconds: Some(30),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(VOLUME_NAME.to_owned()),
                    labels: Some(names.labels()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: spec.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            spec.storage.size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// `spec.server` as raftkv's flags (etcd's names). In the pod template,
/// so a change rolls the members one at a time, as an upgrade does.
fn server_flags(server: &ServerSettings) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(q) = &server.quota_backend_bytes {
        // The CRD's schema admits only sizes `byte_size` reads; one that
        // slipped through goes as written, and raftkv refuses it at start
        // rather than the operator running the member without its quota.
        let bytes = byte_size(q).map_or_else(|| q.0.clone(), |b| b.to_string());
        flags.push(format!("--quota-backend-bytes={bytes}"));
    }
    if let Some(n) = server.snapshot_count {
        flags.push(format!("--snapshot-count={n}"));
    }
    if let Some(ms) = server.heartbeat_interval_ms {
        flags.push(format!("--heartbeat-interval={ms}"));
    }
    if let Some(ms) = server.election_timeout_ms {
        flags.push(format!("--election-timeout={ms}"));
    }
    if let Some(ac) = &server.auto_compaction {
        flags.extend(compaction_flags(ac));
    }
    flags
}

/// `--auto-compaction-mode` and `--auto-compaction-retention`, from
/// `spec.maintenance.compaction` or `spec.server.autoCompaction` (the CRD
/// refuses both).
fn compaction_flags(ac: &AutoCompaction) -> [String; 2] {
    let mode = match ac.mode {
        CompactionMode::Periodic => "periodic",
        CompactionMode::Revision => "revision",
    };
    [format!("--auto-compaction-mode={mode}"), format!("--auto-compaction-retention={}", ac.retention)]
}

/// The snapshot a restored cluster starts from: its URL and the store it
/// is in (for the store's environment and volumes).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreFrom {
    pub url: String,
    pub destination: Destination,
}

/// Adds the `restore` init container: `raftkvctl snapshot restore URL` into
/// the member's data dir, with the bootstrap ConfigMap's initial cluster and
/// token (so the restored member is the one raftkv then starts as). It
/// restores only the founding member (`--initial-cluster-state` is `new`
/// for it alone; a joining member gets its data from the cluster) and only
/// once (`--keep-existing-data-dir`: a restarted pod keeps its data).
pub fn add_restore(sts: &mut StatefulSet, kvc: &KvCluster, from: &RestoreFrom) {
    let names = Names::of(kvc);
    let host = format!("$(POD_NAME).{}.{}.svc", names.peer_service(), names.namespace);
    let Some(pod) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else { return };
    let main = &pod.containers[0];
    let mut env = main.env.clone().unwrap_or_default();
    env.extend(crate::backup::job::env(&from.destination));
    let (volumes, mut mounts) = crate::backup::job::volumes(&from.destination);
    mounts.insert(0, VolumeMount { name: VOLUME_NAME.to_owned(), mount_path: VOLUME_MOUNT.to_owned(), ..VolumeMount::default() });
    let init = Container {
        name: "restore".to_owned(),
        image: Some(kvc.spec.image()),
        command: Some(vec![crate::backup::job::RAFTKVCTL.to_owned()]),
        args: Some(vec![
            "snapshot".to_owned(),
            "restore".to_owned(),
            from.url.clone(),
            format!("--data-dir={DATA_DIR}"),
            "--name=$(POD_NAME)".to_owned(),
            "--initial-cluster=$(RAFTKV_INITIAL_CLUSTER)".to_owned(),
            "--initial-cluster-token=$(RAFTKV_INITIAL_CLUSTER_TOKEN)".to_owned(),
            format!("--initial-advertise-peer-urls={}://{host}:{PEER_PORT}", names.peer_scheme()),
            "--initial-cluster-state=$(RAFTKV_INITIAL_CLUSTER_STATE)".to_owned(),
            "--keep-existing-data-dir".to_owned(),
        ]),
        env: Some(env),
        env_from: main.env_from.clone(),
        volume_mounts: Some(mounts),
        resources: kvc.spec.resources.clone(),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Container::default()
    };
    pod.init_containers = Some(vec![init]);
    if !volumes.is_empty() {
        pod.volumes.get_or_insert_with(Vec::new).extend(volumes);
    }
}

fn container(kvc: &KvCluster, names: &Names) -> Container {
    let host = format!(
        "$(POD_NAME).{}.{}.svc",
        names.peer_service(),
        names.namespace
    );
    let (client, peer) = (names.client_scheme(), names.peer_scheme());
    let mut args = vec![
        "--name=$(POD_NAME)".to_owned(),
        format!("--data-dir={DATA_DIR}"),
        format!("--listen-client-urls={client}://0.0.0.0:{CLIENT_PORT}"),
        format!("--advertise-client-urls={client}://{host}:{CLIENT_PORT}"),
        format!("--listen-peer-urls={peer}://0.0.0.0:{PEER_PORT}"),
        format!("--initial-advertise-peer-urls={peer}://{host}:{PEER_PORT}"),
    ];
    let tls = kvc.spec.tls.as_ref().map(|t| (t, t.secrets(&names.cluster)));
    let mut mounts = vec![VolumeMount {
        name: VOLUME_NAME.to_owned(),
        mount_path: VOLUME_MOUNT.to_owned(),
        ..VolumeMount::default()
    }];
    if let Some((tls, secrets)) = &tls {
        if secrets.client.is_some() {
            let dir = format!("{TLS_DIR}/{CLIENT_TLS_VOLUME}");
            args.extend([format!("--cert-file={dir}/tls.crt"), format!("--key-file={dir}/tls.key")]);
            // A trusted CA makes the port ask for client certificates (as
            // etcd's), so it is given only when they are required.
            if tls.client_cert_auth() {
                args.extend([format!("--trusted-ca-file={dir}/ca.crt"), "--client-cert-auth".to_owned()]);
            }
            // Probes cannot present a client certificate: health and
            // metrics on a plaintext port of their own, as etcd's
            // --listen-metrics-urls.
            args.push(format!("--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}"));
            mounts.push(tls_mount(CLIENT_TLS_VOLUME));
        }
        if secrets.peer.is_some() {
            let dir = format!("{TLS_DIR}/{PEER_TLS_VOLUME}");
            args.extend([
                format!("--peer-cert-file={dir}/tls.crt"),
                format!("--peer-key-file={dir}/tls.key"),
                format!("--peer-trusted-ca-file={dir}/ca.crt"),
                "--peer-client-cert-auth".to_owned(),
            ]);
            mounts.push(tls_mount(PEER_TLS_VOLUME));
        }
    }
    let probe_port = if names.client_tls { "metrics" } else { "client" };
    // /version is on the client port only; the metrics port's /metrics
    // answers whether or not there is a leader, as liveness needs.
    let alive_path = if names.client_tls { "/metrics" } else { "/version" };
    if let Some(server) = &kvc.spec.server {
        args.extend(server_flags(server));
    }
    if let Some(ac) = kvc.spec.maintenance.as_ref().and_then(|m| m.compaction.as_ref()) {
        args.extend(compaction_flags(ac));
    }
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::String(probe_port.to_owned()),
        ..HTTPGetAction::default()
    };
    Container {
        name: "raftkv".to_owned(),
        image: Some(kvc.spec.image()),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
            value: None,
        }]),
        // --initial-cluster, --initial-cluster-state, --initial-cluster-token
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.configmap(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        ports: Some(
            [("client", CLIENT_PORT), ("peer", PEER_PORT)]
                .into_iter()
                .chain(names.client_tls.then_some(("metrics", METRICS_PORT)))
                .map(|(name, port)| ContainerPort {
                    name: Some(name.to_owned()),
                    container_port: port,
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        // Ready = has a leader and answers a linearizable read round.
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/health")),
            period_seconds: Some(5),
            timeout_seconds: Some(3),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // Alive = the process serves HTTP. /health is false without a leader,
        // and killing every member of a cluster that lost its leader would
        // turn a blip into an outage, so liveness does not ask for one.
        liveness_probe: Some(Probe {
            http_get: Some(http_get(alive_path)),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(6),
            ..Probe::default()
        }),
        startup_probe: Some(Probe {
            http_get: Some(http_get(alive_path)),
            period_seconds: Some(STARTUP_PROBE_PERIOD),
            failure_threshold: Some(STARTUP_PROBE_FAILURES),
            ..Probe::default()
        }),
        resources: kvc.spec.resources.clone(),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// Where the TLS Secrets are mounted, one directory each.
pub const TLS_DIR: &str = "/etc/raftkv/tls";
const CLIENT_TLS_VOLUME: &str = "client-tls";
const PEER_TLS_VOLUME: &str = "peer-tls";

fn tls_mount(volume: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: format!("{TLS_DIR}/{volume}"),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The pod's Secret volumes of `spec.tls`. Mounted whole (not by
/// `subPath`), so that the kubelet updates the files when the Secret is
/// renewed and raftkv reloads them.
fn tls_volumes(kvc: &KvCluster, names: &Names) -> Vec<Volume> {
    let Some(secrets) = kvc.spec.tls.as_ref().map(|t| t.secrets(&names.cluster)) else {
        return Vec::new();
    };
    [(CLIENT_TLS_VOLUME, secrets.client), (PEER_TLS_VOLUME, secrets.peer)]
        .into_iter()
        .filter_map(|(volume, secret)| {
            Some(Volume {
                name: volume.to_owned(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret?),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            })
        })
        .collect()
}

/// Without an affinity of the user's, prefer one member per node.
fn spread_over_nodes(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(names.selector_labels()),
                            ..LabelSelector::default()
                        }),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PodTemplate;
    use crate::resources::tests::kvcluster;
    use k8s_openapi::api::core::v1::Toleration;

    fn pod_spec(sts: &StatefulSet) -> PodSpec {
        sts.spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("pod spec")
    }

    fn args(sts: &StatefulSet) -> Vec<String> {
        pod_spec(sts).containers[0].args.clone().unwrap_or_default()
    }

    #[test]
    fn members_advertise_their_stable_dns_names() {
        let sts = statefulset(&kvcluster("demo", 3), 1);
        let args = args(&sts);
        for expected in [
            "--name=$(POD_NAME)",
            "--data-dir=/var/lib/raftkv/data",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://$(POD_NAME).demo-peer.prod.svc:2379",
            "--listen-peer-urls=http://0.0.0.0:2380",
            "--initial-advertise-peer-urls=http://$(POD_NAME).demo-peer.prod.svc:2380",
        ] {
            assert!(
                args.contains(&expected.to_owned()),
                "{expected} missing from {args:?}"
            );
        }
        // Pod demo-2 advertises exactly what Names says its peer URL is.
        let names = Names::of(&kvcluster("demo", 3));
        let advertised =
            "http://$(POD_NAME).demo-peer.prod.svc:2380".replace("$(POD_NAME)", &names.member(2));
        assert_eq!(advertised, names.peer_url(2));
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.service_name.as_deref(), Some("demo-peer"));
        assert_eq!(spec.replicas, Some(1));
    }

    fn with_tls(tls: serde_json::Value) -> KvCluster {
        let mut kvc = kvcluster("demo", 3);
        kvc.spec.tls = Some(serde_json::from_value(tls).expect("tls"));
        kvc
    }

    #[test]
    fn tls_from_secrets_mounts_them_and_members_serve_https_with_probes_on_the_metrics_port() {
        let kvc = with_tls(serde_json::json!({
            "clientSecretName": "client-tls", "peerSecretName": "peer-tls", "operatorSecretName": "op-tls",
        }));
        let sts = statefulset(&kvc, 3);
        let args = args(&sts);
        for expected in [
            "--listen-client-urls=https://0.0.0.0:2379",
            "--advertise-client-urls=https://$(POD_NAME).demo-peer.prod.svc:2379",
            "--listen-peer-urls=https://0.0.0.0:2380",
            "--initial-advertise-peer-urls=https://$(POD_NAME).demo-peer.prod.svc:2380",
            "--cert-file=/etc/raftkv/tls/client-tls/tls.crt",
            "--key-file=/etc/raftkv/tls/client-tls/tls.key",
            "--trusted-ca-file=/etc/raftkv/tls/client-tls/ca.crt",
            "--client-cert-auth",
            "--listen-metrics-urls=http://0.0.0.0:2381",
            "--peer-cert-file=/etc/raftkv/tls/peer-tls/tls.crt",
            "--peer-key-file=/etc/raftkv/tls/peer-tls/tls.key",
            "--peer-trusted-ca-file=/etc/raftkv/tls/peer-tls/ca.crt",
            "--peer-client-cert-auth",
        ] {
            assert!(args.contains(&expected.to_owned()), "{expected} missing from {args:?}");
        }
        let names = Names::of(&kvc);
        assert_eq!(names.peer_url(2), "https://demo-2.demo-peer.prod.svc:2380");
        assert_eq!(names.client_url(0), "https://demo-0.demo-peer.prod.svc:2379");
        assert_eq!(names.ordinal_of_peer_url("https://demo-2.demo-peer.prod.svc:2380"), Some(2));
        assert_eq!(names.ordinal_of_peer_url("http://demo-2.demo-peer.prod.svc:2380"), None);

        let pod = pod_spec(&sts);
        // Whole Secrets (no subPath): the kubelet swaps renewed files in.
        let volumes: Vec<(String, Option<String>)> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.name, v.secret.and_then(|s| s.secret_name)))
            .collect();
        assert_eq!(
            volumes,
            [("client-tls".to_owned(), Some("client-tls".to_owned())), ("peer-tls".to_owned(), Some("peer-tls".to_owned()))]
        );
        let container = &pod.containers[0];
        let mounts: Vec<(String, String, Option<String>)> = container
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.name, m.mount_path, m.sub_path))
            .collect();
        assert!(mounts.contains(&("client-tls".into(), "/etc/raftkv/tls/client-tls".into(), None)), "{mounts:?}");
        assert!(mounts.contains(&("peer-tls".into(), "/etc/raftkv/tls/peer-tls".into(), None)), "{mounts:?}");
        // The operator's certificate is its own: never in a member's pod.
        assert!(!format!("{pod_volumes:?}", pod_volumes = pod_spec(&sts).volumes).contains("op-tls"));
        let ports: Vec<(Option<String>, i32)> =
            container.ports.clone().unwrap_or_default().into_iter().map(|p| (p.name, p.container_port)).collect();
        assert!(ports.contains(&(Some("metrics".into()), 2381)), "{ports:?}");
        for (what, probe) in [
            ("readiness", &container.readiness_probe),
            ("liveness", &container.liveness_probe),
            ("startup", &container.startup_probe),
        ] {
            let get = probe.as_ref().and_then(|p| p.http_get.clone()).expect("an HTTP probe");
            assert_eq!(get.port, IntOrString::String("metrics".into()), "{what}");
            assert_eq!(get.scheme, None, "{what} is plaintext");
        }
    }

    #[test]
    fn client_tls_without_client_certificates_and_plaintext_peers() {
        let sts = statefulset(&with_tls(serde_json::json!({"clientSecretName": "client-tls", "clientCertAuth": false})), 3);
        let args = args(&sts);
        assert!(args.contains(&"--listen-client-urls=https://0.0.0.0:2379".to_owned()), "{args:?}");
        assert!(args.contains(&"--listen-peer-urls=http://0.0.0.0:2380".to_owned()), "{args:?}");
        assert!(
            !args.iter().any(|a| a == "--client-cert-auth" || a.starts_with("--trusted-ca-file") || a.starts_with("--peer-")),
            "{args:?}"
        );
    }

    #[test]
    fn a_cert_manager_issuer_mounts_the_secrets_its_certificates_write() {
        let sts = statefulset(&with_tls(serde_json::json!({"certManager": {"name": "ca"}})), 3);
        let secrets: Vec<String> = pod_spec(&sts)
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.secret.and_then(|s| s.secret_name))
            .collect();
        assert_eq!(secrets, ["demo-client-tls", "demo-peer-tls"]);
        assert!(args(&sts).contains(&"--client-cert-auth".to_owned()));
    }

    #[test]
    fn server_settings_reach_every_member_as_flags() {
        let mut kvc = kvcluster("demo", 3);
        let before = args(&statefulset(&kvc, 3));
        kvc.spec.server = Some(
            serde_json::from_value(serde_json::json!({
                "quotaBackendBytes": "8Gi",
                "snapshotCount": 5000,
                "heartbeatIntervalMs": 150,
                "electionTimeoutMs": 1500,
                "autoCompaction": {"mode": "periodic", "retention": "30m"},
            }))
            .expect("server settings"),
        );
        let after = args(&statefulset(&kvc, 3));
        for expected in [
            "--quota-backend-bytes=8589934592",
            "--snapshot-count=5000",
            "--heartbeat-interval=150",
            "--election-timeout=1500",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=30m",
        ] {
            assert!(after.contains(&expected.to_owned()), "{expected} missing from {after:?}");
        }
        // In the pod template: a change makes a new revision, which the
        // planner rolls out one member at a time.
        assert_ne!(before, after);
        assert_eq!(&after[..before.len()], &before[..]);
    }

    #[test]
    fn maintenance_compaction_reaches_every_member_as_flags() {
        let mut kvc = kvcluster("demo", 3);
        kvc.spec.maintenance = Some(
            serde_json::from_value(serde_json::json!({"compaction": {"mode": "revision", "retention": "10000"}}))
                .expect("maintenance"),
        );
        let after = args(&statefulset(&kvc, 3));
        assert!(after.contains(&"--auto-compaction-mode=revision".to_owned()), "{after:?}");
        assert!(after.contains(&"--auto-compaction-retention=10000".to_owned()), "{after:?}");
    }

    #[test]
    fn the_initial_cluster_comes_from_the_bootstrap_configmap() {
        let sts = statefulset(&kvcluster("demo", 3), 3);
        let container = &pod_spec(&sts).containers[0];
        let from = container.env_from.clone().unwrap_or_default();
        assert_eq!(
            from[0].config_map_ref.as_ref().map(|c| c.name.as_str()),
            Some("demo-bootstrap")
        );
        assert!(
            !args(&sts)
                .iter()
                .any(|a| a.starts_with("--initial-cluster"))
        );
        let pod_name = &container.env.as_ref().expect("env")[0];
        assert_eq!(pod_name.name, "POD_NAME");
    }

    #[test]
    fn readiness_asks_health_and_liveness_does_not_need_a_leader() {
        let sts = statefulset(&kvcluster("demo", 3), 3);
        let container = &pod_spec(&sts).containers[0];
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&container.readiness_probe).as_deref(), Some("/health"));
        assert_eq!(path(&container.liveness_probe).as_deref(), Some("/version"));
        assert_eq!(path(&container.startup_probe).as_deref(), Some("/version"));
        assert!(
            pod_spec(&sts).containers[0].lifecycle.is_none(),
            "no preStop self-removal"
        );
    }

    #[test]
    fn pods_start_in_parallel_and_restart_only_when_deleted() {
        let spec = statefulset(&kvcluster("demo", 3), 3).spec.expect("spec");
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.and_then(|u| u.type_).as_deref(),
            Some("OnDelete")
        );
        let retention = spec
            .persistent_volume_claim_retention_policy
            .expect("retention");
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    }

    #[test]
    fn storage_and_pod_template_reach_the_pods() {
        let mut kvc = kvcluster("demo", 3);
        kvc.spec.storage.storage_class_name = Some("fast".to_owned());
        kvc.spec.storage.reclaim_policy = ReclaimPolicy::Delete;
        kvc.spec.image = Some("registry.local/raftkv@sha256:abc".to_owned());
        kvc.spec.pod_template = Some(PodTemplate {
            labels: BTreeMap::from([("team".to_owned(), "storage".to_owned())]),
            node_selector: BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]),
            tolerations: vec![Toleration {
                key: Some("dedicated".to_owned()),
                ..Toleration::default()
            }],
            priority_class_name: Some("critical".to_owned()),
            ..PodTemplate::default()
        });
        let sts = statefulset(&kvc, 3);
        let spec = sts.spec.clone().expect("spec");
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        let claim_spec = claim.spec.clone().expect("claim spec");
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").cloned())
                .map(|q| q.0),
            Some("8Gi".to_owned())
        );
        assert_eq!(
            spec.persistent_volume_claim_retention_policy
                .and_then(|p| p.when_deleted)
                .as_deref(),
            Some("Delete")
        );
        let pod = pod_spec(&sts);
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("registry.local/raftkv@sha256:abc")
        );
        assert_eq!(pod.priority_class_name.as_deref(), Some("critical"));
        assert_eq!(
            pod.node_selector
                .and_then(|n| n.get("disk").cloned())
                .as_deref(),
            Some("ssd")
        );
        assert_eq!(pod.tolerations.map(|t| t.len()), Some(1));
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("pod labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("storage"));
        // The user's labels never reach the immutable selector.
        assert!(
            !spec
                .selector
                .match_labels
                .expect("selector")
                .contains_key("team")
        );
    }

    #[test]
    fn members_prefer_distinct_nodes_unless_told_otherwise() {
        let pod = pod_spec(&statefulset(&kvcluster("demo", 3), 3));
        let anti = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .expect("anti-affinity");
        let term = &anti
            .preferred_during_scheduling_ignored_during_execution
            .expect("preferred")[0];
        assert_eq!(
            term.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
    }
}
