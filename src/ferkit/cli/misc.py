"""`ferkit models` and `ferkit demo`."""
from __future__ import annotations

from .options import config_from_args, positive_int, random_seed


# ----------------------------------------------------------------------------- models
def add_models(sub):
    p = sub.add_parser("models", help="list the architectures and the bundled pretrained models",
                       description="Registered architectures (for `ferkit train --arch`, with their arguments "
                                   "for --model-arg) and the models bundled inside ferkit (for `ferkit predict`, "
                                   "`ferkit evaluate` and Recognizer.load()). Nothing is downloaded.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_models)


def _cmd_models(a) -> int:
    import json

    from ..models import list_models_info, models_text

    info = list_models_info()
    print(json.dumps(info, indent=2) if a.json else models_text(info))
    return 0


# ----------------------------------------------------------------------------- demo
def add_demo(sub):
    from ..demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser("demo", help="built-in demo: generate faces, train the seed CNN, evaluate, read a photo",
                       description="Generate identity-disjoint train/val/test faces with `ferkit synth`, train "
                                   "the reference (seed) CNN, evaluate it on the test identities, then apply the "
                                   "default bundled model to a real photo (matplotlib's sample portrait). A few "
                                   "minutes on a 2-core CPU. Writes <out>/data, <out>/run (checkpoint, curves), "
                                   "<out>/run/eval-test (report, confusion matrix, predictions), <out>/photo "
                                   "(predictions.csv, annotated/) and "
                                   "<out>/demo.json. Re-running reuses data and a finished run.")
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--per-class", type=positive_int, default=d.per_class,
                   help=f"training faces per class; val gets 1/4, test 1/2 (default {d.per_class})")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"maximum epochs (default {d.epochs})")
    p.add_argument("--arch", default=d.arch, help=f"architecture (default {d.arch})")
    p.add_argument("--seed", type=random_seed, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="regenerate data and retrain")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a) -> int:
    from ..demo import DemoConfig, demo_text, run_demo

    s = run_demo(config_from_args(DemoConfig, a, progress=not a.no_progress), overwrite=a.overwrite)
    print(demo_text(s))
    return 0
