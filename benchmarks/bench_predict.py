"""Speed of `ferkit predict` on this machine (not a test).

    .venv/bin/python benchmarks/bench_predict.py [--arch seed] [--seconds 5] [--fer-dir DIR]

Measures, for a model with random weights (speed does not depend on the weights):
  1. classification of pre-cropped faces, batched (faces/s)        -> Recognizer.predict_faces
  2. whole 640x480 photos with detection + classification (photos/s) -> Recognizer.predict
  3. a 640x480 video with --every 1, end to end (frames/s)            -> ferkit predict VIDEO
With --fer-dir (an extracted FER2013 validation folder) it also measures the Haar detector's hit
rate on FER2013 crops upscaled 4x and padded (edge-replicated) to twice their size.
"""
from __future__ import annotations

import argparse
import glob
import random
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def _scene(face: np.ndarray, rng) -> np.ndarray:
    """A 640x480 BGR photo: textured background with one face pasted in (a different spot each time)."""
    bg = cv2.GaussianBlur((rng.random((480, 640, 3)) * 255).astype(np.uint8), (0, 0), 3)
    side = int(rng.integers(140, 220))
    f = cv2.resize(face, (side, int(side * face.shape[0] / face.shape[1])))
    y, x = int(rng.integers(0, 480 - f.shape[0])), int(rng.integers(0, 640 - side))
    bg[y:y + f.shape[0], x:x + side] = f
    return bg


def _rate(fn, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="seed")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--fer-dir", default=None,
                    help="FER2013 validation folder (class sub-folders) for the detection rate")
    ap.add_argument("--per-class", type=int, default=100)
    a = ap.parse_args()

    import torch
    from matplotlib import cbook

    from ferkit import Recognizer
    from ferkit.cli import run
    from ferkit.models import CheckpointRecord, InputSpec, create_model, save_checkpoint

    tmp = Path(tempfile.mkdtemp(prefix="ferkit-bench-"))
    torch.manual_seed(0)
    classes = ["angry", "disgusted", "fearful", "happy", "sad", "surprised"]
    save_checkpoint(create_model(a.arch, 6), tmp / "m.safetensors",
                    CheckpointRecord(a.arch, tuple(classes), InputSpec(64)))
    r = Recognizer.load(tmp / "m.safetensors", batch_size=a.batch_size)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OpenCV {cv2.__version__}, arch {a.arch}")

    rng = np.random.default_rng(0)
    crops = [(rng.random((48, 48)) * 255).astype(np.uint8) for _ in range(a.batch_size)]
    fps_faces = _rate(lambda: len(r.predict_faces(crops)), a.seconds)
    print(f"1. pre-cropped faces, batch {a.batch_size}: {fps_faces:.0f} faces/s")

    face = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))[60:380, 120:420]
    photos = [_scene(face, rng) for _ in range(20)]
    hits = sum(len(r.predict(p)) == 1 for p in photos)
    i = iter(range(10 ** 9))
    photo_rate = _rate(lambda: len(r.predict(photos[next(i) % len(photos)])) * 0 + 1, a.seconds)
    det_only = _rate(lambda: len(r.detect(cv2.cvtColor(photos[next(i) % 20], cv2.COLOR_BGR2GRAY))) * 0 + 1, a.seconds)
    print(f"2. 640x480 photos, detect + classify: {photo_rate:.1f} photos/s "
          f"(detection alone {det_only:.1f}/s; exactly one face found in {hits}/20)")

    video = tmp / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for k in range(100):
        vw.write(photos[k // 10])
    vw.release()
    t0 = time.perf_counter()
    run(["predict", str(tmp / "m.safetensors"), str(video), "--out", str(tmp / "out"), "--no-progress",
         "--batch-size", str(a.batch_size)])
    dt = time.perf_counter() - t0
    print(f"3. 640x480 video, --every 1, CLI end to end (incl. model load): {100 / dt:.1f} frames/s")

    if a.fer_dir:
        random.seed(0)
        det = r.detector
        n = found = 0
        t0 = time.perf_counter()
        for c in sorted(glob.glob(f"{a.fer_dir}/*/")):
            files = sorted(glob.glob(c + "*.jpg"))
            random.shuffle(files)
            for f in files[:a.per_class]:
                g = cv2.resize(cv2.imread(f, cv2.IMREAD_GRAYSCALE), (192, 192), interpolation=cv2.INTER_LINEAR)
                g = cv2.copyMakeBorder(g, 96, 96, 96, 96, cv2.BORDER_REPLICATE)
                found += bool(det.detect(g))
                n += 1
        print(f"4. Haar detection on {n} FER2013 crops (x4, padded): {found}/{n} = {found / max(n, 1):.3f} "
              f"({1000 * (time.perf_counter() - t0) / max(n, 1):.1f} ms/img)")


if __name__ == "__main__":
    main()
