"""PublicTest accuracy per epoch and per hour of training: the fer2013 recipe against the seed CNN.

    .venv/bin/python benchmarks/plot_accuracy_hours.py RUN [RUN ...] --out docs/fer2013-accuracy-vs-hours.png \
        [--fp32-seconds LABEL=SECONDS ...]

RUN is a run folder (its history.csv); its label is the folder name. The hours axis is each
run's recorded training time (history.csv `seconds`, summed), and, for runs given with
--fp32-seconds, also epochs x that many seconds per epoch (an fp32 epoch time measured by
benchmarks/bench_train.py on the same machine), drawn dashed.

The seed CNN's curve is the seven-class reference run of an earlier session (its run folder is
not kept): validation accuracy per epoch as the README reports it, and 560 s per epoch, that
run's mean idle epoch time on the project's AMD EPYC machine (fp32).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

# README, "Accuracy of the `seed` CNN on FER2013", seven classes: validation accuracy per epoch.
SEED7_VAL_ACC = [0.369, 0.418, 0.465, 0.467, 0.481, 0.506, 0.508, 0.520, 0.521, 0.534, 0.536, 0.538, 0.546,
                 0.547, 0.558, 0.562, 0.563, 0.563, 0.565, 0.566]
SEED7_EPOCH_SECONDS = 560.0


def read_history(run: Path) -> tuple[list[float], list[float]]:
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [float(r["val_acc"]) for r in rows], [float(r["seconds"]) for r in rows]


def cumulative_hours(seconds: list[float]) -> list[float]:
    out, total = [], 0.0
    for s in seconds:
        total += s
        out.append(total / 3600)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fp32-seconds", action="append", default=[], metavar="LABEL=SECONDS")
    ap.add_argument("--target", type=float, default=0.68)
    a = ap.parse_args()
    fp32 = {k: float(v) for k, v in (x.split("=") for x in a.fp32_seconds)}

    from ferkit.files import new_figure, save_figure

    fig = new_figure(figsize=(12, 4.6))
    by_epoch, by_hour = fig.subplots(1, 2)
    seed_hours = [(i + 1) * SEED7_EPOCH_SECONDS / 3600 for i in range(len(SEED7_VAL_ACC))]
    epochs = range(1, len(SEED7_VAL_ACC) + 1)
    by_epoch.plot(epochs, SEED7_VAL_ACC, "o-", ms=3, color="gray", label="seed CNN, reference recipe")
    by_hour.plot(seed_hours, SEED7_VAL_ACC, "o-", ms=3, color="gray",
                 label="seed, reference recipe (AMD EPYC, fp32, 560 s/epoch)")
    for run in a.runs:
        acc, secs = read_history(run)
        line = by_epoch.plot(range(1, len(acc) + 1), acc, "o-", ms=3, label=run.name)[0]
        by_hour.plot(cumulative_hours(secs), acc, "o-", ms=3, color=line.get_color(),
                     label=f"{run.name} (recorded)")
        if run.name in fp32:
            by_hour.plot([(i + 1) * fp32[run.name] / 3600 for i in range(len(acc))], acc, "--",
                         color=line.get_color(), label=f"{run.name}, fp32 ({fp32[run.name]:.0f} s/epoch)")
    for ax, xlabel in ((by_epoch, "epoch"), (by_hour, "hours of training")):
        ax.axhline(a.target, color="red", lw=0.8, ls=":", label=f"target {a.target:.2f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("PublicTest accuracy (seven classes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    by_hour.axvline(4, color="red", lw=0.8, ls=":")
    fig.suptitle("FER2013, seven classes: validation (PublicTest) accuracy while training")
    fig.tight_layout()
    save_figure(fig, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
