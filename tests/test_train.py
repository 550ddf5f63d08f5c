import csv
import json
import math

import pytest
import torch

from ferkit import train as train_mod
from ferkit.errors import FerkitError, Interrupted
from ferkit.train import TrainConfig, train
from ferkit.train.loop import Trainer, _better

FAST = dict(image_size=32, batch_size=16, lr=1e-3, progress=False)


def _history(run_dir):
    with open(run_dir / "history.csv") as fh:
        return list(csv.DictReader(fh))


def strip(history):
    """A history without its timings, values rounded (CSV round trips), for comparing runs."""
    return [{k: round(float(v), 5) for k, v in row.items() if k != "seconds"} for row in history]


def test_short_training_learns_and_writes_run_folder(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    r = train(TrainConfig(str(train_dir), str(val_dir), str(out), epochs=4, patience=0, **FAST))
    assert r.best_val_acc >= 0.8  # chance is 1/3
    assert r.classes == ("angry", "happy", "surprised")
    for name in ("config.json", "history.csv", "curves.png", "best.safetensors", "last.safetensors", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "state" / "state.json").exists()   # kept: a larger --epochs continues the run
    rows = _history(out)
    assert [int(h["epoch"]) for h in rows] == [1, 2, 3, 4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_epoch"] == r.best_epoch
    assert float(rows[r.best_epoch - 1]["val_loss"]) == pytest.approx(min(float(h["val_loss"]) for h in rows))
    config = json.loads((out / "config.json").read_text())
    assert config["train_counts"] == {"angry": 24, "happy": 24, "surprised": 24}


def test_same_seed_same_history(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    runs = [train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / f"r{i}"), epochs=2, seed=7, **FAST))
            for i in range(2)]
    assert strip(runs[0].history) == strip(runs[1].history)
    other = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "r3"), epochs=2, seed=8, **FAST))
    assert strip(other.history) != strip(runs[0].history)


def test_resume_state_keeps_the_gpus_generator_too(monkeypatch):
    """Dropout on a GPU draws from the device's generator: a resume must restore it as well as the
    CPU's (without it a CUDA run resumed to a different history). Faked here: CI has no GPU."""
    from ferkit.runtime import global_rng_state, set_global_rng_state

    gpu_state, restored = torch.arange(16, dtype=torch.uint8), []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: gpu_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    saved = global_rng_state(cuda)
    assert torch.equal(saved["rng.cuda"], gpu_state)
    first = torch.rand(4)
    set_global_rng_state(saved, cuda)
    assert torch.equal(torch.rand(4), first)                     # the CPU generator is back too
    assert len(restored) == 1 and torch.equal(restored[0][0], gpu_state) and restored[0][1] == cuda
    assert set(global_rng_state(cpu)) == {"rng.torch"}
    set_global_rng_state(saved, cpu)                            # a GPU run resumed on the CPU: CPU state only
    assert len(restored) == 1


def test_interrupted_run_resumes_to_the_same_result(tiny_splits, tmp_path, monkeypatch):
    train_dir, val_dir = tiny_splits
    full = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "full"), epochs=3, seed=3, **FAST))

    calls = {"n": 0}
    real_validate = Trainer.validate

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_validate(*a, **k)
    monkeypatch.setattr(Trainer, "validate", flaky)
    cfg = dict(epochs=3, seed=3, **FAST)
    with pytest.raises(Interrupted, match="keeps epochs 1-2: re-run the same command to resume"):
        train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "cut"), **cfg))
    assert (tmp_path / "cut" / "state" / "state.json").exists() and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(Trainer, "validate", real_validate)
    with pytest.raises(FerkitError, match="different config"):
        train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "cut"), **{**cfg, "seed": 4}))
    # mark the epochs finished before the interruption as slow, so their time must show in the total
    state_file = tmp_path / "cut" / "state" / "state.json"
    state = json.loads(state_file.read_text())
    for row in state["history"]:
        row["seconds"] = 1000.0
    state_file.write_text(json.dumps(state))
    resumed = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "cut"), **cfg))
    assert strip(resumed.history) == strip(full.history)
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["seconds"] == resumed.seconds >= 1000.0 * (len(resumed.history) - 1)
    assert 0 < summary["wall_seconds"] < 1000.0
    with pytest.raises(FerkitError, match="larger --epochs to continue it, or --overwrite"):
        train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "cut"), **cfg))
    # a finished run continues with a larger --epochs, exactly as if it had been asked for 5 at once
    longer = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "cut"), **{**cfg, "epochs": 5}))
    straight = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "five"), **{**cfg, "epochs": 5}))
    assert len(longer.history) == 5 and strip(longer.history) == strip(straight.history)
    config = json.loads((tmp_path / "cut" / "config.json").read_text())
    assert config["epochs"] == 5 and config["continued"][-1]["to"] == 5


