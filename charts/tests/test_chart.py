"""The Helm chart, the CRD and the example manifests, checked offline.

- `helm lint` (strict) and `helm template` through the real Helm engine
  (helm-python-sdk embeds Helm 4's Go SDK), with default and non-default
  values;
- every rendered manifest, and the CRD, validated against the Kubernetes
  JSON schemas of the chart's minimum Kubernetes version
  (kubernetes-validate, strict: unknown fields are errors); a rendered
  KvCluster against the generated CRD's own schema;
- bad values refused by values.schema.json, with the offending key named;
- the RBAC rules exactly `raftkv-operator rbac` (the list the operator's
  reconcile scenarios hold to the calls it makes), cluster-wide and per
  watched namespace;
- the chart's CRD identical to the generated crds/;
- the examples/ KvClusters valid against the generated CRD schema, and
  what `raftkv-operator render` makes of each valid against Kubernetes'.

Run by `make test` (from the Makefile's virtualenv); by hand:
    .venv/bin/python -m unittest discover -s charts/tests -v
"""

import copy
import json
import os
import pathlib
import subprocess
import unittest

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "raftkv-operator"
CRDS = ROOT / "crds"
CRD = CRDS / "kvcluster.yaml"
EXAMPLES = ROOT / "examples"
BACKUP_EXAMPLES = EXAMPLES / "backups"
# Built by `make test` first; the Makefile says where.
OPERATOR = os.environ.get("RAFTKV_OPERATOR") or str(ROOT / "target" / "debug" / "raftkv-operator")
# The chart's kubeVersion floor, which is the operator's k8s-openapi feature.
KUBE_VERSION = "1.33.0"

NON_DEFAULT = {
    "replicaCount": 3,
    "image": {"repository": "registry.example.com/raftkv/raftkv-operator", "tag": "0.1.0-rc.1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "registry-creds"}],
    "serviceAccount": {"create": True, "name": "kv-operator", "annotations": {"team": "platform"}},
    "watchNamespaces": ["team-a", "team-b"],
    "logLevel": "debug",
    "logFormat": "text",
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "raftkv-operator"}},
                    },
                }
            ]
        }
    },
    "priorityClassName": "system-cluster-critical",
    "podAnnotations": {"example.com/owner": "platform"},
    "podLabels": {"tier": "control"},
    "metrics": {"port": 9090, "service": {"enabled": True}, "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}},
    "kvCluster": {
        "create": True,
        "name": "config",
        "replicas": 5,
        "version": "0.1.0",
        "storage": {"size": "10Gi", "storageClassName": "fast-ssd", "reclaimPolicy": "Delete"},
    },
}

