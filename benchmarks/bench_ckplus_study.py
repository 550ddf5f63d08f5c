"""The paper's experiment with open data: does a generator trained on wild faces help a small lab dataset?

A small posed dataset (default: the 71-subject CK+ sample, six classes, no contempt) is split into
subject-disjoint folds (``ferkit study --folds``); for every fold and seed a classifier is trained
on the fold's training subjects with

- real only; real + classic augmentation;
- real + k x GAN edits: the generator (``--generator``, e.g. one trained on FER2013's train split)
  edits *that fold's training faces* into the other expressions (``ferkit synth edit GENERATOR
  --source <fold>/train.csv``), so no test or validation subject reaches training through an edit;
- real + k x FER2013 real faces (the large wild dataset added directly: other domain, other people);
- real + k x procedural faces (``ferkit synth faces``);
- fine-tuning a FER2013-trained classifier (``--init``, default the bundled fer2013-vgg) on the real
  faces, alone and with k x GAN edits;

and tested on the fold's test subjects. Output (under ``--work``): the study folder (``study/``:
table.md, table.csv, runs.csv, accuracy_vs_k.png, summary.md, the fold manifests), and
``compare.md`` / ``compare.png``: every arm against real only, GAN edits against augmentation and
FER2013 faces at each k, fine-tune + edits against fine-tune alone, all as paired 95% intervals
over (fold, seed).

The lab dataset, the generator and the folds are arguments, so the experiment reruns on other
subjects (``--data``: class folders, a manifest or a .tar.gz; ``--group-by``: how a file name
names its person; ``--folds``: K, or a group,fold CSV such as a previous study's
``folds/groups.csv``). Every step is a resumable ferkit command: stop and rerun at will.

    .venv/bin/python benchmarks/bench_ckplus_study.py --generator runs/gan-fer2013 [--seeds 3] [--folds 5]
        [--ratios 1,2,5] [--arms real,aug,gan,fer2013,procedural,finetune] [--epochs 60 | --steps N]
    .venv/bin/python benchmarks/bench_ckplus_study.py ... --print-commands     # the commands, nothing run
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
os.environ.setdefault("FER2013_DIR", "/tmp/ferkit-data/fer2013")   # extract outside the repository
from common import fer2013_dir, machine  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_DATA = SHARED / "ckplus48-dev.tar.gz"
CLASSES = "angry,disgusted,fearful,happy,sad,surprised"
ARMS = ("real", "aug", "gan", "fer2013", "procedural", "finetune")


def extract(data: Path, root: Path = Path("/tmp/ferkit-data")) -> Path:
    """A .tar.gz of class folders -> its extracted folder under ``root`` (once); anything else as given."""
    if not data.name.endswith((".tar.gz", ".tgz", ".tar")):
        return data
    target = root / data.name.split(".tar")[0].removesuffix(".tgz")
    if not target.is_dir():
        tmp = target.with_name(target.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(data) as fh:
            fh.extractall(tmp, filter="data")
        inner = next((p for p in tmp.iterdir() if p.is_dir()), tmp) if len(list(tmp.iterdir())) == 1 else tmp
        os.replace(inner, target)
    return target


def pool_size(folds: dict[int, dict[str, Path]], ratios: list[float]) -> tuple[int, int]:
    """(generated faces per class every arm can draw from without repeats: the largest k times the
    largest class of any fold's training part, as the study keeps the real class balance; the
    fewest distinct GAN edits of one target class a fold allows: its faces of the other classes)."""
    most, distinct = 0, None
    for paths in folds.values():
        with open(paths["train"], newline="") as fh:
            counts: dict[str, int] = {}
            for row in csv.DictReader(fh):
                counts[row["class"]] = counts.get(row["class"], 0) + 1
        most = max(most, max(counts.values()))
        n = sum(counts.values())
        fewest = min(n - c for c in counts.values())
        distinct = fewest if distinct is None else min(distinct, fewest)
    return int(math.ceil(max(ratios) * most)) + 1, distinct or 0


def fer2013_pool(root: Path, out: Path, per_class: int, classes: tuple[str, ...]) -> Path:
    """A manifest of ``per_class`` FER2013 train faces per class (seeded draw)."""
    from ferkit.data import scan_source
    from ferkit.experiments import draw_per_class, write_manifest

    if out.exists():
        return out
    src = scan_source(root, classes, "FER2013 train")
    labels = np.asarray([classes.index(c) for c in src.labels])
    counts = np.bincount(labels, minlength=len(classes))
    idx, _ = draw_per_class(labels, np.minimum(counts, per_class), 0, classes)
    write_manifest(out, [src.files[i] for i in idx], [classes[labels[i]] for i in idx], ["fer2013"] * len(idx))
    return out


def stale_edits(edits: Path, generator: str) -> str | None:
    """The generator file an existing edit folder was made with, when it is not ``generator``'s."""
    from ferkit.synth.gan import file_sha256, generator_path

    try:
        with open(edits / "metadata.csv", newline="") as fh:
            made = next(csv.DictReader(fh))
    except (OSError, StopIteration):
        return None
    return None if made["generator_sha256"] == file_sha256(generator_path(generator)) else made["generator"]


