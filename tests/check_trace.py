#!/usr/bin/env python3
"""check_trace.py - checks the Chrome trace files that --trace writes (common/trace.h).

usage: tests/check_trace.py --ranks N [--expect NAME,NAME...] [--comm-track] FILE...

The files (one per node in lesson 03, of one machine: one clock) are read as one
timeline. Checked: each is JSON with a traceEvents list; every span is complete ("ph":
"X", a duration, none marked unfinished) and the spans of each track nest (a span that
starts inside another ends inside it); ranks 0..N-1 each have a named track and spans;
every NAME given is the name of some span; with --comm-track, some rank's communication
thread has a track of its own with bucket all-reduces; and every all-reduce that serves
an epoch (gradients, bucket k, train loss) is there on every rank, its spans overlapping
in time across the ranks (a ring all-reduce cannot end on one rank before it began on
every other). Prints one line per failure and exits 1, or prints what it checked.
"""
import argparse
import json
import re
import sys

# Printed with 3 decimals of a microsecond: ends may round past each other by this.
ROUNDING_US = 0.002
ALLREDUCE_KINDS = ("all-reduce", "bucket all-reduce")


def load(paths, failures):
    events = []
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            failures.append(f"{path}: not a JSON trace: {e}")
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
            failures.append(f"{path}: no traceEvents list")
            continue
        events += doc["traceEvents"]
    return events


def check_spans(spans, failures):
    for e in spans:
        if not isinstance(e.get("dur"), (int, float)) or e["dur"] < 0:
            failures.append(f"span {e.get('name')!r} has no duration")
        if e.get("args", {}).get("unfinished"):
            failures.append(f"span {e['name']!r} of rank {e['args'].get('rank')} is unfinished")


def check_nesting(spans, failures):
    tracks = {}
    for e in spans:
        tracks.setdefault((e["pid"], e["tid"]), []).append(e)
    for track, events in tracks.items():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        open_ends = []  # the ends of the spans enclosing the current one, innermost last
        for e in events:
            end = e["ts"] + e["dur"]
            while open_ends and open_ends[-1][0] <= e["ts"] + ROUNDING_US:
                open_ends.pop()
            if open_ends and end > open_ends[-1][0] + ROUNDING_US:
                failures.append(
                    f"track {track}: {e['name']!r} at {e['ts']} ends after "
                    f"{open_ends[-1][1]!r}, which encloses its start")
            open_ends.append((end, e["name"]))


def check_ranks(events, spans, ranks, comm_track, failures):
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e["pid"], e["tid"])] = e["args"]["name"]
    for r in range(ranks):
        if f"rank {r}" not in names.values():
            failures.append(f"rank {r} has no track")
        if not any(e.get("args", {}).get("rank") == r for e in spans):
            failures.append(f"rank {r} has no spans")
    comm = [t for t, n in names.items() if re.fullmatch(r"rank \d+ comm", n)]
    if comm_track and not any((e["pid"], e["tid"]) in comm and e["cat"] == "bucket all-reduce"
                              for e in spans):
        failures.append("no communication thread's track holds a bucket all-reduce")


def check_allreduces(spans, ranks, failures):
    calls = {}
    for e in spans:
        args = e.get("args", {})
        if e.get("cat") in ALLREDUCE_KINDS and "epoch" in args:
            key = (e["name"], args["epoch"], args.get("step", -1))
            calls.setdefault(key, {})[args["rank"]] = e
    for key, by_rank in sorted(calls.items()):
        missing = [r for r in range(ranks) if r not in by_rank]
        if missing:
            failures.append(f"all-reduce {key}: no span on ranks {missing}")
            continue
        latest_start = max(e["ts"] for e in by_rank.values())
        earliest_end = min(e["ts"] + e["dur"] for e in by_rank.values())
        if latest_start > earliest_end + ROUNDING_US:
            failures.append(f"all-reduce {key}: the ranks' spans do not overlap in time "
                            f"(one ends at {earliest_end}, another starts at {latest_start})")
    return len(calls)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, required=True)
    parser.add_argument("--expect", default="")
    parser.add_argument("--comm-track", action="store_true")
    parser.add_argument("files", nargs="+")
    o = parser.parse_args()
    failures = []
    events = load(o.files, failures)
    spans = [e for e in events if e.get("ph") == "X"]
    if not failures and any(e.get("ph") not in ("X", "M") for e in events):
        failures.append("an event is neither a complete span (X) nor a track's name (M)")
    check_spans(spans, failures)
    check_nesting(spans, failures)
    check_ranks(events, spans, o.ranks, o.comm_track, failures)
    for name in filter(None, o.expect.split(",")):
        if not any(e["name"] == name for e in spans):
            failures.append(f"no span named {name!r}")
    calls = check_allreduces(spans, o.ranks, failures)
    for f in failures[:20]:
        print(f"check_trace: {f}")
    if failures:
        return 1
    print(f"check_trace: {len(spans)} spans of {o.ranks} ranks nest; {calls} all-reduces "
          f"overlap across the ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
