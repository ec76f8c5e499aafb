#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run with a time limit per step, for a short lease of a
# GPU machine: environment, the CUDA/Triton build, with DEMO_SECONDS > 0 a GPU run of the
# demo-checkpoint training (sample_x4 preset, first so that a cut-short lease still yields it), then
# (CHECKS=1) the GPU-marked tests and the GPU benchmarks.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh
#
# Runs from the repository root with the machine's own python3/torch (nothing installed: the package
# is put on PYTHONPATH). Each step's output goes to $OUT/session.log, test failures' tracebacks to
# $OUT/test_failures.log; the step summary at the end is
# the table to copy into BENCHMARKS.md. The demo checkpoint, if trained, is
# $OUT/demo_x4.safetensors, and the resumable training checkpoint is split into $OUT/last.pt.part-*.
#
# Step times on the H200, 2026-12-04 (machine start about 30 s): env 12 s, build 58 s, tests more
# than 170 s with 12 workers (97% done), deform more than 60 s, sw 24 s, match 19 s, model 47 s,
# agreement 13 s, sw_stages 14 s: all of it fits one 600 s call of a 15-minute lease, once.
set -u
OUT=${OUT:-/tmp/dzsr_gpu}
DEMO_SECONDS=${DEMO_SECONDS:-0}
DEMO_ARGS=${DEMO_ARGS:-}
DEMO_DEVICE=${DEMO_DEVICE:-cuda}
CHECKS=${CHECKS:-1}   # 0: only the demo training (a dry run of it on CPU: DEMO_DEVICE=cpu)
SWEEP=${SWEEP:-0}     # 1: also the size sweeps for the plots (up to 2 more minutes; a 15-minute lease
                      # has room for them only when the steps above finish well inside their limits)
BUDGET=${BUDGET:-560} # seconds for the whole script: each step's limit is cut to what is left, and a
                      # step with under 20 s left is skipped, so the summary is always printed
JOBS=${JOBS:-12}      # pytest-xdist workers for the GPU tests (Triton compiles in parallel)
ONLY=${ONLY:-}        # space-separated check steps to run (a rerun inside the same lease); env and
                      # build always run
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export DZSR_CACHE_DIR=${DZSR_CACHE_DIR:-/tmp/dzsr_cache} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
LOG=$OUT/session.log
SUMMARY=""

DEADLINE=$(( $(date +%s) + BUDGET ))

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2 start rc left
    shift 2
    case " env build $ONLY " in *" $name "*) ;; *) [ -n "$ONLY" ] && return ;; esac
    left=$(( DEADLINE - $(date +%s) ))
    if [ "$left" -lt 20 ]; then
        SUMMARY+="$(printf '%-14s skipped (budget spent)' "$name")"$'\n'
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "===== $name (limit ${limit}s) $(date -u +%FT%TZ): $*" | tee -a "$LOG"
    start=$(date +%s)
    timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    SUMMARY+="$(printf '%-14s rc=%-3s %4ss' "$name" "$rc" "$(( $(date +%s) - start ))")"$'\n'
    echo "===== $name rc=$rc" | tee -a "$LOG"
}

step env 30 bash -c 'nvidia-smi -L; python3 -c "import sys, torch, torchvision, triton; print(sys.version.split()[0], torch.__version__, torchvision.__version__, triton.__version__, torch.cuda.get_device_name())"; nproc'
step build 180 python3 -m dzsr.cli info
if [ "$DEMO_SECONDS" -gt 0 ]; then
    # The demo checkpoint (sample_x4 preset) on the GPU, the authors' two stages: KernelGen alone
    # (DEMO_KG_ARGS), then both networks from it (DEMO_ARGS), stopped by the time limit if not
    # finished; the final (else the last periodic) checkpoint becomes the inference checkpoint.
    step demo_kg 120 python3 -m dzsr.cli train --no-progress --config sample_x4 stage=kernel_gen device=$DEMO_DEVICE \
        log.out_dir=/tmp/demo_gpu/kg ${DEMO_KG_ARGS:-}
    KG=/tmp/demo_gpu/kg/final.pt; [ -f $KG ] || KG=/tmp/demo_gpu/kg/last.pt
    step demo "$DEMO_SECONDS" python3 -m dzsr.cli train --no-progress --config sample_x4 device=$DEMO_DEVICE \
        init.checkpoint=$KG log.out_dir=/tmp/demo_gpu/joint $DEMO_ARGS
    step demo_export 60 python3 -c "
import os
from dzsr.checkpoint import load_checkpoint, save_inference_checkpoint
run = '/tmp/demo_gpu/joint'
path = os.path.join(run, 'final.pt') if os.path.exists(os.path.join(run, 'final.pt')) else os.path.join(run, 'last.pt')
m, c = load_checkpoint(path)
print('exporting', path, 'iteration', c['extra']['iteration'])
save_inference_checkpoint('$OUT/demo_x4.safetensors', m, extra={'iteration': c['extra']['iteration']})
"
    # the resumable checkpoint (optimizer state too), in pieces under 16 MiB: cat them to resume elsewhere
    [ -f /tmp/demo_gpu/joint/last.pt ] && split -b 15M /tmp/demo_gpu/joint/last.pt "$OUT/last.pt.part-"
fi
if [ "$CHECKS" = 1 ]; then
if python3 -c "import xdist" 2>/dev/null; then XDIST="-n $JOBS"; else XDIST=""; fi
# -v: each result is logged as it comes, and DZSR_FAILURE_LOG (tests/conftest.py) gets each
# failure's traceback as it happens, so a step cut by its limit still says what failed and why
export DZSR_FAILURE_LOG=$OUT/test_failures.log
step tests 240 python3 -m pytest -m gpu -v -p no:cacheprovider --maxfail=20 -rf $XDIST tests
step deform 80 python3 -m benchmarks.bench_deform_conv_gpu
# SW loss (issue 15 targets: >= 2x the reference at every shape, >= 3x at (16,256,48,48))
step sw 60 python3 -m benchmarks.bench_sliced_wasserstein --device cuda --reps 20
# LOSW (issue 15: >= 5x the authors' unfold + sort at (16,256,48,48) k=8, <= 0.25x their peak memory)
step losw 45 python3 -m benchmarks.bench_local_sliced_wasserstein --device cuda --reps 10
# patch matching: reference (chunked cuDNN conv2d, PyTorch's default TF32), exact (cpp, triton),
# fast (triton, split-TF32 tensor cores): time and peak extra memory
step match 90 python3 -m benchmarks.bench_patch_match --device cuda --sizes 128x128,172x278 \
    --cases conv2d,cpp,triton,triton_fast,matmul
step model 60 python3 -m benchmarks.bench_model --device cuda
step agreement 60 python3 -m benchmarks.bench_patch_match --device cuda --agreement
# where the SW time goes (projection GEMMs, torch.sort, the custom ops' forward and backward)
step sw_stages 40 python3 -m benchmarks.bench_sliced_wasserstein --device cuda --reps 20 --breakdown
# size sweeps for the plots: copy $OUT/results/sweep-cuda.json to benchmarks/results/, then
# python -m benchmarks.plot
[ "$SWEEP" = 1 ] && step sweep 120 python3 -m benchmarks.sweep --device cuda --out "$OUT/results"
fi
echo "===== summary" | tee -a "$LOG"
printf '%s' "$SUMMARY" | tee -a "$LOG"
