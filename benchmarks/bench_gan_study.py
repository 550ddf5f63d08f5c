"""The learned generator's experiment on FER2013 (six classes, 48 px): does a GAN add anything?

Every step is a resumable ferkit command, so the whole script may be stopped and re-run at any
time; it continues where it stopped (finished steps are skipped, interrupted ones resume):

1. split FER2013 train (``split``): validation (100/class, never trained on), the real subsets
   of 50 and 200 per class exactly as ``ferkit study --real-per-class`` draws them, and the
   pool: train minus validation minus both subsets;
2. train three GANs (``gan-self-50``, ``gan-self-200``: only on that real subset; ``gan-pool``: on
   the disjoint pool, the paper's setting) and report their quality against the validation faces
   and against PublicTest (``quality-publictest``: the bundled classifier never saw those);
3. write generated faces: each GAN edits its real subset's faces (``synth edit``), the pool GAN
   edits both subsets; procedural faces (``synth faces``); and the pool's real faces as a source
   (the obvious alternative to a GAN trained on the pool: add the pool's images directly);
4. one study per real size with every source as a named arm: real only, real + augmentation,
   real + k x {gan_self, gan_pool, procedural, pool_real} for k in 1, 2, 5, three seeds,
   the fer2013 recipe, tested on PublicTest;
5. controls for training length (``control``): every run of a study has the same epochs, so
   real + k x generated also gets k+1 times the SGD steps of real only. For each k in
   --control-ks, a study ``study-<n>-steps<S>`` trains real only and real + augmentation for S
   steps, the steps of the real + k x generated runs (``ferkit study --steps``);
6. ``compare``: sources against each other at equal k, and against the controls at equal steps
   (``compare.md``, ``compare.png``).

    .venv/bin/python benchmarks/bench_gan_study.py [--iterations 20000] [--steps split,gan,edit,study,...]
        [--sizes 50,200] [--epochs 60] [--seeds 3] [--ratios 0,1,2,5] [--control-ks 1,5] [--jobs 1]
    .venv/bin/python benchmarks/bench_gan_study.py --print-commands     # the ferkit commands, nothing run

Everything goes under --work (default ~/ferkit-bench/gan-study); FER2013 comes from ../shared/data.
``gan_study_remote.sh`` runs one size's edits, study and controls on another machine (a lent GPU).
"""
from __future__ import annotations

import argparse
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir  # noqa: E402

from ferkit.train.config import RECIPES  # noqa: E402

CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
SIZES = (50, 200)
RATIOS = "0,1,2,5"
CONTROL_KS = "1,5"
BATCH = RECIPES["fer2013"]["batch_size"]   # the studies' batch size


def control_steps(n: int, k: float, epochs: int) -> int:
    """SGD steps of a real + k x generated run at n real faces per class: batches an epoch x epochs."""
    n_train = len(CLASSES) * n + math.floor(k * len(CLASSES) * n + 0.5)
    return math.ceil(n_train / BATCH) * epochs


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
             ratios: str = RATIOS, jobs: int = 1, control_ks: str = CONTROL_KS) -> list[tuple[str, list[str], Path]]:
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
        # the README's report: against PublicTest, which (unlike val) the bundled classifier never saw
        out.append(("gan", ["gan", "evaluate", str(run), "--real", str(root / "validation"), "--classes", cls,
                            "--per-class", "200", "--out", str(run / "quality-publictest"), "--no-progress"],
                    run / "quality-publictest" / "quality.json"))
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
    for n in sizes:
        for k in _floats(control_ks):
            study = work / f"study-{n}-steps{control_steps(n, k, epochs)}"
            out.append(("control", ["study", "--real-train", str(m["trainpool"]), "--real-per-class", str(n),
                                    "--val", str(m["val"]), "--test", str(root / "validation"), "--classes", cls,
                                    "--synthetic", f"procedural={work / 'faces' / 'procedural'}", "--ratios", "0",
                                    "--seeds", str(seeds), "--no-synthetic-arm", "--recipe", "fer2013",
                                    "--steps", str(control_steps(n, k, epochs)), "--jobs", str(jobs),
                                    "--image-size", "48", "--out", str(study), "--no-progress"],
                        study / "summary.md"))
    return out


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


PAIRS = (("gan_pool", "procedural"), ("gan_pool", "pool_real"), ("gan_pool", "gan_self"), ("gan_self", "procedural"))


def _accuracies(study: Path) -> dict[tuple[str, str], dict[int, float]]:
    """(k, source), ("aug", "") or ("0", "") -> seed -> PublicTest accuracy, from a study's runs.csv."""
    import csv

    with open(study / "runs.csv") as fh:
        runs = [r for r in csv.DictReader(fh) if r.get("accuracy")]
    acc: dict[tuple[str, str], dict[int, float]] = {}
    for r in runs:
        key = ("aug", "") if r["setting"] == "aug" else (r["k"], r["source"])
        acc.setdefault(key, {})[int(r["seed"])] = float(r["accuracy"])
    return acc


