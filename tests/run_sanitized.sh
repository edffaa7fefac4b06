#!/usr/bin/env bash
# Runs the CPU test suites of a sanitizer build (make asan) and fails on any report.
#   usage: tests/run_sanitized.sh BUILD_DIR TEST...
# The tests run the programs of BUILD_DIR (DDP_BUILD). A report can come from any process:
# a test, a lesson it started, a worker that lesson forked; a test that expects a program to
# fail would not notice one. So every report goes to a file of BUILD_DIR/reports (log_path)
# rather than to the stderr that the tests read, and any file there fails the run.
set -u
build=$1
shift
reports=$build/reports
rm -rf "$reports"
mkdir -p "$reports"
reports=$(cd "$reports" && pwd) # the tests run programs from other directories too

export DDP_BUILD=$build
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1"
export LSAN_OPTIONS="log_path=$reports/lsan"

started=$(date +%s)
tests/run_tests.sh "$@"
status=$?
echo "sanitized suite: $(($(date +%s) - started)) s"

found=("$reports"/*)
if [ -e "${found[0]}" ]; then
    for f in "${found[@]}"; do
        echo "==== $f"
        cat "$f"
    done
    echo "asan: ${#found[@]} sanitizer report(s) in $reports: FAILED"
    exit 1
fi
[ "$status" -eq 0 ] || { echo "asan: the suite failed under the sanitizers: FAILED"; exit 1; }
echo "asan: no sanitizer reports, every test passed: OK"
