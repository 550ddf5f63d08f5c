"""What a small training run writes and how often: sparse resume state, and study runs without figures."""
from __future__ import annotations

import csv
import json

import pytest
from conftest import make_folder

from ferkit.errors import Interrupted
from ferkit.experiments import StudyConfig, run_study
from ferkit.train import TrainConfig, loop, train
from ferkit.train.run_folder import RunFolder

FAST = dict(arch="tiny", image_size=16, batch_size=16, lr=1e-3, progress=False, epochs=5, seed=3)


def _strip(history):
    return [{k: round(float(v), 5) for k, v in row.items() if k != "seconds"} for row in history]


def test_sparse_resume_state_is_written_on_improvement_and_at_the_end_and_resumes_exactly(tiny_splits, tmp_path,
                                                                                         monkeypatch):
    train_dir, val_dir = tiny_splits
    monkeypatch.setattr(loop, "_better", lambda row, best, monitor: row["epoch"] in (1, 3))   # the best epochs
    saved: list[int] = []
    real_save = RunFolder.save_state

    def save_state(self, tensors, progress):
        saved.append(len(progress["history"]))
        return real_save(self, tensors, progress)
    monkeypatch.setattr(RunFolder, "save_state", save_state)

    full = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "full"), **FAST))
    assert saved == [1, 2, 3, 4, 5]                        # the default: after every epoch

    saved.clear()
    calls = {"n": 0}
    real_validate = loop.Trainer.validate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_validate(*a, **k)
    monkeypatch.setattr(loop.Trainer, "validate", flaky)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted, match="during epoch 5; .* keeps epochs 1-3: re-run"):
        train(TrainConfig(str(train_dir), str(val_dir), str(cut), **FAST), state_every=1e9)
    assert saved == [1, 3]                                 # only the epochs that wrote best.safetensors
    assert len(json.loads((cut / "state" / "state.json").read_text())["history"]) == 3
    with open(cut / "history.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 4          # history.csv runs ahead; the resume replays epoch 4

    monkeypatch.setattr(loop.Trainer, "validate", real_validate)
    saved.clear()
    resumed = train(TrainConfig(str(train_dir), str(val_dir), str(cut), **FAST), state_every=1e9)
    assert saved == [5]                                    # the last epoch always writes it
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.best_epoch == full.best_epoch == 3


def test_study_runs_skip_figures_unless_asked_with_the_same_results(tmp_path):
    classes = ["angry", "happy", "surprise"]
    data = {name: make_folder(tmp_path / name, classes, n, seed=i)
            for i, (name, n) in enumerate((("train", 12), ("val", 6), ("test", 6), ("synth", 12)))}

    def study(out, **kw):
        return StudyConfig(real_train=str(data["train"]), val=str(data["val"]), test=str(data["test"]),
                           synthetic=[str(data["synth"])], out=str(tmp_path / out), ratios="0", seeds=1,
                           augment_arm=False, synthetic_arm=False, progress=False, **kw,
                           train=dict(arch="tiny", epochs=2, image_size=16, batch_size=8))

    plain, drawn = study("plain"), study("drawn", run_figures=True)
    assert plain.identity() == study("drawn").identity()  # a setting of the output, not of the study
    metrics = {}
    for cfg, figures in ((plain, False), (drawn, True)):
        run_study(cfg)
        (run,) = (p for p in (tmp_path / cfg.out / "runs").iterdir())
        ev = run / "eval-test"
        for name in ("metrics.json", "report.txt", "predictions.csv"):
            assert (ev / name).is_file(), name
        for path in (run / "curves.png", ev / "confusion_matrix.png", ev / "reliability.png"):
            assert path.is_file() == figures, path
        metrics[figures] = json.loads((ev / "metrics.json").read_text())
    for key in ("accuracy", "macro_f1", "nll", "confusion_matrix"):
        assert metrics[False][key] == metrics[True][key]
