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
Prints a markdown table; writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from ferkit.runtime import select_device  # noqa: E402
from ferkit.synth.gan import generate, load_generator  # noqa: E402
from ferkit.synth.quality import load_real_faces, plan_domain_edits  # noqa: E402
from ferkit.synth.realism import paired_realism  # noqa: E402


def jpeg(faces: np.ndarray, quality: int) -> np.ndarray:
    import cv2
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1],
                                  cv2.IMREAD_GRAYSCALE) for f in faces])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="fer2013-editor", help="GAN run, checkpoint or bundled name")
    ap.add_argument("--real", action="append", required=True, help="real faces of one domain (repeat)")
    ap.add_argument("--classes", default=None, help="classes of --real to use")
    ap.add_argument("--per-class", type=int, default=100, help="edits into each class per domain (default 100)")
    ap.add_argument("--jpeg", type=int, default=75, help="JPEG quality of the round trips (default 75)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
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


if __name__ == "__main__":
    main()
