#!/usr/bin/env bash
# The GPU tables of docs/benchmarks.md, in one run on a single-GPU host.
#
# Usage: launch/benchmark_gpu.sh OUT_DIR [STEP...]
#   Writes OUT_DIR/report.md (every table, each step's log tail) and one JSON per step.
#   Steps, most important first, each under its own time limit so a slow one still leaves the
#   others' results (no STEP named: all four, in this order):
#     tsm_torch_bf16  TSM vs torch TSM, bf16 (JAX bf16 compute, torch autocast): inference 1 and
#                     32, train 16.
#     tsm_torch_fp32  the same in fp32.
#     aknet_bf16      TSM vs AK-Net-TSM (none and full transform, squared stride), bf16: latency
#                     at batch 1 and 32, training step at batch 16 with its TFLOP/s and MFU.
#     tdn_torch_bf16  TDN vs the torch TDN reference, bf16.
#   $STEP_SECONDS is each step's limit (default 150), $TDN_STEP_SECONDS TDN's (default 300: its
#   program compiles longer). $PYTHON picks the interpreter (default: python). JAX and torch share
#   the GPU: JAX takes at most $XLA_PYTHON_CLIENT_MEM_FRACTION of it (default here 0.45), torch
#   the rest.
set -uo pipefail

all_steps=(tsm_torch_bf16 tsm_torch_fp32 aknet_bf16 tdn_torch_bf16)
if [[ $# -lt 1 || -z "$1" ]]; then
  echo "error: give the output directory first: launch/benchmark_gpu.sh OUT_DIR [STEP...]" >&2
  exit 2
fi
out=$1
shift
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=("${all_steps[@]}")
for name in "${steps[@]}"; do
  if [[ " ${all_steps[*]} " != *" $name "* ]]; then
    echo "error: unknown step '$name'; the steps are: ${all_steps[*]}" >&2
    exit 2
  fi
done
py=${PYTHON:-python}
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
report="$out/report.md"
{
  echo "# GPU benchmarks ($(date -u +%Y-%m-%dT%H:%MZ))"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  "$py" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch',
torch.__version__, 'cuDNN', torch.backends.cudnn.version())" 2>&1 | tail -1
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$report"

step() {  # step NAME LIMIT_SECONDS PROFILE_FLAGS...
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo -e "\n## $name\n\n\`python -m aknet_jax.profile $*\`\n" >>"$report"
  timeout "$limit" "$py" -m aknet_jax.profile "$@" --json="$out/$name.json" \
    >"$out/$name.stdout" 2>"$out/$name.stderr"
  rc=$?
  cat "$out/$name.stdout" >>"$report"
  echo -e "\n(exit $rc, $((SECONDS - start)) s wall)" >>"$report"
  if [[ $rc -ne 0 ]]; then
    {  # the first fatal lines (an XLA check sits above the thread dump), then the log's end
      grep -m 5 -E '^F[0-9]|Check failed|Fatal Python error|Error:' "$out/$name.stderr"
      echo "..."
      grep -v '^[IW][0-9]' "$out/$name.stderr" | tail -15
    } | sed 's/^/    /' >>"$report"
  fi
  rm -f "$out/$name.stdout" "$out/$name.stderr"
}

run_step() {  # run_step NAME: the profile flags of each step
  local limit=${STEP_SECONDS:-150}
  case $1 in
    tsm_torch_bf16) step "$1" "$limit" --config=configs/ssv2.py:backbone=tsm,bf16=true \
                      --against=torch --batch=1,32 --train_batch=16 --reps=10 ;;
    tsm_torch_fp32) step "$1" "$limit" --config=configs/ssv2.py:backbone=tsm --against=torch \
                      --batch=1,32 --train_batch=16 --reps=10 ;;
    aknet_bf16) step "$1" "$limit" --config=configs/ssv2.py:backbone=tsm,bf16=true --batch=1,32 \
                  --train_batch=16 --transform_modes=none,full --point_strides=squared --reps=10 \
                  --train_reps=10 ;;
    tdn_torch_bf16) step "$1" "${TDN_STEP_SECONDS:-300}" \
                      --config=configs/ssv2.py:backbone=tdn,bf16=true --against=torch \
                      --batch=1,32 --train_batch=16 --reps=10 ;;
  esac
}

for name in "${steps[@]}"; do
  run_step "$name"
done
echo "done" >>"$report"
