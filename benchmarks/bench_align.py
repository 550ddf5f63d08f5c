"""Tilted faces: accuracy of detection + crop + classification with and without eye alignment (not a test).

    .venv/bin/python benchmarks/bench_align.py [--n 600] [--angles 0,10,20,30] [--detector haar]

FER2013 PublicTest faces (a seeded random subset of ``--n``; the shared archive is extracted to
/tmp/ferkit-data) are upscaled to 110-180 px, padded with replicated edges, turned by each angle
(half of the faces clockwise, half counter-clockwise) and pasted with a soft round edge at a random
spot of a 640x480 textured background. Every face keeps its size, spot and background at every
angle, so only the tilt differs. The bundled model then runs the whole pipeline on each scene,
keeping the largest face (``--model``: default the bundled FER2013 model, whose labels these
are); a scene whose face is not found (or found elsewhere) counts as wrong:

  before     Haar on the image as it is, upright crop (ferkit before alignment)
  no-align   + padded/turned retries when nothing is found, crop turned by the retry's angle
  align      + the crop turned so the eyes are level (the default now)

``reference`` is the model on the original 48x48 crops of the same faces.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013-train-val.tar.gz"


def publictest_dir(root: Path = Path("/tmp/ferkit-data")) -> Path:
    """FER2013 PublicTest (``validation/``) extracted from the shared archive under ``root``, once."""
    import tarfile

    target = root / "validation"
    if target.is_dir() and any(target.iterdir()):
        return target
    if not SHARED.is_file():
        sys.exit(f"no FER2013 archive at {SHARED}")
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(SHARED) as fh:
        members = [m for m in fh.getmembers() if "validation/" in m.name]
        fh.extractall(root, members=members, filter="data")
    found = next(p for p in root.rglob("validation") if p.is_dir())
    return found if found == target else found.rename(target)


def make_scene(face: np.ndarray, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, tuple]:
    """A 640x480 gray scene with ``face`` turned by ``angle`` degrees; returns it and (cx, cy, side)."""
    side = int(rng.integers(110, 181))
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    pad = side // 2
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    n = big.shape[0]
    m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, 1.0)
    big = cv2.warpAffine(big, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    scene = cv2.GaussianBlur((rng.random((480, 640)) * 255).astype(np.uint8), (0, 0), 3)
    yy, xx = np.mgrid[0:n, 0:n]
    mask = np.clip(1.5 - 2 * np.hypot(yy - n / 2, xx - n / 2) / (n / 2), 0, 1)
    y0, x0 = int(rng.integers(0, 480 - n)), int(rng.integers(0, 640 - n))
    roi = scene[y0:y0 + n, x0:x0 + n].astype(np.float32)
    scene[y0:y0 + n, x0:x0 + n] = (roi * (1 - mask) + big * mask).astype(np.uint8)
    return scene, (x0 + n / 2, y0 + n / 2, side)


def hits(found, truth) -> list:
    """The largest found face whose centre lies within a third of the face's side of the truth."""
    cx, cy, side = truth
    ok = [f for f in found if abs(f[0][0] + f[0][2] / 2 - cx) < side / 3 and abs(f[0][1] + f[0][3] / 2 - cy) < side / 3]
    return [max(ok, key=lambda f: f[0][2] * f[0][3])] if ok else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--angles", default="0,10,20,30")
    ap.add_argument("--detector", default="haar", choices=("haar", "dlib"))
    ap.add_argument("--model", default="fer2013-vgg", help="a model trained on FER2013's labels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the table here")
    a = ap.parse_args()

    from ferkit import Recognizer
    from ferkit.data import preprocess_gray
    from ferkit.predict.align import EyeAligner, face_crop
    from ferkit.predict.detect import find_faces

    root = publictest_dir()
    files = sorted(root.glob("*/*.jpg"))
    random.Random(a.seed).shuffle(files)
    files = files[:a.n]
    rec = Recognizer.load(a.model, detector=a.detector)
    names = {"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy", "sad": "sad",
             "surprise": "surprised", "neutral": "neutral"}
    truth = np.array([rec.classes.index(names[f.parent.name]) for f in files])
    faces = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]
    S, margin = rec.image_size, rec.margin
    reference = float((rec.probabilities(np.stack([preprocess_gray(f, S) for f in faces])).argmax(1) == truth).mean())
    aligner = EyeAligner()
    det = rec.detector
    angles = [float(v) for v in a.angles.split(",")]
    print(f"{machine()}; model {a.model}; {len(files)} PublicTest faces; detector {a.detector}; "
          f"reference (48x48 crops) {reference:.4f}", flush=True)
    rows = []
    for angle in angles:
        crops = {k: np.zeros((len(files), S, S), np.uint8) for k in ("before", "no-align", "align")}
        found = {k: np.zeros(len(files), bool) for k in crops}
        eyes = 0
        t0 = time.process_time()
        for i, face in enumerate(faces):
            rng = np.random.default_rng([a.seed, i])       # same size, spot and background at every angle
            sign = 1 if i % 2 == 0 else -1
            scene, where = make_scene(face, sign * angle, rng)
            plain = hits([(b, 0.0) for b in det.detect(scene)], where)
            if plain:
                found["before"][i] = True
                crops["before"][i] = preprocess_gray(face_crop(scene, plain[0][0], margin), S)
            retried = plain or hits(find_faces(det, scene, retry=True), where)
            if retried:
                box, roll = retried[0]
                found["no-align"][i] = found["align"][i] = True
                crops["no-align"][i] = preprocess_gray(face_crop(scene, box, margin, roll), S)
                crop, total = aligner.crop(scene, box, margin, roll)
                eyes += total != roll
                crops["align"][i] = preprocess_gray(crop, S)
        ms = 1000 * (time.process_time() - t0) / len(files)
        for k in crops:
            pred = rec.probabilities(crops[k]).argmax(1)
            ok = (pred == truth) & found[k]
            rows.append({"angle": angle, "pipeline": k, "detected": float(found[k].mean()),
                         "accuracy": float(ok.mean()),
                         "accuracy_detected": float(ok.sum() / max(found[k].sum(), 1))})
            print(f"  {angle:4.0f} deg  {k:9s} detected {found[k].mean():.3f}  accuracy {ok.mean():.4f}  "
                  f"(on detected faces {ok.sum() / max(found[k].sum(), 1):.4f})", flush=True)
        print(f"  {angle:4.0f} deg  eyes turned the crop for {eyes} faces; {ms:.0f} CPU ms per scene (all pipelines)",
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"reference": reference, "n": len(files), "detector": a.detector,
                                            "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
