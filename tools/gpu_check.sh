#!/usr/bin/env bash
# gpu_check.sh - the one-shot check of the CUDA path, for a machine with a GPU.
#
# Meant for a bare GPU machine in one call of a few minutes: CUDA with nvcc, python3 (NCCL
# as PyTorch's pip wheel nvidia-nccl-cu13, which the Makefile finds), and what
# tools/gpu_bundle.sh prepared on a Debian machine (Criterion and libsodium) carried in
# gpu-bundle/ beside the tree. Builds for the GPU, runs the GPU tests (CUDA kernels
# against their CPU twins; NCCL with one rank; lesson 02 on the GPU against the CPU),
# lesson 01 under compute-sanitizer, compares the GPU's and the CPU's losses, resumes from
# a checkpoint, runs lesson 02 with the ring (2 ranks sharing the GPU) and NCCL (1 rank:
# NCCL's init, stream order and finalize, not a reduction), --trace and --phases on the
# GPU (the phases timed by CUDA events, the files checked), the all-reduce benchmark on
# NCCL, times lesson 01 on the CPU and the GPU (also with --trace) beside PyTorch on the
# GPU, and runs the benchmark matrix with --quick.
#
# Each step ends "ok", "FAILED" or "skipped: REASON" where this machine cannot run it
# (no GPU, no Criterion, a compute-sanitizer that refuses this driver, no PyTorch with
# CUDA): a skip is not a failure of the code. A summary lists every step; the table of
# seconds per epoch comes last. Exits non-zero only when a step failed. Every program
# run has a time limit, so nothing hangs.
#
# usage: tools/gpu_check.sh          (from anywhere; it works in the repository root)
# environment: BUNDLE     the folder of tools/gpu_bundle.sh (default gpu-bundle, if there)
#              CUDA_ARCH  nvcc's architecture flags (default -arch=sm_90: H100, H200)
#              FULL       1: also the whole test suite (make test, several minutes)
#              OUT        if set, the whole log is also written to $OUT/gpu_check.log
#              RUNS       timed runs per row of the table (default 5)
#              BUDGET_S   seconds after which the steps left are skipped (default 270), so
#                         that the summary and the table come back within the call's limit
#              PYTHON     the python with PyTorch (default python3)
#              COMMIT     the commit the log names, where the tree came without .git

# shellcheck disable=SC2317 # the step functions are called through step()
set -euo pipefail
cd "$(dirname "$0")/.."

CUDA_ARCH=${CUDA_ARCH:--arch=sm_90}
RUNS=${RUNS:-5}
PYTHON=${PYTHON:-python3}
if [ -z "${BUNDLE:-}" ] && [ -d gpu-bundle ]; then BUNDLE="gpu-bundle"; fi
BUNDLE=${BUNDLE:-}
LESSON=build/hello_gpu
JOBS=$(nproc 2>/dev/null || echo 2)
# Relative agreement of the per-epoch losses of the two devices; the program prints
# six decimals, so one unit in the last of them is allowed on top.
LOSS_TOLERANCE=1e-4
LOSS_PRINT_UNIT=1e-6
SKIP=77 # a step's status for "this machine cannot run it"
BUDGET_S=${BUDGET_S:-270}

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    tee_pid=$!
fi
exec 2>&1

results=() # "ok|name|detail", "skipped|name|reason" or "FAILED|name|detail"
skip_reason=""

# skip REASON: how a step says that this machine cannot run it.
skip() {
    skip_reason="$*"
    return "$SKIP"
}

