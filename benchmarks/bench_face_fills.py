"""A face that fills the image: BlazeFace's looks on tight crops and on face-free images (not a test).

    .venv/bin/pip install scikit-image          # its face-free photos and LFW non-face patches
    .venv/bin/python benchmarks/bench_face_fills.py [--sfew-dir DIR] [--step 1] [--found]

For each SFEW train crop (143x181 film faces, a face fills each; shown gray, as ferkit's pipeline
sees them) and each face-free image (the 52 backgrounds of ``bench_detect.py --suite photos``, 4
crops of each shaped like a face photo, 60-300 px wide, and scikit-image's 100 LFW non-face
patches), the best score of each look, one run each, no retries:

  full       full range on the whole image          short      short range on the whole image
  framed10/25/40  short range on the image framed by black margins of 10/25/40% of its longer side
  mirror25   the mirror image, framed by 25%        eq25, clahe25  histogram-equalised / CLAHE, framed

then, per look and score threshold, the share of crops reaching it and the false positives.
``--found``: the found rate of :func:`ferkit.predict.detect.locate_faces` (all of BlazeFace's looks
and retries, as ``ferkit predict`` runs on photos) on the crops, the CPU time per crop, and how many
face-free images it finds a face in.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detect import BACKGROUNDS, _gray, procedural_backgrounds  # noqa: E402
from common import machine  # noqa: E402

THRESHOLDS = (0.5, 0.55, 0.6, 0.65)


def looks(det, gray: np.ndarray) -> dict[str, float]:
    """The best score (0: nothing above 0.3) of each look at ``gray``."""
    clahe = cv2.createCLAHE(2.0, (4, 4))

    def best(name, img, margin=0.0):
        rgb = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_GRAY2RGB)
        return max([s for _, _, s in det._run(name, [rgb], 0.3, margin)[0]], default=0.0)

    return {"full": best("full", gray), "short": best("short", gray),
            **{f"framed{round(m * 100)}": best("short", gray, m) for m in (0.1, 0.25, 0.4)},
            "mirror25": best("short", gray[:, ::-1], 0.25), "eq25": best("short", cv2.equalizeHist(gray), 0.25),
            "clahe25": best("short", clahe.apply(gray), 0.25)}


def face_free(rng) -> list[tuple[str, np.ndarray]]:
    from skimage import data

    out = []
    for name in BACKGROUNDS:
        try:
            out.append(("scene", cv2.resize(_gray(getattr(data, name)()), (640, 480), interpolation=cv2.INTER_AREA)))
        except Exception:  # noqa: BLE001 - an image this scikit-image does not ship
            pass
    out += [("scene", b) for b in procedural_backgrounds(40, rng)]
    for _, b in list(out):
        for _ in range(4):
            s = int(rng.integers(60, 300))
            x, y = int(rng.integers(0, 640 - s)), int(rng.integers(0, 480 - int(s * 1.27)))
            out.append(("crop", b[y:y + int(s * 1.27), x:x + s]))
    out += [("lfw-nonface", _gray(p)) for p in data.lfw_subset()[100:]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sfew-dir", default="/tmp/ferkit-data/sfew-train")
    ap.add_argument("--step", type=int, default=1, help="every STEP-th crop (sorted by path)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--found", action="store_true", help="also the found rate of locate_faces on the crops")
    a = ap.parse_args()
    import torch

    from ferkit.data import decode_image
    from ferkit.predict.blazeface import BlazeFaceDetector
    from ferkit.predict.detect import create_detector, locate_faces

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    det = BlazeFaceDetector()
    crops = sorted(Path(a.sfew_dir).glob("*/*.png"))[::a.step]
    faces = [looks(det, decode_image(p)) for p in crops]
    negatives = [(kind, looks(det, img)) for kind, img in face_free(np.random.default_rng(a.seed))]
    kinds = sorted({k for k, _ in negatives})
    print(f"{machine()}; {len(crops)} SFEW crops from {a.sfew_dir}; face-free: "
          + ", ".join(f"{sum(k == kind for k, _ in negatives)} {kind}" for kind in kinds))
    for look in faces[0]:
        for t in THRESHOLDS:
            found = np.mean([f[look] >= t for f in faces])
            fp = ", ".join(f"{kind} {sum(s[look] >= t for k, s in negatives if k == kind)}" for kind in kinds)
            print(f"  {look:9s} >= {t:.2f}: crops found {found:.3f}; face-free images with a detection: {fp}")
    if a.found:
        det = create_detector("blazeface")
        hits, ms = 0, []
        for p in crops:
            gray = decode_image(p)
            t0 = time.process_time()
            hits += bool(locate_faces(det, gray))
            ms.append(1000 * (time.process_time() - t0))
        print(f"locate_faces (as ferkit predict on photos): found {hits}/{len(crops)} = {hits / len(crops):.3f}; "
              f"CPU ms per crop median {np.median(ms):.0f}, mean {np.mean(ms):.0f}")
        fp = {kind: 0 for kind in kinds}
        for kind, img in face_free(np.random.default_rng(a.seed)):
            fp[kind] += bool(locate_faces(det, img))
        print("locate_faces on the face-free images, those with a detection: "
              + ", ".join(f"{kind} {n}" for kind, n in fp.items()))


if __name__ == "__main__":
    main()
