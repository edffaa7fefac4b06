#!/usr/bin/env bash
# check_lesson.sh - "does my build compute what it should?": a lesson's self-check for a class.
#
#   tools/check_lesson.sh 01|02|03 [BUILD_DIR]      (make check-01, make check-02, make check-03)
#
# Runs one lesson briefly on the CPU, compares what it computes with expected values,
# and prints one line per check - PASS, FAIL or SKIP (with the reason) - then a summary
# line. Exit status 1 if any check failed, 2 for bad arguments; a SKIP is no failure.
#
#   01  the build runs 20 epochs; the loss falls; the final eval loss is near the noise
#       floor; PyTorch, given the same data and weights, computes the same losses
#   02  2 ranks end with identical replicas; 2 ranks x batch 16 train like 1 rank x
#       batch 32; PyTorch's DistributedDataParallel with 2 ranks computes the same losses
#   03  two nodes on this machine's loopback (2 x 2 ranks) train like lesson 02 with 4
#       ranks, and end with identical replicas
#
# PyTorch: $DDP_PYTHON if set, else python3 or /usr/bin/python3, whichever imports torch
# and numpy (tools/torch_reference.py --same-init does the PyTorch side). Every program
# runs under a time limit, so the check cannot hang.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/port_lib.sh

usage() {
    echo "usage: tools/check_lesson.sh 01|02|03 [BUILD_DIR]" >&2
    exit 2
}
if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
lesson=$1
build=${2:-build}
case "$lesson" in 01 | 02 | 03) ;; *) usage ;; esac

# ----------------------------------------------------------------------------
# tolerances

# The noise in y has variance 0.1^2 = 0.01: no model gets the eval MSE below about 0.01
# (+-0.0007 over 400 eval samples). A correct build reaches 0.0103 at the defaults after
# 20 epochs - on any CPU, as builds differ only in rounding (-O0 and -O3 -march=native
# end within 2% of each other). A model that learned only the mean of y scores about
# 0.5, a straight line about 0.2: twice the floor tells them apart with room to spare.
NOISE_FLOOR=0.01
FINAL_EVAL_MAX=0.02
CHECK_EPOCHS=20
# The same computation by PyTorch agrees to about 1e-6 relative per epoch. Only the
# first epochs are compared: Adam divides by the square root of tiny second moments,
# which amplifies rounding-level differences, so after 15 or so epochs any two correct
# implementations (even two C builds, -O0 and -O3) drift apart by up to 1e-2.
TORCH_RTOL=1e-4
TORCH_EPOCHS=5
# N ranks x batch B against 1 rank x batch N*B: the same samples per step, gradients
# summed in another order (tests/test_multi_gpu.c uses the same tolerance).
EQUIVALENCE_RTOL=1e-5
# Lesson 03 runs lesson 02's ring over TCP between nodes: the same sums in the same
# order, so the same bits; 1e-6 allows for the 9 digits of losses.csv.
NODES_RTOL=1e-6
RUN_LIMIT_S=120 # per program run

# ----------------------------------------------------------------------------
# reporting

passed=0 failed=0 skipped=0
pass() { echo "PASS  $*"; passed=$((passed + 1)); }
fail() { echo "FAIL  $*"; failed=$((failed + 1)); }
skip() { echo "SKIP  $*"; skipped=$((skipped + 1)); }

