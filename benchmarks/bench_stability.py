"""How steady are a model's answers? The share of faces whose label survives small changes of the crop.

For every face of a validation split (48 px crops as FER2013/FER+ ship them) the model's label on
the face is compared with its label on the same face
  - shifted by 4 px in each of 8 directions (at 48 px; scaled for other sizes),
  - zoomed in and out by 10% about the centre,
  - mirrored (a horizontal flip),
with the border replicated (the crop of a detector that moved slightly sees more of the same face,
not black). Printed: per perturbation the share of faces that keep their label, "all" (the share
that keep it under every perturbation), and the mean. The model card's target is >= 95% kept.

    python benchmarks/bench_stability.py --model fer2013-vgg --data /tmp/ferkit-data/ferplus/valid
    python benchmarks/bench_stability.py --model runs/ferplus --data ferplus/valid --tta flip --plot docs/x.png

Uses the public API (``Recognizer.load(...).probabilities``), so TTA and calibration apply as in
``ferkit predict``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def perturbations(size: int) -> dict[str, np.ndarray]:
    """name -> 2x3 affine matrix on a size x size face."""
    import cv2

    s = 4 * size / 48
    c = (size - 1) / 2
    out = {}
    for dx in (-s, 0, s):
        for dy in (-s, 0, s):
            if dx or dy:
                out[f"shift {dx:+.0f},{dy:+.0f}"] = np.float32([[1, 0, dx], [0, 1, dy]])
    for z in (0.9, 1.1):
        out[f"scale {z:.1f}"] = cv2.getRotationMatrix2D((c, c), 0, z)
    out["flip"] = np.float32([[-1, 0, size - 1], [0, 1, 0]])
    return out


def main(argv=None) -> int:
    import cv2

    from ferkit.data import load_dataset
    from ferkit.errors import FerkitError
    from ferkit.predict import Recognizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="bundled name, run folder, checkpoint or .onnx (default: the default model)")
    ap.add_argument("--data", required=True, help="validation split (class folders, manifest or FER+ folder)")
    ap.add_argument("--limit", type=int, default=0, help="first N faces only (0 = all)")
    ap.add_argument("--tta", default="none", choices=("none", "flip", "crops"))
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--plot", help="bar chart of the kept share per perturbation (PNG)")
    a = ap.parse_args(argv)
    try:
        rec = Recognizer.load(a.model, tta=a.tta, detect=False)
        ds = load_dataset(a.data, rec.classes, rec.image_size, progress=False, role="validation data")
    except FerkitError as exc:
        print(f"bench_stability: {exc}", file=sys.stderr)
        return 1
    faces = ds.images[:a.limit] if a.limit else ds.images
    t0 = time.time()
    base = rec.probabilities(faces).argmax(1)
    size = faces.shape[1]
    kept, all_kept = {}, np.ones(len(faces), bool)
    for name, m in perturbations(size).items():
        moved = np.stack([cv2.warpAffine(f, m, (size, size), flags=cv2.INTER_LINEAR,
                                         borderMode=cv2.BORDER_REPLICATE) for f in faces])
        same = rec.probabilities(moved).argmax(1) == base
        kept[name] = float(same.mean())
        all_kept &= same
    acc = float((base == ds.labels[:len(faces)]).mean())
    name = Path(a.model).stem if a.model and Path(a.model).exists() else (a.model or "default model")
    result = {"model": name, "data": a.data, "n": len(faces), "tta": a.tta, "accuracy": acc,
              "kept": kept, "kept_mean": float(np.mean(list(kept.values()))), "kept_all": float(all_kept.mean()),
              "seconds": round(time.time() - t0, 1)}
    width = max(map(len, kept))
    for name, v in kept.items():
        print(f"{name:<{width}}  {v:.4f}")
    print(f"{'mean':<{width}}  {result['kept_mean']:.4f}\n{'all':<{width}}  {result['kept_all']:.4f}")
    print(f"({len(faces)} faces, accuracy {acc:.4f}, TTA {a.tta}, {result['seconds']} s)")
    if a.json:
        from ferkit.files import write_json

        write_json(a.json, result)
    if a.plot:
        from ferkit.files import new_figure, save_figure

        fig = new_figure(figsize=(8, 3.2))
        ax = fig.subplots()
        names = [*kept, "all"]
        ax.bar(names, [*kept.values(), result["kept_all"]], color=["#4c72b0"] * len(kept) + ["#c44e52"])
        ax.axhline(0.95, color="gray", ls="--", lw=1)
        ax.set_ylim(min(0.8, result["kept_all"] - 0.02), 1.0)
        ax.set_ylabel("faces that keep their label")
        ax.set_title(f"label stability: {result['model']} on {len(faces)} faces (TTA {a.tta})")
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        fig.tight_layout()
        save_figure(fig, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
