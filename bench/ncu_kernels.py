#!/usr/bin/env python3
"""ncu_kernels.py — sums Nsight Compute's kernel durations (a `--csv --metrics gpu__time_duration.sum` log, other
program output mixed in) per kernel name: count, total and mean microseconds, share of the total; then the first
40 kernels in launch order, to read one transformer block's sequence.

Usage: ncu_kernels.py NCU_LOG"""
import csv
import sys


def rows(path):
    head = None
    with open(path, errors="replace") as f:
        for line in f:
            if not line.startswith('"'):
                continue
            rec = next(csv.reader([line]))
            if head is None:
                if "Kernel Name" in rec and "Metric Value" in rec:
                    head = rec
                continue
            if len(rec) != len(head):
                continue
            r = dict(zip(head, rec))
            if r.get("Metric Name") != "gpu__time_duration.sum":
                continue
            scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
            v = float(r["Metric Value"].replace(",", "")) * scale.get(r.get("Metric Unit", "ns"), 1e-3)
            yield r["Kernel Name"], v


def short(name, n=90):
    return name if len(name) <= n else name[: n - 3] + "..."


def main():
    seq = list(rows(sys.argv[1]))
    if not seq:
        print("ncu_kernels: no kernel durations in", sys.argv[1])
        return 1
    total = sum(v for _, v in seq)
    per = {}
    for k, v in seq:
        c, s = per.get(k, (0, 0.0))
        per[k] = (c + 1, s + v)
    print(f"ncu kernels={len(seq)} total_us={total:.1f}")
    for k, (c, s) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(f"ncu_kernel calls={c:4d} total_us={s:9.1f} mean_us={s / c:7.2f} share={100 * s / total:5.1f}% "
              f"{short(k)}")
    for i, (k, v) in enumerate(seq[:40]):
        print(f"ncu_seq {i:3d} {v:8.2f} us {short(k, 70)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
