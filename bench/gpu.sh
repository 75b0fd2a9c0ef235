#!/usr/bin/env bash
# The GPU run (issue 14), in two steps:
#
#   bash bench/gpu.sh prepare   here, once: writes .gpu/ (ignored by git), what the GPU image lacks and
#                               can travel (64 MiB at most): MiniLM's weights in fp16 (44 MB) with its
#                               tokenizer. The image has torch (CUDA), onnxruntime, tokenizers, numpy,
#                               scipy and matplotlib; it has no FAISS, which Winnow's GPU path does not need.
#   bash bench/gpu.sh run       on the GPU machine (the device tool: carry [".gpu"]): puts this checkout
#                               on the path without installing anything (nothing can be fetched there),
#                               runs the GPU tests, then `winnow bench gpu` into $OUT/gpu.json and .png.
#
# The whole run is sized to end within 8 minutes on an H100 (GPU_SIZE, GPU_TEXTS, GPU_PIPELINE_ITEMS
# shrink it). Commit $OUT/gpu.json as bench/results/gpu.json with the machine it names.
set -euo pipefail
cd "$(dirname "$0")/.."
step="${1:-run}"

if [[ "$step" == prepare ]]; then
    python="${PYTHON:-.venv/bin/python}"
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    "$python" - <<'PY'
from pathlib import Path
from winnow.bench.gpu import half_copy
from winnow.core.ml.encoder import minilm_files

dest = half_copy(minilm_files(), Path(".gpu/minilm-fp16"))
print(f"{dest}: {sum(f.stat().st_size for f in dest.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
PY
    exit 0
fi

[[ "$step" == run ]] || { echo "usage: bench/gpu.sh prepare|run" >&2; exit 2; }
[[ -d .gpu/minilm-fp16 ]] || { echo ".gpu/minilm-fp16 is missing: run 'bash bench/gpu.sh prepare' here first" >&2; exit 2; }
out="${OUT:-out}"
mkdir -p "$out"
# the package layout of pyproject.toml, as links: winnow = proto/winnow, winnow.core = core, ...
site="$(mktemp -d)"
mkdir -p "$site/winnow"
cp -r proto/winnow/. "$site/winnow/"
for pkg in core services bench; do ln -s "$PWD/$pkg" "$site/winnow/$pkg"; done
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, onnxruntime
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
# the GPU tests that need no server and no FAISS (their CPU halves run in CI on every commit)
timeout 120 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/unit/test_gpu_select.py \
    2>&1 | tee "$out/gpu-tests.log" || true
timeout 420 python3 -m winnow.bench.gpu --encoder .gpu/minilm-fp16 --out "$out/gpu.json" \
    --size "${GPU_SIZE:-1000000}" --texts "${GPU_TEXTS:-20000}" --pipeline-items "${GPU_PIPELINE_ITEMS:-4000}"
