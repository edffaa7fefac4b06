#!/usr/bin/env python3
"""trace_plot.py - the gnuplot script that draws a few steps of a --trace file.

usage: tools/trace_plot.py FILE OUT.png STEPS   (tools/trace_plot.sh runs it and gnuplot)

Prints on stdout a gnuplot script that draws STEPS optimizer steps from the middle of
the run's middle epoch (warmed up, away from its eval), as the lowest rank counts them: one row per track (rank r, and its
communication thread beside it), one box per span, coloured by phase, with a legend; a
span inside another is drawn thinner, on top of it. Epoch spans, which hold everything,
are left out.
"""
import json
import sys

COLOURS = {
    "forward": "#4e79a7", "loss": "#a0cbe8", "backward": "#f28e2b", "all-reduce": "#e15759",
    "bucket all-reduce": "#b07aa1", "optimizer": "#59a14f", "eval": "#edc948",
    "checkpoint": "#9c755f", "collective": "#bab0ac", "setup": "#79706e",
    "graph/fused gradients": "#76b7b2", "graph/fused step": "#ff9da7",
}
# The spans that end an optimizer step: the update, or a step that one launch does whole
# (--kernels graph or fused in lesson 01).
STEP_KINDS = ("optimizer", "graph/fused step")


def load(path):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"]
             for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X"]
    return names, spans


def window(spans, steps):
    """The times [start, end) of `steps` optimizer steps of the lowest rank, from the
    middle of its middle epoch (warmed up, and away from the epoch's eval)."""
    lowest = min(e["args"]["rank"] for e in spans if e["args"]["rank"] >= 0)
    mine = sorted((e for e in spans if e["args"]["rank"] == lowest), key=lambda e: e["ts"])
    epochs = [e for e in mine if e["cat"] == "epoch"]
    updates = [e for e in mine if e["cat"] in STEP_KINDS]
    if epochs:
        middle = epochs[len(epochs) // 2]
        inside = [e for e in updates if middle["ts"] <= e["ts"] <= middle["ts"] + middle["dur"]]
        updates = inside or updates
    if not updates:
        sys.exit("trace_plot: the trace has no optimizer steps to draw")
    steps = min(steps, len(updates))
    first = max(1, (len(updates) - steps) // 2) if len(updates) > steps else 0
    before = updates[first - 1] if first > 0 else None
    start = before["ts"] + before["dur"] if before else updates[0]["ts"] - 1.0
    last = updates[first + steps - 1]
    return start, last["ts"] + last["dur"], steps


def depths(spans):
    """Each span's depth on its track: 0 for those no other span encloses."""
    out = {}
    by_track = {}
    for i, e in enumerate(spans):
        by_track.setdefault((e["pid"], e["tid"]), []).append(i)
    for track in by_track.values():
        track.sort(key=lambda i: (spans[i]["ts"], -spans[i]["dur"]))
        ends = []
        for i in track:
            while ends and ends[-1] <= spans[i]["ts"]:
                ends.pop()
            out[i] = len(ends)
            ends.append(spans[i]["ts"] + spans[i]["dur"])
    return out


def script(path, png, steps):
    names, spans = load(path)
    start, end, steps = window(spans, steps)
    spans = [e for e in spans if e["cat"] != "epoch"]
    depth = depths(spans)
    tracks = sorted(names, key=lambda t: t)  # by node, then rank (agent, rank, its comm)
    row = {t: len(tracks) - 1 - i for i, t in enumerate(tracks)}  # the first on top
    blocks = {}
    for i, e in enumerate(spans):
        t = (e["pid"], e["tid"])
        lo, hi = max(e["ts"], start), min(e["ts"] + e["dur"], end)
        if t not in row or hi <= lo:
            continue
        half = 0.38 if depth[i] == 0 else 0.26
        blocks.setdefault(e["cat"], []).append(
            f"{(lo + hi) / 2 - start:.3f} {row[t]} {(hi - lo) / 2:.3f} {half}")
    lines = [
        f"set terminal pngcairo size 1100,{160 + 60 * len(tracks)} font 'sans,10'",
        f"set output '{png}'",
        f"set title \"{path.split('/')[-1]}: {steps} steps from the middle of the run\" noenhanced",
        "set xlabel 'microseconds'",
        f"set xrange [0:{end - start:.3f}]",
        f"set yrange [-0.7:{len(tracks) - 0.3}]",
        "set ytics (" + ", ".join(f"\"{names[t]}\" {row[t]}" for t in tracks) + ")",
        "set key outside right top",
        "set style fill solid 1.0 noborder",
        "set grid xtics",
    ]
    plots = []
    for cat in COLOURS:  # outer spans first, so that nested ones are drawn on top
        if cat in blocks:
            lines += [f"$D{len(plots)} << EOD"] + blocks[cat] + ["EOD"]
            plots.append(f"$D{len(plots)} using 1:2:3:4 with boxxyerror "
                         f"lc rgb '{COLOURS[cat]}' title '{cat}'")
    if not plots:
        sys.exit("trace_plot: no spans in the steps drawn")
    order = ["eval", "all-reduce", "bucket all-reduce"]  # enclosing kinds below the rest
    plots.sort(key=lambda p: 0 if any(f"title '{c}'" in p for c in order) else 1)
    lines.append("plot " + ", \\\n     ".join(plots))
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
        sys.exit("usage: trace_plot.py FILE OUT.png STEPS")
    try:
        sys.stdout.write(script(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"trace_plot: {sys.argv[1]}: not a trace of these lessons: {e}")


if __name__ == "__main__":
    main()