# Values the schema must refuse, and a fragment of Helm's message.
BAD_VALUES = [
    ({"replicaCount": 0}, "/replicaCount"),
    ({"replicaCount": "2"}, "/replicaCount"),
    ({"image": {"repository": "x", "pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"logLevel": "verbose"}, "/logLevel"),
    ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
    ({"metrics": {"port": 80, "service": {"enabled": True}, "serviceMonitor": {"enabled": False}}}, "/metrics/port"),
    ({"metrics": {"port": 8080, "service": {"enabled": True}, "serviceMonitor": {"enabled": True, "interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
    ({"kvCluster": {"create": True, "replicas": 10}}, "/kvCluster/replicas"),
    ({"kvCluster": {"create": True, "version": "latest"}}, "/kvCluster/version"),
    ({"kvCluster": {"create": True, "storage": {"size": "lots"}}}, "/kvCluster/storage/size"),
    ({"kvCluster": {"create": True, "storage": {"size": "1Gi", "reclaimPolicy": "Keep"}}}, "/kvCluster/storage/reclaimPolicy"),
    ({"resources": {"requests": {"cpu": "a lot"}}}, "/resources/requests/cpu"),
    ({"replicas": 3}, "replicas"),
]


def crd_schema(kind="KvCluster"):
    (crd,) = [c for c in (yaml.safe_load(p.read_text()) for p in CRDS.glob("*.yaml")) if c["spec"]["names"]["kind"] == kind]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def render(values):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        manifests = chart.render(values, name="rk", namespace="ops", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((path, doc))
    return manifests, objects


def by_kind(objects, kind):
    return [o for _, o in objects if o["kind"] == kind]


class ChartTest(unittest.TestCase):
    def assert_valid(self, objects):
        kv_schema = crd_schema()
        for path, obj in objects:
            with self.subTest(path=path, kind=obj["kind"], name=obj["metadata"]["name"]):
                if obj["kind"] == "KvCluster":
                    jsonschema.validate(obj, kv_schema)
                elif obj["kind"] == "ServiceMonitor":
                    # prometheus-operator's CRD is not among Kubernetes' schemas.
                    self.assertEqual(obj["apiVersion"], "monitoring.coreos.com/v1")
                    self.assertEqual(obj["spec"]["endpoints"][0]["port"], "http-metrics")
                else:
                    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)

    def test_lint_passes_strict_with_default_and_non_default_values(self):
        for values in ({}, NON_DEFAULT):
            with self.subTest(values="default" if not values else "non-default"):
                report = helm.lint(str(CHART), values, strict=True, kube_version="v" + KUBE_VERSION)
                self.assertEqual(report["errors"], [])
                problems = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(problems, [], report)

    def test_default_values_render_valid_manifests(self):
        manifests, objects = render({})
        self.assert_valid(objects)
        (deploy,) = by_kind(objects, "Deployment")
        self.assertEqual(deploy["spec"]["replicas"], 2, "two replicas, one leading")
        pod = deploy["spec"]["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        (container,) = pod["containers"]
        self.assertEqual(container["image"], "raftkv/raftkv-operator:0.1.0")
        env = {e["name"]: e.get("value") for e in container["env"]}
        self.assertEqual(env["WATCH_NAMESPACE"], "", "every namespace")
        self.assertEqual(env["RUST_LOG"], "info")
        self.assertEqual(len(by_kind(objects, "ClusterRole")), 1, "every namespace needs a ClusterRole")
        self.assertEqual(len(by_kind(objects, "ClusterRoleBinding")), 1)
        self.assertEqual(by_kind(objects, "ServiceMonitor"), [])
        self.assertEqual(by_kind(objects, "KvCluster"), [])
        self.assertIn("kubectl -n <namespace> apply -f", manifests["raftkv-operator/templates/NOTES.txt"])

    def test_non_default_values_render_valid_manifests(self):
        manifests, objects = render(NON_DEFAULT)
        self.assert_valid(objects)
        (deploy,) = by_kind(objects, "Deployment")
        pod = deploy["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        self.assertEqual(deploy["spec"]["replicas"], 3)
        self.assertEqual(container["image"], "registry.example.com/raftkv/raftkv-operator:0.1.0-rc.1")
        self.assertEqual(container["imagePullPolicy"], "Always")
        self.assertEqual(container["resources"], NON_DEFAULT["resources"])
        self.assertEqual(pod["nodeSelector"], NON_DEFAULT["nodeSelector"])
        self.assertEqual(pod["tolerations"], NON_DEFAULT["tolerations"])
        self.assertEqual(pod["affinity"], NON_DEFAULT["affinity"])
        self.assertEqual(pod["serviceAccountName"], "kv-operator")
        self.assertEqual(pod["priorityClassName"], "system-cluster-critical")
        self.assertIn("--listen=0.0.0.0:9090", container["args"])
        env = {e["name"]: e.get("value") for e in container["env"]}
        self.assertEqual(env["WATCH_NAMESPACE"], "team-a,team-b")
        self.assertEqual(env["RUST_LOG"], "debug")
        # Watched namespaces get Roles there, and nothing cluster-wide.
        self.assertEqual(by_kind(objects, "ClusterRole"), [])
        role_namespaces = sorted(r["metadata"]["namespace"] for r in by_kind(objects, "Role") if r["metadata"]["namespace"] != "ops")
        self.assertEqual(role_namespaces, ["team-a", "team-b"])
        (monitor,) = by_kind(objects, "ServiceMonitor")
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prom")
        (kvc,) = by_kind(objects, "KvCluster")
        self.assertEqual((kvc["metadata"]["name"], kvc["spec"]["replicas"]), ("config", 5))
        self.assertEqual(kvc["spec"]["storage"]["storageClassName"], "fast-ssd")
        self.assertIn("KvCluster config (5 members)", manifests["raftkv-operator/templates/NOTES.txt"])

    def test_bad_values_are_refused_by_the_schema(self):
        with helm.Chart.load(str(CHART)) as chart:
            for bad, where in BAD_VALUES:
                with self.subTest(values=bad):
                    values = copy.deepcopy(bad)
                    with self.assertRaises(helm.HelmValuesError) as refused:
                        chart.validate_schema(values)
                    self.assertIn(where, str(refused.exception))
                    with self.assertRaises(helm.HelmError):
                        chart.render(values, name="rk", namespace="ops")

    def test_rbac_grants_exactly_what_the_operator_needs(self):
        want = json.loads(subprocess.run([OPERATOR, "rbac"], check=True, capture_output=True, text=True).stdout)
        for values, kind, count in (({}, "ClusterRole", 1), (NON_DEFAULT, "Role", 2)):
            with self.subTest(kind=kind):
                _, objects = render(values)
                roles = [r for r in by_kind(objects, kind) if not r["metadata"]["name"].endswith("-leader-election")]
                self.assertEqual(len(roles), count)
                for role in roles:
                    self.assertEqual(role["rules"], want["rules"])
                (election,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("-leader-election")]
                self.assertEqual(election["metadata"]["namespace"], "ops", "the Lease lives in the release's namespace")
                self.assertEqual(election["rules"], want["leaderElection"])
                bindings = by_kind(objects, kind + "Binding") + by_kind(objects, "RoleBinding")
                self.assertTrue(bindings)
                for binding in bindings:
                    (subject,) = binding["subjects"]
                    self.assertEqual((subject["kind"], subject["namespace"]), ("ServiceAccount", "ops"))

    def test_the_chart_carries_the_generated_crds(self):
        generated = sorted(p.name for p in CRDS.glob("*.yaml"))
        self.assertEqual(generated, ["kvbackup.yaml", "kvbackupschedule.yaml", "kvcluster.yaml"])
        self.assertEqual(sorted(p.name for p in (CHART / "crds").glob("*.yaml")), generated, "run: cp crds/*.yaml charts/raftkv-operator/crds/")
        for name in generated:
            self.assertEqual((CHART / "crds" / name).read_text(), (CRDS / name).read_text(), "run: cp crds/*.yaml charts/raftkv-operator/crds/")

    def test_the_crds_are_valid_kubernetes_objects(self):
        for path in sorted(CRDS.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


class MaintenanceSchemaTest(unittest.TestCase):
    def test_compaction_is_set_in_one_place_and_defragmentation_needs_a_trigger(self):
        schema = crd_schema()
        rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
        self.assertTrue(any("maintenance.compaction" in r and "server.autoCompaction" in r for r in rules), rules)
        defrag = schema["properties"]["spec"]["properties"]["maintenance"]["properties"]["defragmentation"]
        self.assertTrue(any("minFreeBytes" in r["rule"] for r in defrag["x-kubernetes-validations"]))
        good = yaml.safe_load((EXAMPLES / "kvcluster-production.yaml").read_text())
        bad = copy.deepcopy(good)
        bad["spec"]["maintenance"]["defragmentation"]["minFreePercent"] = 100
        with self.assertRaises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


class BackupExamplesTest(unittest.TestCase):
    def test_backup_examples_are_valid_for_their_kinds(self):
        examples = sorted(BACKUP_EXAMPLES.glob("*.yaml"))
        self.assertGreaterEqual(len(examples), 2)
        kinds = set()
        for path in examples:
            for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
                with self.subTest(example=path.name, kind=doc["kind"]):
                    if doc["apiVersion"] == "v1":
                        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
                        continue
                    self.assertEqual(doc["apiVersion"], "raftkv.io/v1alpha1")
                    kinds.add(doc["kind"])
                    jsonschema.validate(doc, crd_schema(doc["kind"]))
        self.assertEqual(kinds, {"KvBackup", "KvBackupSchedule"})

    def test_the_schemas_refuse_bad_backups(self):
        schedule = crd_schema("KvBackupSchedule")
        good = {"apiVersion": "raftkv.io/v1alpha1", "kind": "KvBackupSchedule", "metadata": {"name": "n"},
                "spec": {"cluster": "demo", "schedule": "0 3 * * *", "destination": {"s3": {"bucket": "backups"}}}}
        jsonschema.validate(good, schedule)
        for change in ({"retention": {"maxAge": "30 days"}}, {"retention": {"count": 0}}, {"cluster": ""},
                       {"destination": {"s3": {"bucket": "backups", "endpoint": "minio:9000"}}}):
            with self.subTest(change=change):
                bad = copy.deepcopy(good)
                bad["spec"].update(change)
                with self.assertRaises(jsonschema.ValidationError):
                    jsonschema.validate(bad, schedule)


class ExamplesTest(unittest.TestCase):
    def test_examples_are_valid_kvclusters(self):
        schema = crd_schema()
        examples = sorted(EXAMPLES.glob("*.yaml"))
        self.assertGreaterEqual(len(examples), 2)
        for path in examples:
            with self.subTest(example=path.name):
                (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
                self.assertEqual((doc["apiVersion"], doc["kind"]), ("raftkv.io/v1alpha1", "KvCluster"))
                jsonschema.validate(doc, schema)
                # Its metadata, through a kind Kubernetes' schemas know.
                kubernetes_validate.validate({k: v for k, v in doc.items() if k != "spec"} | {"apiVersion": "v1", "kind": "ConfigMap"}, KUBE_VERSION, strict=True)

    def test_the_objects_the_operator_renders_are_valid_kubernetes(self):
        for path in sorted(EXAMPLES.glob("*.yaml")):
            with self.subTest(example=path.name):
                out = subprocess.run([OPERATOR, "render", "-f", str(path)], check=True, capture_output=True, text=True).stdout
                docs = [d for d in yaml.safe_load_all(out) if d]
                kinds = sorted(d["kind"] for d in docs)
                self.assertEqual(kinds, ["ConfigMap", "PodDisruptionBudget", "Service", "Service", "StatefulSet"])
                for doc in docs:
                    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)

    def test_the_schema_refuses_bad_kvclusters(self):
        schema = crd_schema()
        good = yaml.safe_load((EXAMPLES / "kvcluster-minimal.yaml").read_text())
        for change in ({"replicas": 0}, {"replicas": 10}, {"version": "latest"}, {"storage": {"size": "big"}}, {"storage": {"size": "1Gi", "reclaimPolicy": "Keep"}}):
            with self.subTest(change=change):
                bad = copy.deepcopy(good)
                bad["spec"].update(change)
                with self.assertRaises(jsonschema.ValidationError):
                    jsonschema.validate(bad, schema)


if __name__ == "__main__":
    unittest.main()
