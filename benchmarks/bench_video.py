"""Video: frames per second end to end, and how much smoothing calms the labels (not a test).

    .venv/bin/python benchmarks/bench_video.py [--seconds 20] [--faces 8] [--threads 2]

1. speed: a 640x480 MJPG clip (25 fps, one face) through ``ferkit predict`` as a function
   (:func:`ferkit.predict.predict_inputs`) with the bundled model, every frame: detection, eye
   alignment, classification, tracking, smoothing, the CSV rows and the per-video summary and
   timeline. Reported with and without the model load, and with ``--no-align``, in frames per
   second of wall-clock time and of process CPU time (``--threads 1``: the CPU figure is what one
   idle core gives, whatever else the machine runs; two cores give at least that).
2. flicker: clips of a steady face (``--faces`` FER2013 PublicTest faces, upscaled to 200 px, plus
   Grace Hopper's photo), each ``--seconds`` long at 25 fps, with what a webcam adds frame to
   frame: sensor noise (sigma 5), a 1-2 px jitter and a 3% brightness flicker. Label changes per
   minute of the per-frame labels (``--smooth 0``) against the smoothed ones, per smoothing time.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_align import publictest_dir  # noqa: E402
from common import machine  # noqa: E402


def steady_clip(path: Path, face: np.ndarray, seconds: float, rng, fps: float = 25.0) -> Path:
    """A 640x480 clip of one still face with webcam-like noise, jitter and brightness flicker."""
    h, w = face.shape[:2]
    base = cv2.GaussianBlur((rng.random((480, 640)) * 120 + 60).astype(np.uint8), (0, 0), 6)
    base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
    y0, x0 = (480 - h) // 2, (640 - w) // 2
    base[y0:y0 + h, x0:x0 + w] = face if face.ndim == 3 else cv2.cvtColor(face, cv2.COLOR_GRAY2BGR)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (640, 480))
    for _ in range(int(seconds * fps)):
        dx, dy = rng.integers(-2, 3, 2)
        frame = np.roll(base, (int(dy), int(dx)), (0, 1)).astype(np.float32) * rng.uniform(0.97, 1.03)
        frame += rng.normal(0, 5, frame.shape)
        vw.write(np.clip(frame, 0, 255).astype(np.uint8))
    vw.release()
    return path


def label_changes(labels: list[str]) -> int:
    return sum(a != b for a, b in zip(labels, labels[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each flicker clip")
    ap.add_argument("--speed-seconds", type=float, default=10.0, help="length of the speed clip")
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smooth", default="0.25,0.5,1.0")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-flicker", action="store_true")
    ap.add_argument("--detectors", default="haar", help="speed: detectors to time, comma-separated (haar,blazeface)")
    a = ap.parse_args()

    import torch
    from matplotlib import cbook

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    from ferkit import Recognizer
    from ferkit.predict import predict_inputs
    from ferkit.predict.track import Smoother

    tmp = Path(tempfile.mkdtemp(prefix="ferkit-bench-video-"))
    rng = np.random.default_rng(0)
    hopper = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    hopper = cv2.resize(hopper[40:420, 90:450], (200, 211))
    from ferkit.bundled import DEFAULT_MODEL

    print(f"{machine()}; torch threads {a.threads}, OpenCV threads {a.threads}; model {DEFAULT_MODEL} (the default)")

    if not a.skip_speed:
        clip = steady_clip(tmp / "speed.avi", hopper, a.speed_seconds, rng)
        n = int(a.speed_seconds * 25)
        t0, c0 = time.perf_counter(), time.process_time()
        Recognizer.load()
        load, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        runs = [(f"{d}, align on", {"detector": d}) for d in a.detectors.split(",")]
        for name, kwargs in runs + [("haar --no-align", {"align": False, "detector": "haar"})]:
            t0, c0 = time.perf_counter(), time.process_time()
            s = predict_inputs(None, [str(clip)], tmp / "out", progress=False, **kwargs)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert s.frames == n, s.frames
            print(f"1. 640x480 video, every frame, {name}, {s.faces} faces in {n} frames: wall clock {n / dt:.1f} "
                  f"frames/s incl. model load ({n / max(dt - load, 1e-9):.1f} without the {load:.2f} s load); "
                  f"CPU clock {n / cpu:.1f} frames/s incl. load ({n / max(cpu - load_cpu, 1e-9):.1f} without)",
                  flush=True)

    if a.skip_flicker:
        return
    files = sorted(publictest_dir().glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    faces = [("grace_hopper", hopper)] + [(f.stem, cv2.resize(cv2.imread(str(f)), (200, 200))) for f in files[:a.faces]]
    rec = Recognizer.load()
    taus = [float(v) for v in a.smooth.split(",")]
    totals = {0.0: 0, **{t: 0 for t in taus}}
    minutes = 0.0
    print(f"2. label changes per minute on steady faces ({a.seconds:g} s each at 25 fps; raw -> smoothed "
          f"over {', '.join(f'{t:g}' for t in taus)} s)")
    for name, face in faces:
        clip = steady_clip(tmp / f"{name}.avi", face, a.seconds, rng)
        stream = [f for f in rec.track(clip, smooth=0) if f.faces]
        if not stream:
            print(f"   {name:22s} no face found in any frame: left out", flush=True)
            continue
        main_track = max({f.faces[0].track for f in stream}, key=lambda k: sum(f.faces[0].track == k for f in stream))
        seq = [(f.time_s, f.faces[0].raw) for f in stream if f.faces[0].track == main_track]
        mins = (seq[-1][0] - seq[0][0]) / 60 if len(seq) > 1 else 0
        minutes += mins
        counts = {0.0: label_changes([max(p, key=p.get) for _, p in seq])}
        for tau in taus:
            sm = Smoother(tau)
            labels = []
            for t, p in seq:
                s = sm.update(1, np.array(list(p.values())), t)
                labels.append(int(np.argmax(s)))
            counts[tau] = label_changes(labels)
        for k, v in counts.items():
            totals[k] += v
        print(f"   {name:22s} {len(seq)} frames tracked of {len(stream)}: "
              + ", ".join(f"{v / max(mins, 1e-9):.0f}" for v in counts.values()), flush=True)
    raw = totals[0.0] / max(minutes, 1e-9)
    print(f"   all: raw {raw:.1f} label changes/min; "
          + "; ".join(f"smooth {t:g} s: {totals[t] / max(minutes, 1e-9):.1f}/min "
                      f"({raw / max(totals[t] / max(minutes, 1e-9), 1e-9):.1f}x fewer)" for t in taus))


if __name__ == "__main__":
    main()
