"""What helps FER+'s rare classes: a class-weighted loss, oversampling, or GAN edits of other faces?

A ``ferkit study`` definition: every arm is a study arm (a data mix plus training settings), so the
study engine plans, runs (resumably, ``--jobs`` at once) and tabulates it. FER+'s majority labels
have 116 disgusted, 120 contemptuous and 536 fearful training faces against 8,733 neutral ones.
Every run trains one CPU-practical recipe (``--recipe fer2013 --arch vgg --model-arg width=W``,
a fixed ``--epochs``, one warm-up epoch, the recipe's augmentation in every arm) on FER+ train
(majority protocol, eight classes); the weights of its *last* epoch are tested on FER+ validation
(``--checkpoint last``: nothing is selected on validation). The arms (``ARMS``):

- ``k0`` (``base``): the majority-protocol training faces;
- ``cw``: ``class_weights`` (the loss weighted by inverse class frequency);
- ``overN``: ``oversample=disgusted=N,fearful=N,contempt=N``: every rare face seen N more times;
- ``ganN``: ``source=gan,k=N,only=disgusted,fearful``: plus N x the class's count of GAN edits for
  the rare classes the generator knows, drawn per seed from ``edits/`` (training faces of the
  generator's other classes edited by ``ferkit synth edit GENERATOR``; the bundled generator knows
  no contempt, so no contemptuous face is added);
- ``ganN+overM``: both.

This script only prepares the edits (``edit-sources.csv``, ``edits/``), runs the ``ferkit study``
command (printed) into ``--work``/``w<W>-e<E>/`` and writes ``rare-table.md`` beside the study's
own table, with the rare classes' recalls from each run's ``eval-test/metrics.json``:

    .venv/bin/python benchmarks/bench_rare_classes.py [--ferplus /tmp/ferkit-data/ferplus] [--seeds 3]
        [--epochs 10] [--width 16] [--arms cw,over5,gan1,gan2,gan5] [--jobs 2] [--work DIR]
    .venv/bin/python benchmarks/bench_rare_classes.py ... --print-commands     # the commands, nothing run
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_ckplus_study import extract, read_runs, stale_edits  # noqa: E402
from common import machine  # noqa: E402

#: FER+'s eight classes in the order of the bundled ferplus models
CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral", "contempt")
RARE = ("disgusted", "fearful", "contempt")
MADE = ("disgusted", "fearful")          # the rare classes the bundled generator can make
#: The arms, as `ferkit study --arm NAME:SPEC` (the real-only arm k0 is the study's own)
ARMS = {"cw": "class_weights", **{f"over{n}": f"oversample={','.join(f'{c}={n}' for c in RARE)}" for n in (1, 2, 5)},
        **{f"gan{n}": f"source=gan,k={n},only={','.join(MADE)}" for n in (1, 2, 5)},
        "gan1+over5": f"source=gan,k=1,only={','.join(MADE)},oversample={','.join(f'{c}=5' for c in RARE)}"}
DEFAULT_ARMS = "cw,over5,gan1,gan2,gan5"
FERKIT = [sys.executable, "-m", "ferkit"]


def ferplus_root(path: Path) -> Path:
    """The folder holding train/label.csv and valid/label.csv (a .tar.gz is extracted once)."""
    root = extract(path)
    if not (root / "train" / "label.csv").is_file():
        found = [p.parent.parent for p in sorted(root.rglob("train/label.csv"))] if root.is_dir() else []
        if not found:
            sys.exit(f"--ferplus {path}: no train/label.csv and valid/label.csv under it")
        root = found[0]
    if not (root / "valid" / "label.csv").is_file():
        sys.exit(f"--ferplus {root}: has train/label.csv but no valid/label.csv")
    return root


def study_command(a, root: Path, arms: list[str], edits: Path | None, out: Path) -> list[str]:
    """The `ferkit study` command of the rare-class table."""
    cmd = ["study", "--real-train", str(root / "train"), "--val", str(root / "valid"), "--test", str(root / "valid"),
           "--classes", ",".join(CLASSES), "--ratios", "0", "--seeds", str(a.seeds), "--no-augment-arm",
           "--no-synthetic-arm", "--recipe", "fer2013", "--arch", "vgg", "--model-arg", f"width={a.width}",
           "--epochs", str(a.epochs), "--warmup-epochs", "1", "--augment", "--checkpoint", "last",
           "--jobs", str(a.jobs), "--out", str(out), "--no-progress"]
    if edits:
        cmd += ["--synthetic", f"gan={edits}"]
    if a.train_limit:
        cmd += ["--train-limit", str(a.train_limit)]
    for arm in arms:
        cmd += ["--arm", f"{arm}:{ARMS[arm]}"]
    return cmd


def edit_command(a, root: Path, work: Path, per_class: int) -> tuple[list[str], Path]:
    """`ferkit synth edit` of the FER+ training faces of the generator's other classes into MADE,
    ``per_class`` each (edit-sources.csv written here once)."""
    from ferkit.data import scan_source
    from ferkit.experiments import write_manifest
    from ferkit.synth.gan import load_generator

    known = load_generator(a.generator, "cpu")[1].classes
    sources = [c for c in CLASSES if c in known and c not in RARE]
    src = scan_source(root / "train", CLASSES, "FER+ train", labels="majority")
    rows = [(str(f), c) for f, c in zip(src.files, src.labels) if c in sources]
    manifest = work / "edit-sources.csv"
    if not manifest.exists() and not a.print_commands:
        write_manifest(manifest, [p for p, _ in rows], [c for _, c in rows], ["ferplus"] * len(rows))
    edits = work / f"edits-{per_class}"
    return ["synth", "edit", a.generator, "--source", str(manifest), "--out", str(edits), "--per-class",
            str(per_class), "--classes", ",".join(MADE), "--no-progress"], edits


def rare_table(out: Path, rare=RARE, dest: Path | None = None, also=()) -> str:
    """rare-table.md (in ``out`` or at ``dest``): per arm the accuracy, macro-F1 and the ``rare``
    classes' recalls (mean ± sd over seeds, and folds in a grouped study), and the differences to the
    real-only arm (95% intervals paired by seed, and fold); an arm ``A+B`` (edits + oversampling) also to
    arm ``B`` when the table has it; ``also``: more study folders of the same split."""
    import numpy as np

    from ferkit.experiments import compare_settings, format_ci
    from ferkit.files import read_json, write_text

    runs = read_runs([out, *also])
    for r in runs:
        m = read_json(Path(r["study"]) / "runs" / r["run_id"] / "eval-test" / "metrics.json")
        r.update({f"recall_{c}": m["per_class"][c]["recall"] for c in rare})
        r.update(accuracy=float(r["accuracy"]), macro_f1=float(r["macro_f1"]))
    metrics = ["accuracy", "macro_f1"] + [f"recall_{c}" for c in rare]
    head = ["arm", "faces (added; mean of runs)", "runs"] + metrics
    head += [f"Δ {m} vs k0 [95% CI]" for m in ("accuracy", "macro-F1")]
    arms = list(dict.fromkeys(r["setting"] for r in runs))
    within = {arm: arm.split("+", 1)[1] for arm in arms if "+" in arm and arm.split("+", 1)[1] in arms}
    if within:
        head.append("Δ macro-F1 vs the arm without its first part [95% CI]")
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm in arms:
        rs = [r for r in runs if r["setting"] == arm]
        cells = [f"{np.mean([r[m] for r in rs]):.4f} ± {np.std([r[m] for r in rs], ddof=1) if len(rs) > 1 else 0:.4f}"
                 for m in metrics]
        deltas = ["–" if arm == "k0" else format_ci(*compare_settings(runs, arm, "k0", metric=m)[:3])
                  for m in ("accuracy", "macro_f1")]
        if within:
            base = within.get(arm)
            deltas.append(f"vs {base}: " + format_ci(*compare_settings(runs, arm, base, metric="macro_f1")[:3])
                          if base else "–")
        faces = "{:.0f} ({:.0f})".format(*(np.mean([float(r[k]) for r in rs]) for k in ("n_train", "n_synthetic")))
        md.append("| " + " | ".join([arm, faces, str(len(rs)), *cells, *deltas]) + " |")
    text = "\n".join(md) + "\n"
    write_text(dest or out / "rare-table.md", text)
    rare_plot(runs, arms, metrics, (dest or out / "rare-table.md").with_name("rare-classes.png"))
    return text


def rare_plot(runs: list[dict], arms: list[str], metrics: list[str], path: Path) -> Path:
    """rare-classes.png beside rare-table.md: per arm, macro-F1 and each rare class's recall (mean
    over seeds, bars; each seed, dots)."""
    import numpy as np

    from ferkit.files import new_figure, save_figure

    shown = metrics[1:]                     # macro-F1 and the recalls (accuracy barely moves)
    fig = new_figure(figsize=(1.6 + 1.5 * len(shown), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    for j, arm in enumerate(arms):
        x = np.arange(len(shown)) + (j - (len(arms) - 1) / 2) * width
        per_seed = np.array([[r[m] for m in shown] for r in runs if r["setting"] == arm])
        ax.bar(x, per_seed.mean(0), width, label=f"{arm} ({len(per_seed)} runs)")
        for row in per_seed:
            ax.plot(x, row, "k.", markersize=3)
    ax.set_xticks(np.arange(len(shown)), [m.replace("recall_", "recall ").replace("_", "-") for m in shown])
    ax.set_ylim(0, 1)
    ax.set_ylabel("FER+ validation")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ferplus", default="/tmp/ferkit-data/ferplus",
                    help="FER+ folder with train/ and valid/ (each images + label.csv), or its .tar.gz")
    ap.add_argument("--generator", default="fer2013-editor",
                    help="GAN run folder, generator checkpoint or bundled generator name (default fer2013-editor)")
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"among {', '.join(ARMS)} (default {DEFAULT_ARMS})")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every run; the last one is tested")
    ap.add_argument("--width", type=int, default=16, help="vgg width (default 16)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2)")
    ap.add_argument("--train-limit", type=int, default=None, help="images per epoch (quick checks; default all)")
    ap.add_argument("--work", default=str(Path.home() / "ferkit-bench" / "rare-classes"))
    ap.add_argument("--print-commands", action="store_true", help="print the ferkit commands; run nothing")
    a = ap.parse_args()
    arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = [x for x in arms if x not in ARMS]
    if unknown or not arms:
        sys.exit(f"--arms: {', '.join(unknown) or 'none given'}: choose among {', '.join(ARMS)}")
    t0 = time.time()
    work = Path(a.work).expanduser().resolve()
    root = ferplus_root(Path(a.ferplus))
    work.mkdir(parents=True, exist_ok=True)
    edits = None
    ks = [float(ARMS[x].split("k=")[1].split(",")[0]) for x in arms if "source=gan" in ARMS[x]]
    if ks:   # enough edits per class for the largest k: k x the commonest rare class the generator makes
        from ferkit.data import scan_source

        labels = scan_source(root / "train", CLASSES, "FER+ train", labels="majority").labels
        edit, edits = edit_command(a, root, work, int(max(ks) * max(labels.count(c) for c in MADE)))
        if a.print_commands:
            print("ferkit " + shlex.join(edit))
        elif (edits / "metadata.csv").exists():
            if stale_edits(edits, a.generator):
                sys.exit(f"{edits} holds edits by another generator; use another --work")
        elif subprocess.run([*FERKIT, *edit]).returncode:
            sys.exit("ferkit synth edit failed (above); fix and rerun")
    out = work / (f"w{a.width}-e{a.epochs}" + (f"-limit{a.train_limit}" if a.train_limit else ""))
    study = study_command(a, root, arms, edits, out)
    print("ferkit " + shlex.join(study), flush=True)
    if a.print_commands:
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // a.jobs))}
    if subprocess.run([*FERKIT, *study], env=env).returncode:
        sys.exit("ferkit study failed (above); rerun the same command to resume")
    print(rare_table(out))
    print(f"wall time {(time.time() - t0) / 60:.1f} min on {machine()}")


if __name__ == "__main__":
    main()
