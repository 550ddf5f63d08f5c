"""One process against two (torchrun, gloo) on this CPU: wall time per epoch and validation accuracy.

    .venv/bin/python benchmarks/bench_ddp.py [--train-limit 6400] [--epochs 3] [--width 16]

Both runs train the fer2013 recipe (a narrower VGG, to keep it short) on the same FER2013 images
with the same seed; the single process uses every core, each of the two processes half of them.
Prints the per-epoch seconds and validation accuracy of both. FER2013 comes from ../shared/data.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import fer2013_dir, machine  # noqa: E402


def history(run: Path) -> list[dict]:
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-limit", type=int, default=6400)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--work", default=str(Path.home() / "ferkit-bench" / "ddp"))
    a = ap.parse_args()
    root = fer2013_dir()
    if root is None:
        sys.exit("FER2013 archive not found")
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count() or 1
    args = ["train", "--recipe", "fer2013", "--model-arg", f"width={a.width}", "--train-dir", str(root / "train"),
            "--val-dir", str(root / "validation"), "--classes", "all7", "--epochs", str(a.epochs),
            "--train-limit", str(a.train_limit), "--no-progress"]
    print("machine:", machine())
    one = [sys.executable, "-m", "ferkit", *args, "--out", str(work / "one")]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "ferkit", *args,
           "--out", str(work / "two")]
    for name, cmd, threads in (("1 process", one, cores), ("2 processes (gloo)", two, max(1, cores // 2))):
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                       stdout=subprocess.DEVNULL)
        h = history(work / ("one" if cmd is one else "two"))
        secs = ", ".join(f"{float(r['seconds']):.1f}" for r in h)
        accs = ", ".join(f"{float(r['val_acc']):.4f}" for r in h)
        print(f"{name}, {threads} thread(s) each: seconds per epoch {secs}; validation accuracy per epoch {accs}")
    print("command: " + " ".join(one[1:]) + "  (and the same under torch.distributed.run --nproc-per-node 2)")


if __name__ == "__main__":
    main()
