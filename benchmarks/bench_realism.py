"""Controls for ``gan evaluate``'s real-vs-edit test: what else than the expression edit does it see?

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_realism.py --real /tmp/ferkit-data/ckplus48-dev \\
        --real /tmp/ferkit-data/sfew-train --real /tmp/ferkit-data/fer2013/validation \\
        --classes angry,disgusted,fearful,happy,sad,surprised --per-class 100

Per domain (each ``--real``), the two-sample AUC and the high-frequency energy ratio of
(a) the generator's edits, as ``ferkit gan evaluate`` measures them (same plan, same seed);
(b) the same edits after a JPEG round trip at ``--jpeg`` quality (FER2013's faces are JPEGs: does
    the test only see missing compression?);
(c) the faces "edited" to their own expression, G(x, y): the generator's fingerprint without an
    expression change;
(d) the real faces against their own JPEG round trip: the test's sensitivity to compression alone.
``--residual SIGMA:GAIN,...`` adds, per domain, edits made as x + GAIN * blur_SIGMA(G(x, c) - G(x, y)):
the expression change without the generator's own rendering of the face (SIGMA 0: no blur), each
with its AUC, HF ratio and the target read / source kept by ``--judge`` (default ``ferplus-vgg16``,
as the generator docs' table): where does the judge's "target read" live? The same table has the
edits and G(x, y) (whose "source kept" is the judge's accuracy on the generator's own rendering).
``--judge-folds WORK`` adds a second judge that never saw FER2013's pixels: the fold models of a
``bench_domains.py folds`` work folder (e.g. trained on CK+ dev and SFEW train only, folds by subject
and film), each edit read by the fold model that never saw its source face (faces outside those folds,
such as FER2013's, by fold i mod K), beside that judge's reading of the real faces themselves.
Prints markdown tables; writes nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from ferkit.runtime import select_device  # noqa: E402
from ferkit.synth.gan import generate, load_generator, open_classifier  # noqa: E402
from ferkit.synth.quality import load_real_faces, plan_domain_edits, predict_columns  # noqa: E402
from ferkit.synth.realism import paired_realism  # noqa: E402


def jpeg(faces: np.ndarray, quality: int) -> np.ndarray:
    import cv2
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                  cv2.IMREAD_GRAYSCALE) for f in faces])


def residual_edits(x: np.ndarray, edited: np.ndarray, own: np.ndarray, sigma: float, gain: float) -> np.ndarray:
    """x + gain * (G(x, c) - G(x, y)), the difference blurred by a Gaussian of ``sigma`` px (0: none)."""
    import cv2
    diff = edited.astype(np.float32) - own.astype(np.float32)
    if sigma > 0:
        diff = np.stack([cv2.GaussianBlur(d, (0, 0), sigma) for d in diff])
    return np.clip(x.astype(np.float32) + gain * diff, 0, 255).round().astype(np.uint8)


class FoldJudges:
    """The fold models of a ``bench_domains.py folds`` work folder as one judge: each face is read by the
    fold model that never saw its source file (``fold_of_path.json``); other faces by fold i mod K."""

    def __init__(self, work: Path, classes, checkpoint: str, dev):
        work = Path(work).expanduser()
        index = work / "fold_of_path.json"
        if not index.is_file():
            sys.exit(f"bench_realism: --judge-folds {work}: no fold_of_path.json (run bench_domains.py folds there)")
        self.fold_of = json.loads(index.read_text())
        runs = sorted((r for r in work.glob("fold[0-9]*") if r.name[4:].isdigit()), key=lambda r: int(r.name[4:]))
        if not runs:
            sys.exit(f"bench_realism: --judge-folds {work}: no fold0, fold1, ... run folders in it")
        self.judges = [open_classifier(r / checkpoint, classes, "--judge-folds", dev) for r in runs]
        self.dev = dev

    def folds(self, paths: list[str]) -> np.ndarray:
        return np.asarray([self.fold_of.get(str(Path(p).resolve()), i % len(self.judges))
                           for i, p in enumerate(paths)])

    def read(self, faces: np.ndarray, fold: np.ndarray) -> np.ndarray:
        pred = np.full(len(faces), -1)
        for k, (clf, crec, _, columns, _) in enumerate(self.judges):
            if (fold == k).any():
                pred[fold == k] = predict_columns(clf, faces[fold == k], crec.input, self.dev, columns)
        return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="fer2013-editor", help="GAN run, checkpoint or bundled name")
    ap.add_argument("--real", action="append", required=True, help="real faces of one domain (repeat)")
    ap.add_argument("--classes", default=None, help="classes of --real to use")
    ap.add_argument("--per-class", type=int, default=100, help="edits into each class per domain (default 100)")
    ap.add_argument("--jpeg", type=int, default=75, help="JPEG quality of the round trips (default 75)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--residual", default=None, metavar="SIGMA:GAIN,...",
                    help="also residual edits x + GAIN * blur_SIGMA(G(x,c) - G(x,y)), e.g. 0:1,1:1,1:2")
    ap.add_argument("--judge", default="ferplus-vgg16", help="classifier reading the residual edits' expression")
    ap.add_argument("--judge-folds", metavar="WORK", help="also read the edits with the fold models of this "
                    "bench_domains.py folds folder, each edit by the fold that never saw its source face")
    ap.add_argument("--judge-checkpoint", default="last.safetensors", help="which checkpoint of each fold run")
    a = ap.parse_args()
    try:
        residual = [tuple(float(x) for x in v.split(":")) for v in (a.residual or "").split(",") if v.strip()]
        if any(len(r) != 2 or r[0] < 0 for r in residual):
            raise ValueError
    except ValueError:
        sys.exit(f"bench_realism: --residual {a.residual!r}: give SIGMA:GAIN pairs, SIGMA >= 0 (e.g. 0:1,1:2)")
    print(machine())
    dev = select_device("cpu")
    G, grec, _ = load_generator(a.generator, dev)
    real = load_real_faces(a.real, grec, a.classes, progress=False)
    plan = plan_domain_edits(real, grec, a.per_class, a.seed)
    src = np.concatenate(list(plan.values()))
    targets = np.concatenate([np.full(len(v), t) for t, v in plan.items()])
    edited = generate(G, grec, real.images[src], targets, dev)
    own = generate(G, grec, real.images[src], real.labels[src], dev)
    print(f"\n| domain | (a) edits AUC | HF ratio | (b) edits, JPEG {a.jpeg} AUC | HF ratio | (c) G(x, own class) AUC "
          f"| HF ratio | (d) real vs real JPEG {a.jpeg} AUC | HF ratio |\n|---|---|---|---|---|---|---|---|---|")
    for d, name in enumerate(real.names):
        sel = real.domain[src] == d
        rows = [paired_realism(real.images, src[sel], faces[sel], seed=a.seed)
                for faces in (edited, jpeg(edited, a.jpeg), own, jpeg(real.images[src], a.jpeg))]
        cells = [f"{r['auc']['mean']:.3f} ± {r['auc']['std']:.3f} | {r['hf_ratio']:.3f}" for r in rows]
        print(f"| {name} ({rows[0]['pairs']} faces) | " + " | ".join(cells) + " |")
    if not residual and not a.judge_folds:
        return
    clf, crec, _, columns, _ = open_classifier(a.judge, grec.classes, "--judge", dev)
    folds = FoldJudges(a.judge_folds, grec.classes, a.judge_checkpoint, dev) if a.judge_folds else None
    x = real.images[src]
    # G(x, own class): the generator's rendering without an expression change; its "source kept" is the
    # judge's accuracy on the generator's pictures (does the rendering alone confuse the judge?)
    variants = [("edits", edited), ("G(x, own class)", own)]
    variants += [(f"residual, blur {sg:g}, x{gn:g}", residual_edits(x, edited, own, sg, gn)) for sg, gn in residual]
    if folds is not None:
        fold_all = folds.folds(real.paths)
        right = folds.read(real.images, fold_all) == real.labels
        print("\nfold judges (" + a.judge_folds + ") on the real faces, out of fold: "
              + ", ".join(f"{name} {right[real.domain == d].mean():.3f}" for d, name in enumerate(real.names)))
    extra = " target read (fold judges) | source kept (fold judges) |" if folds is not None else ""
    print(f"\n| domain | faces | AUC | HF ratio | target read ({a.judge}) | source kept |{extra} edit L1 |\n"
          "|---|---|---|---|---|---|" + "---|---|" * (folds is not None) + "---|")
    for d, name in enumerate(real.names):
        sel = real.domain[src] == d
        for vname, faces in variants:
            r = paired_realism(real.images, src[sel], faces[sel], seed=a.seed)
            reads = [predict_columns(clf, faces[sel], crec.input, dev, columns)]
            if folds is not None:
                reads.append(folds.read(faces[sel], fold_all[src[sel]]))
            cells = " | ".join(f"{(p == targets[sel]).mean():.3f} | {(p == real.labels[src][sel]).mean():.3f}"
                               for p in reads)
            l1 = np.abs(faces[sel].astype(float) - x[sel]).mean() / 255
            print(f"| {name} | {vname} | {r['auc']['mean']:.3f} ± {r['auc']['std']:.3f} | {r['hf_ratio']:.2f} | "
                  f"{cells} | {l1:.3f} |")


if __name__ == "__main__":
    main()
