#!/usr/bin/env python3
"""Where one kernel's instructions and stalls go, from Nsight Compute's SASS source page.

Usage (on a GPU machine; one launch of one kernel, e.g. the attention forward):
  ncu --set full --import-source yes -k regex:wgmma_forward -c 1 --launch-skip 3 -o fwd \\
      build-gpu/bench/bench_attention --seq-len 4096 --head-dim 64
  ncu -i fwd.ncu-rep --page source --csv --print-source sass > fwd_sass.csv
  python3 bench/sass_table.py fwd_sass.csv [--top 15] [--block 1024]

Prints four tables: instructions executed and stall samples per opcode; the warp-state
reasons of the samples; address ranges of --block bytes (a loop body, a loader, the
softmax) with their share of instructions and samples and their most frequent opcodes;
and the --top instructions by samples with their three main stall reasons. A region
with a large share of integer opcodes (IMAD, LOP3, SHF, LEA) beside the memory copies is
address arithmetic worth hoisting (docs/performance.md, fourth session of 2026-12-01).
"""
import argparse
import collections
import csv
import sys


def opcode(source):
    words = source.split()
    if not words:
        return "?"
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]  # skip a predicate
    return word.split(".")[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--block", type=lambda s: int(s, 0), default=1024, help="bytes of SASS per region")
    args = ap.parse_args()
    rows = list(csv.reader(open(args.csv, errors="replace")))
    header_at = next((i for i, r in enumerate(rows) if r[:2] == ["Address", "Source"]), None)
    if header_at is None:
        sys.exit(f"{args.csv}: no SASS source table (expected ncu --page source --csv --print-source sass)")
    header = rows[header_at]
    col = {name: i for i, name in enumerate(header)}
    for need in ("Instructions Executed", "Warp Stall Sampling (All Samples)"):
        if need not in col:
            sys.exit(f"{args.csv}: column '{need}' missing (profile with --set full --import-source yes)")
    stall_cols = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]

    executed, sampled = collections.Counter(), collections.Counter()
    stalls = collections.Counter()
    region_exec, region_samples = collections.Counter(), collections.Counter()
    region_ops = collections.defaultdict(collections.Counter)
    lines = []
    for r in rows[header_at + 1 :]:
        if len(r) < len(header):
            continue
        op = opcode(r[col["Source"]].strip())
        n = int(r[col["Instructions Executed"]] or 0)
        s = int(r[col["Warp Stall Sampling (All Samples)"]] or 0)
        region = int(r[col["Address"]], 16) // args.block * args.block
        executed[op] += n
        sampled[op] += s
        region_exec[region] += n
        region_samples[region] += s
        region_ops[region][op] += n
        for c in stall_cols:
            stalls[c] += int(r[col[c]] or 0)
        lines.append((s, r[col["Address"]], r[col["Source"]].strip(), {c: int(r[col[c]] or 0) for c in stall_cols}))
    total_exec, total_samples = sum(executed.values()) or 1, sum(sampled.values()) or 1
    print(f"{total_exec:,} warp instructions executed, {total_samples:,} stall samples\n")

    print("| opcode | % instructions | % samples |\n|---|---|---|")
    for op, n in executed.most_common(args.top):
        print(f"| {op} | {100 * n / total_exec:.1f} | {100 * sampled[op] / total_samples:.1f} |")

    print("\n| stall reason | % samples |\n|---|---|")
    for c, n in stalls.most_common(10):
        print(f"| {c[len('stall_'):]} | {100 * n / total_samples:.1f} |")

    print(f"\n| region (+{args.block} B) | % instructions | % samples | top opcodes |\n|---|---|---|---|")
    base = min(region_exec) if region_exec else 0
    for region in sorted(region_exec):
        if region_exec[region] < 0.01 * total_exec and region_samples[region] < 0.01 * total_samples:
            continue
        ops = ", ".join(f"{op} {100 * n / region_exec[region]:.0f}%" for op, n in region_ops[region].most_common(4))
        print(
            f"| +{region - base:#x} | {100 * region_exec[region] / total_exec:.1f} | "
            f"{100 * region_samples[region] / total_samples:.1f} | {ops} |"
        )

    print("\n| address | instruction | % samples | main stalls |\n|---|---|---|---|")
    for s, address, source, by_reason in sorted(lines, key=lambda x: -x[0])[: args.top]:
        top = sorted(by_reason.items(), key=lambda kv: -kv[1])[:3]
        reasons = ", ".join(f"{c[len('stall_'):]} {100 * n / max(s, 1):.0f}%" for c, n in top if n)
        print(f"| {address[-5:]} | `{source[:60]}` | {100 * s / total_samples:.1f} | {reasons} |")


if __name__ == "__main__":
    main()
