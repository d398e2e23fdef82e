#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log per forward and per kernel.

A forward ends at its argmax kernel (greedy `kiln bench`), so the first forward is the prefill and the
rest are decode steps. Usage: ncu_summary.py NCU.csv [--top N]
"""
import csv
import collections
import re
import sys


def short(name):
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\(anonymous namespace\)|<unnamed>", "anon", name)
    name = re.sub(r"\(.*", "", name)              # drop the argument list
    name = re.sub(r"<.*", "", name)               # drop template arguments
    return name.split("::")[-1]


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        v = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "ns")
        us = v / 1000.0 if unit in ("nsecond", "ns") else v if unit in ("usecond", "us") else v * 1000.0
        rows.append((short(r["Kernel Name"]), us))
    forwards, cur = [], []
    for name, us in rows:
        cur.append((name, us))
        if name.startswith("argmax"):
            forwards.append(cur)
            cur = []
    if cur:
        forwards.append(cur)
    for i, fw in enumerate(forwards):
        label = "prefill (forward 0)" if i == 0 else f"decode step {i}"
        total = sum(us for _, us in fw)
        print(f"== {label}: {len(fw)} kernels, {total:.1f} us GPU time (serialized)")
        if i > 1 and i < len(forwards) - 1:
            continue  # decode steps look alike: print the first in full
        per = collections.OrderedDict()
        for name, us in fw:
            c, t = per.get(name, (0, 0.0))
            per[name] = (c + 1, t + us)
        for name, (c, t) in sorted(per.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"  {t:9.1f} us  {100 * t / total:5.1f}%  x{c:<4d} {t / c:8.2f} us each  {name}")


if __name__ == "__main__":
    main()