summary() {
    echo "check-$lesson: $passed passed, $failed failed, $skipped skipped"
    [ "$failed" -eq 0 ]
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-$lesson.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The torchrun variables would change the programs' defaults.
unset MASTER_ADDR MASTER_PORT WORLD_SIZE RANK LOCAL_RANK NNODES NODE_RANK

# run NAME PROGRAM ARGS...: runs it under the time limit, output in $tmp/NAME.log.
run() {
    local name=$1
    shift
    timeout -k 5 "$RUN_LIMIT_S" "$@" >"$tmp/$name.log" 2>&1
}

# Why run NAME failed: its status and the last lines of its output.
why() {
    echo "exit status $1; last lines of its output:"
    tail -n 5 "$tmp/$2.log" | sed 's/^/      /'
}

# ----------------------------------------------------------------------------
# losses.csv

# A finite decimal number, as awk reads losses (a NaN or inf is not one).
NUMBER='^-?[0-9]+([.][0-9]*)?([eE][-+]?[0-9]+)?$'

# Whether every argument is a finite number.
finite() {
    local v
    for v in "$@"; do [[ "$v" =~ $NUMBER ]] || return 1; done
}

# Prints the eval loss of epoch E of DIR/losses.csv, with the six decimals of the epoch lines.
# (A NaN or inf is printed as it stands.)
loss_at() {
    awk -F, -v e="$2" -v number="$NUMBER" \
        'NR > 1 && $1 == e { if ($3 ~ number) printf "%.6f\n", $3; else print $3 }' "$1/losses.csv"
}

# The number of epochs in DIR/losses.csv (0 without the file).
rows() {
    if [ -f "$1/losses.csv" ]; then awk 'END { print NR - 1 }' "$1/losses.csv"; else echo 0; fi
}

# Compares the first EPOCHS epochs of A/losses.csv and B/losses.csv; prints
# "max_relative_difference epoch kind value_a value_b" for the worst of them.
compare_losses() {
    awk -F, -v epochs="$3" '
        FNR == 1 { file++; next }
        $1 <= epochs { v[file, $1, "train"] = $2; v[file, $1, "eval"] = $3; n[file]++ }
        END {
            if (n[1] < epochs || n[2] < epochs) { print "none 0 every missing missing"; exit }
            worst = -1
            for (e = 1; e <= epochs; e++)
                for (k = 0; k < 2; k++) {
                    kind = k ? "eval" : "train"
                    a = v[1, e, kind]; b = v[2, e, kind]
                    if (a !~ number || b !~ number) { print "none", e, kind, a, b; exit }
                    rel = (a > b ? a - b : b - a) / (b > 0 ? b : -b)
                    if (rel > worst) { worst = rel; we = e; wk = kind; wa = a; wb = b }
                }
            printf "%.3g %d %s %.9g %.9g\n", worst, we, wk, wa, wb
        }' number="$NUMBER" "$1/losses.csv" "$2/losses.csv"
}

# PASS or FAIL for "WHAT: A and B agree within RTOL over EPOCHS epochs".
expect_same_losses() {
    local what=$1 a=$2 b=$3 epochs=$4 rtol=$5 rel epoch kind va vb
    read -r rel epoch kind va vb < <(compare_losses "$a" "$b" "$epochs")
    if [ "$rel" = none ]; then
        fail "$what: epoch $epoch, $kind loss $va against $vb: not two finite numbers"
    elif awk -v r="$rel" -v t="$rtol" 'BEGIN { exit !(r <= t) }'; then
        pass "$what: epochs 1-$epochs agree, max relative difference $rel" \
            "(epoch $epoch, $kind loss) <= $rtol"
    else
        fail "$what: epoch $epoch, $kind loss $va against $vb: relative difference $rel > $rtol"
    fi
}

# ----------------------------------------------------------------------------
# PyTorch

# Prints a python that imports torch and numpy, or nothing.
torch_python() {
    local py
    for py in ${DDP_PYTHON:+"$DDP_PYTHON"} python3 /usr/bin/python3; do
        if timeout 60 "$py" -c 'import torch, numpy' >/dev/null 2>&1; then
            echo "$py"
            return
        fi
        [ -z "${DDP_PYTHON:-}" ] || return 0 # the one asked for, or none
    done
}

# PASS, FAIL or SKIP for "the C run in C_DIR has PyTorch's losses", RANKS ranks.
expect_torch_agrees() {
    local c_dir=$1 ranks=$2 py status version
    py=$(torch_python)
    if [ -z "$py" ]; then
        if [ -n "${DDP_PYTHON:-}" ]; then
            skip "PyTorch agrees: DDP_PYTHON=$DDP_PYTHON does not import torch and numpy"
        else
            skip "PyTorch agrees: no python with torch and numpy (apt-get install python3-torch," \
                "or set DDP_PYTHON)"
        fi
        return
    fi
    status=0
    run torch "$py" tools/torch_reference.py --same-init --ranks "$ranks" --epochs "$TORCH_EPOCHS" \
        --out "$tmp/torch" || status=$?
    if [ "$status" -ne 0 ]; then
        fail "PyTorch agrees: tools/torch_reference.py --same-init failed: $(why "$status" torch)"
        return
    fi
    version=$(sed -n 's/^RESULT .*torch=\([^ ]*\).*/\1/p' "$tmp/torch.log")
    expect_same_losses "PyTorch $version ($ranks rank$([ "$ranks" -eq 1 ] || echo s)) agrees" \
        "$c_dir" "$tmp/torch" "$TORCH_EPOCHS" "$TORCH_RTOL"
}

# ----------------------------------------------------------------------------
# the lessons

need() {
    local p
    for p in "$@"; do
        if [ ! -x "$build/$p" ]; then
            fail "$build/$p is missing: build it first (make lesson-$lesson)"
            summary
            exit 1
        fi
    done
}

check_01() {
    need hello_gpu
    local status=0 first last seconds
    run l01 "$build/hello_gpu" --device cpu --epochs "$CHECK_EPOCHS" --out "$tmp/l01" || status=$?
    if [ "$status" -ne 0 ] || [ "$(rows "$tmp/l01")" -ne "$CHECK_EPOCHS" ]; then
        fail "lesson 01 runs $CHECK_EPOCHS epochs on the CPU: $(why "$status" l01)"
        return
    fi
    seconds=$(sed -n 's/^Training completed in //p' "$tmp/l01.log")
    pass "lesson 01 runs $CHECK_EPOCHS epochs on the CPU ($seconds)"
    first=$(loss_at "$tmp/l01" 1)
    last=$(loss_at "$tmp/l01" "$CHECK_EPOCHS")
    local falls="the loss falls: eval loss $first after epoch 1, $last after epoch $CHECK_EPOCHS"
    if finite "$first" "$last" && awk -v a="$first" -v b="$last" 'BEGIN { exit !(b <= a / 2) }'; then
        pass "$falls"
    else
        fail "$falls (want at most half)"
    fi
    if finite "$last" && awk -v l="$last" -v m="$FINAL_EVAL_MAX" 'BEGIN { exit !(l < m) }'; then
        pass "the final eval loss $last is near the noise floor $NOISE_FLOOR (< $FINAL_EVAL_MAX)"
    else
        fail "the final eval loss $last is not near the noise floor $NOISE_FLOOR" \
            "(want < $FINAL_EVAL_MAX)"
    fi
    expect_torch_agrees "$tmp/l01" 1
}

# PASS or FAIL for the replica line of run NAME.
expect_replicas_agree() {
    local line
    line=$(grep '^Replicas agree:' "$tmp/$1.log" || true)
    if [[ "$line" == "Replicas agree: yes"* ]]; then
        pass "$2: $line"
    else
        fail "$2: no \"Replicas agree: yes\" line${line:+ (it says: $line)}"
    fi
}

check_02() {
    need hello_gpu multi_gpu
    local status=0
    run l02 "$build/multi_gpu" --device cpu --backend ring --gpus 2 --batch-size 16 \
        --epochs "$TORCH_EPOCHS" --out "$tmp/l02" || status=$?
    expect_replicas_agree l02 "2 ranks x batch 16 end with identical replicas"
    [ "$status" -eq 0 ] || fail "lesson 02 runs with 2 ranks x batch 16: $(why "$status" l02)"
    local status01=0
    run l01 "$build/hello_gpu" --device cpu --batch-size 32 --epochs "$TORCH_EPOCHS" \
        --out "$tmp/l01" || status01=$?
    if [ "$status01" -ne 0 ]; then
        fail "lesson 01 runs with batch 32: $(why "$status01" l01)"
    elif [ "$status" -eq 0 ]; then
        expect_same_losses "2 ranks x batch 16 train like 1 rank x batch 32" "$tmp/l02" "$tmp/l01" \
            "$TORCH_EPOCHS" "$EQUIVALENCE_RTOL"
    fi
    status=0
    run l02b32 "$build/multi_gpu" --device cpu --backend ring --gpus 2 --epochs "$TORCH_EPOCHS" \
        --out "$tmp/l02b32" || status=$?
    if [ "$status" -ne 0 ]; then
        fail "lesson 02 runs with 2 ranks x batch 32: $(why "$status" l02b32)"
        return
    fi
    expect_torch_agrees "$tmp/l02b32" 2
}

# Runs the two nodes of one job on the loopback; status 0 when both exited 0.
run_two_nodes() {
    local port=$1 pid status=0
    local flags=(--nnodes 2 --master-addr 127.0.0.1 --master-port "$port" --nproc-per-node 2
        --backend ring --device cpu --epochs "$TORCH_EPOCHS" --rdzv-timeout 30)
    run node0 "$build/multi_node" "${flags[@]}" --node-rank 0 --out "$tmp/l03" &
    pid=$!
    run node1 "$build/multi_node" "${flags[@]}" --node-rank 1 || status=$?
    wait "$pid" || status=$? # bounded: node 0 runs under the time limit too
    return "$status"
}

check_03() {
    need multi_gpu multi_node
    local status attempt port hash02 hash03
    # The job's shared secret, as a class would set it on every node.
    DDP_TOKEN="check-03-$RANDOM$RANDOM"
    export DDP_TOKEN
    for ((attempt = 1; attempt <= 3; attempt++)); do
        port=$(port_for $((309 + attempt))) || { fail "two nodes: no port for the master"; return; }
        status=0
        run_two_nodes "$port" || status=$?
        grep -q 'Address already in use' "$tmp/node0.log" || break # else another port
    done
    if [ "$status" -ne 0 ]; then
        fail "two nodes (2 ranks each) train on 127.0.0.1:$port: node 0: $(why "$status" node0)"
        tail -n 5 "$tmp/node1.log" | sed 's/^/      node 1: /'
        return
    fi
    pass "two nodes (2 ranks each) train on 127.0.0.1:$port and exit 0"
    expect_replicas_agree node0 "the 4 ranks of 2 nodes end with identical replicas"
    status=0
    run l02 "$build/multi_gpu" --device cpu --backend ring --gpus 4 --epochs "$TORCH_EPOCHS" \
        --out "$tmp/l02" || status=$?
    if [ "$status" -ne 0 ]; then
        fail "lesson 02 runs with 4 ranks: $(why "$status" l02)"
        return
    fi
    expect_same_losses "2 nodes x 2 ranks train like lesson 02 with 4 ranks" "$tmp/l03" "$tmp/l02" \
        "$TORCH_EPOCHS" "$NODES_RTOL"
    hash03=$(sed -n 's/^Replicas agree: yes .*hash \(0x[0-9a-f]*\).*/\1/p' "$tmp/node0.log")
    hash02=$(sed -n 's/^Replicas agree: yes .*hash \(0x[0-9a-f]*\).*/\1/p' "$tmp/l02.log")
    if [ -n "$hash03" ] && [ "$hash03" = "$hash02" ]; then
        pass "the final parameters are lesson 02's, bit for bit (hash $hash03 on both)"
    else
        fail "the final parameters differ from lesson 02's" \
            "(hash ${hash03:-none} against ${hash02:-none})"
    fi
}

echo "check-$lesson: lesson $lesson on the CPU ($build)"
"check_$lesson"
summary
