"""Face detectors side by side: the classic suite, OpenCV's Haar cascade against dlib's HOG; ``--suite photos``, Haar
against the bundled BlazeFace (ferkit's default detector since issue 32) (not a test).

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

``--suite photos`` (Haar against the bundled BlazeFace, as ``ferkit predict`` runs them on photos:
:func:`ferkit.predict.detect.locate_faces` with the padded/turned retries, ``--min-face`` 0.05 so
that 24-px faces in 640x480 are asked for; scikit-image only for its face-free photos)::

    .venv/bin/python benchmarks/bench_detect.py --suite photos [--per-cell 12] [--detectors haar,blazeface]

Real faces from FER+ valid (48x48 gray) and SFEW train (143x181 colour film faces, shown gray), one per
640x480 scene, pasted with a soft edge on a face-free background (scikit-image's photos and
procedural ones: smooth noise, gradients, shapes, stripes):
  size     upright faces 16-200 px wide
  roll     faces 64-128 px turned by -60 ... +60 degrees
  edge     faces 64-160 px with 20-40% of their width outside the frame
  copy-size, copy-roll  whole SFEW photos (the face with its surroundings), scaled so the face is
           24-160 px wide or turned by +-30/45 degrees at 64-128 px (see :func:`photo_copies`)
  no-face  the backgrounds alone: every box is a false positive
and the CPU time per 640x480 photo (process time, one thread).
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


def procedural_backgrounds(n: int, rng) -> list[np.ndarray]:
    """Face-free 640x480 gray scenes: smooth noise, gradients, random shapes and stripes."""
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            small = rng.uniform(0, 255, (int(rng.integers(4, 30)), int(rng.integers(4, 40))))
            img = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
        elif kind == 1:
            yy, xx = np.mgrid[0:480, 0:640]
            a, b = rng.uniform(-0.4, 0.4, 2)
            img = 128 + a * (xx - 320) + b * (yy - 240) + rng.normal(0, 8, (480, 640))
        elif kind == 2:
            img = np.full((480, 640), float(rng.uniform(40, 220)))
            for _ in range(int(rng.integers(5, 25))):
                c = float(rng.uniform(0, 255))
                x, y = int(rng.integers(0, 640)), int(rng.integers(0, 480))
                if rng.random() < 0.5:
                    cv2.circle(img, (x, y), int(rng.integers(5, 80)), c, -1)
                else:
                    cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 150)), y + int(rng.integers(5, 150))), c, -1)
        else:
            yy, xx = np.mgrid[0:480, 0:640]
            f, t = rng.uniform(0.02, 0.2), rng.uniform(0, np.pi)
            img = 128 + 80 * np.sin(f * (np.cos(t) * xx + np.sin(t) * yy)) + rng.normal(0, 10, (480, 640))
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def paste_face(scene: np.ndarray, face: np.ndarray, width: int, angle: float, cx: float, cy: float) -> None:
    """``face`` resized to ``width`` px wide, turned by ``angle`` degrees and blended into ``scene``
    around (cx, cy) with a soft elliptic edge; parts outside the frame are cut off."""
    h = max(1, round(width * face.shape[0] / face.shape[1]))
    big = cv2.resize(face, (width, h), interpolation=cv2.INTER_AREA if width < face.shape[1] else cv2.INTER_LINEAR)
    n = int(np.ceil(np.hypot(width, h))) + 4
    canvas = cv2.copyMakeBorder(big, (n - h) // 2, n - h - (n - h) // 2, (n - width) // 2, n - width - (n - width) // 2,
                                cv2.BORDER_REPLICATE)
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot((xx - n / 2) / (width / 2), (yy - n / 2) / (h / 2))
    mask = np.clip((1.08 - r) / 0.16, 0, 1)
    m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, 1.0)
    canvas = cv2.warpAffine(canvas, m, (n, n), borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(mask.astype(np.float32), m, (n, n))
    x0, y0 = int(round(cx - n / 2)), int(round(cy - n / 2))
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(scene.shape[1], x0 + n), min(scene.shape[0], y0 + n)
    if sx1 <= sx0 or sy1 <= sy0:
        return
    patch, mk = canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0], mask[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0]
    roi = scene[sy0:sy1, sx0:sx1].astype(np.float32)
    scene[sy0:sy1, sx0:sx1] = (roi * (1 - mk) + patch * mk).astype(np.uint8)


def photo_scenes(faces: list[np.ndarray], backgrounds: list[np.ndarray], per_cell: int, rng) -> list:
    """(group, key, scene, truth) for the size, roll and edge groups and the face-free backgrounds."""
    out = []
    pick = lambda: (faces[int(rng.integers(len(faces)))], backgrounds[int(rng.integers(len(backgrounds)))])  # noqa: E731
    for size in (16, 24, 32, 48, 64, 96, 128, 200):
        for _ in range(per_cell):
            face, bg = pick()
            scene, m = bg.copy(), size * 0.8 + 10
            cx, cy = rng.uniform(m, 640 - m), rng.uniform(m, 480 - m)
            paste_face(scene, face, size, 0.0, cx, cy)
            out.append(("size", size, scene, [(cx, cy, size)]))
    for angle in (-60, -45, -30, -15, 0, 15, 30, 45, 60):
        for _ in range(per_cell):
            face, bg = pick()
            size = int(rng.integers(64, 129))
            scene, m = bg.copy(), size * 0.8 + 10
            cx, cy = rng.uniform(m, 640 - m), rng.uniform(m, 480 - m)
            paste_face(scene, face, size, float(angle), cx, cy)
            out.append(("roll", angle, scene, [(cx, cy, size)]))
    for _ in range(2 * per_cell):
        face, bg = pick()
        size = int(rng.integers(64, 161))
        out_frac = rng.uniform(0.2, 0.4)
        scene = bg.copy()
        side = int(rng.integers(4))
        cx = (size * (0.5 - out_frac) if side == 0 else 640 - size * (0.5 - out_frac)) if side < 2 else \
            rng.uniform(size, 640 - size)
        cy = rng.uniform(size, 480 - size) if side < 2 else \
            (size * (0.5 - out_frac) if side == 2 else 480 - size * (0.5 - out_frac))
        paste_face(scene, face, size, 0.0, cx, cy)
        out.append(("edge", "20-40% out", scene, [(cx, cy, size)]))
    for bg in backgrounds:
        out.append(("no-face", "background", bg, []))
    return out


def photo_copies(photos: list[np.ndarray], backgrounds: list[np.ndarray], per_cell: int, rng) -> list:
    """(group, key, scene, truth): whole photos (SFEW crops: a film face with its hair, shoulders and
    surroundings) scaled so their face is 24-160 px wide (``copy-size``) or turned by +-30/45 degrees
    at 64-128 px (``copy-roll``), laid on a background. The truth is the face BlazeFace finds in the
    photo as it is (photos where it finds none are skipped), moved with the copy: does the detector
    still find a face it finds at full size once the photo is small or turned?"""
    from ferkit.predict.blazeface import BlazeFaceDetector

    ref = BlazeFaceDetector()
    out, faces = [], {}
    cells = [("copy-size", s, s, 0.0) for s in (24, 32, 48, 96, 160)]
    cells += [("copy-roll", a, None, float(a)) for a in (-45, -30, 30, 45)]
    for group, key, size, angle in cells:
        made = tries = 0
        while made < per_cell:
            tries += 1
            if tries > 100 * per_cell:
                raise SystemExit(f"bench_detect: no photo of the {len(photos)} given makes a {group} {key} copy")
            i = int(rng.integers(len(photos)))
            if i not in faces:         # each photo's face looked for once, however often it is drawn
                faces[i] = ref.detect_faces(photos[i])
            photo, found = photos[i], faces[i]
            if not found:
                continue
            x, y, w, _ = found[0].box
            side = size or int(rng.integers(64, 129))
            k = side / w
            ph, pw = photo.shape
            reach = k * np.hypot(ph, pw) / 2 + 2
            if 2 * reach >= 470:
                continue
            cx, cy = rng.uniform(reach, 640 - reach), rng.uniform(reach, 480 - reach)
            m = cv2.getRotationMatrix2D((pw / 2, ph / 2), angle, k)
            m[:, 2] += (cx - pw / 2, cy - ph / 2)
            scene = backgrounds[int(rng.integers(len(backgrounds)))].copy()
            warped = cv2.warpAffine(photo, m, (640, 480), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
            mask = cv2.warpAffine(np.ones_like(photo), m, (640, 480), flags=cv2.INTER_NEAREST) > 0
            scene[mask] = warped[mask]
            fx, fy = m @ np.array([x + w / 2, y + w / 2, 1.0])
            out.append((group, key, scene, [(float(fx), float(fy), side)]))
            made += 1
    return out


def photos_suite(a) -> None:
    from skimage import data

    from ferkit.predict.detect import create_detector, locate_faces

    rng = np.random.default_rng(a.seed)
    fer = sorted(Path(a.ferplus_dir).glob("*.png"))
    sfew = sorted(Path(a.sfew_dir).glob("*/*.png"))
    picks = [cv2.imread(str(fer[i]), cv2.IMREAD_GRAYSCALE) for i in rng.choice(len(fer), 200, replace=False)]
    picks += [cv2.imread(str(sfew[i]), cv2.IMREAD_GRAYSCALE) for i in rng.choice(len(sfew), 200, replace=False)]
    backgrounds = []
    for name in BACKGROUNDS:
        try:
            backgrounds.append(cv2.resize(_gray(getattr(data, name)()), (640, 480), interpolation=cv2.INTER_AREA))
        except Exception:  # noqa: BLE001 - an image this scikit-image does not ship
            pass
    n_photo = len(backgrounds)
    backgrounds += procedural_backgrounds(a.procedural, rng)
    scenes = photo_scenes(picks, backgrounds, a.per_cell, rng)
    scenes += photo_copies(picks[200:], backgrounds, a.per_cell, rng)
    print(f"{machine()}; OpenCV {cv2.__version__} (1 thread), torch threads 1; {len(scenes)} scenes 640x480: faces "
          f"from {a.ferplus_dir} and {a.sfew_dir} (200 each), backgrounds {n_photo} scikit-image photos + "
          f"{a.procedural} procedural; --min-face {a.min_face}; locate_faces with retries (as predict on photos)")
    for name in a.detectors.split(","):
        det = create_detector(name, min_face=a.min_face)
        locate_faces(det, scenes[0][2])
        cells: dict[tuple, list[int]] = {}
        times = []
        for group, key, scene, truth in scenes:
            t0 = time.process_time()
            boxes = [f.box for f in locate_faces(det, scene)]
            times.append(1000 * (time.process_time() - t0))
            found, fp = score(boxes, truth)
            c = cells.setdefault((group, key), [0, 0, 0, 0])
            c[0] += found
            c[1] += len(truth)
            c[2] += fp
            c[3] += 1
        print(f"\n{name}: CPU ms per 640x480 photo: mean {np.mean(times):.0f}, median {np.median(times):.0f}")
        for group in ("size", "roll", "edge", "copy-size", "copy-roll", "no-face"):
            keys = [k for g, k in cells if g == group]
            parts = []
            for k in keys:
                f, n, fp, m = cells[(group, k)]
                parts.append(f"{k}: {f}/{n}" + (f" fp {fp / m:.2f}" if fp else "") if n else f"{k}: fp {fp}/{m} "
                             f"images = {fp / m:.3f}/image")
            tot = [sum(cells[(group, k)][i] for k in keys) for i in range(4)]
            rate = f"found {tot[0] / tot[1]:.3f}" if tot[1] else f"false positives {tot[2] / tot[3]:.3f}/image"
            print(f"  {group:8s} {rate}; " + "; ".join(parts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("classic", "photos"), default="classic")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--fer-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detectors", default="haar,blazeface", help="photos suite: detectors to compare")
    ap.add_argument("--per-cell", type=int, default=12, help="photos suite: scenes per size / angle")
    ap.add_argument("--procedural", type=int, default=40, help="photos suite: procedural face-free backgrounds")
    ap.add_argument("--min-face", type=float, default=0.05, help="photos suite: detectors' min_face")
    ap.add_argument("--ferplus-dir", default="/tmp/ferkit-data/ferplus/valid")
    ap.add_argument("--sfew-dir", default="/tmp/ferkit-data/sfew-train")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    if a.suite == "photos":
        import torch

        torch.set_num_threads(1)
        photos_suite(a)
        return

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