# step NAME COMMAND...: prints a header, runs the command, records its outcome.
step() {
    local name=$1
    shift
    printf '\n==== %s ====\n' "$name"
    if [ "$SECONDS" -ge "$BUDGET_S" ]; then
        printf -- '---- skipped: %s: past the time budget (BUDGET_S=%s s)\n' "$name" "$BUDGET_S"
        results+=("skipped|$name|past the time budget (BUDGET_S=$BUDGET_S s)")
        return 0
    fi
    local start=$SECONDS status=0
    skip_reason=""
    "$@" || status=$?
    local took="$((SECONDS - start)) s"
    if [ "$status" -eq 0 ]; then
        printf -- '---- ok: %s (%s)\n' "$name" "$took"
        results+=("ok|$name|$took")
    elif [ "$status" -eq "$SKIP" ] && [ -n "$skip_reason" ]; then
        printf -- '---- skipped: %s: %s\n' "$name" "$skip_reason"
        results+=("skipped|$name|$skip_reason")
    else
        printf -- '---- FAILED: %s (exit status %d, %s)\n' "$name" "$status" "$took"
        results+=("FAILED|$name|exit status $status")
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
MAKE_VARS=(CUDA_ARCH="$CUDA_ARCH" ${BUNDLE:+BUNDLE="$BUNDLE"})

# Why the GPU steps cannot run here, or empty when they can. Without nvidia-smi (some
# containers), the driver's own list of GPUs.
no_gpu_reason() {
    local gpus
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        if [ -z "$(ls /proc/driver/nvidia/gpus 2>/dev/null)" ]; then
            echo "no GPU (nvidia-smi not found, /proc/driver/nvidia/gpus lists none)"
            return
        fi
    elif ! gpus=$(timeout 30 nvidia-smi -L 2>&1) || ! grep -q '^GPU ' <<<"$gpus"; then
        echo "no GPU (nvidia-smi lists none: $(head -n 1 <<<"$gpus"))"
        return
    fi
    [ -n "$NVCC" ] || echo "no nvcc (PATH, /usr/local/cuda/bin): the build has no CUDA"
}
NO_GPU=$(no_gpu_reason)

need_gpu() {
    [ -z "$NO_GPU" ] || skip "$NO_GPU"
}
need_gpu_then() { # need_gpu_then COMMAND...: the command, where there is a GPU
    need_gpu || return
    "$@"
}
found_line() { # the line of `make found` about $1 (nvcc, NCCL, Criterion, ...)
    make --no-print-directory "${MAKE_VARS[@]}" found | grep "^$1:" || true
}
need_criterion() {
    found_line Criterion | grep -q '^Criterion: found' ||
        skip "no Criterion (tools/gpu_bundle.sh prepares it: gpu-bundle/ or BUNDLE=DIR)"
}
need_nccl() {
    found_line NCCL | grep -q '^NCCL: found' || skip "$(found_line NCCL)"
}

# ----------------------------------------------------------------------------
# the steps

show_machine() {
    if [ -n "$NO_GPU" ]; then echo "$NO_GPU"; else nvidia-smi -L 2>/dev/null || ls /proc/driver/nvidia/gpus; fi
    if [ -n "$NVCC" ]; then "$NVCC" --version | tail -n 2; else echo "nvcc: not found"; fi
    "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "torch",
        torch.__version__, "CUDA available:", torch.cuda.is_available())' 2>/dev/null ||
        echo "$PYTHON: no PyTorch"
    command -v gnuplot >/dev/null 2>&1 ||
        echo "gnuplot: not found: no pictures (the lessons and bench.sh warn; their CSVs have the data)"
    found_line '[A-Za-z]*'
}

# The bundle's files are those its MANIFEST lists, unchanged.
check_bundle() {
    if [ -z "$BUNDLE" ]; then
        skip "no bundle (gpu-bundle/ or BUNDLE=DIR, from tools/gpu_bundle.sh):" \
            "the system's Criterion and libsodium, if it has them"
        return
    fi
    [ -f "$BUNDLE/MANIFEST" ] || { echo "$BUNDLE/MANIFEST: not found"; return 1; }
    head -n 1 "$BUNDLE/MANIFEST"
    (cd "$BUNDLE" && awk '!/^#/ { print $4 "  " $1 }' MANIFEST | sha256sum --check --quiet) &&
        echo "$(grep -vc '^#' "$BUNDLE/MANIFEST") files as its MANIFEST lists them"
}

build() {
    make clean && make -j"$JOBS" "${MAKE_VARS[@]}" all || return 1
    if need_criterion; then
        make -j"$JOBS" "${MAKE_VARS[@]}" tests
    else
        echo "$skip_reason: the test binaries are not built"
    fi
}

# One CPU suite, to show that the test binaries run here (with the bundle's libraries).
cpu_suite() {
    need_criterion || return
    ldd build/tests/test_config | grep -E 'criterion|not found' || true
    timeout 120 build/tests/test_config
}

