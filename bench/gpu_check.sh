#!/usr/bin/env bash
# Every GPU check in one command, for a lent GPU machine (no network, its own torch):
# the CUDA tests, then bench/gpu_bench.py.  Logs and JSON go to OUTDIR.
#
#   bash bench/gpu_check.sh MODEL.gguf OUTDIR [BUDGET_S [gpu_bench.py options...]]
#
# Run from the repository root; needs torch with CUDA, pytest, tokenizers, jinja2, gguf and
# transformers importable (PYTHONPATH may point at carried wheels).
set -uo pipefail
model=$1 out=$2 budget=${3:-300}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
export REALM_TEST_MODEL=$model PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv,noheader
timeout 240 python3 -m pytest -q -s -p no:cacheprovider tests/test_cuda.py tests/test_cuda_graph.py 2>&1 | tee "$out/test_cuda.log" | grep -v "^$"
python3 bench/gpu_bench.py --model "$model" --json "$out/gpu.json" --budget-s "$budget" "$@" 2>&1 | tee "$out/gpu_bench.log"
