#!/usr/bin/env bash
# The GPU checks the issues name, as one script for a CUDA machine (the device tool runs it in the repo root;
# files under $OUT come back). Python packages the machine lacks travel as cp312 wheels in an ignored folder
# ($WHEELS, default .whl/; see benchmarks/README.md, "GPU checks"); torch, accelerate and the CUDA stack are
# the machine's own.
#   bash benchmarks/gpu_checks.sh lr-quality   issue 11: lr_quality's ~0.5B tasks (tasks_gpu.yaml), every row;
#                                              then check runs (full-length fine-tunes at the suggested LRs)
#                                              for the rows in $LRQ_CHECK_ROWS (default: adaptive short-grid)
#   bash benchmarks/gpu_checks.sh ramp-fall    issue 11: ramp_fall.py over the ~0.5B tasks' full range tests
#                                              ($RAMP_TASKS, default tasks_gpu.yaml): does each ramp fall
#                                              before the adaptive stop (adaptive.fell)?
#   bash benchmarks/gpu_checks.sh qlora        issue 15: QLoRA 4-bit fine-tune of a ~0.5B model (gpu_qlora.py)
#   bash benchmarks/gpu_checks.sh torchrun     issue 14: finetune-trainer train under torchrun on 1 GPU vs a bare
#                                              torchrun DDP loop, bf16, tokens/s >= 0.97x (distributed_scaling.py)
set -uo pipefail
out=${OUT:-/tmp/gpu-checks}
wheels=${WHEELS:-.whl}
mkdir -p "$out"
if [ -d "$wheels" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$wheels"/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/trainer_image:$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
python3 - <<'PY' | tee "$out/versions.txt"
import importlib.metadata as m, torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0))
for p in ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes", "pydantic", "pyarrow"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "absent")
PY
status=0
for check in "${@:-lr-quality}"; do
  case $check in
    lr-quality)
      # Two runs in one time box ($LRQ_TIMEOUT): every row with regret interpolated off the oracle grid, a
      # whole result even if time runs out; then --resume, which reuses those jobs and the oracle and adds
      # the check runs for the rows in $LRQ_CHECK_ROWS. LRQ_RESUME=1 lets the first run reuse the cache too
      # (a carried $XDG_CACHE_HOME holding an earlier run's tarball, unpacked).
      tasks=${LRQ_TASKS:-benchmarks/tasks_gpu.yaml} start=$SECONDS box=${LRQ_TIMEOUT:-540}
      results=benchmarks/results/$(python3 -c 'import sys; from pathlib import Path
from benchmarks.quality.store import results_name; print(results_name(Path(sys.argv[1])))' "$tasks")
      name=$(basename "$results") first=1
      if timeout "$box" python3 benchmarks/lr_quality.py --tasks "$tasks" ${LRQ_RESUME:+--resume} --check-rows \
        --workers "${LRQ_WORKERS:-3}" 2>&1 | tee "$out/$name.log"; then
        cp "$results.md" "$out/${name}_interpolated.md" && cp "$results.json" "$out/${name}_interpolated.json"
        first=0
      else
        status=1
      fi
      left=$((box - (SECONDS - start)))
      if [ "$first" = 0 ] && [ "$left" -gt 30 ] && timeout "$left" python3 benchmarks/lr_quality.py \
        --tasks "$tasks" --resume --check-rows ${LRQ_CHECK_ROWS:-adaptive short-grid} \
        --workers "${LRQ_WORKERS:-3}" 2>&1 | tee -a "$out/$name.log"; then
        cp "$results.md" "$results.json" "$out/" || status=1
      else
        status=1
      fi
      # what finished, even when a run did not: the oracle's losses and the recommender jobs, per task
      cache=${XDG_CACHE_HOME:-$HOME/.cache}/finetune-operator/lr_quality
      tar -czf "$out/lr_quality_cache.tgz" -C "$cache" oracle jobs 2>/dev/null
      ;;
    ramp-fall)
      timeout "${RAMP_TIMEOUT:-300}" python3 benchmarks/ramp_fall.py --tasks ${RAMP_TASKS:-benchmarks/tasks_gpu.yaml} \
        --workers "${RAMP_WORKERS:-6}" 2>&1 | tee "$out/ramp_fall.log" || status=1
      cp benchmarks/results/ramp_fall_*.md "$out/" || status=1
      ;;
    qlora)
      timeout "${QLORA_TIMEOUT:-300}" python3 benchmarks/gpu_qlora.py --out "$out/gpu_qlora.json" 2>&1 \
        | tee "$out/gpu_qlora.log" || status=1
      ;;
    torchrun)
      timeout "${TORCHRUN_TIMEOUT:-420}" python3 benchmarks/distributed_scaling.py --gpu-check \
        --out "$out/distributed_gpu.json" 2>&1 | tee "$out/distributed_gpu.log" || status=1
      ;;
    *) echo "unknown check $check (lr-quality | ramp-fall | qlora | torchrun)"; status=2 ;;
  esac
done
exit $status
