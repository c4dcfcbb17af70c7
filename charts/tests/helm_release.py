"""Installs, upgrades or uninstalls the raftkv-operator chart into a real
cluster with Helm 4's own Go SDK (helm-python-sdk), as `helm install`
would; the end-to-end tests on a real control plane run it
(tests/tests/operator_k8s.rs).

    helm_release.py install|upgrade|uninstall --kubeconfig FILE \
        --namespace NS --name RELEASE [--values JSON]

Prints the release Helm reports, as JSON, on stdout; on failure Helm's
error on stderr and exit status 1.
"""

import argparse
import json
import pathlib
import sys

import helm_python as helm

CHART = pathlib.Path(__file__).resolve().parent.parent / "raftkv-operator"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["install", "upgrade", "uninstall"])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--values", default="{}")
    args = parser.parse_args()
    values = json.loads(args.values)
    try:
        with helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as config:
            if args.action == "install":
                with helm.Chart.load(str(CHART)) as chart:
                    release = config.install(chart, args.name, values, namespace=args.namespace, create_namespace=True, timeout=120)
            elif args.action == "upgrade":
                with helm.Chart.load(str(CHART)) as chart:
                    release = config.upgrade(chart, args.name, values, namespace=args.namespace, timeout=120)
            else:
                release = config.uninstall(args.name, timeout=120)
    except helm.HelmError as err:
        print(f"helm {args.action}: {err}", file=sys.stderr)
        sys.exit(1)
    json.dump(release, sys.stdout)


if __name__ == "__main__":
    main()
