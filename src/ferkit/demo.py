"""The built-in demo: generate faces, train the `seed` CNN, evaluate it on unseen identities, then
read a real photo with the default bundled model.

    ferkit demo                      # writes ./demo (data/, run/, run/eval-test/, photo/)

Runs in a few minutes on a 2-core CPU and needs nothing but ferkit: the data comes from
:mod:`ferkit.synth` with identity-disjoint train / validation / test splits. Re-running reuses
the generated data and a finished (or resumes an interrupted) training run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .console import log
from .files import make_dir, write_json
from .labels import REFERENCE_CLASSES


@dataclass
class DemoConfig:
    out: str = "demo"
    per_class: int = 150      # training faces per class; validation gets a quarter, test half
    epochs: int = 12
    patience: int = 3
    image_size: int = 64
    batch_size: int = 32
    lr: float = 3e-4
    seed: int = 0
    arch: str = "seed"
    progress: bool = True

    def data_identity(self) -> dict:
        return {"per_class": self.per_class, "image_size": self.image_size, "seed": self.seed,
                "classes": list(REFERENCE_CLASSES)}


def _prepare_data(cfg: DemoConfig, overwrite: bool) -> Path:
    from .synth import generate_splits

    data_dir = Path(cfg.out) / "data"
    stamp = Path(cfg.out) / "data.json"
    if data_dir.exists() and not overwrite and stamp.exists() and json.loads(stamp.read_text()) == cfg.data_identity():
        log(f"reusing generated faces in {data_dir}")
        return data_dir
    sizes = {"train": cfg.per_class, "val": max(cfg.per_class // 4, 5), "test": max(cfg.per_class // 2, 10)}
    log(f"generating faces: {', '.join(f'{k} {v}/class' for k, v in sizes.items())}, identity-disjoint splits")
    generate_splits(data_dir, sizes, classes=list(REFERENCE_CLASSES), size=cfg.image_size, seed=cfg.seed,
                    overwrite=True, progress=cfg.progress)
    write_json(stamp, cfg.data_identity())
    return data_dir


def run_demo(cfg: DemoConfig, overwrite: bool = False) -> dict:
    """Generate data, train, evaluate; returns the summary that is also written to ``<out>/demo.json``."""
    from .evaluate import evaluate
    from .train import TrainConfig, train

    t0 = time.time()
    out = Path(cfg.out)
    make_dir(out, "demo folder")
    data_dir = _prepare_data(cfg, overwrite)
    t_data = time.time() - t0
    run_dir = out / "run"
    tcfg = TrainConfig(train_dir=str(data_dir / "train"), val_dir=str(data_dir / "val"), out=str(run_dir),
                       arch=cfg.arch, image_size=cfg.image_size, classes=REFERENCE_CLASSES, epochs=cfg.epochs,
                       batch_size=cfg.batch_size, lr=cfg.lr, patience=cfg.patience, seed=cfg.seed,
                       progress=cfg.progress)
    fresh = overwrite or not (run_dir / "summary.json").exists()
    if fresh:
        result = train(tcfg, overwrite=True)
        best_epoch, epochs_run = result.best_epoch, result.epochs_run
    else:
        log(f"reusing finished training run {run_dir} (pass --overwrite to retrain)")
        s = json.loads((run_dir / "summary.json").read_text())
        best_epoch, epochs_run = s["best_epoch"], s["epochs_run"]
    t_train = time.time() - t0 - t_data
    ev = evaluate(run_dir, data_dir / "test", run_dir / "eval-test", progress=cfg.progress)
    summary = {"config": asdict(cfg), "test_accuracy": ev.accuracy, "test_macro_f1": ev.macro_f1,
               "test_images": ev.n, "best_epoch": best_epoch, "epochs_run": epochs_run,
               "seconds": {"data": round(t_data, 1), "train": round(t_train, 1), "total": round(time.time() - t0, 1)},
               "paths": {"data": str(data_dir), "run": str(run_dir), "curves": str(run_dir / "curves.png"),
                         "checkpoint": str(run_dir / "best.safetensors"), "reports": str(ev.out_dir),
                         "confusion_matrix": str(ev.out_dir / "confusion_matrix.png")}}
    summary["photo"] = _bundled_on_photo(out / "photo", cfg.progress)
    if summary["photo"]:
        summary["paths"]["photo"] = summary["photo"]["annotated"]
    write_json(out / "demo.json", summary)
    return summary


def demo_text(summary: dict) -> str:
    """The lines ``ferkit demo`` prints about a summary from :func:`run_demo`."""
    s, paths = summary, summary["paths"]
    lines = [f"demo finished in {s['seconds']['total']:.0f}s "
             f"(data {s['seconds']['data']:.0f}s, training {s['seconds']['train']:.0f}s)"]
    lines += [f"  {key:17s} {paths[key]}" for key in ("data", "checkpoint", "curves", "reports", "confusion_matrix",
                                                       "photo") if key in paths]
    lines.append(f"test accuracy on unseen identities: {s['test_accuracy']:.4f} (macro-F1 {s['test_macro_f1']:.4f}, "
                 f"{s['test_images']} faces, chance {1 / len(REFERENCE_CLASSES):.3f})")
    if s.get("photo"):
        read = ", ".join(f"{f['label']} {f['confidence']:.2f}" for f in s["photo"]["faces"]) or "no face found"
        lines.append(f"bundled {s['photo']['model']} model on a real photo ({Path(s['photo']['photo']).name}, "
                     f"matplotlib's sample): {read}")
    lines.append(f"accuracy: {s['test_accuracy']:.4f}")
    return "\n".join(lines)


def _bundled_on_photo(out: Path, progress: bool) -> dict | None:
    """The default bundled model on a real photo that ships with matplotlib: what a new user gets
    without training anything. None when this installation lacks the bundled weights."""
    from .bundled import BUNDLED, DEFAULT_MODEL, sample_photo
    from .predict import predict_inputs

    if not BUNDLED[DEFAULT_MODEL].path.is_file():
        log("note: no bundled model in this installation; skipping the real-photo step")
        return None
    photo = sample_photo()
    predict_inputs(None, [str(photo)], out, annotate=True, progress=progress)
    import csv

    with open(out / "predictions.csv", newline="") as fh:
        faces = [dict(label=r["label"], confidence=float(r["confidence"])) for r in csv.DictReader(fh)]
    return {"photo": str(photo), "model": DEFAULT_MODEL, "faces": faces,
            "annotated": str(out / "annotated" / photo.name), "predictions": str(out / "predictions.csv")}
