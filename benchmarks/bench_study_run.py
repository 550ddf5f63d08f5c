"""What the small runs of the CK+ grouped study cost, and where the time goes.

Runs ``ferkit study --folds 5`` on the shared CK+ sample as ``bench_ckplus_study.py`` sets it up
(six classes, ``^(S\\d+)_``, the ``fer2013`` recipe at 48 px, real + k x procedural faces), but
trains only three of its runs, in one process as the study does: fold 1's real only (348 faces;
the first run of a process also pays for the imports), fold 1's real + 1 x procedural faces
(twice that), and fold 2's real only (351 faces). For each run it prints the seconds of training
and of the test evaluation, and a breakdown (training batches, validation, checkpoints, resume
state, history, curves, evaluation reports). ``--json`` keeps every run's metrics and history, to
check that a change leaves the results bit-identical; ``--profile`` writes cProfile statistics.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_study_run.py --epochs 5 \\
        [--arch tiny | --width 16] [--json /tmp/runs.json] [--profile /tmp/runs.prof]
"""
from __future__ import annotations

import argparse
import cProfile
import csv
import functools
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_ckplus_study import CLASSES, DEFAULT_DATA, extract  # noqa: E402
from common import machine  # noqa: E402

RUNS = ("f1_nall_k0_s0", "f1_nall_k1_s0", "f2_nall_k0_s0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--arch", default=None, help="default: the recipe's (vgg, width 48)")
    ap.add_argument("--width", type=int, default=None, help="the vgg's width (default: the recipe's, 48)")
    ap.add_argument("--work", default="/tmp/ferkit-bench/study-run")
    ap.add_argument("--profile", default=None, help="write cProfile statistics of the whole call here")
    ap.add_argument("--json", default=None, help="write each run's metrics, history and timings here")
    a = ap.parse_args()

    from ferkit import evaluate as evaluate_mod
    from ferkit.experiments import StudyConfig, run_study
    from ferkit.experiments import study as study_mod
    from ferkit.synth import generate_faces
    from ferkit.train import loop, run_folder

    work = Path(a.work)
    data = extract(DEFAULT_DATA)
    proc = work / "procedural-120"
    if not (proc / "metadata.csv").exists():
        generate_faces(proc, 120, CLASSES.split(","), size=48, progress=False)
    out = work / f"study-{a.arch or 'recipe'}{a.width or ''}-e{a.epochs}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = StudyConfig(real=str(data), folds=5, group_by=r"^(S\d+)_", classes=CLASSES, image_size=48,
                      synthetic=[f"procedural={proc}"], ratios="0,1", seeds=1, recipe="fer2013", epochs=a.epochs,
                      arch=a.arch, train_options={"model_args": {"width": a.width}} if a.width else {},
                      augment_arm=False, synthetic_arm=False, out=str(out), progress=False)

    # timers around the pieces of a run (wrapped where the study looks them up)
    spent: dict[str, float] = defaultdict(float)
    spent_cpu: dict[str, float] = defaultdict(float)

    def timer(owner, name, key):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapped(*args, **kw):
            t, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kw)
            finally:
                spent[key] += time.perf_counter() - t
                spent_cpu[key] += time.process_time() - cpu
        setattr(owner, name, wrapped)

    timer(loop.Trainer, "train_one_epoch", "training batches")
    timer(loop.Trainer, "validate", "validation")
    timer(loop, "_build_trainer", "model + optimiser")
    timer(run_folder.RunFolder, "save_checkpoint", "checkpoints")
    timer(run_folder.RunFolder, "save_state", "resume state")
    timer(loop.Trainer, "state_tensors", "resume state")
    timer(run_folder.RunFolder, "write_history", "history.csv")
    timer(run_folder.RunFolder, "plot_curves", "curves.png")
    timer(evaluate_mod, "evaluate", "test evaluation")
    if hasattr(evaluate_mod, "_write_outputs"):
        timer(evaluate_mod, "_write_outputs", "  of which reports")
    timer(loop, "train", "train()")

    per_run: dict[str, dict] = {}
    execute = study_mod._execute

    def timed(job, *args, **kw):
        spent.clear()
        spent_cpu.clear()
        t, cpu = time.perf_counter(), time.process_time()
        r = execute(job, *args, **kw)
        per_run[job["run_id"]] = {"run": time.perf_counter() - t, "cpu": time.process_time() - cpu, **spent,
                                  **{f"cpu {k}": v for k, v in spent_cpu.items()}}
        return r

    study_mod._execute = timed
    study_mod.shard_runs = lambda ids, shard: set(RUNS)      # the three runs only
    prof = cProfile.Profile() if a.profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    run_study(cfg)
    if prof:
        prof.disable()
        prof.dump_stats(a.profile)
    total = time.perf_counter() - t0
    report = {}
    for run_id, t in per_run.items():
        run = out / "runs" / run_id
        with open(run / "history.csv", newline="") as fh:
            history = list(csv.DictReader(fh))
        metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        other = t["train()"] - sum(t.get(k, 0.0) for k in ("training batches", "validation", "model + optimiser",
                                                           "checkpoints", "resume state", "history.csv",
                                                           "curves.png"))
        print(f"{run_id} ({len(history)} epochs): run {t['run']:.1f} s ({t['cpu']:.1f} s of CPU) = train() "
              f"{t['train()']:.1f} s + test evaluation {t.get('test evaluation', 0):.1f} s; "
              f"accuracy {metrics['accuracy']:.4f}")
        other_cpu = t["cpu train()"] - sum(t.get(f"cpu {k}", 0.0) for k in (
            "training batches", "validation", "model + optimiser", "checkpoints", "resume state", "history.csv",
            "curves.png"))
        print(f"    {'(seconds)':20s} {'wall':>7s} {'CPU':>7s}")
        for k, v in t.items():
            if k not in ("run", "cpu", "train()") and not k.startswith("cpu "):
                print(f"    {k:20s} {v:7.2f} {t.get('cpu ' + k, 0.0):7.2f}")
        print(f"    {'other in train()':20s} {other:7.2f} {other_cpu:7.2f}")
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
