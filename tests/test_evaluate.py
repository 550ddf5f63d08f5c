import csv
import json

import numpy as np
import pytest
from conftest import make_folder

from ferkit.errors import FerkitError
from ferkit.evaluate import evaluate
from ferkit.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ev")
    classes = ["angry", "happy", "sad"]
    tr = make_folder(root / "train", classes, 24, seed=1)
    va = make_folder(root / "val", classes, 8, seed=2)
    make_folder(root / "test", classes, 10, seed=3, ext=".jpg")
    train(TrainConfig(str(tr), str(va), str(root / "run"), epochs=3, image_size=32, batch_size=16, lr=1e-3,
                      progress=False))
    return root


def test_evaluation_outputs_are_consistent(trained):
    r = evaluate(trained / "run", trained / "test", progress=False)
    out = trained / "run" / "eval-test"
    assert r.out_dir == out
    for name in ("metrics.json", "report.txt", "confusion_matrix.png", "predictions.csv"):
        assert (out / name).is_file()
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and list(rows[0]) == ["file", "true", "predicted", "confidence",
                                                 "p_angry", "p_happy", "p_sad"]
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in ("angry", "happy", "sad")]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert row["predicted"] == ("angry", "happy", "sad")[int(np.argmax(probs))]
    acc = np.mean([row["true"] == row["predicted"] for row in rows])
    assert r.accuracy == pytest.approx(acc) and r.accuracy > 0.7
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(acc)
    assert np.array(metrics["confusion_matrix"]).sum() == 30
    assert np.trace(r.confusion) == round(acc * 30)
    assert "angry" in (out / "report.txt").read_text()


def test_class_mismatch_is_an_error_or_shared_only(trained, tmp_path):
    partial = make_folder(tmp_path / "partial", ["angry", "happy", "neutral"], 4, seed=5)
    with pytest.raises(FerkitError) as info:
        evaluate(trained / "run", partial, tmp_path / "o1", progress=False)
    msg = str(info.value)
    assert "sad" in msg and "neutral" in msg and "--shared-classes" in msg
    r = evaluate(trained / "run", partial, tmp_path / "o2", shared_only=True, progress=False)
    assert r.classes == ("angry", "happy") and r.n == 8 and r.confusion.shape == (2, 2)
    disjoint = make_folder(tmp_path / "disjoint", ["fear"], 2)
    with pytest.raises(FerkitError, match="no class"):
        evaluate(trained / "run", disjoint, tmp_path / "o3", shared_only=True, progress=False)