def check_edits(edits: Path, fold_paths: dict[str, Path]) -> int:
    """Every edited face's source face is one of the fold's training faces (metadata.csv): returns how many."""
    with open(fold_paths["train"], newline="") as fh:
        train = {os.path.abspath(r["path"]) for r in csv.DictReader(fh)}
    with open(edits / "metadata.csv", newline="") as fh:
        sources = [os.path.abspath(r["source_file"]) for r in csv.DictReader(fh)]
    outside = [s for s in sources if s not in train]
    if outside:
        sys.exit(f"{edits}: {len(outside)} edits come from faces outside the fold's training part "
                 f"(e.g. {outside[0]}); delete the folder and rerun")
    return len(sources)


def study_command(a, data: Path, work: Path, sources: dict[str, str]) -> list[str]:
    arms = set(a.arms)
    ratios = [r for r in a.ratios.split(",") if r.strip()]
    cmd = ["study", "--real", str(data), "--folds", str(a.folds), "--group-by", a.group_by,
           "--fold-seed", str(a.fold_seed), "--classes", a.classes, "--image-size", str(a.image_size),
           "--ratios", ",".join(["0", *ratios]), "--seeds", str(a.seeds), "--no-synthetic-arm",
           "--recipe", a.recipe, "--jobs", str(a.jobs), "--out", str(work / "study"), "--no-progress"]
    for name, path in sources.items():
        cmd += ["--synthetic", f"{name}={path}"]
    if "aug" not in arms:
        cmd.append("--no-augment-arm")
    cmd += ["--steps", str(a.steps)] if a.steps else (["--epochs", str(a.epochs)] if a.epochs else [])
    for flag in ("arch", "batch_size", "lr", "patience", "monitor"):
        value = getattr(a, flag)
        if value is not None:
            cmd += ["--" + flag.replace("_", "-"), str(value)]
    for arg in a.model_arg or []:
        cmd += ["--model-arg", arg]
    if "finetune" in arms and a.init:
        lr = f",lr={a.ft_lr}" if a.ft_lr else ""
        cmd += ["--arm", f"ft:init={a.init}{lr}"]
        if "gan" in sources:
            cmd += [x for k in ratios for x in ("--arm", f"ft-gan{k}:init={a.init},source=gan,k={k}{lr}")]
    return cmd


