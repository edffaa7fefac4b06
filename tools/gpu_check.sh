#!/usr/bin/env bash
# gpu_check.sh - the one-shot check of the CUDA path, for a machine with a GPU.
#
# Builds for the GPU, runs the GPU tests (CUDA kernels against their CPU twins,
# lesson 02's engines against the CPU), runs lesson 01 under compute-sanitizer,
# checks that the GPU and the CPU train to the same losses and that a run resumed
# from its checkpoint trains like an unbroken one, runs lesson 02 with
# the ring (2 ranks sharing the GPU) and NCCL, --trace and --phases on the GPU, the
# all-reduce benchmark on NCCL, times lessons 01 (with and without --trace) and 02, and
# runs the benchmark matrix with --quick. Each step prints a header; a failing step is
# recorded and the check goes on, then exits non-zero naming
# every failed step. Meant to take well under 5 minutes; every program run has
# a time limit, so nothing hangs.
#
# usage: tools/gpu_check.sh          (from anywhere; it works in the repository root)
# environment: CUDA_ARCH  nvcc's architecture flags (default -arch=sm_90: H100, H200)
#              OUT        if set, the whole log is also written to $OUT/gpu_check.log
#              RUNS       timed runs per device (default 5)

# shellcheck disable=SC2317 # the step functions are called through step()
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_ARCH=${CUDA_ARCH:--arch=sm_90}
RUNS=${RUNS:-5}
LESSON=build/hello_gpu
# Relative agreement of the per-epoch losses of the two devices; the program prints
# six decimals, so one unit in the last of them is allowed on top.
LOSS_TOLERANCE=1e-4
LOSS_PRINT_UNIT=1e-6

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    tee_pid=$!
fi
exec 2>&1

failed=()

# step NAME COMMAND...: prints a header, runs the command, records a failure.
step() {
    local name=$1
    shift
    printf '\n==== %s ====\n' "$name"
    local start=$SECONDS status=0
    "$@" || status=$?
    if [ "$status" -eq 0 ]; then
        printf -- '---- ok: %s (%ds)\n' "$name" $((SECONDS - start))
    else
        printf -- '---- FAILED: %s (exit status %d, %ds)\n' "$name" "$status" $((SECONDS - start))
        failed+=("$name")
    fi
}

# The first of the given commands that exists, in PATH or as a path; empty if none.
find_tool() {
    local candidate
    for candidate in "$@"; do
        if command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 0
}

NVCC=$(find_tool nvcc /usr/local/cuda/bin/nvcc)
SANITIZER=$(find_tool compute-sanitizer /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer)

# ----------------------------------------------------------------------------
# the steps

show_machine() {
    nvidia-smi -L || return 1
    if [ -z "$NVCC" ]; then
        echo "nvcc not found (PATH, /usr/local/cuda/bin)"
        return 1
    fi
    "$NVCC" --version
}