# gpu_suite TEST [ARG...]: a Criterion binary on the GPU, its output printed as it comes (a
# run cut off keeps what it said); a skipped test counts as a failure: this machine has a GPU.
gpu_suite() {
    local log="${TMPDIR:-/tmp}/gpu_check_suite.log" status=0
    timeout 180 "$@" --jobs 1 --verbose 2>&1 | tee "$log" || status=1
    if grep -q '\[SKIP\]' "$log"; then
        echo "error: $1 skipped tests on a machine that has a GPU"
        status=1
    fi
    return "$status"
}

# Every GPU test binary.
gpu_tests() {
    need_gpu && need_criterion || return
    local t status=0 ran=0
    for t in build/tests/gpu/test_*; do
        [ -x "$t" ] || continue
        ran=1
        gpu_suite "$t" || status=1
    done
    [ "$ran" -eq 1 ] || { echo "no GPU test binaries in build/tests/gpu"; return 1; }
    return "$status"
}

# Lesson 02's suite where it runs on the GPU, and where it refuses more NCCL ranks than GPUs.
lesson_gpu_tests() {
    need_gpu && need_criterion || return
    local filter status=0
    for filter in 'multi_gpu_on_a_gpu/*' 'multi_gpu/backend_nccl*'; do
        gpu_suite build/tests/test_multi_gpu --filter "$filter" || status=1
    done
    return "$status"
}

full_suite() {
    [ "${FULL:-0}" = 1 ] || { skip "FULL=1 runs it (several minutes)"; return; }
    need_criterion || return
    timeout 400 make "${MAKE_VARS[@]}" test
}

# What compute-sanitizer says when it cannot work on this driver, GPU or runtime (rather
# than about the program), on a line of its own ("========= Error: ..."), or in a log that
# has no ERROR SUMMARY: it may still print a summary after such a line.
SANITIZER_REFUSED='not supported|unsupported|Internal Sanitizer Error|Unable to find injection|before first instrumented API|driver version'

# compute-sanitizer on one run; a sanitizer that cannot run on this driver or GPU is a skip.
sanitized_run() {
    local log status=0
    log=$(timeout 120 "$SANITIZER" --error-exitcode 1 "$@" 2>&1) || status=$?
    # the sanitizer's own lines, each report naming its kernel and source line (capped), and
    # the end of the program's
    grep -E '^=========' <<<"$log" | head -n 200 || true
    grep -vE '^=========' <<<"$log" | tail -n 3 || true
    local refusal
    refusal=$(grep -E '^=========' <<<"$log" | grep -m 1 -iE "$SANITIZER_REFUSED" || true)
    if [ -z "$refusal" ] && ! grep -q 'ERROR SUMMARY' <<<"$log"; then
        refusal=$(grep -m 1 -iE "$SANITIZER_REFUSED" <<<"$log" || true)
    fi
    if [ -n "$refusal" ]; then
        skip "compute-sanitizer refused: $refusal"
        return
    fi
    return "$status"
}

# memcheck on every way lesson 01 can run its kernels, then SGD and racecheck, on a small
# epoch (8 batches): the sanitizers slow every launch down many times.
sanitize() {
    need_gpu || return
    [ -n "$SANITIZER" ] || { skip "compute-sanitizer not found (PATH, /usr/local/cuda/bin)"; return; }
    local small=(--device cuda --epochs 1 --data-size 320) kernels
    for kernels in "${KERNEL_CHOICES[@]}"; do
        sanitized_run "$LESSON" "${small[@]}" ${kernels:+--kernels "$kernels"} || return
    done
    sanitized_run "$LESSON" "${small[@]}" --optimizer sgd &&
        sanitized_run --tool racecheck "$LESSON" "${small[@]}"
}

# Prints "epoch train eval" for each epoch line of a run's output on stdin.
epoch_losses() {
    sed -n 's/^Epoch \[\([0-9]*\)\/[0-9]*\] - Train Loss: \([^,]*\), Eval Loss: \(.*\)$/\1 \2 \3/p'
}

losses_agree() {
    need_gpu || return
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
    need_gpu || return
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
    need_gpu || return
    local run out
    for run in "--backend ring --gpus 2" "--backend nccl --gpus 1"; do
        # shellcheck disable=SC2086 # the flags are meant to split
        out=$(timeout 120 build/multi_gpu --device cuda $run --epochs 3) || return 1
        printf '%s\n' "$out"
        grep -q '^Replicas agree: yes' <<<"$out" || return 1
    done
}

