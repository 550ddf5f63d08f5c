"""Quality of the procedural faces: learnable, adjustable difficulty, and transfer to real faces.

    .venv/bin/python benchmarks/bench_synth_quality.py [--out ~/.cache/ferkit/bench-synth] [--parts learn,hard,transfer]

- learn:    `seed` CNN on 200 generated faces per class (7 classes), tested on faces of unseen identities.
- hard:     the same with low expression intensity (--hard-intensity), which must score clearly lower.
- transfer: `seed` CNN trained on generated faces only (six reference classes), tested on
            FER2013 PublicTest (six classes; chance 16.7%).
Every part writes a normal ferkit run folder under --out; re-running reuses finished runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fer2013_dir, machine  # noqa: E402

from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.labels import REFERENCE_CLASSES  # noqa: E402
from ferkit.synth import DEFAULT_CLASSES, generate_splits  # noqa: E402
from ferkit.train import TrainConfig, train  # noqa: E402


def _data(root: Path, sizes: dict, classes, intensity, seed: int, image_size: int) -> Path:
    if not (root / "test").is_dir():
        generate_splits(root, sizes, classes=list(classes), size=image_size, seed=seed, intensity=intensity,
                        overwrite=True)
    return root


def _train_eval(data: Path, run: Path, test: Path, epochs: int, classes, image_size: int, lr: float) -> dict:
    t = time.time()
    if not (run / "summary.json").exists():
        train(TrainConfig(str(data / "train"), str(data / "val"), str(run), classes=tuple(classes), epochs=epochs,
                          patience=4, image_size=image_size, lr=lr, batch_size=64))
    ev = evaluate(run, test, run / f"eval-{test.parent.name}-{test.name}")
    summary = json.loads((run / "summary.json").read_text())
    return {"accuracy": round(ev.accuracy, 4), "macro_f1": round(ev.macro_f1, 4), "n_test": ev.n,
            "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
            "seconds": round(time.time() - t, 1), "run": str(run), "report": str(ev.out_dir)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path.home() / ".cache" / "ferkit" / "bench-synth"))
    ap.add_argument("--parts", default="learn,hard,transfer")
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--hard-intensity", default="0.05,0.2")
    ap.add_argument("--transfer-per-class", type=int, default=1000)
    ap.add_argument("--image-size", type=int, default=64)
    a = ap.parse_args()
    out = Path(a.out).expanduser()
    parts = a.parts.split(",")
    results = {"machine": machine(), "command": " ".join(sys.argv)}
    n = a.per_class
    sizes = {"train": n, "val": max(n // 4, 10), "test": n // 2}
    if "learn" in parts:
        d = _data(out / "data-default", sizes, DEFAULT_CLASSES, (0.5, 1.0), 0, a.image_size)
        results["learn"] = _train_eval(d, out / "run-default", d / "test", a.epochs, DEFAULT_CLASSES, a.image_size,
                                       a.lr)
        print("learn (default intensity, unseen identities):", results["learn"], flush=True)
    if "hard" in parts:
        lo, hi = (float(v) for v in a.hard_intensity.split(","))
        d = _data(out / "data-hard", sizes, DEFAULT_CLASSES, (lo, hi), 0, a.image_size)
        results["hard"] = _train_eval(d, out / "run-hard", d / "test", a.epochs, DEFAULT_CLASSES, a.image_size, a.lr)
        print(f"hard (intensity {lo}-{hi}, unseen identities):", results["hard"], flush=True)
    if "transfer" in parts:
        fer = fer2013_dir()
        if fer is None:
            print("FER2013 not found: skipping transfer")
        else:
            m = a.transfer_per_class
            d = _data(out / "data-transfer", {"train": m, "val": max(m // 5, 20)}, REFERENCE_CLASSES, (0.5, 1.0), 1,
                      a.image_size)
            (d / "test").mkdir(exist_ok=True)  # marks the data as complete for _data (no test split needed)
            results["transfer"] = _train_eval(d, out / "run-transfer", fer / "validation", a.epochs,
                                              REFERENCE_CLASSES, a.image_size, a.lr)
            print("transfer (generated only -> FER2013 PublicTest, 6 classes, chance 0.167):",
                  results["transfer"], flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
