"""FER2013 generated-data study: how much do ferkit's generated faces help real FER2013 training?

What it runs (``ferkit study``, see ``ferkit.experiments``):

* six classes (the reference's: angry, disgusted, fearful, happy, sad, surprised) of FER2013,
  extracted from ``/work/shared/data/fer2013-train-val.tar.gz`` to a cache folder outside the
  repository (default ``~/.cache/ferkit/fer2013``);
* validation for early stopping: ``--val-per-class`` (default 100) images per class held out of
  the *train* split (``val.csv``); the real training subsets are drawn from the remaining train
  images (``pool.csv``), so they never overlap the validation images;
* real training sets of 50 and 200 images per class, drawn per class with a fixed seed;
* test: PublicTest (``validation/``), never used for training or model selection;
* generated data: ``ferkit.synth.generate_faces``, 8 x 200 = 1600 per class at 48x48;
* k = 0, 0.5, 1, 2, 3, 5, 8, plus real + augmentation and generated only; three seeds;
  the seed CNN, up to 50 epochs with early stopping (patience 5).

Usage::

    python benchmarks/bench_study.py --estimate      # prepare data, time a small run, print the estimate
    python benchmarks/bench_study.py                 # the whole study (many hours on 2 CPU cores)
    python benchmarks/bench_study.py --print-command # the equivalent `ferkit study` command line

Interrupt any time; running it again skips finished runs and resumes the interrupted one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ferkit.cli import MONITOR_CHOICES

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir  # noqa: E402

CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
RATIOS = "0,0.5,1,2,3,5,8"
SIZES = "50,200"


def split_train(images: Path, cache: Path, val_per_class: int, seed: int = 0) -> tuple[Path, Path]:
    """val.csv: ``val_per_class`` train images per class; pool.csv: the rest (disjoint)."""
    from ferkit.data import scan_source
    from ferkit.experiments import draw_per_class, write_manifest

    val_csv, pool_csv = cache / f"val{val_per_class}.csv", cache / f"pool_minus_val{val_per_class}.csv"
    if val_csv.exists() and pool_csv.exists():
        return val_csv, pool_csv
    src = scan_source(images / "train", CLASSES, "FER2013 train")
    labels = np.asarray([CLASSES.index(c) for c in src.labels])
    val_idx, _ = draw_per_class(labels, [val_per_class] * len(CLASSES), seed + 1000, CLASSES)
    rest = np.setdiff1d(np.arange(len(labels)), val_idx)
    for path, idx in ((val_csv, val_idx), (pool_csv, rest)):
        write_manifest(path, [src.files[i] for i in idx], [src.labels[i] for i in idx], ["real"] * len(idx))
    return val_csv, pool_csv


def generated(cache: Path, per_class: int, size: int, workers: int | None = None) -> Path:
    from ferkit.synth import generate_faces

    out = cache / f"synth_{per_class}_{size}px"
    if not out.exists():
        t0 = time.time()
        generate_faces(out, per_class=per_class, classes=list(CLASSES), size=size, seed=0, workers=workers)
        print(f"generated {per_class * len(CLASSES)} faces in {time.time() - t0:.0f}s", file=sys.stderr)
    return out


def study_config(a, images: Path, val: Path, pool: Path, synth: Path, out: Path):
    from ferkit.experiments import StudyConfig

    return StudyConfig(real_train=str(pool), val=str(val), test=str(images / "validation"), synthetic=[str(synth)],
                       out=str(out), ratios=a.ratios, seeds=a.seeds, real_per_class=a.sizes, classes=CLASSES,
                       jobs=a.jobs,
                       train=dict(arch=a.arch, epochs=a.epochs, patience=a.patience, monitor=a.monitor,
                                  lr=a.lr, batch_size=a.batch_size, image_size=a.image_size))


def command_line(cfg) -> str:
    sizes = ",".join("all" if n is None else str(n) for n in cfg.real_per_class)
    return (f"ferkit study --real-train {cfg.real_train} --val {cfg.val} --test {cfg.test} "
            f"--synthetic {cfg.synthetic[0]} --ratios {','.join(f'{k:g}' for k in cfg.ratios)} "
            f"--seeds {cfg.seeds} --real-per-class {sizes} --arch {cfg.arch} --epochs {cfg.epochs} "
            f"--patience {cfg.patience} --monitor {cfg.monitor} --lr {cfg.lr:g} --batch-size {cfg.batch_size} "
            f"--image-size {cfg.image_size} "
            f"--classes {','.join(cfg.classes)} --jobs {cfg.jobs} --out {cfg.out}")


def estimate(cfg, val_n: int, test_n: int, epochs_guess: tuple[int, ...] = (12, 25, 50)) -> None:
    """Time seed-CNN training and inference here, then extrapolate the study's wall time."""
    import shutil

    from ferkit.data import ImageSet
    from ferkit.evaluate import evaluate
    from ferkit.experiments import allocate, study_arms
    from ferkit.train import TrainConfig, train

    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    rng = np.random.default_rng(0)
    n, side = 384, cfg.image_size

    def fake(m):
        return ImageSet(rng.integers(0, 255, (m, side, side), dtype=np.uint8), np.arange(m) % len(CLASSES),
                        [f"x{i}" for i in range(m)], CLASSES)

    tmp = Path(cfg.out).with_name(Path(cfg.out).name + "-timing")
    shutil.rmtree(tmp, ignore_errors=True)
    tc = TrainConfig(train_dir="timing", val_dir="timing", out=str(tmp), arch=cfg.arch, image_size=side,
                     classes=CLASSES, epochs=2, batch_size=cfg.batch_size, patience=0, num_threads=threads,
                     progress=False)
    r = train(tc, data=(fake(n), fake(12)))
    s_train = r.history[-1]["seconds"] / n               # second epoch: warm
    t0 = time.time()
    evaluate(tmp, "timing", out_dir=tmp / "eval", data=fake(test_n), progress=False)
    s_eval = time.time() - t0                            # includes reports and plots
    shutil.rmtree(tmp, ignore_errors=True)
    s_inf = s_eval / test_n

    arms = study_arms(cfg.ratios, cfg.synthetic_only_ratio, cfg.augment_arm, cfg.synthetic_arm)
    per_epoch, runs = 0.0, 0
    for size in cfg.real_per_class:
        real = size * len(CLASSES)
        for arm in arms:
            syn = int(allocate([size] * len(CLASSES), round(arm.k * real)).sum())
            per_epoch += cfg.seeds * (((real if arm.real else 0) + syn) * s_train + val_n * s_inf)
            runs += cfg.seeds
    print(f"measured ({cfg.arch}, {side}px, {threads} torch thread(s) per process): {1 / s_train:.0f} training "
          f"img/s, {1 / s_inf:.0f} inference img/s; evaluating {test_n} test images takes {s_eval:.1f}s")
    print(f"study: {runs} runs in {cfg.jobs} parallel process(es)")
    for e in epochs_guess:
        total = (per_epoch * e + runs * s_eval) / cfg.jobs
        print(f"  if runs average {e:2d} epochs: ~{total / 3600:.1f} h wall time")
    print("  early stopping (patience 5) usually ends small-data runs long before the 50-epoch cap; "
          "parallel processes contend for memory bandwidth, so add ~10-20%.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "ferkit" / "fer2013"),
                   help="where FER2013 is extracted and the manifests/generated faces go")
    p.add_argument("--out", default=str(Path.home() / ".cache" / "ferkit" / "fer2013-study"), help="study folder")
    p.add_argument("--ratios", default=RATIOS)
    p.add_argument("--sizes", default=SIZES, help="real images per class (default 50,200)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arch", default="seed")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--monitor", default="val_loss", choices=MONITOR_CHOICES,
                   help="val_acc for very small real sets (see README)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4, the reference's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=48, help="FER2013 is 48x48 (default 48)")
    p.add_argument("--val-per-class", type=int, default=100, help="train images per class held out for validation")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--estimate", action="store_true", help="prepare data, time a small run, print the estimate")
    p.add_argument("--print-command", action="store_true", help="prepare data and print the ferkit study command")
    a = p.parse_args(argv)

    from ferkit.experiments import parse_ratios, parse_sizes, run_study

    cache = Path(a.cache).expanduser()
    images = fer2013_dir()
    if images is None:
        sys.exit("FER2013 archive not found (set FER2013_TAR)")
    val, pool = split_train(images, cache, a.val_per_class)
    per_class = int(np.ceil(max(max(parse_ratios(a.ratios)), 1) * max(n for n in parse_sizes(a.sizes) if n)))
    t0 = time.time()
    synth = generated(cache, per_class, a.image_size)
    cfg = study_config(a, images, val, pool, synth, Path(a.out).expanduser())
    if a.print_command or a.estimate:
        print(command_line(cfg))
        if a.estimate:
            estimate(cfg, a.val_per_class * len(CLASSES), 3589 - 607)
        return
    res = run_study(cfg)
    print(res.files["table_md"].read_text())
    print("\n".join(res.summary))
    print(f"wall time {time.time() - t0:.0f}s; results in {res.out}")


if __name__ == "__main__":
    main()