# --trace and --phases on the GPU: the phases timed by CUDA events (the track "rank 0
# gpu"), the files checked by tests/check_trace.py; lesson 01 each way it runs its
# kernels (a graph's or the fused kernel's step is one span, graph/fused step), lesson 02
# on NCCL with 1 rank.
traces_gpu() {
    need_gpu || return
    local dir status=0 kernels expect
    dir=$(mktemp -d)
    for kernels in "${KERNEL_CHOICES[@]}"; do
        case "$kernels" in
        graph | fused) expect="graph/fused step,eval" ;;
        *) expect=forward,backward,optimizer,eval ;;
        esac
        echo "lesson 01${kernels:+ --kernels $kernels}:"
        timeout 60 "$LESSON" --device cuda --epochs 3 ${kernels:+--kernels "$kernels"} --phases \
            --trace "$dir/01.json" | sed -n '/^Where the time goes/,$p' &&
            tests/check_trace.py --ranks 1 --expect "$expect" "$dir/01.json" &&
            grep -q '"rank 0 gpu"' "$dir/01.json" || status=1
    done
    timeout 120 build/multi_gpu --device cuda --backend nccl --gpus 1 --epochs 3 --phases \
        --trace "$dir/02.json" | sed -n '/^Where the time goes/,$p' &&
        tests/check_trace.py --ranks 1 --expect gradients "$dir/02.json" || status=1
    rm -rf "$dir"
    return "$status"
}

allreduce_nccl() {
    need_gpu && need_nccl || return
    timeout 120 build/allreduce_bench --backend nccl --ranks 1 --min-bytes 1K --max-bytes 64M
}

# PyTorch with CUDA, or a skip saying what is missing.
need_torch_cuda() {
    "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null ||
        skip "no PyTorch with CUDA in $PYTHON"
}

# time_run LABEL COMMAND...: RUNS runs of a program that prints "Average time per epoch: X
# seconds" (the C programs) or "RESULT ... seconds_per_epoch=X" (tools/torch_reference.py);
# prints each and the median, and records "label|median|runs" in timing_rows.
timing_rows=()
time_run() {
    local label=$1 i out seconds times=()
    shift
    for ((i = 1; i <= RUNS; i++)); do
        out=$(timeout 120 "$@") || return 1
        seconds=$(sed -n -e 's/^Average time per epoch: \([0-9.e+-]*\) seconds$/\1/p' \
            -e 's/^RESULT .*seconds_per_epoch=\([0-9.e+-]*\).*/\1/p' <<<"$out")
        [ -n "$seconds" ] || { echo "no time per epoch in the output"; return 1; }
        echo "run $i of $label: $seconds s per epoch"
        times+=("$seconds")
    done
    local median
    median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{ t[NR] = $1 } END {
        print (NR % 2 ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2) }')
    echo "median of $label: $median s per epoch"
    timing_rows+=("$label|$median|$RUNS")
}

# timed LABEL GUARD COMMAND...: time_run unless GUARD (a need_* function, or true) skips;
# a skipped row stays in the table with its reason.
timed() {
    local label=$1 guard=$2
    shift 2
    if ! "$guard"; then
        timing_rows+=("$label|skipped: $skip_reason|-")
        return "$SKIP"
    fi
    time_run "$label" "$@"
}

print_summary() {
    local row outcome name detail
    for row in "${results[@]}"; do
        IFS='|' read -r outcome name detail <<<"$row"
        if [ "$outcome" = skipped ]; then
            printf '%-8s %s: %s\n' "$outcome" "$name" "$detail"
        else
            printf '%-8s %s (%s)\n' "$outcome" "$name" "$detail"
        fi
    done
}

print_table() {
    echo "| lesson 01 at defaults | seconds per epoch (median of the runs' means, epoch 1 included) | runs |"
    echo "| --- | --- | --- |"
    local row name median runs
    for row in "${timing_rows[@]+"${timing_rows[@]}"}"; do
        IFS='|' read -r name median runs <<<"$row"
        echo "| $name | $median | $runs |"
    done
}

# ----------------------------------------------------------------------------

