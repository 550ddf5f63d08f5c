"""The learned generator's experiment on FER2013 (six classes, 48 px): does a GAN add anything?

Every step is a resumable ferkit command, so the whole script may be stopped and re-run at any
time; it continues where it stopped (finished steps are skipped, interrupted ones resume):

1. split FER2013 train (``split``): validation (100/class, never trained on), the real subsets
   of 50 and 200 per class exactly as ``ferkit study --real-per-class`` draws them, and the
   pool: train minus validation minus both subsets;
2. train three GANs (``gan-self-50``, ``gan-self-200``: only on that real subset; ``gan-pool``: on
   the disjoint pool, the paper's setting) and report their quality against the validation faces;
3. write generated faces: each GAN edits its real subset's faces (``synth edit``), the pool GAN
   edits both subsets; procedural faces (``synth faces``); and the pool's real faces as a source
   (the obvious alternative to a GAN trained on the pool: add the pool's images directly);
4. one study per real size with every source as a named arm: real only, real + augmentation,
   real + k x {gan_self, gan_pool, procedural, pool_real} for k in 1, 2, 5, three seeds,
   the fer2013 recipe, tested on PublicTest.

    .venv/bin/python benchmarks/bench_gan_study.py [--iterations 20000] [--steps split,gan,edit,study]
        [--sizes 50,200] [--epochs 60] [--seeds 3] [--ratios 0,1,2,5] [--jobs 1]
    .venv/bin/python benchmarks/bench_gan_study.py --print-commands     # the ferkit commands, nothing run

Everything goes under --work (default ~/ferkit-bench/gan-study); FER2013 comes from ../shared/data.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir  # noqa: E402

CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
SIZES = (50, 200)
RATIOS = "0,1,2,5"


def split(work: Path, val_per_class: int = 100, subset_seed: int = 0) -> dict[str, Path]:
    """Manifests: val, trainpool (train minus val: the study's --real-train), real50/real200 (the
    study's own subsets of trainpool), gan_pool (trainpool minus both subsets)."""
    from ferkit.data import scan_source
    from ferkit.experiments import draw_per_class, real_subset, write_manifest
    from ferkit.labels import canonical_class

    paths = {name: work / f"{name}.csv" for name in ("val", "trainpool", "gan_pool", *[f"real{n}" for n in SIZES])}
    if all(p.exists() for p in paths.values()):
        return paths
    root = fer2013_dir()
    if root is None:
        sys.exit("FER2013 archive not found")
    src = scan_source(root / "train", CLASSES, "FER2013 train")
    labels = np.asarray([CLASSES.index(canonical_class(lab)) for lab in src.labels])
    files = np.asarray([str(f) for f in src.files])
    val_idx, _ = draw_per_class(labels, [val_per_class] * len(CLASSES), 0, CLASSES)
    rest = np.setdiff1d(np.arange(len(files)), val_idx)

    def write(name, idx):
        write_manifest(paths[name], files[idx], [CLASSES[i] for i in labels[idx]], ["real"] * len(idx))
    write("val", val_idx)
    write("trainpool", rest)
    used = []
    for n in SIZES:   # exactly the study's draw: real_subset over trainpool in manifest order
        sub = rest[real_subset(labels[rest], n, len(CLASSES), subset_seed)]
        write(f"real{n}", sub)
        used.append(sub)
    write("gan_pool", np.setdiff1d(rest, np.concatenate(used)))
    return paths


def commands(work: Path, iterations: int, epochs: int, seeds: int, sizes=SIZES,
             ratios: str = RATIOS, jobs: int = 1) -> list[tuple[str, list[str], Path]]:
    """(step, ferkit arguments, the path whose existence means done) for every step after the split,
    for the real sizes in ``sizes`` (a subset of SIZES)."""
    root = fer2013_dir()
    m = {name: work / f"{name}.csv" for name in ("val", "trainpool", "gan_pool", *[f"real{n}" for n in SIZES])}
    cls = ",".join(CLASSES)
    gan = ["--classes", cls, "--image-size", "48", "--iterations", str(iterations), "--no-progress"]
    out: list[tuple[str, list[str], Path]] = []
    gans = [(f"gan-self-{n}", m[f"real{n}"]) for n in sizes] + [("gan-pool", m["gan_pool"])]
    for name, data in gans:
        run = work / name
        out.append(("gan", ["gan", "train", "--data", str(data), "--out", str(run), *gan], run / "summary.json"))
        out.append(("gan", ["gan", "evaluate", str(run), "--real", str(m["val"]), "--per-class", "200",
                            "--no-progress"], run / "quality" / "quality.json"))
    for n in sizes:
        per = 5 * n
        for name, run in ((f"gan_self_{n}", work / f"gan-self-{n}"), (f"gan_pool_{n}", work / "gan-pool")):
            out.append(("edit", ["synth", "edit", str(run), "--source", str(m[f"real{n}"]), "--out",
                                 str(work / "faces" / name), "--per-class", str(per), "--no-progress"],
                        work / "faces" / name / "metadata.csv"))
    out.append(("edit", ["synth", "faces", "--out", str(work / "faces" / "procedural"), "--per-class", "1000",
                         "--size", "48", "--classes", cls, "--no-progress"], work / "faces" / "procedural" /
                "metadata.csv"))
    for n in sizes:
        study = work / f"study-{n}"
        out.append(("study", ["study", "--real-train", str(m["trainpool"]), "--real-per-class", str(n),
                              "--val", str(m["val"]), "--test", str(root / "validation"), "--classes", cls,
                              "--synthetic", f"gan_self={work / 'faces' / f'gan_self_{n}'}",
                              "--synthetic", f"gan_pool={work / 'faces' / f'gan_pool_{n}'}",
                              "--synthetic", f"procedural={work / 'faces' / 'procedural'}",
                              "--synthetic", f"pool_real={m['gan_pool']}",
                              "--ratios", ratios, "--seeds", str(seeds), "--no-synthetic-arm", "--replace",
                              "--recipe", "fer2013", "--epochs", str(epochs), "--jobs", str(jobs),
                              "--image-size", "48", "--out", str(study), "--no-progress"], study / "summary.md"))
    return out


PAIRS = (("gan_pool", "procedural"), ("gan_pool", "pool_real"), ("gan_pool", "gan_self"), ("gan_self", "procedural"))


def compare(study: Path) -> str:
    """Sources against each other at equal k (same images, same SGD steps), and every mix against
    augmentation: paired 95% intervals over seeds, from the study's runs.csv. Written to compare.md."""
    import csv

    from ferkit.experiments.stats import diff_ci
    from ferkit.files import write_text

    with open(study / "runs.csv") as fh:
        runs = [r for r in csv.DictReader(fh) if r.get("accuracy")]
    acc: dict[tuple[str, str], dict[int, float]] = {}    # (k, source) or ("aug", "") -> seed -> accuracy
    for r in runs:
        key = ("aug", "") if r["setting"] == "aug" else (r["k"], r["source"])
        acc.setdefault(key, {})[int(r["seed"])] = float(r["accuracy"])
    ks = sorted({r["k"] for r in runs if r["source"] and r["k"] not in ("", "0")}, key=float)

    def cell(a: tuple, b: tuple) -> str:
        if a not in acc or b not in acc:
            return "–"
        d, lo, hi, _ = diff_ci(acc[a], acc[b])
        return f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    sources = sorted({r["source"] for r in runs if r["source"]})
    head = [f"{a} − {b}" for a, b in PAIRS] + [f"{s} − augmentation" for s in sources]
    lines = ["| k | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in ks:
        cells = [cell((k, a), (k, b)) for a, b in PAIRS] + [cell((k, s), ("aug", "")) for s in sources]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_text(study / "compare.md", text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(Path.home() / "ferkit-bench" / "gan-study"))
    ap.add_argument("--iterations", type=int, default=20000, help="GAN iterations (default 20000)")
    ap.add_argument("--epochs", type=int, default=60, help="classifier epochs per study run (fer2013 recipe)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="study runs trained side by side (2 suits 2 cores)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="real images per class to run (default 50,200; each has its own GAN and study)")
    ap.add_argument("--ratios", default=RATIOS, help=f"k values of the studies (default {RATIOS})")
    ap.add_argument("--steps", default="split,gan,edit,study,compare",
                    help="which steps to run (default all; compare: sources against each other at equal k)")
    ap.add_argument("--print-commands", action="store_true")
    a = ap.parse_args()
    try:
        sizes = tuple(int(n) for n in a.sizes.split(","))
    except ValueError:
        sizes = ()
    if not sizes or not set(sizes) <= set(SIZES):
        sys.exit(f"--sizes must be among {','.join(map(str, SIZES))} (got {a.sizes})")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = set(a.steps.split(","))
    if "split" in steps or not a.print_commands:
        split(work)
    ferkit = [sys.executable, "-m", "ferkit"]
    for step, args, done in commands(work, a.iterations, a.epochs, a.seeds, sizes, a.ratios, a.jobs):
        line = "ferkit " + shlex.join(args)
        if a.print_commands:
            print(line)
            continue
        if step not in steps:
            continue
        if done.exists():
            print(f"done already: {line}", flush=True)
            continue
        print(f"running: {line}", flush=True)
        subprocess.run([*ferkit, *args], check=True)
    if "compare" in steps and not a.print_commands:
        for n in sizes:
            if (work / f"study-{n}" / "runs.csv").exists():
                print(f"study-{n}, accuracy differences at equal k (paired by seed, 95% CI):")
                print(compare(work / f"study-{n}"))


if __name__ == "__main__":
    main()
