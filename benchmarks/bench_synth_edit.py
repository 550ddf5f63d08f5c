"""Throughput of ``ferkit synth edit`` end to end (decode the source, generate, PNG write, CSV).

    .venv/bin/python benchmarks/bench_synth_edit.py [--per-class 500] [--size 48] [--gan RUN]

The issue's target: at least 200 faces/s on the 2-core CPU at 48 px. Without --gan, a generator
of the default size (width 32, 4 residual blocks, 1.52 M parameters) is trained for one iteration
on generated faces first: the speed does not depend on what its weights have learned. Output goes
to a temp dir, deleted afterwards. Prints faces/s for two timed runs.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from ferkit.labels import REFERENCE_CLASSES  # noqa: E402
from ferkit.synth import generate_faces  # noqa: E402
from ferkit.synth.gan import edit_faces  # noqa: E402
from ferkit.train.gan import GanConfig, train_gan  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=500, help="edited faces per class (default 500)")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--source-per-class", type=int, default=100, help="generated source faces per class")
    ap.add_argument("--gan", default=None, help="an existing GAN run to use instead of a one-iteration one")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = generate_faces(tmp / "source", args.source_per_class, classes=REFERENCE_CLASSES, size=args.size,
                                progress=False)
        gan = args.gan
        if gan is None:
            gan = tmp / "gan"
            train_gan(GanConfig(str(source), str(gan), image_size=args.size, iterations=1, progress=False))
        n = args.per_class * len(REFERENCE_CLASSES)
        edit_faces(gan, source, tmp / "warm", 8, progress=False)    # first call: imports, thread pools
        for run in (1, 2):
            t = time.perf_counter()
            edit_faces(gan, source, tmp / f"edit{run}", args.per_class, progress=False)
            dt = time.perf_counter() - t
            print(f"run {run}: {n} faces {args.size}x{args.size} edited and written in {dt:.2f} s = "
                  f"{n / dt:.0f} faces/s")


if __name__ == "__main__":
    main()
