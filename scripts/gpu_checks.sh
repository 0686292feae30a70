#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: gsplat's kernel build, the gpu-marked tests, the
# renderer benchmark on CUDA, build-model and train-posenet on CUDA, and `gs2pose eval` (track,
# then estimate) on generated 640x480 sequences with --device cuda. Figures go to docs/benchmarks.md ("GPU").
#
#   bash scripts/gpu_checks.sh OUT [OBJECT ...]     (default objects: printed_box)
#
# Needs a Python with this project's dependencies, gsplat 1.5.3 and a CUDA toolkit (nvcc) for
# gsplat's just-in-time build: PYTHON (default .venv/bin/python, else python3). Each step is
# skipped once GPU_CHECKS_BUDGET seconds (default 3600) have passed since the start, so a run on
# a lent machine ends in time. The logs and results (not the data) are also packed into OUT.tgz. Objects other than printed_box need OBJECT_MODEL_<object> and
# OBJECT_POSENET_<object> (paths); printed_box uses the shipped assets.
set -uo pipefail

OUT=${1:?usage: gpu_checks.sh OUT [OBJECT ...]}
shift
OBJECTS=("${@:-printed_box}")
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=${PYTHON:-}
[ -z "$PY" ] && { [ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python" || PY=python3; }
BUDGET=${GPU_CHECKS_BUDGET:-3600}
START=$(date +%s)
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# gsplat compiles for the visible card only, with all cores (its default is 10 jobs).
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi

elapsed() { echo $(( $(date +%s) - START )); }
# step NAME LIMIT_S CMD...: runs CMD (log in OUT/NAME.log) unless the budget is spent.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt 20 ]; then
    echo "[gpu_checks] $name: skipped, budget spent ($(elapsed) s)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0
  t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[gpu_checks] $name: rc $rc in $(( $(date +%s) - t0 )) s"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
nvcc --version | tail -2

# Generated sequences (the same command as the CPU figures: docs/tracking.md), made while gsplat builds.
for o in "${OBJECTS[@]}"; do
  if [ ! -f "$OUT/data/$o/test/000000/scene_gt.json" ]; then
    step "synth_$o" 600 "$PY" -m gs2pose_ros.cli synth --out "$OUT/data/$o" --object "$o" --frames 60 --seed 7 \
      --ref-views 0 --leave-view 35:10 --no-progress --overwrite &
  fi
done
step synth_reference_views 300 "$PY" -m gs2pose_ros.cli synth --out "$OUT/data/reference_views" --object printed_box \
  --frames 1 --ref-views 24 --width 320 --height 240 --seed 3 --no-progress --overwrite &
step gsplat_build 900 "$PY" -c "
import time; t = time.time()
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat built no extension'
print(f'gsplat kernels ready in {time.time() - t:.1f} s')"
wait
tail -3 "$OUT/gsplat_build.log"
(cd "$OUT/data" && md5sum -- */test/000000/scene_gt.json */test/000000/rgb/000040.png */test/000000/depth/000040.png 2>/dev/null)

step pytest_gpu 900 "$PY" -m pytest -m gpu -p no:cacheprovider -q -rs --durations=0 --timeout 300 \
  "$ROOT/test/test_render.py" "$ROOT/test/test_gpu.py"
tail -15 "$OUT/pytest_gpu.log"

step bench_render 300 bash -c "'$PY' '$ROOT/bench/bench_render.py' --device cuda && \
  '$PY' '$ROOT/bench/bench_render.py' --device cuda --n 20000 --size 256"
grep -E "^\| gsplat|^# Renderer|first" "$OUT/bench_render.log"

# Reconstruction (build-model from posed reference views) on the GPU.
step build_model 240 "$PY" -m gs2pose_ros.cli build-model --dataset "$OUT/data/reference_views" --object printed_box \
  --out "$OUT/build_model/model.ply" --holdout 6 --device cuda --no-progress
tail -8 "$OUT/build_model.log"

# Pose-Net training throughput on the GPU (the GPU network, one minute each; not usable networks):
# samples made between steps, then by workers on the spare cores.
WORKERS=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
for w in 0 "$WORKERS"; do
  step "train_posenet_w$w" 150 "$PY" -m gs2pose_ros.cli train-posenet --model "$ROOT/gs2pose_ros/data/printed_box/model.ply" \
    --out "$OUT/train_posenet_w$w/posenet.safetensors" --device cuda --network gpu --pool 200 --time-limit 1 \
    --workers "$w" --no-progress
  tail -2 "$OUT/train_posenet_w$w.log"
done

for mode in track estimate; do
  for o in "${OBJECTS[@]}"; do
    if [ "$o" = printed_box ]; then
      model="$ROOT/gs2pose_ros/data/printed_box/model.ply"; posenet="$ROOT/gs2pose_ros/data/printed_box/posenet.safetensors"
    else
      mv="OBJECT_MODEL_$o"; pv="OBJECT_POSENET_$o"; model=${!mv:-}; posenet=${!pv:-}
    fi
    step "eval_${o}_$mode" 600 "$PY" -m gs2pose_ros.cli eval --dataset "$OUT/data/$o" --object 1 --model "$model" \
      --posenet "$posenet" --mode "$mode" --device cuda --overlays 0 --report "$OUT/eval_${o}_$mode/report.json"
    tail -11 "$OUT/eval_${o}_$mode.log"
  done
done
# everything but the generated data in one file, for machines that hand back only a few files
tar czf "$OUT.tgz" --exclude=./data -C "$OUT" . && echo "[gpu_checks] results packed in $OUT.tgz"
echo "[gpu_checks] done in $(elapsed) s"
