# port_lib.sh - the TCP ports of the test and benchmark scripts, as port_for_test
# (tests/support/proc.c) gives the C suites theirs: DDP_PORT_BASE (default 29700, in
# [1024, 40000]) plus an offset of the script's own, or, where something listens there
# already (another checkout's run, a job left over), the first free one at + 1000,
# + 2000, ... So one variable moves every port a checkout uses, and two checkouts on
# one machine (a classroom server) keep apart with DDP_PORT_BASE=29700, 30100, 30500, ...
#
# Offsets: the C suites 0-199, tests/soak.sh 300, tools/check_lesson.sh 310-319,
# tools/bench.sh 320-399. Sourced (bash).

# port_for OFFSET: prints the port. Status 1, with a line on stderr, if DDP_PORT_BASE is
# not an integer in [1024, 40000] or no port is free. "Free" is "nothing listens": the
# program's own bind is the last word.
port_for() {
    local base=${DDP_PORT_BASE:-29700} port try
    if ! [[ $base =~ ^[0-9]{1,5}$ ]] || ((10#$base < 1024 || 10#$base > 40000)); then
        echo "DDP_PORT_BASE must be an integer in [1024, 40000], got ${base@Q}" >&2
        return 1
    fi
    for ((try = 0; try < 20; try++)); do
        port=$((10#$base + $1 + try * 1000))
        ((port <= 65535)) || break
        if ! timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port at DDP_PORT_BASE $base + $1 (+ n x 1000)" >&2
    return 1
}