def compare(study: Path, ratios: list[str], out: Path, title: str = "study") -> str:
    """compare.md and compare.png: the claims of the issue as paired 95% intervals over (fold, seed)."""
    from ferkit.experiments import compare_settings, format_ci
    from ferkit.files import new_figure, save_figure, write_text

    with open(study / "runs.csv", newline="") as fh:
        runs = [r for r in csv.DictReader(fh) if r.get("accuracy")]
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    labels = {r["setting"]: r["label"] for r in runs}

    def mean(s: str) -> float:
        return float(np.mean([float(r["accuracy"]) for r in runs if r["setting"] == s]))

    def line(a: str, b: str) -> list[str]:
        d, lo, hi, method = compare_settings(runs, a, b)
        verdict = "–" if math.isnan(lo) else ("yes" if lo > 0 else "no (worse)" if hi < 0 else "no (CI holds 0)")
        n = len({(r["fold"], r["seed"]) for r in runs if r["setting"] == a})
        return [f"{labels[a]}", f"{labels[b]}", format_ci(d, lo, hi), verdict, f"{n} ({method})"]

    pairs = [(s, "k0") for s in settings if s != "k0"]
    for k in ratios:
        gan = f"k{k}-gan"
        if gan in settings:
            pairs += [(gan, b) for b in ("aug", f"k{k}-fer2013", f"k{k}-procedural") if b in settings]
        if f"ft-gan{k}" in settings and "ft" in settings:
            pairs.append((f"ft-gan{k}", "ft"))
    rows = [line(a, b) for a, b in pairs]
    head = ["arm", "against", "Δ accuracy [95% CI]", "better?", "pairs (fold, seed)"]
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]
    means = ["", "| setting | accuracy (mean over folds and seeds) |", "|---|---|"]
    means += [f"| {labels[s]} | {mean(s):.4f} |" for s in settings]
    text = "\n".join(md + means) + "\n"
    write_text(out / "compare.md", text)

    fig = new_figure(figsize=(7.5, 0.35 * len(settings) + 1.6))
    ax = fig.subplots()
    others = [s for s in settings if s != "k0"]
    diffs = [compare_settings(runs, s, "k0") for s in others]
    y = np.arange(len(others))[::-1]
    d = np.asarray([x[0] for x in diffs])
    err = np.asarray([[x[0] - x[1], x[2] - x[0]] for x in diffs]).T
    ax.errorbar(d, y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_yticks(y, [labels[s] for s in others], fontsize=8)
    ax.set_xlabel(f"accuracy − real only ({mean('k0'):.3f}), 95% CI paired by (fold, seed)")
    ax.set_title(f"{title}: each arm against real only", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, out / "compare.png", dpi=110)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="lab dataset: class folders, manifest CSV or .tar.gz (extracted under /tmp/ferkit-data)")
    ap.add_argument("--generator", default=None,
                    help="GAN run folder, generator checkpoint or bundled generator name (without: no GAN arms)")
    ap.add_argument("--folds", default="5", help="K subject-disjoint folds, or a group,fold CSV (default 5)")
    ap.add_argument("--group-by", default=r"^(S\d+)_", help=r"person of a file: regex or manifest column "
                                                             r"(default ^(S\d+)_)")
    ap.add_argument("--fold-seed", type=int, default=0)
    ap.add_argument("--classes", default=CLASSES, help=f"default {CLASSES} (no contempt)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ratios", default="1,2,5", help="k values of the generated/added arms (default 1,2,5)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"which arms (default all: {','.join(ARMS)})")
    ap.add_argument("--init", default="fer2013-vgg", help="the classifier the finetune arms start from")
    ap.add_argument("--ft-lr", type=float, default=None, help="learning rate of the finetune arms (default: the "
                                                              "recipe's)")
    ap.add_argument("--fer2013", default=None, help="FER2013 train folder (default: the shared archive, extracted)")
    ap.add_argument("--recipe", default="fer2013")
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=None, help="instead of --epochs: about N SGD steps per run")
    for flag in ("--arch", "--batch-size", "--lr", "--patience", "--monitor"):
        ap.add_argument(flag, default=None)
    ap.add_argument("--model-arg", action="append", default=None)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--work", default="/tmp/ferkit-bench/ckplus-study")
    ap.add_argument("--print-commands", action="store_true", help="print the ferkit commands; run nothing")
    a = ap.parse_args()
    a.arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    if not set(a.arms) <= set(ARMS) or not a.arms:
        sys.exit(f"--arms: choose among {','.join(ARMS)}")
    if "gan" in a.arms and not a.generator:
        print("note: no --generator given: the GAN arms are left out", file=sys.stderr)
        a.arms = [x for x in a.arms if x != "gan"]
    if a.epochs and a.steps:
        sys.exit("give --epochs or --steps, not both")
    try:
        ratios = [f"{float(r):g}" for r in a.ratios.split(",") if r.strip()]   # as the study names its arms
        if not ratios or min(float(r) for r in ratios) <= 0:
            raise ValueError
    except ValueError:
        sys.exit(f"--ratios: positive numbers, e.g. 1,2,5 (got {a.ratios})")

    from ferkit.errors import FerkitError
    from ferkit.experiments.folds import describe, load_folds, write_fold_plan

    t0 = time.time()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = extract(Path(a.data))
    from ferkit.labels import parse_classes

    classes = parse_classes(a.classes)
    try:   # the study's own split, written where the edits can read each fold's training faces
        dataset, plan = load_folds(data, a.folds, a.group_by, classes, a.image_size, a.fold_seed)
    except FerkitError as exc:
        sys.exit(f"error: {exc}")
    folds = write_fold_plan(work / "folds", dataset, plan)
    print("\n".join(describe(plan, dataset)), flush=True)
    per_class, distinct = pool_size(folds, [float(r) for r in ratios])
    if "gan" in a.arms and per_class > distinct:
        print(f"note: the largest k needs {per_class} edits of a class, but a fold's training part has only "
              f"{distinct} faces of the other classes to edit into it: some edits repeat a face (a deterministic "
              "generator then writes identical images)", flush=True)
    ferkit = [sys.executable, "-m", "ferkit"]
    steps: list[tuple[list[str], Path]] = []
    sources: dict[str, str] = {}
    faces = work / "faces"   # folders named by their size: another --ratios makes new ones
    gan_dir = faces / f"gan-{per_class}"
    if "gan" in a.arms:
        for i, paths in folds.items():
            old = stale_edits(gan_dir / f"fold{i}", a.generator)
            if old:
                sys.exit(f"{gan_dir / f'fold{i}'} holds edits by another generator ({old}); use another --work")
            steps.append((["synth", "edit", a.generator, "--source", str(paths["train"]), "--out",
                           str(gan_dir / f"fold{i}"), "--per-class", str(per_class),
                           "--classes", a.classes, "--no-progress"], gan_dir / f"fold{i}" / "metadata.csv"))
        sources["gan"] = str(gan_dir / "fold{fold}")
    if "fer2013" in a.arms:
        root = Path(a.fer2013) if a.fer2013 else (fer2013_dir() or sys.exit("FER2013 archive not found")) / "train"
        sources["fer2013"] = str(fer2013_pool(root, faces / f"fer2013-{per_class}.csv", per_class, classes))
    if "procedural" in a.arms:
        steps.append((["synth", "faces", "--out", str(faces / f"procedural-{per_class}"), "--per-class",
                       str(per_class), "--size", str(a.image_size), "--classes", a.classes, "--no-progress"],
                      faces / f"procedural-{per_class}" / "metadata.csv"))
        sources["procedural"] = str(faces / f"procedural-{per_class}")
    if not sources:   # the study needs one generated-data source even when only real/aug/finetune run
        steps.append((["synth", "faces", "--out", str(faces / "procedural-10"), "--per-class", "10",
                       "--size", str(a.image_size), "--classes", a.classes, "--no-progress"],
                      faces / "procedural-10" / "metadata.csv"))
        sources["procedural"] = str(faces / "procedural-10")
        study_ratios = []
    else:
        study_ratios = ratios
    b = argparse.Namespace(**{**vars(a), "ratios": ",".join(study_ratios)})
    steps.append((study_command(b, data, work, sources), work / "study" / "summary.md"))
    for args, done in steps:
        line = "ferkit " + shlex.join(args)
        if a.print_commands:
            print(line)
            continue
        if done.exists() and args[0] != "study":
            print(f"done already: {line}", flush=True)
            continue
        print(f"running: {line}", flush=True)
        subprocess.run([*ferkit, *args], check=True)
    if a.print_commands:
        return
    if (work / "folds" / "groups.csv").read_text() != (work / "study" / "folds" / "groups.csv").read_text():
        sys.exit(f"the study split {data} differently from {work / 'folds'}: the edits were made for another split")
    if "gan" in a.arms:
        n = sum(check_edits(gan_dir / f"fold{i}", paths) for i, paths in folds.items())
        print(f"checked: all {n} GAN edits come from their own fold's training faces")
    print(compare(work / "study", study_ratios, work, f"{data.name}, {plan.k} folds, {a.seeds} seed(s)"))
    minutes = (time.time() - t0) / 60
    print(f"results: {work / 'study'} (table.md, accuracy_vs_k.png), {work / 'compare.md'}, {work / 'compare.png'}")
    print(f"wall time {minutes:.1f} min on {machine()}")


if __name__ == "__main__":
    main()
