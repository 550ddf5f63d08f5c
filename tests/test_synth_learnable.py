"""The generated faces are learnable across identities, and expression intensity sets the difficulty.

A small version of benchmarks/bench_synth_quality.py: four classes, 60 faces per class, the
`tiny` CNN at 32x32, tested on identities never seen in training (chance = 0.25).
"""
import pytest

from ferkit.evaluate import evaluate
from ferkit.synth import generate_splits
from ferkit.train import TrainConfig, train

CLASSES = ("angry", "happy", "sad", "surprised")


def _accuracy(root, intensity) -> float:
    generate_splits(root / "data", {"train": 60, "val": 15, "test": 30}, classes=list(CLASSES), size=48, seed=0,
                    intensity=intensity, progress=False)
    cfg = TrainConfig(str(root / "data" / "train"), str(root / "data" / "val"), str(root / "run"), arch="tiny",
                      classes=CLASSES, image_size=32, epochs=10, lr=3e-3, batch_size=32, patience=0, progress=False)
    train(cfg)
    return evaluate(root / "run", root / "data" / "test", False, progress=False).accuracy


@pytest.fixture(scope="module")
def accuracies(tmp_path_factory):
    return {name: _accuracy(tmp_path_factory.mktemp(name), intensity)
            for name, intensity in (("default", (0.5, 1.0)), ("low", (0.05, 0.2)))}


def test_learnable_on_unseen_identities(accuracies):
    assert accuracies["default"] >= 0.55  # measured 0.76 on the project machine


def test_low_intensity_is_clearly_harder(accuracies):
    assert accuracies["low"] <= accuracies["default"] - 0.2  # measured 0.28 vs 0.76
