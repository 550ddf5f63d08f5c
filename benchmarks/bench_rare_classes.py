"""What helps FER+'s rare classes: a class-weighted loss, oversampling, or GAN edits of other faces?

FER+'s majority labels have 116 disgusted, 120 contemptuous and 536 fearful training faces against
8,733 neutral ones. For every arm and seed, one recipe that is practical on the CPU (``ferkit train
--recipe fer2013 --arch vgg --model-arg width=W``, a fixed ``--epochs``, one warm-up epoch) trains
an eight-class classifier on FER+ train (majority protocol), and the weights of its *last* epoch
are evaluated on FER+ validation (majority protocol; nothing is selected on validation). Arms:

- ``base``: the majority-protocol training faces (``train-majority.csv``);
- ``cw``: the same, with the loss weighted by inverse class frequency (``--class-weights``);
- ``overN``: plus N copies of every rare-class face (repeated manifest rows; the recipe's
  augmentation shows every copy differently);
- ``ganN``: plus N x (the class's count) GAN edits for every rare class the generator knows: the
  training faces of the generator's other classes (FER+ train: angry, happy, sad, surprised),
  edited into disgusted and fearful by ``ferkit synth edit GENERATOR``. The bundled generator knows
  no contempt (nor neutral): the GAN arms add no contemptuous face, which the table says.

Output (under ``--work``, in a folder per recipe setting such as ``w16-e10/``): ``runs.csv`` (arm,
seed, accuracy, macro-F1, recall per class, training minutes), ``table.md`` (mean ± sd over seeds;
Δ macro-F1 and Δ rare recalls against base, 95% intervals paired by seed), ``rare-classes.png``
(macro-F1 and the rare recalls per arm, sd error bars), ``runs/<arm>_s<seed>/`` (the ferkit run
folders), ``evals/<arm>_s<seed>/`` (``ferkit evaluate`` of last.safetensors: metrics.json,
report.txt, predictions.csv, confusion_matrix.png, reliability.png) and ``logs/``. Shared by the
settings: ``train-majority.csv``, ``manifests/<arm>.csv``, ``edit-sources.csv``, ``edits-<n>/``.
Every step is a ferkit command in its own folder: stop and rerun at will (finished runs and
evaluations are skipped, an interrupted training resumes where it stopped).

    .venv/bin/python benchmarks/bench_rare_classes.py [--ferplus /tmp/ferkit-data/ferplus] [--seeds 3]
        [--epochs 10] [--width 16] [--arms base,cw,over5,gan1,gan2,gan5] [--jobs 2] [--work DIR]
    .venv/bin/python benchmarks/bench_rare_classes.py ... --print-commands     # the commands, nothing run
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_ckplus_study import extract, stale_edits  # noqa: E402
from common import machine  # noqa: E402

#: FER+'s eight classes in the order of the bundled ferplus models
CLASSES = ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral", "contempt")
RARE = "disgusted,fearful,contempt"
ARMS = "base,cw,over5,gan1,gan2,gan5"
FERKIT = [sys.executable, "-m", "ferkit"]
_PRINT = threading.Lock()


def say(msg: str) -> None:
    """One whole line at a time from the parallel runs."""
    with _PRINT:
        print(msg, flush=True)


# ----------------------------------------------------------------------------- arms and data
def parse_arms(spec: str) -> list[tuple[str, str, int]]:
    """"base,cw,over5,gan2" -> [(arm, kind, n)]: kind base | cw | over | gan, n the multiple (0 for base/cw)."""
    arms = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        m = re.fullmatch(r"(over|gan)(\d+)", name)
        if name in ("base", "cw"):
            arms.append((name, name, 0))
        elif m and int(m.group(2)) > 0:
            arms.append((name, m.group(1), int(m.group(2))))
        else:
            sys.exit(f"--arms: {name!r} is none of base, cw, overN, ganN (N a positive whole number)")
    if not arms or len({a for a, _, _ in arms}) != len(arms):
        sys.exit(f"--arms: give each arm once, e.g. {ARMS} (got {spec!r})")
    return arms


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


def rows_of(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return [[r["path"], r["class"], r["source"]] for r in csv.DictReader(fh)]


def put_manifest(path: Path, rows: list[list[str]], dry: bool) -> Path:
    """Write ``path,class,source`` rows (once); a manifest of other rows there stops the script, as
    the runs of that --work were trained on it."""
    from ferkit.experiments import write_manifest

    rows = [[os.path.abspath(p), c, s] for p, c, s in rows]
    if dry:
        return path
    if path.exists():
        if rows_of(path) != rows:
            sys.exit(f"{path} lists other faces than this invocation would train on (other --ferplus, --rare or "
                     "generator?); use another --work, or delete it and the runs made from it")
        return path
    return write_manifest(path, *zip(*rows)) if rows else sys.exit(f"{path}: no rows")


def kept_gan_manifest(path: Path, base_rows: list[list[str]], want: dict[str, int], generator: str) -> bool:
    """An existing GAN arm's manifest serves when it is the base rows plus ``want`` edits per class,
    all on disk, made by ``generator`` (from an edit folder an earlier, larger --arms made)."""
    old, base = rows_of(path), [[os.path.abspath(p), c, s] for p, c, s in base_rows]
    extra = old[len(base):]
    counts = {c: sum(1 for r in extra if r[1] == c) for c in want}
    if old[:len(base)] != base or counts != want or len(extra) != sum(want.values()):
        return False
    folders = {Path(p).parent.parent for p, _, _ in extra}
    return all(Path(p).is_file() for p, _, _ in extra) and not any(stale_edits(f, generator) for f in folders)


def generator_classes(generator: str) -> tuple[str, ...]:
    from ferkit.synth.gan import load_generator

    return tuple(load_generator(generator, "cpu")[1].classes)


def edit_folder(work: Path, per_class: int) -> Path:
    """An existing ``edits-<n>`` folder with at least ``per_class`` edits per class (the smallest:
    the arms' manifests keep their rows when --arms changes), else ``edits-<per_class>``."""
    have = sorted((int(m.group(1)), p) for p in work.glob("edits-*")
                  if (m := re.fullmatch(r"edits-(\d+)", p.name)) and (p / "metadata.csv").exists())
    return next((p for n, p in have if n >= per_class), work / f"edits-{per_class}")


def folder_size(edits: Path) -> int:
    return int(edits.name.rsplit("-", 1)[1])


def edit_rows(edits: Path, n_per_class: dict[str, int]) -> list[list[str]]:
    """The first ``n`` edits of every class in metadata.csv (the order `synth edit` drew them in)."""
    with open(edits / "metadata.csv", newline="") as fh:
        meta = list(csv.DictReader(fh))
    rows = []
    for cls, n in n_per_class.items():
        mine = [r for r in meta if r["class"] == cls][:n]
        if len(mine) < n:
            sys.exit(f"{edits} has {len(mine)} edits of {cls}, {n} wanted: delete it and rerun")
        rows += [[str(edits / r["file"]), cls, "gan"] for r in mine]
    return rows


# ----------------------------------------------------------------------------- runs
def setting_name(a) -> str:
    """The folder of one recipe setting: ``w16-e10`` (``-limit5000`` with --train-limit)."""
    return f"w{a.width}-e{a.epochs}" + (f"-limit{a.train_limit}" if a.train_limit else "")


def train_command(a, manifest: Path, valid: Path, arm_kind: str, seed: int, run: Path) -> list[str]:
    cmd = ["train", "--recipe", "fer2013", "--arch", "vgg", "--model-arg", f"width={a.width}",
           "--classes", ",".join(CLASSES), "--train-dir", str(manifest), "--val-dir", str(valid),
           "--epochs", str(a.epochs), "--warmup-epochs", "1", "--seed", str(seed), "--out", str(run),
           "--num-threads", str(a.threads), "--no-progress"]
    if arm_kind == "cw":
        cmd.append("--class-weights")
    if a.train_limit:
        cmd += ["--train-limit", str(a.train_limit)]
    return cmd


def eval_command(run: Path, valid: Path, out: Path) -> list[str]:
    return ["evaluate", str(run / "last.safetensors"), "--test-dir", str(valid), "--out", str(out), "--no-progress"]


def evaluated(run: Path, ev: Path) -> bool:
    """An evaluation of the run's current last epoch exists (a continued run makes it stale)."""
    m, last = ev / "metrics.json", run / "last.safetensors"
    return m.exists() and last.exists() and m.stat().st_mtime >= last.stat().st_mtime


def trained(run: Path, epochs: int) -> bool:
    """The run folder holds a finished run of at least ``epochs`` epochs (a larger --epochs continues it)."""
    from ferkit.files import read_json

    return (run / "summary.json").exists() and int(read_json(run / "summary.json")["epochs_run"]) >= epochs


def do_run(job: dict, threads: int) -> dict:
    """Train (or resume) one arm and seed, then evaluate its last epoch; returns the job with timings/errors."""
    run, ev, log = job["run"], job["eval"], job["log"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    for step, args, done in (("train", job["train"], lambda: trained(run, job["epochs"])),
                             ("evaluate", job["evaluate"], lambda: evaluated(run, ev))):
        if done():
            continue
        t0 = time.time()
        with open(log, "a") as fh:
            fh.write(f"\n$ ferkit {shlex.join(args)}\n")
            fh.flush()
            rc = subprocess.run([*FERKIT, *args], stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        job[f"{step}_wall"] = time.time() - t0
        if rc:
            tail = log.read_text().strip().splitlines()[-1:] or ["?"]
            job["error"] = f"ferkit {step} failed (exit {rc}): {tail[0]} (log: {log})"
            return job
    return job


def read_run(job: dict) -> dict | None:
    """runs.csv's row of a finished job (None when its evaluation is missing)."""
    from ferkit.files import read_json

    if not evaluated(job["run"], job["eval"]):
        return None
    m = read_json(job["eval"] / "metrics.json")
    s = read_json(job["run"] / "summary.json")
    row = {"arm": job["arm"], "seed": job["seed"], "n_train": job["n_train"], "n_added": job["n_added"],
           "epochs": s.get("epochs_run", ""), "train_minutes": round(float(s.get("seconds", 0)) / 60, 2),
           "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    for c in CLASSES:
        row[f"recall_{c}"] = m["per_class"][c]["recall"]
    return row


# ----------------------------------------------------------------------------- report
def write_rows(path: Path, rows: list[dict]) -> None:
    from ferkit.files import atomic_path, csv_writer

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv_writer(fh)
        w.writerow(list(rows[0]))
        w.writerows([list(r.values()) for r in rows])


def mean_sd(vals) -> str:
    v = np.asarray(vals, float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v.mean():.4f}"


def report(rows: list[dict], arms: list[str], rare: list[str], work: Path, notes: list[str], title: str) -> str:
    """table.md and rare-classes.png from runs.csv's rows."""
    from ferkit.experiments import compare_settings, format_ci
    from ferkit.files import new_figure, save_figure, write_text

    runs = [{**r, "setting": r["arm"], "fold": "1"} for r in rows]   # compare_settings pairs by (fold, seed)
    done = [a for a in arms if any(r["arm"] == a for r in rows)]
    metrics = ["macro_f1"] + [f"recall_{c}" for c in rare]
    head = ["arm", "faces (added)", "seeds", "accuracy", "macro-F1"] + [f"recall {c}" for c in rare] + \
           ["train min", "Δ macro-F1 vs base [95% CI]"]
    md = [f"# {title}", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for arm in done:
        rs = [r for r in rows if r["arm"] == arm]
        delta = "–" if arm == "base" else format_ci(*compare_settings(runs, arm, "base", metric="macro_f1")[:3])
        md.append("| " + " | ".join([arm, f"{rs[0]['n_train']} ({rs[0]['n_added']})", str(len(rs)),
                                     mean_sd([r["accuracy"] for r in rs])]
                                    + [mean_sd([r[m] for r in rs]) for m in metrics]
                                    + [f"{np.mean([r['train_minutes'] for r in rs]):.1f}", delta]) + " |")
    if "base" in done and len(done) > 1:
        head2 = ["arm"] + [f"Δ {m.replace('recall_', 'recall ').replace('macro_f1', 'macro-F1')}" for m in metrics]
        md += ["", "Against base, paired by seed (mean difference [95% CI]):", "",
               "| " + " | ".join(head2) + " |", "|---" * len(head2) + "|"]
        for arm in done:
            if arm != "base":
                md.append("| " + " | ".join([arm] + [format_ci(*compare_settings(runs, arm, "base", metric=m)[:3])
                                                     for m in metrics]) + " |")
    md += [""] + [f"- {n}" for n in notes]
    text = "\n".join(md) + "\n"
    write_text(work / "table.md", text)

    fig = new_figure(figsize=(max(6.0, 1.2 * len(done) + 2.5), 4.2))
    ax = fig.subplots()
    x = np.arange(len(done))
    w = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        vals = [np.asarray([r[m] for r in rows if r["arm"] == a], float) for a in done]
        means = [v.mean() for v in vals]
        sds = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]
        ax.bar(x + (j - (len(metrics) - 1) / 2) * w, means, w, yerr=sds, capsize=2,
               label=m.replace("recall_", "recall ").replace("macro_f1", "macro-F1"))
    ax.set_xticks(x, done)
    ax.set_ylim(0, 1.15)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("FER+ validation (majority), mean ± sd over seeds")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=len(metrics), loc="upper center")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    save_figure(fig, work / "rare-classes.png", dpi=110)
    return text


# ----------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--ferplus", default="/tmp/ferkit-data/ferplus",
                    help="FER+ folder with train/ and valid/ (each images + label.csv), or its .tar.gz")
    ap.add_argument("--generator", default="fer2013-editor",
                    help="GAN run folder, generator checkpoint or bundled generator name (default fer2013-editor)")
    ap.add_argument("--arms", default=ARMS, help=f"base, cw, overN, ganN (default {ARMS})")
    ap.add_argument("--rare", default=RARE, help=f"the rare classes (default {RARE})")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--epochs", type=int, default=10, help="epochs of every run; the last one is evaluated")
    ap.add_argument("--width", type=int, default=16, help="vgg width (default 16)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per training (default: cores // jobs, at least 1)")
    ap.add_argument("--train-limit", type=int, default=None, help="images per epoch (quick checks; default all)")
    ap.add_argument("--work", default=str(Path.home() / "ferkit-bench" / "rare-classes"))
    ap.add_argument("--print-commands", action="store_true", help="print the ferkit commands; run nothing")
    a = ap.parse_args()
    arms = parse_arms(a.arms)
    if a.seeds < 1 or a.epochs < 1 or a.width < 1 or a.jobs < 1:
        sys.exit("--seeds, --epochs, --width and --jobs must be positive")
    a.threads = a.threads or max(1, (os.cpu_count() or 1) // a.jobs)
    dry = a.print_commands

    from ferkit.data import scan_source
    from ferkit.errors import FerkitError
    from ferkit.labels import parse_classes

    t0 = time.time()
    work = Path(a.work).expanduser().resolve()
    root = ferplus_root(Path(a.ferplus))
    valid = root / "valid"
    try:
        rare = list(parse_classes(a.rare))
        if not set(rare) <= set(CLASSES):
            raise FerkitError(f"--rare: choose among {', '.join(CLASSES)}")
        src = scan_source(root / "train", CLASSES, "FER+ train", labels="majority")
        gen_classes = generator_classes(a.generator) if any(k == "gan" for _, k, _ in arms) else ()
    except FerkitError as exc:
        sys.exit(f"error: {exc}")
    counts = {c: src.labels.count(c) for c in CLASSES}
    print(f"FER+ train, majority protocol: {len(src.files)} faces: "
          + ", ".join(f"{c} {counts[c]}" for c in sorted(CLASSES, key=counts.get)), flush=True)
    base_rows = [[str(f), c, "ferplus"] for f, c in zip(src.files, src.labels)]
    manifests = {"": put_manifest(work / "train-majority.csv", base_rows, dry)}
    notes = [f"FER+ train (majority protocol, {len(src.files)} faces; rare: "
             + ", ".join(f"{c} {counts[c]}" for c in rare) + f", neutral {counts['neutral']}); vgg width {a.width}, "
             f"recipe fer2013, {a.epochs} epochs (1 warm-up), the last epoch evaluated on FER+ validation "
             "(majority protocol): nothing is selected on validation."]
    added: dict[str, int] = {"base": 0, "cw": 0}
    for arm, kind, n in arms:
        if kind == "over":
            extra = [[p, c, "oversample"] for p, c, _ in base_rows if c in rare] * n
            manifests[arm] = put_manifest(work / "manifests" / f"{arm}.csv", base_rows + extra, dry)
            added[arm] = len(extra)
    notes.append("overN: N more copies of every face of " + ", ".join(rare) + " (augmented as every face is).")

    gan = [(arm, n) for arm, kind, n in arms if kind == "gan"]
    if gan:
        makes = [c for c in rare if c in gen_classes]
        if not makes:
            sys.exit(f"error: the generator {a.generator} knows {', '.join(gen_classes)}: none of the rare classes")
        from_classes = [c for c in CLASSES if c in gen_classes and c not in rare]
        wants = {arm: {c: n * counts[c] for c in makes} for arm, n in gan}
        todo = []            # arms whose manifest is still to write (a kept one may use an older edit folder)
        for arm, want in wants.items():
            path = work / "manifests" / f"{arm}.csv"
            if not dry and path.exists() and kept_gan_manifest(path, base_rows, want, a.generator):
                manifests[arm] = path
            else:
                todo.append(arm)
            added[arm] = sum(want.values())
        per_class = max(max(wants[arm].values()) for arm in todo) if todo else 0
        pool = sum(counts[c] for c in from_classes)
        if todo:
            edits = edit_folder(work, per_class)
            put_manifest(work / "edit-sources.csv", [r for r in base_rows if r[1] in from_classes], dry)
            edit = ["synth", "edit", a.generator, "--source", str(work / "edit-sources.csv"), "--out", str(edits),
                    "--per-class", str(folder_size(edits)), "--classes", ",".join(makes), "--no-progress"]
            if dry:
                print("ferkit " + shlex.join(edit))
            elif (edits / "metadata.csv").exists():
                old = stale_edits(edits, a.generator)
                if old:
                    sys.exit(f"{edits} holds edits by another generator ({old}); use another --work")
                print(f"done already: ferkit {shlex.join(edit)}", flush=True)
            else:
                print(f"running: ferkit {shlex.join(edit)}", flush=True)
                t = time.time()
                if subprocess.run([*FERKIT, *edit]).returncode:
                    sys.exit("ferkit synth edit failed (above); fix and rerun")
                print(f"edits: {time.time() - t:.0f} s", flush=True)
            for arm in todo:
                extra = [] if dry else edit_rows(edits, wants[arm])
                manifests[arm] = put_manifest(work / "manifests" / f"{arm}.csv", base_rows + extra, dry)
        cannot = [c for c in rare if c not in gen_classes]
        notes.append(f"ganN: N x the class's count of edits by {a.generator} for {', '.join(makes)}, edited from "
                     f"FER+ train faces of {', '.join(from_classes)} ({pool} faces"
                     + ("; the largest N edits some twice" if per_class > pool else "") + ")."
                     + (f" The generator knows {', '.join(gen_classes)}: it cannot make {', '.join(cannot)}, so the "
                        f"GAN arms add no {', '.join(cannot)} faces." if cannot else ""))

    out = work / setting_name(a)   # one folder per recipe setting: another --width or --epochs trains anew
    jobs = []
    for seed in range(a.seeds):                  # seed-major: a stopped study still has whole seeds to pair
        for arm, kind, _ in arms:
            manifest = manifests.get(arm, manifests[""])
            name = f"{arm}_s{seed}"
            run, ev = out / "runs" / name, out / "evals" / name
            jobs.append({"arm": arm, "seed": seed, "run": run, "eval": ev, "log": out / "logs" / f"{name}.log",
                         "n_train": len(base_rows) + added[arm], "n_added": added[arm], "epochs": a.epochs,
                         "train": train_command(a, manifest, valid, kind, seed, run),
                         "evaluate": eval_command(run, valid, ev)})
    if dry:
        for j in jobs:
            print(f"ferkit {shlex.join(j['train'])}\nferkit {shlex.join(j['evaluate'])}")
        return
    print(f"{len(jobs)} runs ({len(arms)} arms x {a.seeds} seeds), {a.jobs} at once, {a.threads} thread(s) each; "
          f"logs in {out / 'logs'}", flush=True)

    def one(job: dict) -> dict:
        if trained(job["run"], job["epochs"]) and evaluated(job["run"], job["eval"]):
            say(f"done already: {job['arm']} seed {job['seed']}")
            return job
        say(f"{time.strftime('%H:%M:%S')} start {job['arm']} seed {job['seed']}")
        do_run(job, a.threads)
        times = ", ".join(f"{s} {job[f'{s}_wall'] / 60:.1f} min" for s in ("train", "evaluate")
                          if f"{s}_wall" in job)
        say(f"{time.strftime('%H:%M:%S')} {'FAILED' if 'error' in job else 'done'} {job['arm']} seed "
            f"{job['seed']} ({times or 'nothing run'})" + (f": {job['error']}" if "error" in job else ""))
        return job

    with ThreadPoolExecutor(max_workers=a.jobs) as pool_:
        finished = list(pool_.map(one, jobs))
    rows = [r for r in (read_run(j) for j in finished) if r]
    if rows:
        write_rows(out / "runs.csv", rows)
        title = f"FER+ rare classes: vgg width {a.width}, {a.epochs} epochs, {a.seeds} seed(s)"
        print(report(rows, [arm for arm, _, _ in arms], rare, out, notes, title))
    failed = [j for j in finished if "error" in j]
    print(f"results: {out / 'runs.csv'}, {out / 'table.md'}, {out / 'rare-classes.png'}")
    print(f"wall time {(time.time() - t0) / 60:.1f} min on {machine()}; {a.jobs} job(s) x {a.threads} thread(s)")
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: " + "; ".join(j["error"] for j in failed))


if __name__ == "__main__":
    main()
