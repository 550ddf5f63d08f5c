"""The reference implementation's interface, on ferkit.

Accepts every flag of the original ``main.py`` with its meaning, so its README commands run
unchanged::

    python main.py --mode="train" --train_dir="./train" --val_dir="./validation" --model_save_dir="./model" \
        --result_save_dir="./result" --num_train=600 --num_val=60 --batch_size=16 --num_epoch=50 \
        --image_size=64 --cnum=6 --stop_patient=5
    python main.py --mode="test" --test_dir="./test" --CM_name="test" --model_save_dir="./model" \
        --result_save_dir="./result" --cnum=6 --image_size=64

Differences, all fixes: test mode uses the best weights by validation loss (the reference used the
last epoch's), scales test images like training images, reads every image format (not only
.jpg), takes labels from folder names, and batches predictions. model_save_dir becomes a ferkit
run folder (best.safetensors, last.safetensors, history.csv, ...); result_save_dir receives
``plot.png`` and ``confusion_matrix_<CM_name>.jpg`` as before.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

try:
    import ferkit  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from ferkit.cli import OneLineErrorParser, report_errors
from ferkit.console import log
from ferkit.errors import FerkitError
from ferkit.files import atomic_path, make_dir
from ferkit.labels import EXPRESSIONS, REFERENCE_CLASSES


def _bool(text: str) -> bool:
    return str(text).strip().lower() in ("1", "true", "yes", "y", "on")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description="Reference-compatible entry point (train/test) backed by ferkit.")
    p.add_argument("--mode", default="train", help="train | test (display is not implemented, as in the reference)")
    p.add_argument("--train_dir", default="./data/train", help="training class folders")
    p.add_argument("--val_dir", default="./data/val", help="validation class folders")
    p.add_argument("--test_dir", default="./data/test", help="test class folders")
    p.add_argument("--num_train", type=int, default=28000, help="training images used per epoch")
    p.add_argument("--num_val", type=int, default=7000, help="validation images used")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--num_epoch", type=int, default=50)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--cnum", type=int, default=7, help="number of classes")
    p.add_argument("--save_fig", default="True", help="save plot.png (True/False)")
    p.add_argument("--model_save_dir", default="./emotion_detection/model")
    p.add_argument("--result_save_dir", default="./emotion_detection/result")
    p.add_argument("--stop_patient", type=int, default=5, help="early-stopping patience; 0 disables")
    p.add_argument("--CM_name", default="CM", help="confusion matrix saved as confusion_matrix_<CM_name>.jpg")
    return p


def _classes_for(train_dir: str, cnum: int) -> tuple[str, ...]:
    """The reference indexed every class folder; choose ``cnum`` classes from what is there."""
    from ferkit.data import scan_source

    found = scan_source(train_dir, None, "training data").found_classes
    if len(found) == cnum:
        return tuple(found)
    for candidate in (REFERENCE_CLASSES, EXPRESSIONS[:7]):
        if len(candidate) == cnum and all(c in found for c in candidate):
            return candidate
    raise FerkitError(f"--cnum={cnum} but {train_dir} has {len(found)} class folders ({', '.join(found)})")


def train_mode(a) -> None:
    from ferkit.train import TrainConfig, train

    cfg = TrainConfig(train_dir=a.train_dir, val_dir=a.val_dir, out=a.model_save_dir,
                      classes=_classes_for(a.train_dir, a.cnum), epochs=a.num_epoch, batch_size=a.batch_size,
                      image_size=a.image_size, patience=max(a.stop_patient, 0),
                      train_limit=a.num_train if a.num_train > 0 else None,
                      val_limit=a.num_val if a.num_val > 0 else None)
    out = make_dir(a.result_save_dir, "result_save_dir") if _bool(a.save_fig) else None  # checked before training
    # The reference overwrote its model files; an interrupted run is resumed instead.
    result = train(cfg, overwrite=(Path(a.model_save_dir) / "summary.json").exists())
    if out is not None:
        with atomic_path(out / "plot.png") as tmp:
            shutil.copyfile(result.run_dir / "curves.png", tmp)
        log(f"saved {out / 'plot.png'}")
    print(f"best epoch {result.best_epoch}: val_loss {result.best_val_loss:.4f}, val_acc {result.best_val_acc:.4f}")
    print(f"model saved in {result.run_dir}")


def test_mode(a) -> None:
    from ferkit.evaluate import evaluate
    from ferkit.models import read_checkpoint_record

    record = read_checkpoint_record(a.model_save_dir)
    if len(record.classes) != a.cnum:
        log(f"note: --cnum={a.cnum} but the model has {len(record.classes)} classes; using the model's")
    if record.image_size != a.image_size:
        log(f"note: --image_size={a.image_size} but the model was trained at {record.image_size}; using the model's")
    out = make_dir(a.result_save_dir, "result_save_dir")
    r = evaluate(a.model_save_dir, a.test_dir, out / f"eval_{a.CM_name}",
                 cm_path=out / f"confusion_matrix_{a.CM_name}.jpg")
    print(f"Test accuracy is:{r.accuracy}")
    print(r.report_text)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    modes = {"train": train_mode, "test": test_mode}

    def run_mode():
        if a.mode not in modes:
            raise FerkitError(f"--mode={a.mode!r} is not supported (use train or test)")
        modes[a.mode](a)
    return report_errors(run_mode, prog="main.py")


if __name__ == "__main__":
    sys.exit(main())
