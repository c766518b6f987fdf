#!/usr/bin/env python3
"""Per-kernel time table of one training step from Nsight Compute CSV output.

Usage (on a GPU machine; ncu serialises kernels, so this is kernel time, not wall time):
  ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \\
      build-gpu/apps/bench --model transformer --preset small --batch 16 --seq-len 1024 \\
      --dtype bf16 --warmup 1 --steps 1 > step.csv
  python3 bench/kernel_table.py step.csv [--top 20] [--steps 2]
--steps: how many steps the profiled run executed (warm-up included), to report per step.
"""
import argparse
import collections
import csv
import io
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    text = open(args.csv, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        sys.exit(f"{args.csv}: no ncu CSV table found")
    total = collections.Counter()
    count = collections.Counter()
    for row in csv.DictReader(io.StringIO(text[start:])):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].split("(")[0][:70]
        total[name] += float(row["Metric Value"].replace(",", "")) / 1e6  # ns -> ms
        count[name] += 1
    all_ms = sum(total.values()) / args.steps
    launches = sum(count.values()) / args.steps
    print(f"{all_ms:.2f} ms of kernel time per step, {launches:.0f} launches per step")
    print("| share | ms/step | launches/step | kernel |\n|---|---|---|---|")
    for name, ms in total.most_common(args.top):
        ms /= args.steps
        print(f"| {100 * ms / all_ms:.1f}% | {ms:.2f} | {count[name] / args.steps:.0f} | `{name}` |")


if __name__ == "__main__":
    main()
