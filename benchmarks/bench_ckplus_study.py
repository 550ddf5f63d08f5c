"""The paper's experiment with open data: does a generator trained on wild faces help a small dataset?

A small grouped dataset (default: the 71-subject CK+ sample, six classes, no contempt; ``--data``
with ``--group-by`` and ``--classes`` takes any other, e.g. SFEW's films) is split into
group-disjoint folds (``ferkit study --folds``); for every fold and seed a classifier is trained
on the fold's training groups with

- real only; real + classic augmentation;
- real + oversampling of the rare classes (``--oversample CLASS=N,...``: arm ``over``);
- real + k x GAN edits (``gan<k>``): the generator (``--generator``, e.g. one trained on FER2013's
  train split) edits *that fold's training faces* into the other expressions (``ferkit synth edit
  GENERATOR --source <fold>/train.csv``), so no test or validation group reaches training through
  an edit; a generator that lacks one of the classes (the bundled editor knows no neutral) edits
  the faces of its classes and adds edits of those classes only (``only=``);
- real + k x edits + oversampling (``gan<k>+over``, k the smallest of ``--ratios``; with ``--oversample``);
- real + k x FER2013 real faces (``fer<k>``; the large wild dataset added directly: other domain, other people);
- real + k x procedural faces (``proc<k>``, ``ferkit synth faces``; k from ``--procedural-ratios``);
- fine-tuning a classifier (``--init``, default the bundled fer2013-vgg): ``ft-<arm>``, the same
  data and settings as an arm named in ``--finetune-arms`` (default ``real,gan``: ``ft`` and
  ``ft-gan<k>``) but starting from that model;

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
        [--data DIR --group-by REGEX --classes A,B,...] [--oversample disgusted=5,fearful=5]
        [--finetune-arms real,aug,over,gan,gan+over,procedural]
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
#: the arm name of each generated-data source: gan2 is real + 2x GAN edits, fer1, proc5 ...
SHORT = {"gan": "gan", "fer2013": "fer", "procedural": "proc"}
ARMS = ("real", "aug", "over", "gan", "gan+over", "fer2013", "procedural", "finetune")


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


def arm_specs(a, sources: dict[str, str], gan_only: tuple[str, ...] = ()) -> dict[str, str]:
    """The study's named arms, ``{name: spec}`` (``ferkit study --arm NAME:SPEC``): oversampling, each
    source at each k (``gan_only``: the classes the generator makes, when it lacks some), edits +
    oversampling at the smallest k, and a fine-tuned twin ``ft-<name>`` of each arm ``--finetune-arms``
    names (``ft`` for real only, ``ft-aug`` for augmentation)."""
    chosen = set(a.arms)
    ratios = [r for r in a.ratios.split(",") if r.strip()]
    specs: dict[str, str] = {}
    kinds: dict[str, str] = {"real": "real", "aug": "aug"}   # arm name -> the --arms entry it belongs to
    over = f"oversample={a.oversample}" if a.oversample else ""
    if over and "over" in chosen:
        specs["over"], kinds["over"] = over, "over"
    only = f",only={','.join(gan_only)}" if gan_only else ""
    for src in (x for x in sources if x in chosen):
        for k in (ratios if src != "procedural" else a.procedural_ratios.split(",")):
            name = f"{SHORT[src]}{k}"
            specs[name], kinds[name] = f"source={src},k={k}" + (only if src == "gan" else ""), src
    if over and "gan" in sources and "gan+over" in chosen:
        k = min(ratios, key=float)
        specs[f"gan{k}+over"], kinds[f"gan{k}+over"] = f"source=gan,k={k}{only},{over}", "gan+over"
    if "finetune" in chosen and a.init:
        extra = f",lr={a.ft_lr}" if a.ft_lr else ""
        extra += f",seeds={a.seeds}" if a.scratch_seeds not in (None, a.seeds) else ""   # more seeds than the study
        twins = {name: spec for name, spec in [("real", ""), ("aug", "augment"), *specs.items()]
                 if kinds[name] in a.finetune_arms and (name == "real" or kinds[name] in chosen)}
        specs.update({("ft" if name == "real" else f"ft-{name}"): ",".join(x for x in (f"init={a.init}", spec) if x)
                      + extra for name, spec in twins.items()})
    return specs


def study_command(a, data: Path, work: Path, sources: dict[str, str], gan_only: tuple[str, ...] = ()) -> list[str]:
    arms = set(a.arms)
    cmd = ["study", "--real", str(data), "--folds", str(a.folds), "--group-by", a.group_by,
           "--fold-seed", str(a.fold_seed), "--classes", a.classes, "--image-size", str(a.image_size),
           "--ratios", "0", "--seeds", str(a.scratch_seeds or a.seeds), "--no-synthetic-arm",
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
    for name, spec in arm_specs(a, sources, gan_only).items():
        cmd += ["--arm", f"{name}:{spec}"]
    return cmd


def baselines(setting: str, settings) -> list[str]:
    """The settings a generated-data arm is compared with besides real only: edits against
    augmentation, FER2013 faces and procedural faces at the same k; edits + oversampling against
    oversampling and edits alone; a fine-tuned arm against fine-tuning alone, the same twins and the
    arm trained from scratch."""
    import re

    m = re.fullmatch(r"(ft-)?(gan|fer|proc)([0-9.]+)(\+over)?", setting)
    ft = (m.group(1) or "") if m else ("ft-" if setting.startswith("ft-") else "")
    found = ["ft"] if ft else []
    if m and m.group(4):
        found += [f"{ft}over", f"{ft}{m.group(2)}{m.group(3)}"]
    elif m:
        found += [f"{ft}aug"] + [f"{ft}{src}{m.group(3)}" for src in ("gan", "fer", "proc")]
    if ft:
        found.append(setting[3:])   # the same data from scratch
    return [b for b in found if b in settings and b != setting]


def read_runs(studies) -> list[dict]:
    """The finished runs of one or more study folders of the same split (``study`` column: the run's
    folder). A run in several folders (the same run id: the same data, settings and seed) must have
    the same accuracy in each, as the runs are deterministic; it is counted once."""
    runs: dict[str, dict] = {}
    for study in map(Path, studies):
        with open(study / "runs.csv", newline="") as fh:
            for r in csv.DictReader(fh):
                if not r.get("accuracy"):
                    continue
                first = runs.setdefault(r["run_id"], {**r, "study": str(study)})
                if abs(float(first["accuracy"]) - float(r["accuracy"])) > 1e-9:
                    sys.exit(f"{r['run_id']}: accuracy {r['accuracy']} in {study}, {first['accuracy']} in "
                             f"{first['study']}: not the same run; compare studies of the same split and settings")
    return list(runs.values())


def compare(study: Path, out: Path, title: str = "study", also=()) -> str:
    """compare.md and compare.png: the claims of the issue as paired 95% intervals over (fold, seed),
    over the runs of ``study`` and the study folders ``also`` (the same split, other arms)."""
    from ferkit.experiments import compare_settings, format_ci
    from ferkit.files import new_figure, save_figure, write_text

    runs = read_runs([study, *also])
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    labels = {r["setting"]: r["label"] for r in runs}

    def mean(s: str) -> float:
        return float(np.mean([float(r["accuracy"]) for r in runs if r["setting"] == s]))

    def line(a: str, b: str) -> list[str]:
        d, lo, hi, method = compare_settings(runs, a, b)
        f1 = compare_settings(runs, a, b, metric="macro_f1")
        verdict = "–" if math.isnan(lo) else ("yes" if lo > 0 else "no (worse)" if hi < 0 else "no (CI holds 0)")
        n = len(set.intersection(*({(r["fold"], r["seed"]) for r in runs if r["setting"] == s} for s in (a, b))))
        return [f"`{a}`", f"`{b}`", format_ci(d, lo, hi), format_ci(*f1[:3]), verdict, f"{n} ({method})"]

    pairs = [(s, "k0") for s in settings if s != "k0"]
    for s in settings:   # each pair once (procedural against edits, not also edits against procedural)
        pairs += [(s, b) for b in baselines(s, settings) if (b, s) not in pairs]
    rows = [line(a, b) for a, b in pairs]
    head = ["arm", "against", "Δ accuracy [95% CI]", "Δ macro-F1 [95% CI]", "accuracy better?", "pairs (fold, seed)"]
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]
    means = ["", "| setting | what | accuracy (mean over folds and seeds) |", "|---|---|---|"]
    means += [f"| `{s}` | {labels[s].split(': ', 1)[-1]} | {mean(s):.4f} |" for s in settings]
    text = "\n".join(md + means) + "\n"
    write_text(out / "compare.md", text)

    # each arm against real only; where there are fine-tuned arms, those against fine-tuning alone instead
    tuned = [s for s in settings if s.startswith("ft-")] if "ft" in settings else []
    panels = [("k0", [s for s in settings if s != "k0" and s not in tuned], "real only")]
    if tuned:
        panels.append(("ft", tuned, "fine-tuning alone"))
    fig = new_figure(figsize=(7.5 * len(panels), 0.35 * len(panels[0][1]) + 1.9))
    for ax, (base, others, word) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        diffs = [compare_settings(runs, s, base) for s in others]
        y = np.arange(len(others))[::-1]
        d = np.asarray([x[0] for x in diffs])
        err = np.asarray([[x[0] - x[1], x[2] - x[0]] for x in diffs]).T
        ax.errorbar(d, y, xerr=np.nan_to_num(err), fmt="o", capsize=3)
        ax.axvline(0, color="0.3", lw=0.8)
        names = [labels[s] if len(labels[s]) <= 40 else s for s in others]   # a long label: the arm's name
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlabel(f"accuracy − {word} ({mean(base):.3f}), 95% CI paired by (fold, seed)")
        ax.set_title(f"{title}: each arm against {word}", fontsize=10)
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
    ap.add_argument("--scratch-seeds", type=int, default=None, help="seeds of the arms trained from scratch (default "
                                                                    "--seeds; the fine-tuned arms keep --seeds)")
    ap.add_argument("--ratios", default="1,2,5", help="k values of the GAN and FER2013 arms (default 1,2,5)")
    ap.add_argument("--pool-k", type=float, default=None,
                    help="make the GAN and FER2013 pools for k up to this (default the largest of --ratios), so a "
                         "later rerun with a larger k finds the same faces and resumes the same study")
    ap.add_argument("--procedural-ratios", default=None, help="k values of the procedural arms (default: --ratios)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"which arms (default all: {','.join(ARMS)}; "
                                                                   "over and gan+over need --oversample)")
    ap.add_argument("--oversample", default=None, help="the rare classes' oversampling of the over and gan+over arms, "
                                                       "as `ferkit train --oversample` (e.g. disgusted=5,fearful=5)")
    ap.add_argument("--finetune-arms", default="real,gan", help="the arms the finetune arm also runs fine-tuned "
                                                                "(default real,gan: ft and ft-gan<k>)")
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
    ap.add_argument("--also", action="append", default=[], metavar="STUDY",
                    help="another study folder of the same split (e.g. a previous --work's study/) whose runs join "
                         "compare.md and rare-table.md; runs in both must agree")
    ap.add_argument("--print-commands", action="store_true", help="print the ferkit commands; run nothing")
    a = ap.parse_args()
    a.arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    a.finetune_arms = [x.strip() for x in a.finetune_arms.split(",") if x.strip()]
    if not set(a.arms) <= set(ARMS) or not a.arms or not set(a.finetune_arms) <= set(ARMS):
        sys.exit(f"--arms, --finetune-arms: choose among {','.join(ARMS)}")
    if {"gan", "gan+over"} & set(a.arms) and not a.generator:
        print("note: no --generator given: the GAN arms are left out", file=sys.stderr)
        a.arms = [x for x in a.arms if x not in ("gan", "gan+over")]
    if {"over", "gan+over"} & set(a.arms) and not a.oversample:
        a.arms = [x for x in a.arms if x not in ("over", "gan+over")]   # no --oversample: no oversampling arms
    a.procedural_ratios = a.procedural_ratios or a.ratios
    if a.epochs and a.steps:
        sys.exit("give --epochs or --steps, not both")
    for flag in ("ratios", "procedural_ratios"):
        try:
            ks = [f"{float(r):g}" for r in getattr(a, flag).split(",") if r.strip()]   # as arms are named
            if not ks or min(float(r) for r in ks) <= 0:
                raise ValueError
        except ValueError:
            sys.exit(f"--{flag.replace('_', '-')}: positive numbers, e.g. 1,2,5 (got {getattr(a, flag)})")
        setattr(a, flag, ",".join(ks))
    ratios = a.ratios.split(",")

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
    per_class, distinct = pool_size(folds, [float(r) for r in ratios] + ([a.pool_k] if a.pool_k else []))
    procedural = pool_size(folds, [float(r) for r in a.procedural_ratios.split(",")])[0]
    use_gan = bool({"gan", "gan+over"} & set(a.arms))
    gan_only = ()
    if use_gan:   # a generator without one of the classes edits the faces of its own classes into them
        from ferkit.synth.gan import load_generator

        known = load_generator(a.generator, "cpu")[1].classes
        gan_only = tuple(c for c in classes if c in known) if any(c not in known for c in classes) else ()
    if use_gan and per_class > distinct:
        print(f"note: the largest k needs {per_class} edits of a class, but a fold's training part has only "
              f"{distinct} faces of the other classes to edit into it: some edits repeat a face (a deterministic "
              "generator then writes identical images)", flush=True)
    ferkit = [sys.executable, "-m", "ferkit"]
    steps: list[tuple[list[str], Path]] = []
    sources: dict[str, str] = {}
    faces = work / "faces"   # folders named by their size: another --ratios makes new ones
    gan_dir = faces / f"gan-{per_class}"
    if use_gan:
        made = ",".join(gan_only) or a.classes
        for i, paths in folds.items():
            old = stale_edits(gan_dir / f"fold{i}", a.generator)
            if old:
                sys.exit(f"{gan_dir / f'fold{i}'} holds edits by another generator ({old}); use another --work")
            steps.append((["synth", "edit", a.generator, "--source", str(paths["train"]), "--out",
                           str(gan_dir / f"fold{i}"), "--per-class", str(per_class), "--classes", made,
                           *(["--from-classes", made] if gan_only else []), "--no-progress"],
                          gan_dir / f"fold{i}" / "metadata.csv"))
        sources["gan"] = str(gan_dir / "fold{fold}")
    if "fer2013" in a.arms:
        root = Path(a.fer2013) if a.fer2013 else (fer2013_dir() or sys.exit("FER2013 archive not found")) / "train"
        sources["fer2013"] = str(fer2013_pool(root, faces / f"fer2013-{per_class}.csv", per_class, classes))
    if "procedural" in a.arms:
        steps.append((["synth", "faces", "--out", str(faces / f"procedural-{procedural}"), "--per-class",
                       str(procedural), "--size", str(a.image_size), "--classes", a.classes, "--no-progress"],
                      faces / f"procedural-{procedural}" / "metadata.csv"))
        sources["procedural"] = str(faces / f"procedural-{procedural}")
    steps.append((study_command(a, data, work, sources, gan_only), work / "study" / "summary.md"))
    for args, done in steps:
        line = "ferkit " + shlex.join(args)
        if a.print_commands:
            print(line)
            continue
        if done.exists() and args[0] != "study":
            print(f"done already: {line}", flush=True)
            continue
        print(f"running: {line}", flush=True)
        proc = subprocess.run([*ferkit, *args])
        if proc.returncode:      # ferkit said why in one line above
            raise SystemExit(f"bench_ckplus_study: ferkit {args[0]} failed (exit {proc.returncode})")
    if a.print_commands:
        return
    if (work / "folds" / "groups.csv").read_text() != (work / "study" / "folds" / "groups.csv").read_text():
        sys.exit(f"the study split {data} differently from {work / 'folds'}: the edits were made for another split")
    if use_gan:
        n = sum(check_edits(gan_dir / f"fold{i}", paths) for i, paths in folds.items())
        print(f"checked: all {n} GAN edits come from their own fold's training faces")
    print(compare(work / "study", work, f"{data.name}, {plan.k} folds", a.also))
    if a.oversample:   # the rare classes' recalls, per arm
        from bench_rare_classes import rare_table

        rare = [part.split("=")[0].strip() for part in a.oversample.split(",")]
        print(rare_table(work / "study", rare, work / "rare-table.md", a.also))
    minutes = (time.time() - t0) / 60
    print(f"results: {work / 'study'} (table.md, accuracy_vs_k.png), {work / 'compare.md'}, {work / 'compare.png'}")
    print(f"wall time {minutes:.1f} min on {machine()}")


if __name__ == "__main__":
    main()
