"""Copy a trained run's best checkpoint into the package as a bundled model (fp16 safetensors).

    .venv/bin/python scripts/bundle_model.py ~/ferkit-bench/fer7-vgg48 [--name fer2013-vgg]

Writes src/ferkit/weights/<file> (the name's entry in ferkit.bundled.BUNDLED), keeping the
checkpoint's record (architecture, arguments, classes, input contract, training config, the
selected epoch's validation metrics) and adding where it came from. Nothing else changes: the
model card (docs/model-card.md) is written by hand from `benchmarks/bench_bundled.py`'s output.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ferkit.bundled import BUNDLED, DEFAULT_MODEL, bundled_names
from ferkit.models import load_checkpoint, resolve_checkpoint, save_checkpoint
from ferkit.train.config import RECIPES, TrainConfig

MAX_MB = 8.0


def _non_recipe_epochs(cfg: dict) -> str:
    """' --epochs N' when the run trained for another number of epochs than its recipe's."""
    default = RECIPES.get(cfg.get("recipe"), {}).get("epochs", TrainConfig.epochs)
    return f" --epochs {cfg['epochs']}" if "epochs" in cfg and cfg["epochs"] != default else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="run folder (its best.safetensors) or checkpoint")
    ap.add_argument("--name", default=DEFAULT_MODEL, choices=bundled_names("classifier"),
                    help="a bundled classifier (a generator: scripts/bundle_generator.py)")
    ap.add_argument("--command", default=None,
                    help="the training command(s) to record instead of the one rebuilt from the run's config, "
                         "for a run made in steps (e.g. a finished run continued with a larger --epochs, whose "
                         "cosine schedule then restarted from a higher rate)")
    ap.add_argument("--onnx", action="store_true",
                    help="also write the ONNX export beside the weights (<name>.onnx), which Recognizer.load() "
                         "and every command then run on onnxruntime when it is installed (ferkit[onnx])")
    a = ap.parse_args()
    ckpt = resolve_checkpoint(a.run)
    model, record = load_checkpoint(ckpt)
    cfg = record.train_config
    record.extra["bundled"] = {
        "name": a.name, "source": f"{Path(cfg.get('out', a.run)).name}/{ckpt.name}", "epoch": record.epoch,
        "command": a.command or (f"ferkit train --recipe {cfg.get('recipe')}{_non_recipe_epochs(cfg)} "
                                 f"--train-dir FER2013/train --val-dir FER2013/validation --classes all7 "
                                 f"--out {Path(cfg.get('out', 'run')).name}"),
        "weights": "float16 (computed in float32)"}
    target = BUNDLED[a.name].path
    target.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, target, record, dtype=torch.float16)
    size = target.stat().st_size / 1e6
    print(f"wrote {target} ({size:.2f} MB, epoch {record.epoch}, val {record.val_metrics})")
    if size > MAX_MB:
        print(f"error: {size:.2f} MB is over the {MAX_MB} MB limit for bundled weights", file=sys.stderr)
        target.unlink()
        return 1
    if a.onnx:
        from ferkit.export import export_beside, export_onnx

        side = export_beside(target)
        info = export_onnx(target, side)
        print(f"wrote {side} ({side.stat().st_size / 1e6:.2f} MB; onnxruntime vs PyTorch max |diff| "
              f"{info.get('max_abs_diff', float('nan')):.2e})")
    elif (side := target.with_suffix(".onnx")).exists():
        side.unlink()   # an export of the weights this replaced would no longer match them
        print(f"removed {side} (it was exported from the weights just replaced)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