def test_early_stopping_and_limits(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    # a learning rate of ~0 never improves after epoch 1 -> stops after 1 + patience epochs
    r = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "es"), epochs=20, patience=2,
                          **{**FAST, "lr": 1e-12}, train_limit=16, val_limit=9))
    assert r.epochs_run <= 4 and r.best_epoch <= 2
    config = json.loads((tmp_path / "es" / "config.json").read_text())
    assert config["train_limit"] == 16


def test_partial_batch_and_augmentation(tmp_path):
    from conftest import make_folder
    tr = make_folder(tmp_path / "tr", ["sad", "happy"], 5)
    va = make_folder(tmp_path / "va", ["sad", "happy"], 2)
    r = train(TrainConfig(str(tr), str(va), str(tmp_path / "run"), epochs=1, augment=True, **FAST))
    assert r.epochs_run == 1


def test_augment_keeps_shape_and_range():
    from ferkit.train import augment
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 32, 32)
    y = augment.geometric(x, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1 and not torch.equal(x, y)


def test_bf16_path_agrees_with_fp32():
    torch.manual_seed(0)
    from ferkit.models import create_model
    m = create_model("seed", 3, 32).eval()
    x = (torch.rand(16, 32, 32) * 255).to(torch.uint8)
    from ferkit.models import InputSpec
    from ferkit.runtime import predict_logits
    fp32 = torch.softmax(predict_logits(m, x, InputSpec(32), torch.device("cpu"), None), 1)
    bf16 = torch.softmax(predict_logits(m, x, InputSpec(32), torch.device("cpu"), torch.bfloat16), 1)
    assert (fp32 - bf16).abs().max() < 0.02


def test_bad_config_and_class_mismatch(tiny_splits, tmp_path):
    from conftest import make_folder
    train_dir, _ = tiny_splits
    with pytest.raises(FerkitError, match="epochs"):
        TrainConfig("a", "b", "c", epochs=0)
    val = make_folder(tmp_path / "val2", ["angry", "happy"], 3)
    with pytest.raises(FerkitError, match="surprised"):
        train(TrainConfig(str(train_dir), str(val), str(tmp_path / "x"), epochs=1, **FAST))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(FerkitError, match="not a ferkit run"):
        train(TrainConfig(str(train_dir), str(train_dir), str(tmp_path / "busy"), epochs=1, **FAST), overwrite=True)
    assert (tmp_path / "busy" / "mine.txt").exists()


def test_monitor_val_acc_picks_the_most_accurate_epoch(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    r = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "acc"), epochs=5, patience=0,
                          monitor="val_acc", **FAST))
    hist = _history(tmp_path / "acc")
    key = [(float(h["val_acc"]), -float(h["val_loss"])) for h in hist]
    assert r.best_epoch == 1 + key.index(max(key))
    summary = json.loads((tmp_path / "acc" / "summary.json").read_text())
    assert summary["best_val"]["val_acc"] == pytest.approx(max(k[0] for k in key))
    assert json.loads((tmp_path / "acc" / "config.json").read_text())["monitor"] == "val_acc"


def test_better_rule():
    best = {"epoch": 3, "val_loss": 1.5, "val_acc": 0.40}
    assert _better({"val_loss": 1.4, "val_acc": 0.30}, best, "val_loss")
    assert not _better({"val_loss": 1.4, "val_acc": 0.30}, best, "val_acc")
    assert _better({"val_loss": 1.9, "val_acc": 0.45}, best, "val_acc")
    assert _better({"val_loss": 1.4, "val_acc": 0.40}, best, "val_acc")  # tie: lower loss wins
    assert _better({"val_loss": 9.0, "val_acc": 0.0}, {"epoch": 0, "val_loss": math.inf,
                                                                "val_acc": 0.0}, "val_acc")
    with pytest.raises(FerkitError, match="monitor"):
        TrainConfig("a", "b", "c", monitor="accuracy")


def test_resume_accepts_state_saved_before_a_new_field(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    cfg = TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "r"), epochs=3, **FAST)
    saved = cfg.identity()
    del saved["monitor"]                  # as written before --monitor existed
    assert cfg.matches(saved)
    assert not TrainConfig(str(train_dir), str(val_dir), "x", monitor="val_acc", **FAST).matches(saved)
    assert not cfg.matches({**saved, "lr": 0.5})
    assert not cfg.matches({**saved, "unknown_field": 1})


def test_cli_monitor_choices_match_train():
    from ferkit.cli import MONITOR_CHOICES
    assert tuple(train_mod.MONITORS) == MONITOR_CHOICES
