#!/usr/bin/env bash
# Runs Criterion test binaries and prints one closing line for the whole suite:
#   N passed, N failed, N skipped
# usage: tests/run_tests.sh CPU_TEST... [-- GPU_TEST...]
# CPU suites run their tests in parallel; GPU suites share one device, so --jobs 1.
set -u
passed=0 failed=0 skipped=0 broken=()
jobs_flag=()
for t in "$@"; do
    if [ "$t" = "--" ]; then jobs_flag=(--jobs 1); continue; fi
    log=$("$t" "${jobs_flag[@]}" --verbose 2>&1)
    status=$?
    printf '%s\n' "$log"
    # [====] Synthesis: Tested: 12 | Passing: 11 | Failing: 1 | Crashing: 0 (skipped tests are not counted)
    line=$(printf '%s\n' "$log" | grep 'Synthesis:' | tail -n 1)
    tested=$(sed -n 's/.*Tested: \([0-9]*\).*/\1/p' <<<"$line")
    passing=$(sed -n 's/.*Passing: \([0-9]*\).*/\1/p' <<<"$line")
    skips=$(printf '%s\n' "$log" | grep -c '\[SKIP\]')
    if [ -z "$tested" ]; then
        broken+=("$t (exit status $status, no summary)")
        failed=$((failed + 1))
        continue
    fi
    passed=$((passed + passing))
    failed=$((failed + tested - passing))
    skipped=$((skipped + skips))
    [ "$status" -eq 0 ] || [ "$tested" -ne "$passing" ] || broken+=("$t (exit status $status)")
done
for b in "${broken[@]+"${broken[@]}"}"; do echo "broken: $b"; done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ ${#broken[@]} -eq 0 ]
