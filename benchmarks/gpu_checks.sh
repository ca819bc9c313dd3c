#!/usr/bin/env bash
# The GPU checks the issues name, as one script for a CUDA machine (the device tool runs it in the repo root;
# files under $OUT come back). Python packages the machine lacks travel as wheels in .whl/ (see
# benchmarks/README.md, "GPU checks"); torch, accelerate and the CUDA stack are the machine's own.
#   issue 11: lr_quality's ~0.5B task (benchmarks/tasks_gpu.yaml): 5-point oracle, every recommender row.
set -uo pipefail
out=${OUT:-/tmp/gpu-checks}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/trainer_image${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
python3 - <<'PY' | tee "$out/versions.txt"
import importlib.metadata as m, torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0))
for p in ("torch", "transformers", "peft", "accelerate", "datasets", "pydantic", "pyarrow", "huggingface-hub"):
    print(p, m.version(p))
PY
status=0
timeout "${LRQ_TIMEOUT:-480}" python3 benchmarks/lr_quality.py --tasks "${LRQ_TASKS:-benchmarks/tasks_gpu.yaml}" \
  --workers "${LRQ_WORKERS:-3}" 2>&1 | tee "$out/lr_quality_gpu.log" || status=1
cp benchmarks/results/lr_quality_gpu.md benchmarks/results/lr_quality_gpu.json "$out/" 2>/dev/null || status=1
exit $status