build() {
    make clean && make CUDA_ARCH="$CUDA_ARCH" || return 1
    # every GPU test binary, named after its source
    local src targets=()
    for src in tests/gpu/test_*.cu; do
        [ -e "$src" ] || continue
        targets+=("build/tests/gpu/$(basename "$src" .cu)")
    done
    [ ${#targets[@]} -gt 0 ] || { echo "no tests/gpu/test_*.cu"; return 1; }
    make CUDA_ARCH="$CUDA_ARCH" "${targets[@]}"
}

# Every GPU test binary; a skipped test counts as a failure here: this machine has a GPU.
gpu_tests() {
    local t log status=0 ran=0
    for t in build/tests/gpu/test_*; do
        [ -x "$t" ] || continue
        ran=1
        log=$(timeout 180 "$t" --jobs 1 --verbose 2>&1) || status=1
        printf '%s\n' "$log"
        if grep -q '\[SKIP\]' <<<"$log"; then
            echo "error: $t skipped tests on a machine that should have a GPU"
            status=1
        fi
    done
    [ "$ran" -eq 1 ] || { echo "no GPU test binaries in build/tests/gpu"; return 1; }
    return "$status"
}

full_suite() {
    timeout 240 make CUDA_ARCH="$CUDA_ARCH" test
}

sanitize() {
    if [ -z "$SANITIZER" ]; then
        echo "compute-sanitizer not found (PATH, /usr/local/cuda/bin," \
            "/usr/local/cuda/compute-sanitizer)"
        return 1
    fi
    local run=(timeout 180 "$SANITIZER" --error-exitcode 1)
    "${run[@]}" "$LESSON" --device cuda --epochs 2 &&
        "${run[@]}" "$LESSON" --device cuda --epochs 1 --optimizer sgd &&
        "${run[@]}" --tool racecheck "$LESSON" --device cuda --epochs 1
}

# Prints "epoch train eval" for each epoch line of a run's output on stdin.
epoch_losses() {
    sed -n 's/^Epoch \[\([0-9]*\)\/[0-9]*\] - Train Loss: \([^,]*\), Eval Loss: \(.*\)$/\1 \2 \3/p'
}

losses_agree() {
    local gpu cpu
    gpu=$(timeout 60 "$LESSON" --device cuda --epochs 3) || return 1
    cpu=$(timeout 60 "$LESSON" --device cpu --epochs 3) || return 1
    printf '%s\n' "$gpu" | grep -E '^(Using device|Epoch)'
    printf '%s\n' "$cpu" | grep -E '^(Using device|Epoch)'
    paste -d ' ' <(epoch_losses <<<"$gpu") <(epoch_losses <<<"$cpu") |
        awk -v tol="$LOSS_TOLERANCE" -v unit="$LOSS_PRINT_UNIT" '
        function check(what, g, c,    diff, allowed) {
            diff = g - c; if (diff < 0) diff = -diff
            allowed = tol * (c < 0 ? -c : c) + unit
            if (diff > allowed) {
                printf "epoch %d %s loss: gpu %s, cpu %s differ by %g > %g\n",
                    $1, what, g, c, diff, allowed
                bad = 1
            }
        }
        { n++; check("train", $2, $5); check("eval", $3, $6) }
        END {
            if (n != 3) { printf "expected 3 epochs from each device, compared %d\n", n; exit 1 }
            if (bad) exit 1
            printf "3 epochs: train and eval losses agree within %s relative\n", tol
        }'
}

# A run of 6 epochs against 3 epochs, a checkpoint, and --resume to 6, on the GPU: the
# kernels use no atomics, so the losses.csv loss columns must match to the bit.
resume_matches() {
    local dir status=0
    dir=$(mktemp -d)
    timeout 60 "$LESSON" --device cuda --epochs 6 --out "$dir/whole" >/dev/null &&
        timeout 60 "$LESSON" --device cuda --epochs 3 --checkpoint-dir "$dir/ck" >/dev/null &&
        timeout 60 "$LESSON" --device cuda --epochs 6 --checkpoint-dir "$dir/ck" --resume \
            --out "$dir/resumed" | grep -E '^(Resuming|Epoch)' &&
        diff <(cut -d, -f1-3 "$dir/whole/losses.csv") <(cut -d, -f1-3 "$dir/resumed/losses.csv") ||
        status=1
    [ "$status" -ne 0 ] || echo "6 epochs: the resumed run's losses equal the unbroken run's, bit for bit"
    rm -rf "$dir"
    return "$status"
}

lesson02_gpu() {
    local run out
    for run in "--backend ring --gpus 2" "--backend nccl --gpus 1"; do
        # shellcheck disable=SC2086 # the flags are meant to split
        out=$(timeout 120 build/multi_gpu --device cuda $run --epochs 3) || return 1
        printf '%s\n' "$out"
        grep -q '^Replicas agree: yes' <<<"$out" || return 1
    done
}

# --trace and --phases on the GPU: the phases timed by CUDA events (the track "rank 0
# gpu"), the files checked by tests/check_trace.py; lesson 02 on NCCL with 1 rank.
traces_gpu() {
    local dir status=0
    dir=$(mktemp -d)
    timeout 60 "$LESSON" --device cuda --epochs 3 --phases --trace "$dir/01.json" |
        sed -n '/^Where the time goes/,$p' &&
        tests/check_trace.py --ranks 1 --expect forward,backward,optimizer,eval "$dir/01.json" &&
        grep -q '"rank 0 gpu"' "$dir/01.json" &&
        timeout 120 build/multi_gpu --device cuda --backend nccl --gpus 1 --epochs 3 --phases \
            --trace "$dir/02.json" | sed -n '/^Where the time goes/,$p' &&
        tests/check_trace.py --ranks 1 --expect gradients "$dir/02.json" || status=1
    rm -rf "$dir"
    return "$status"
}

allreduce_nccl() {
    timeout 120 build/allreduce_bench --backend nccl --ranks 1 --min-bytes 1K --max-bytes 64M
}

# time_run LABEL COMMAND...: RUNS runs; prints each time and the median, records
# "label on device|median|runs" in timing_rows.
timing_rows=()
time_run() {
    local label=$1 i out seconds name times=()
    shift
    for ((i = 1; i <= RUNS; i++)); do
        out=$(timeout 60 "$@") || return 1
        seconds=$(sed -n 's/^Average time per epoch: \([0-9.e+-]*\) seconds$/\1/p' <<<"$out")
        [ -n "$seconds" ] || { echo "no 'Average time per epoch' line"; return 1; }
        name=$(sed -n 's/^\(No GPU found, using \|Using \|.*Process initialized.*\)device: //p' <<<"$out" | head -n 1)
        echo "run $i of $label: $seconds s per epoch"
        times+=("$seconds")
    done
    local median
    median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ t[NR] = $1 } END {
        print (NR % 2 ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2) }')
    echo "median of $label: $median s per epoch"
    timing_rows+=("$label on $name|$median|$RUNS")
}

print_table() {
    echo "| program on device | median seconds per epoch | runs |"
    echo "| --- | --- | --- |"
    local row name median runs
    for row in "${timing_rows[@]+"${timing_rows[@]}"}"; do
        IFS='|' read -r name median runs <<<"$row"
        echo "| $name | $median | $runs |"
    done
}

# ----------------------------------------------------------------------------

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on ${HOSTNAME:-unknown host}, commit $commit"
step "GPU and CUDA toolkit" show_machine
step "build (make CUDA_ARCH=$CUDA_ARCH)" build
step "GPU tests: CUDA kernels against their CPU twins" gpu_tests
step "full test suite (make test)" full_suite
step "lesson 01 under compute-sanitizer (memcheck, racecheck)" sanitize
step "lesson 01: GPU and CPU losses agree for 3 epochs" losses_agree
step "lesson 01 on the GPU: resumed from a checkpoint, the same losses as unbroken" resume_matches
step "lesson 02 on the GPU: the ring with 2 ranks sharing it, NCCL with 1 rank" lesson02_gpu
step "--trace and --phases on the GPU: CUDA events time the phases" traces_gpu
step "all-reduce benchmark on NCCL" allreduce_nccl
step "timing lesson 01 at defaults on the GPU ($RUNS runs)" time_run "lesson 01" "$LESSON" --device cuda
step "timing lesson 01 at defaults on the GPU with --trace ($RUNS runs)" time_run "lesson 01 --trace" "$LESSON" --device cuda --trace /tmp/gpu_check_trace.json
step "timing lesson 01 at defaults on the CPU ($RUNS runs)" time_run "lesson 01" "$LESSON" --device cpu
step "timing lesson 02 (NCCL, 1 rank) at defaults ($RUNS runs)" time_run "lesson 02 nccl x1" build/multi_gpu --device cuda --backend nccl --gpus 1
step "timing lesson 02 (ring, 2 ranks on the GPU) at defaults ($RUNS runs)" time_run "lesson 02 ring x2" build/multi_gpu --device cuda --backend ring --gpus 2
step "the benchmark matrix, quick (tools/bench.sh --quick)" timeout 240 tools/bench.sh --quick

printf '\n==== summary ====\n'
print_table
status=0
if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "failed steps:"
    printf '  %s\n' "${failed[@]}"
    status=1
else
    echo
    echo "every step passed"
fi
if [ -n "${tee_pid:-}" ]; then
    exec >&- 2>&-
    wait "$tee_pid" || true
fi
exit "$status"
