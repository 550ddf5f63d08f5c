"""Does starting from the bundled FER2013 model (``ferkit train --init``) help on a small dataset
of another kind of face? Generated (procedural) faces, six classes, identity-disjoint splits.

    .venv/bin/python benchmarks/bench_finetune.py [--per-class 20] [--epochs 15] [--seeds 2]

For each seed it trains the bundled model's architecture (vgg width 48, 48 px, the fer2013
recipe) three ways: from scratch with the recipe's learning rate (0.05), from scratch with the
fine-tuning rate (0.005), and from the bundled weights with 0.005; the epoch is selected on the
generated validation split, accuracy is reported on the generated test split (never trained
or selected on). Everything goes under --work (default ~/ferkit-bench/finetune); finished runs
are reused when the script is run again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import machine  # noqa: E402

from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.labels import REFERENCE_CLASSES  # noqa: E402
from ferkit.synth import generate_splits  # noqa: E402
from ferkit.train import resolve_config, train  # noqa: E402

ARMS = {"scratch, lr 0.05": {"lr": 0.05}, "scratch, lr 0.005": {"lr": 0.005},
        "--init fer2013-vgg, lr 0.005": {"lr": 0.005, "init": "fer2013-vgg"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path.home() / "ferkit-bench" / "finetune")
    ap.add_argument("--per-class", type=int, default=20, help="training faces per class (default 20)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=2)
    a = ap.parse_args()
    print("machine:", machine())
    data = a.work / f"data-{a.per_class}"
    if not data.exists():
        generate_splits(data, {"train": a.per_class, "val": 30, "test": 100}, classes=list(REFERENCE_CLASSES),
                        size=48, seed=0, progress=False)
    results: dict[str, list[float]] = {name: [] for name in ARMS}
    for seed in range(a.seeds):
        for i, (name, options) in enumerate(ARMS.items()):
            out = a.work / f"run-{a.per_class}-{i}-seed{seed}"
            if not (out / "summary.json").exists():
                cfg = resolve_config("fer2013", train_dir=str(data / "train"), val_dir=str(data / "val"),
                                     out=str(out), classes=",".join(REFERENCE_CLASSES), epochs=a.epochs,
                                     seed=seed, progress=False, **options)
                train(cfg, overwrite=True)
            r = evaluate(out, data / "test", out / "test", progress=False)
            results[name].append(r.accuracy)
            print(f"seed {seed}, {name}: test accuracy {r.accuracy:.4f}", flush=True)
    print(f"\n{a.per_class} generated training faces per class, {a.epochs} epochs, six classes, "
          f"{a.seeds} seed(s); accuracy on 600 generated test faces of unseen identities (chance 0.167)")
    print("| start | test accuracy, mean (per seed) |\n|---|---|")
    for name, accs in results.items():
        print(f"| {name} | {np.mean(accs):.4f} ({', '.join(f'{x:.4f}' for x in accs)}) |")


if __name__ == "__main__":
    main()
