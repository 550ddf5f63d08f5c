"""What the small runs of the CK+ grouped study cost, and where the time goes.

Runs ``ferkit study --folds 5`` on the shared CK+ sample as ``bench_ckplus_study.py`` sets it up
(six classes, ``^(S\\d+)_``, the ``fer2013`` recipe at 48 px, real + k x procedural faces), but
trains only three of its runs, in one process as the study does: fold 1's real only (348 faces;
the first run of a process also pays for the imports), fold 1's real + 1 x procedural faces
(twice that), and fold 2's real only (351 faces). For each run it prints the seconds of training
and of the test evaluation, and a breakdown (training batches, validation, checkpoints, resume
state, history; cProfile's cumulative times, so a little inflated). Only public functions: the
study's data, plan and run settings (``load_folds``, ``plan_study``, ``StudyConfig.train_config``)
and the ``train``/``evaluate`` calls ``run_study`` makes. ``--json`` keeps every run's metrics and
history, to check that a change leaves the results bit-identical; ``--profile`` writes cProfile
statistics of the three runs together.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_study_run.py --epochs 5 \\
        [--arch tiny | --width 16] [--json /tmp/runs.json] [--profile /tmp/runs.prof]
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_ckplus_study import CLASSES, DEFAULT_DATA, extract  # noqa: E402
from common import machine  # noqa: E402

RUNS = ("f1_nall_k0_s0", "f1_nall_k1_s0", "f2_nall_k0_s0")
#: Where a run's time goes: (label, qualified name of the function whose cumulative time it is)
PARTS = (("training batches", "Trainer.train_one_epoch"), ("validation", "Trainer.validate"),
         ("model + optimiser", "build_trainer"), ("checkpoints", "RunFolder.save_checkpoint"),
         ("resume state", "RunFolder.save_state"), ("history.csv", "RunFolder.write_history"),
         ("test evaluation", "evaluate"))


def breakdown(prof) -> dict[str, float]:
    """Cumulative seconds of each of PARTS in a profile (cProfile's own bookkeeping included)."""
    import pstats

    stats = pstats.Stats(prof).stats
    out = {}
    for label, name in PARTS:
        cls, _, fn = name.rpartition(".")
        found = [v[3] for (path, _, func), v in stats.items() if func == fn and (not cls or "ferkit" in path)]
        out[label] = max(found, default=0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--arch", default=None, help="default: the recipe's (vgg, width 48)")
    ap.add_argument("--width", type=int, default=None, help="the vgg's width (default: the recipe's, 48)")
    ap.add_argument("--work", default="/tmp/ferkit-bench/study-run")
    ap.add_argument("--profile", default=None, help="write cProfile statistics of the whole call here")
    ap.add_argument("--json", default=None, help="write each run's metrics, history and timings here")
    a = ap.parse_args()

    from ferkit.data import ImageSet, load_dataset
    from ferkit.evaluate import evaluate
    from ferkit.experiments import StudyConfig, load_folds, plan_study, write_fold_plan, write_manifest
    from ferkit.experiments.folds import subset
    from ferkit.synth import generate_faces
    from ferkit.train import train

    work = Path(a.work)
    data = extract(DEFAULT_DATA)
    proc = work / "procedural-120"
    if not (proc / "metadata.csv").exists():
        generate_faces(proc, 120, CLASSES.split(","), size=48, progress=False)
    out = work / f"study-{a.arch or 'recipe'}{a.width or ''}-e{a.epochs}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = StudyConfig(real=str(data), folds=5, group_by='^(S\\d+)_', classes=CLASSES,
                      synthetic=[f"procedural={proc}"], ratios="0,1", seeds=1, recipe="fer2013", augment_arm=False,
                      synthetic_arm=False, out=str(out), progress=False,
                      train=dict(image_size=48, epochs=a.epochs, arch=a.arch,
                                 **({"model_args": {"width": a.width}} if a.width else {})))

    # the study's data and plan, through its public functions; then the three runs as run_study trains
    # them (train on the decoded sets, then evaluate on the fold's test part), each timed and profiled
    faces, plan = load_folds(cfg.real, cfg.folds, cfg.group_by, cfg.classes, cfg.image_size, cfg.fold_seed,
                             cfg.val_fraction, progress=False)
    paths = write_fold_plan(out / "folds", faces, plan)
    pool = load_dataset(proc, faces.classes, cfg.image_size, progress=False, role="procedural faces")
    per_run: dict[str, dict] = {}
    prof = cProfile.Profile() if a.profile else None
    t0 = time.perf_counter()
    for fold in plan.folds:
        real, val, test = (subset(faces, idx) for idx in (fold.train, fold.val, fold.test))
        for spec in plan_study(cfg, real, {"procedural": pool}, fold.index):
            if spec.run_id not in RUNS:
                continue
            synth = pool if spec.arm.source else ImageSet(real.images[:0], real.labels[:0], [], real.classes)
            train_set = ImageSet(np.concatenate([real.images[spec.real_idx], synth.images[spec.synth_idx]]),
                                 np.concatenate([real.labels[spec.real_idx], synth.labels[spec.synth_idx]]),
                                 [real.paths[i] for i in spec.real_idx] + [synth.paths[i] for i in spec.synth_idx],
                                 real.classes)
            manifest = write_manifest(out / "manifests" / f"{spec.run_id}.csv", train_set.paths,
                                      [real.classes[i] for i in train_set.labels], ["study"] * len(train_set))
            run = out / "runs" / spec.run_id
            run_cfg = cfg.train_config(spec.arm, train_dir=str(manifest), val_dir=str(paths[fold.index]["val"]),
                                       out=str(run), classes=real.classes, seed=spec.seed,
                                       epochs=cfg.run_epochs(len(train_set)), progress=False)
            one = cProfile.Profile()
            t, cpu = time.perf_counter(), time.process_time()
            for p in (one, prof):
                if p:
                    p.enable()
            train(run_cfg, data=(train_set, val), keep_state=False, figures=False, state_every=60.0)
            t_train = time.perf_counter() - t
            evaluate(run, str(paths[fold.index]["test"]), out_dir=run / "eval-test", data=test, progress=False,
                     figures=False)
            for p in (one, prof):
                if p:
                    p.disable()
            per_run[spec.run_id] = {"run": time.perf_counter() - t, "cpu": time.process_time() - cpu,
                                    "train()": t_train, **breakdown(one)}
    if prof:
        prof.dump_stats(a.profile)
    total = time.perf_counter() - t0
    report = {}
    for run_id, t in per_run.items():
        run = out / "runs" / run_id
        with open(run / "history.csv", newline="") as fh:
            history = list(csv.DictReader(fh))
        metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        print(f"{run_id} ({len(history)} epochs): run {t['run']:.1f} s ({t['cpu']:.1f} s of CPU) = train() "
              f"{t['train()']:.1f} s + test evaluation {t['run'] - t['train()']:.1f} s; "
              f"accuracy {metrics['accuracy']:.4f}")
        for k, v in t.items():
            if k not in ("run", "cpu", "train()"):
                print(f"    {k:24s} {v:7.2f} s (profiled)")
        report[run_id] = {"seconds": {k: round(v, 3) for k, v in t.items()}, "accuracy": metrics["accuracy"],
                          "macro_f1": metrics["macro_f1"], "nll": metrics["nll"],
                          "confusion": metrics["confusion_matrix"], "best": summary["best_val"],
                          "history": [{k: v for k, v in h.items() if k != "seconds"} for h in history],
                          "files": sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())}
    print(f"whole study call {total:.1f} s; machine: {machine()}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
