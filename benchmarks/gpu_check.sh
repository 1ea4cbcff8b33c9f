#!/usr/bin/env bash
# The GPU check of issue 23, for one H100 in well under 8 minutes (estimated 3 to 5):
#   1. a short retrofit of SmolLM2-135M to ratio 2 with distillation (68 steps of 8,192 tokens),
#      the student, its teacher and the final evaluation on the GPU;
#   2. decode throughput at batch 64, context 4,096, bfloat16 weights and caches: dynacomp's dense
#      loop over a StaticCache and DMC x2 / x4 / x8, their steps taken in turn in one process
#      (benchmarks/dmc_throughput.py --paired);
# then writes docs/results/gpu_check.md (the command, machine, date and both results) beside the
# throughput benchmark's own page and JSON (gpu_check_throughput.*).
#
#   benchmarks/gpu_check.sh             on a machine with CUDA (a CUDA build of torch)
#   benchmarks/gpu_check.sh --dry-run   every step on CPU at tiny sizes (or GPU_CHECK_DRY_RUN=1), the page
#                                       into $GPU_CHECK_OUT (default: a new temporary folder)
#
# GPU_CHECK_MODEL and GPU_CHECK_DATA replace the model and the retrofit's data (the test suite's dry
# run passes a tiny random model); PYTHON names the interpreter (default: python). Without CUDA and
# without --dry-run the first step stops with "CUDA is not available".
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=${GPU_CHECK_DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then
  dry_run=1
fi
python=${PYTHON:-python}
model=${GPU_CHECK_MODEL:-smollm2-135m}
data=${GPU_CHECK_DATA:-english}
if [[ $dry_run == 1 ]]; then
  device=cpu
  out=${GPU_CHECK_OUT:-$(mktemp -d)}
  retrofit=(--seq-len 32 --batch-size 2 --zero-out-steps 1 --retrofit-steps 2 --finetune-steps 1
            --eval-tokens 64 --eval-batch 2)
  throughput=(--batch 2 --contexts 64 --new-tokens 2 --page-size 16)
else
  device=cuda
  out=${GPU_CHECK_OUT:-docs/results}
  retrofit=(--seq-len 512 --batch-size 16 --zero-out-steps 4 --retrofit-steps 48 --finetune-steps 16
            --eval-tokens 16384 --eval-batch 16)
  throughput=(--batch 64 --contexts 4096 --new-tokens 32)
fi
work=$(mktemp -d)   # the retrofit's checkpoints and report, not results
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

retrofit_command=(dynacomp dmc retrofit --model "$model" --data "$data" --device "$device" --target-cr 2
                  --distill 0.5 --bf16 --checkpoint-every 0 "${retrofit[@]}" --out "$work/retrofit")
started=$SECONDS
"$python" -m dynacomp.cli "${retrofit_command[@]:1}" > "$work/retrofit.txt"
retrofit_seconds=$((SECONDS - started))

started=$SECONDS
"$python" benchmarks/dmc_throughput.py --model "$model" --device "$device" --dtype bfloat16 --methods \
  --paired 2 4 8 "${throughput[@]}" --out "$out/gpu_check_throughput.md" > /dev/null
throughput_seconds=$((SECONDS - started))

{
  echo "# GPU check"
  echo
  echo "Command: \`benchmarks/gpu_check.sh${*:+ $*}\` ($((retrofit_seconds + throughput_seconds)) s in all)  "
  grep -m 1 '^Machine:' "$out/gpu_check_throughput.md"
  echo "Date: $(date -u +%F)"
  echo
  echo "## Decode throughput ($throughput_seconds s, gpu_check_throughput.json)"
  echo
  tail -n +3 "$out/gpu_check_throughput.md"
  echo
  echo "## A short retrofit to ratio 2 with distillation ($retrofit_seconds s)"
  echo
  echo "Command: \`${retrofit_command[*]/"$work/retrofit"/RUN}\`"
  echo
  echo '```'
  grep -v '^out:' "$work/retrofit.txt"
  echo '```'
} > "$out/gpu_check.md"
echo "wrote $out/gpu_check.md" >&2