# (a tree copied without .git says which commit it is through COMMIT)
commit=${COMMIT:-$(git describe --always --dirty 2>/dev/null || echo "unknown (set COMMIT)")}
echo "gpu_check: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on ${HOSTNAME:-unknown host}, commit $commit"
step "machine: GPU, CUDA toolkit, PyTorch, what make found" show_machine
step "bundle (${BUNDLE:-none}): its files as its MANIFEST lists them" check_bundle
step "build (make CUDA_ARCH=$CUDA_ARCH${BUNDLE:+ BUNDLE=$BUNDLE} all tests)" build
# Each way lesson 01 can run a step's kernels on a GPU, where it has --kernels; else its one.
KERNEL_CHOICES=("")
# (The help text is read whole first: grep -q, done at its first match, would end the lesson's
# writing with SIGPIPE, and pipefail would take that for "no --kernels".)
lesson_help=$(timeout 30 "$LESSON" --help 2>/dev/null) || true
if grep -q -- '--kernels' <<<"$lesson_help"; then
    KERNEL_CHOICES=(unfused graph fused)
fi
step "a CPU test suite runs here (build/tests/test_config)" cpu_suite
step "GPU tests: CUDA kernels against their CPU twins; NCCL with 1 rank: init, stream order,\
 finalize and abort, not a reduction (tests/gpu)" gpu_tests
step "lesson 02's GPU tests: against the CPU; NCCL with 1 rank (init, stream order, finalize,\
 not a reduction); more NCCL ranks than GPUs exits 2" lesson_gpu_tests
step "full test suite (make test)" full_suite
step "lesson 01 under compute-sanitizer (memcheck, racecheck)" sanitize
step "lesson 01: GPU and CPU losses agree for 3 epochs" losses_agree
step "lesson 01 on the GPU: resumed from a checkpoint, the same losses as unbroken" resume_matches
step "lesson 02 on the GPU: the ring with 2 ranks sharing it; NCCL with 1 rank (init, stream\
 order, finalize: not a reduction)" lesson02_gpu
step "all-reduce benchmark on NCCL, 1 rank (NCCL's launch and stream cost: not a reduction)" \
    allreduce_nccl
step "--trace and --phases on the GPU: CUDA events time the phases (tests/check_trace.py)" \
    traces_gpu
step "timing lesson 01 on the CPU (runs: $RUNS)" timed "lesson 01 (C), cpu" true "$LESSON" --device cpu
for kernels in "${KERNEL_CHOICES[@]}"; do
    step "timing lesson 01 on the GPU (${kernels:+--kernels $kernels, }runs: $RUNS)" timed \
        "lesson 01 (C), cuda${kernels:+, --kernels $kernels}" need_gpu "$LESSON" --device cuda \
        ${kernels:+--kernels "$kernels"}
done
step "timing lesson 01 on the GPU with --trace (runs: $RUNS)" timed "lesson 01 (C), cuda, --trace" \
    need_gpu "$LESSON" --device cuda --trace "${TMPDIR:-/tmp}/gpu_check_trace.json"
step "timing PyTorch on the GPU (runs: $RUNS)" timed \
    "PyTorch (tools/torch_reference.py: the app's loop, a DataLoader, a copy and a loss read per batch), cuda" \
    need_torch_cuda "$PYTHON" tools/torch_reference.py --device cuda
step "timing lesson 02 (NCCL, 1 rank) (runs: $RUNS)" timed "lesson 02 (C), nccl x1, cuda" need_gpu \
    build/multi_gpu --device cuda --backend nccl --gpus 1
step "timing lesson 02 (ring, 2 ranks sharing the GPU) (runs: $RUNS)" timed \
    "lesson 02 (C), ring x2, cuda" need_gpu build/multi_gpu --device cuda --backend ring --gpus 2
# (its limit: what is left of the budget, at most 180 s; with none left, step skips it)
bench_limit=$((BUDGET_S - SECONDS < 180 ? BUDGET_S - SECONDS : 180))
step "the benchmark matrix, quick (tools/bench.sh --quick --max-ranks 4)" need_gpu_then \
    timeout "$bench_limit" tools/bench.sh --quick --max-ranks 4

printf '\n==== summary ====\n'
print_summary
status=0
if grep -q '^FAILED|' < <(printf '%s\n' "${results[@]}"); then
    status=1
    echo "some steps FAILED"
else
    echo "no step failed"
fi
echo
print_table
if [ -n "${tee_pid:-}" ]; then
    exec >&- 2>&-
    wait "$tee_pid" || true
fi
exit "$status"
