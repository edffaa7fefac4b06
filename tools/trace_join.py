#!/usr/bin/env python3
"""trace_join.py - one trace of lesson 03's per-node --trace files, for one viewer.

usage: tools/trace_join.py OUT.json FILE...      (FILE: node 0's FILE, FILE.node1, ...)

Each node of a job writes its own file (pid = its node rank), since the clocks of two
machines are not one time axis. Nodes of one machine share CLOCK_MONOTONIC: their files
join into one timeline as they are. Files of different machines join too, each node's
times on its own clock, so compare durations across nodes, not instants.
"""
import json
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: trace_join.py OUT.json FILE...")
    events = []
    for path in sys.argv[2:]:
        try:
            with open(path) as f:
                events += json.load(f)["traceEvents"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"trace_join: {path}: not a trace: {e}")
    with open(sys.argv[1], "w") as f:
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    print(f"trace_join: {sys.argv[1]} ({len(sys.argv) - 2} files, {len(events)} events)")


if __name__ == "__main__":
    main()
