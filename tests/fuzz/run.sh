#!/usr/bin/env bash
# Runs libFuzzer targets, each for a while on a copy of its seed corpus; fails on any crash.
#   usage: tests/fuzz/run.sh SECONDS BUILD_DIR FUZZER...     (make fuzz FUZZ_SECONDS=N)
# FUZZER is BUILD_DIR/fuzz_NAME; its seeds are in tests/fuzz/corpus/NAME/, and
# tests/fuzz/NAME.dict, where there is one, tells it the words of its format. It works on a
# copy, so the committed corpus stays as it is. A crash leaves its input in
# BUILD_DIR/crashes/; once fixed, add that input to the corpus.
set -u
seconds=$1 build=$2
shift 2
failed=0
for fuzzer in "$@"; do
    name=$(basename "$fuzzer")
    name=${name#fuzz_}
    seeds=tests/fuzz/corpus/$name work=$build/corpus/$name log=$build/fuzz_$name.log
    if [ ! -d "$seeds" ]; then
        echo "fuzz_$name: no seed corpus in $seeds/: FAILED"
        failed=$((failed + 1))
        continue
    fi
    rm -rf "$work" && mkdir -p "$work" "$build/crashes" && cp "$seeds"/* "$work"/
    dict=()
    [ ! -f "tests/fuzz/$name.dict" ] || dict=(-dict="tests/fuzz/$name.dict")
    started=$SECONDS
    "$fuzzer" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$build/crashes/$name-" "${dict[@]}" "$work" >"$log" 2>&1
    status=$?
    elapsed=$((SECONDS - started))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    inputs=$(find "$work" -type f | wc -l)
    summary="fuzz_$name: ${execs:-?} executions in $elapsed s (${rate:-?}/s), corpus $(find "$seeds" -type f | wc -l) -> $inputs inputs"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        echo "$summary: crash (exit status $status; input in $build/crashes/, log $log): FAILED"
        failed=$((failed + 1))
    else
        echo "$summary: no crash"
    fi
done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: $failed of $# target(s) failed: FAILED"
    exit 1
fi
echo "fuzz: $# target(s), no crash: OK"
