#!/usr/bin/env bash
# The virtualenv the chart tests run in (charts/tests/requirements.txt):
# Helm 4's engine (helm-python-sdk, no helm binary needed) and the Kubernetes
# JSON schemas (kubernetes-validate). Created once; redone when the
# requirements change. Says what to install when it cannot.
set -euo pipefail
venv=${1:-.venv}
req=${2:-charts/tests/requirements.txt}
stamp=$venv/.installed

if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then exit 0; fi
python=$(command -v python3 || true)
if [ -z "$python" ]; then
  echo "pydeps: python3 is missing: install Python 3.10 or newer (Debian: python3 python3-venv)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ] && ! "$python" -m venv "$venv" 2>/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$python" -m venv "$venv"
  else
    echo "pydeps: cannot create a virtualenv: install python3-venv, then run make again" >&2
    exit 1
  fi
fi
echo "pydeps: installing the chart tests' Python packages into $venv" >&2
if ! "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"; then
  echo "pydeps: pip could not install $req (is PyPI reachable?); install them into $venv by hand" >&2
  exit 1
fi
cp "$req" "$stamp"