def compare(study: Path, controls: dict[str, Path] | None = None) -> str:
    """Sources against each other at equal k (same images, same SGD steps), every mix against
    augmentation, and (``controls``: k -> the study of real only and augmentation trained for the
    steps of that k) every mix against real only and augmentation trained as long: paired 95%
    intervals over seeds, from the studies' runs.csv. Written to compare.md."""
    from ferkit.experiments.stats import diff_ci, format_ci
    from ferkit.files import write_text

    acc = _accuracies(study)
    controls = {k: p for k, p in (controls or {}).items() if (p / "runs.csv").exists()}
    ctl = {k: _accuracies(p) for k, p in controls.items()}
    ks = sorted({k for k, src in acc if src}, key=float)
    sources = sorted({src for _, src in acc if src})

    def cell(a: dict | None, b: dict | None) -> str:
        if not a or not b:
            return "–"
        return format_ci(*diff_ci(a, b)[:3])

    def table(head: list[str], rows: list[tuple[str, list[str]]]) -> list[str]:
        return (["| k | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
                + [f"| {k} | " + " | ".join(cells) + " |" for k, cells in rows])
    head = [f"{a} − {b}" for a, b in PAIRS] + [f"{s} − augmentation" for s in sources]
    lines = ["Equal k (equal images and SGD steps); augmentation trained for the same epochs as real only:", ""]
    lines += table(head, [(k, [cell(acc.get((k, a)), acc.get((k, b))) for a, b in PAIRS]
                           + [cell(acc.get((k, s)), acc.get(("aug", ""))) for s in sources]) for k in ks])
    rows = [(f"{k} ({controls[k].name.rpartition('steps')[2]} steps)",
             [cell(acc.get((k, s)), ctl[k].get(("0", ""))) for s in sources]
             + [cell(acc.get((k, s)), ctl[k].get(("aug", ""))) for s in sources])
            for k in sorted(ctl, key=float)]
    if rows:
        lines += ["", "Equal SGD steps: each mix against real only and real + augmentation trained for as many "
                      "steps (`study-N-stepsS`):", ""]
        lines += table([f"{s} − real only" for s in sources] + [f"{s} − augmentation" for s in sources], rows)
    text = "\n".join(lines) + "\n"
    write_text(study / "compare.md", text)
    plot_compare(study / "compare.png", acc, ctl)
    return text


def plot_compare(path: Path, acc: dict, controls: dict[str, dict]) -> Path:
    """compare.png: accuracy versus k for every source (``acc``, as _accuracies reads it), beside
    real only and augmentation trained for as many SGD steps as the mix at that k (``controls``:
    k -> their accuracies; k = 0: the study's own runs)."""
    from ferkit.files import new_figure, save_figure

    ctl = {0.0: acc} | {float(k): a for k, a in controls.items()}
    fig = new_figure(figsize=(7.5, 4.8))
    ax = fig.subplots()

    def line(points, **kw):
        points = sorted((k, list(v.values())) for k, v in points if v)
        if points:
            sd = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in points]   # as the study's tables
            ax.errorbar([k for k, _ in points], [np.mean(v) for _, v in points], yerr=sd, capsize=3, **kw)
    # sources in the study's order and colours, as in its accuracy_vs_k.png
    for i, src in enumerate(dict.fromkeys(s for _, s in acc if s)):
        line([(0.0, acc.get(("0", "")))] + [(float(k), v) for (k, s), v in acc.items() if s == src], marker="o",
             color=f"C{i}", label=f"real + k x {src}")
    for key, name, style in ((("0", ""), "real only", ":"), (("aug", ""), "real + augmentation", "--")):
        line([(k, a.get(key)) for k, a in ctl.items()], marker="s", mfc="none", color="0.3", ls=style,
             label=f"{name}, trained as many steps as the mix at k")
    ax.set_xlabel("k (generated images per real image)")
    ax.set_ylabel("PublicTest accuracy")
    ax.set_title(f"{path.parent.name}: each source against real only and augmentation trained as long\n"
                 "(mean ± sd over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return save_figure(fig, path)


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
    ap.add_argument("--control-ks", default=CONTROL_KS,
                    help=f"k values whose SGD steps real only and augmentation are also trained for (default "
                         f"{CONTROL_KS})")
    ap.add_argument("--steps", default="split,gan,edit,study,control,compare",
                    help="which steps to run (default all; control: real only and augmentation trained as long as "
                         "the mixes; compare: sources against each other and the controls)")
    ap.add_argument("--print-commands", action="store_true")
    a = ap.parse_args()
    try:
        sizes = tuple(int(n) for n in a.sizes.split(","))
    except ValueError:
        sizes = ()
    if not sizes or not set(sizes) <= set(SIZES):
        sys.exit(f"--sizes must be among {','.join(map(str, SIZES))} (got {a.sizes})")
    try:
        _floats(a.control_ks)
    except ValueError:
        sys.exit(f"--control-ks must be comma-separated numbers (got {a.control_ks})")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    steps = set(a.steps.split(","))
    if "split" in steps or not a.print_commands:
        split(work)
    ferkit = [sys.executable, "-m", "ferkit"]
    for step, args, done in commands(work, a.iterations, a.epochs, a.seeds, sizes, a.ratios, a.jobs, a.control_ks):
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
                controls = {f"{k:g}": work / f"study-{n}-steps{control_steps(n, k, a.epochs)}"
                            for k in _floats(a.control_ks)}
                print(compare(work / f"study-{n}", controls))


if __name__ == "__main__":
    main()
