"""Throughput of the procedural face generator, end to end (sample, render, PNG write, CSV).

    .venv/bin/python benchmarks/bench_synth.py [--per-class 200] [--size 64]

Prints faces/s for workers=1 and workers=2 (output in a temp dir, deleted afterwards).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

from ferkit.synth import DEFAULT_CLASSES, generate_faces  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--color", action="store_true")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    n = args.per_class * len(DEFAULT_CLASSES)
    for w in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            generate_faces(Path(tmp) / "faces", args.per_class, size=args.size, color=args.color,
                           workers=w, progress=False)
            dt = time.perf_counter() - t
        print(f"workers={w}: {n} faces {args.size}x{args.size} {'colour' if args.color else 'grey'} "
              f"in {dt:.2f} s = {n / dt:.0f} faces/s")


if __name__ == "__main__":
    main()
