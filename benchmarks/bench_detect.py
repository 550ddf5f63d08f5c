"""Face detectors side by side: OpenCV's Haar cascade (ferkit's default) against dlib's HOG (not a test).

    .venv/bin/pip install dlib-bin scikit-image          # dlib's weights ship inside its wheel
    .venv/bin/python benchmarks/bench_detect.py [--scenes 60] [--fer-dir DIR]

Real photos only, nothing downloaded:
  1. lfw       scikit-image's ``lfw_subset``: 100 LFW faces (25x25 tight crops) upscaled to 100 px and
               padded with replicated edges to 200 px, and its 100 non-face patches treated the same way
  2. tight     the same 100 faces as they are, 25x25 (a tightly cropped small photo), without and with
               ferkit's padded/upscaled retry (:func:`ferkit.predict.detect.find_faces`)
  3. portraits head-and-shoulders photos that ship with scikit-image and matplotlib (astronaut, Grace
               Hopper, cameraman); JAFFE itself is not available offline
  4. scenes    640x480 scenes composed from real photos without faces (scikit-image's coffee, chelsea,
               rocket, coins, brick, grass, gravel, horse, clock, page, text, hubble_deep_field) with 3
               FER2013 PublicTest faces each (``--fer-dir``, default the shared archive extracted to
               /tmp/ferkit-data), at 48-200 px, pasted with soft edges
  5. no-face   the background photos themselves: every detection is a false positive

Detection: a box whose centre lies within a third of the face's side of the true centre. False
positives: boxes that match no face. Speed: CPU milliseconds per 640x480 scene, one thread (process
time, so the figure holds on a busy machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import publictest_dir  # noqa: E402
from common import machine  # noqa: E402

BACKGROUNDS = ("coffee", "chelsea", "rocket", "coins", "brick", "grass", "gravel", "horse", "clock", "page", "text",
               "hubble_deep_field")


def _gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2GRAY)
    return (img * 255).astype(np.uint8) if img.dtype != np.uint8 else img


def _pad(face: np.ndarray, side: int) -> np.ndarray:
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(big, side // 2, side // 2, side // 2, side // 2, cv2.BORDER_REPLICATE)


def _paste(scene: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    n = patch.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    mask = np.clip(1.5 - 2 * np.hypot(yy - n / 2, xx - n / 2) / (n / 2), 0, 1)
    roi = scene[y:y + n, x:x + n].astype(np.float32)
    scene[y:y + n, x:x + n] = (roi * (1 - mask) + patch * mask).astype(np.uint8)


def compose(faces: list[np.ndarray], background: np.ndarray, rng) -> tuple[np.ndarray, list]:
    """A 640x480 scene: ``background`` resized, ``faces`` pasted at sizes 48-200 px without overlap."""
    scene = cv2.resize(background, (640, 480), interpolation=cv2.INTER_AREA)
    truth, taken = [], []
    for face in faces:
        for _ in range(50):
            side = int(rng.choice([48, 64, 90, 120, 160, 200]))
            n = 2 * (side // 2) + side
            x, y = int(rng.integers(0, 640 - n)), int(rng.integers(0, 480 - n))
            if all(x + n <= a or a + m <= x or y + n <= b or b + m <= y for a, b, m in taken):
                taken.append((x, y, n))
                _paste(scene, _pad(face, side), x, y)
                truth.append((x + n / 2, y + n / 2, side))
                break
    return scene, truth


def score(boxes, truth) -> tuple[int, int]:
    """(faces found, false positives)."""
    found, used = 0, set()
    for cx, cy, side in truth:
        for i, (x, y, w, h) in enumerate(boxes):
            if i not in used and abs(x + w / 2 - cx) < side / 3 and abs(y + h / 2 - cy) < side / 3:
                used.add(i)
                found += 1
                break
    return found, len(boxes) - len(used)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--fer-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cv2.setNumThreads(1)

    from matplotlib import cbook
    from skimage import data

    from ferkit.predict.detect import create_detector, find_faces

    detectors = {"haar": create_detector("haar"), "dlib": create_detector("dlib")}
    print(f"{machine()}; OpenCV {cv2.__version__} (1 thread); dlib {__import__('dlib').__version__}")
    lfw = [_gray(x) for x in data.lfw_subset()]
    faces, nonfaces = lfw[:100], lfw[100:]

    def row(name, det, n_faces, found, fp, n_images, ms=None):
        speed = f"  {ms:6.1f} ms/image" if ms is not None else ""
        print(f"  {name:28s} {det:5s} found {found:4d}/{n_faces:<4d} ({found / max(n_faces, 1):6.1%})  "
              f"false positives {fp:4d} in {n_images:4d} images ({fp / max(n_images, 1):.3f}/image){speed}")

    print("1. lfw_subset faces upscaled to 100 px + padded; its non-face patches the same way")
    for k, det in detectors.items():
        hit = sum(bool(det.detect(_pad(f, 100))) for f in faces)
        fp = sum(len(det.detect(_pad(f, 100))) for f in nonfaces)
        row("lfw faces / non-faces", k, 100, hit, fp, 100)
    print("2. the 25x25 faces as they are: plain detection, then with ferkit's padded/upscaled retry")
    for k, det in detectors.items():
        row("tight 25 px, plain", k, 100, sum(bool(det.detect(f)) for f in faces), 0, 100)
        row("tight 25 px, with retry", k, 100, sum(bool(find_faces(det, f)) for f in faces), 0, 100)
        row("non-faces, with retry", k, 0, 0, sum(len(find_faces(det, f)) for f in nonfaces), 100)
    print("3. head-and-shoulders photos (astronaut, Grace Hopper, cameraman)")
    hopper = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), cv2.IMREAD_GRAYSCALE)
    portraits = {"astronaut": _gray(data.astronaut()), "grace_hopper": hopper, "cameraman": _gray(data.camera())}
    for k, det in detectors.items():
        found = {n: len(det.detect(img)) for n, img in portraits.items()}
        print(f"  {k:5s} boxes per photo (one face each): {found}")

    backgrounds = []
    for name in BACKGROUNDS:
        try:
            backgrounds.append(_gray(getattr(data, name)()))
        except Exception:  # noqa: BLE001 - an image this scikit-image does not ship
            pass
    print(f"5. photos without faces ({len(backgrounds)} scikit-image photos, at 640x480)")
    for k, det in detectors.items():
        fp = sum(len(det.detect(cv2.resize(b, (640, 480), interpolation=cv2.INTER_AREA))) for b in backgrounds)
        row("no-face photos", k, 0, 0, fp, len(backgrounds))

    root = Path(a.fer_dir) if a.fer_dir else publictest_dir()
    fer = sorted(root.glob("*/*.jpg"))
    rng = np.random.default_rng(a.seed)
    scenes = []
    for i in range(a.scenes):
        picks = [cv2.imread(str(fer[j]), cv2.IMREAD_GRAYSCALE) for j in rng.choice(len(fer), 3, replace=False)]
        scenes.append(compose(picks, backgrounds[i % len(backgrounds)], rng))
    n_faces = sum(len(t) for _, t in scenes)
    sizes = sorted({s for _, t in scenes for _, _, s in t})
    print(f"4. {len(scenes)} composed 640x480 scenes, {n_faces} FER2013 faces of {sizes} px")
    for k, det in detectors.items():
        det.detect(scenes[0][0])
        found = fp = 0
        by_size: dict[int, list[int]] = {}
        t0 = time.process_time()
        for scene, truth in scenes:
            boxes = det.detect(scene)
            f, p = score(boxes, truth)
            found, fp = found + f, fp + p
            for t in truth:
                by_size.setdefault(t[2], [0, 0])
                by_size[t[2]][0] += score(boxes, [t])[0]
                by_size[t[2]][1] += 1
        ms = 1000 * (time.process_time() - t0) / len(scenes)
        row("composed scenes", k, n_faces, found, fp, len(scenes), ms)
        print("        by face size: " + ", ".join(f"{s}px {h}/{n}" for s, (h, n) in sorted(by_size.items())))


if __name__ == "__main__":
    main()
