"""A FER+ model against the model issue's targets: FER+ validation (majority protocol, 8 classes)
accuracy, macro-F1, per-class recall, calibration (ECE, NLL), label stability, and two
cross-dataset checks that are never used for selection (FER2013 PublicTest with its original
labels, the CK+ subjects in ../shared/data).

    .venv/bin/python benchmarks/bench_ferplus.py [--model NAME_OR_PATH] [--out FOLDER] [--tta none,flip]

Prints one line per figure (the machine first) and writes every evaluation's reports (confusion
matrix, reliability diagram, predictions) under --out (default ~/ferkit-bench/ferplus-eval).
The archives are extracted once to ~/.cache/ferkit (see common.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_stability import main as stability  # noqa: E402
from common import fer2013_dir, machine, shared_dataset  # noqa: E402

from ferkit.evaluate import evaluate  # noqa: E402
from ferkit.models import open_model  # noqa: E402


def line(name: str, r, classes) -> str:
    recall = ", ".join(f"{c} {r.report[c]['recall']:.2f}" for c in classes if c in r.report)
    return (f"{name} ({r.n} faces, TTA {r.tta}): accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f}, "
            f"ECE {r.ece:.4f}, NLL {r.nll:.4f}; recall: {recall}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="bundled name, run folder or checkpoint (default: the default)")
    ap.add_argument("--out", default=str(Path.home() / "ferkit-bench" / "ferplus-eval"))
    ap.add_argument("--tta", default="none,flip")
    ap.add_argument("--stability-plot", default=None, help="also draw the stability figure here (PNG)")
    a = ap.parse_args()
    print("machine:", machine())
    opened = open_model(a.model, device="cpu", backend="torch")
    path, rec = opened.path, opened.record
    print(f"model: {path} ({path.stat().st_size / 1e6:.2f} MB), {rec.arch} {rec.model_args}, epoch {rec.epoch}, "
          f"temperature {rec.temperature:.4g}, classes {', '.join(rec.classes)}")
    ferplus = shared_dataset("fer2013plus-train-valid.tar.gz", "ferplus")
    if ferplus is None:
        sys.exit("the FER+ archive is not in ../shared/data")
    out = Path(a.out)
    for tta in a.tta.split(","):
        r = evaluate(path, ferplus / "valid", out / f"ferplus-valid-{tta}", tta=tta, progress=False, precision="fp32")
        print(line("FER+ validation, majority protocol", r, rec.classes))
    fer = fer2013_dir()
    if fer is not None:   # cross-dataset checks: reported, never selected on
        r = evaluate(path, fer / "validation", out / "fer2013-publictest", shared_only=True, progress=False,
                     precision="fp32")
        print(line("FER2013 PublicTest, original labels, shared classes", r, r.classes))
    ck = shared_dataset("ckplus48-dev.tar.gz", "ckplus48-dev")
    if ck is not None:
        r = evaluate(path, ck, out / "ckplus", shared_only=True, progress=False, precision="fp32")
        print(line("CK+ (71 subjects, 573 peak frames), shared classes", r, r.classes))
    for tta in a.tta.split(","):
        print(f"label stability on FER+ validation, TTA {tta}:")
        argv = ["--model", str(path), "--data", str(ferplus / "valid"), "--tta", tta,
                "--json", str(out / f"stability-{tta}.json")]
        if a.stability_plot and tta == "none":
            argv += ["--plot", a.stability_plot]
        stability(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
