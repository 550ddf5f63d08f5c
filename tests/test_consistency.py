"""Consistency training (--consistency): a second, slightly moved view of each batch and a KL term."""
import csv
import json
import math

import pytest
import torch
from conftest import one_line_error

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.models import create_model
from ferkit.train import TrainConfig, train
from ferkit.train import augment as A
from ferkit.train.consistency import consistency_loss

FAST = dict(arch="tiny", image_size=32, batch_size=16, lr=2e-3, progress=False, patience=0, epochs=1)


def _cfg(tiny_splits, out, **kw):
    train_dir, val_dir = tiny_splits
    return TrainConfig(str(train_dir), str(val_dir), str(out), **{**FAST, **kw})


def test_off_by_default_draws_and_computes_nothing_extra(tiny_splits, tmp_path, monkeypatch):
    cfg = _cfg(tiny_splits, tmp_path / "r")
    assert cfg.consistency == 0.0 and cfg.consistency_shift == 4.0

    def boom(*a, **k):
        raise AssertionError("a second view was drawn with --consistency 0")
    monkeypatch.setattr(A, "small_change", boom)
    train(cfg)


def test_views_move_by_whole_pixels_and_identity_gives_the_batch_back():
    x = torch.rand(3, 1, 48, 48)
    zeros, ones, no = torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.bool)
    assert torch.allclose(A.affine_view(x, zeros, zeros, ones, no), x, atol=1e-5)
    moved = A.affine_view(x, zeros + 4 / 48, zeros, ones, no)          # 4 px to the right at 48 px
    assert torch.allclose(moved[..., 4:], x[..., :-4], atol=1e-5)
    assert torch.allclose(A.affine_view(x, zeros, zeros, ones, ~no), x.flip(-1), atol=1e-5)
    gen = torch.Generator().manual_seed(0)
    assert A.small_change(x, gen).shape == x.shape


def test_term_is_zero_for_the_identity_and_positive_otherwise():
    torch.manual_seed(0)
    model = create_model("tiny", 3, 32).eval()
    x = torch.rand(8, 1, 32, 32)
    n = len(x)
    same = A.affine_view(x, torch.zeros(n), torch.zeros(n), torch.ones(n), torch.zeros(n, dtype=torch.bool))
    with torch.no_grad():
        assert consistency_loss(model(x), model(same)).item() == pytest.approx(0.0, abs=1e-7)
        moved = A.small_change(x, torch.Generator().manual_seed(1))
        assert consistency_loss(model(x), model(moved)).item() > 1e-6
    logits, logits2 = model(x), model(moved)           # the first view is the target: no gradient through it
    g1, g2 = torch.autograd.grad(consistency_loss(logits, logits2), [logits, logits2], allow_unused=True)
    assert g1 is None and g2.abs().sum() > 0


def test_a_tiny_run_trains_and_its_loss_differs_from_no_consistency(tiny_splits, tmp_path):
    base = train(_cfg(tiny_splits, tmp_path / "base", seed=3))
    cons = train(_cfg(tiny_splits, tmp_path / "cons", seed=3, consistency=1.0))
    assert math.isfinite(cons.history[0]["train_loss"])
    assert cons.history[0]["train_loss"] != base.history[0]["train_loss"]
    config = json.loads((tmp_path / "cons" / "config.json").read_text())
    assert config["consistency"] == 1.0 and config["consistency_shift"] == 4.0
    # with a teacher (distillation) and bf16 autocast it trains too
    both = train(_cfg(tiny_splits, tmp_path / "both", seed=3, consistency=0.5, teacher=str(tmp_path / "base"),
                      precision="bf16", consistency_shift=2.0))
    assert math.isfinite(both.history[0]["train_loss"])


def test_with_soft_labels(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    manifest = tmp_path / "votes.csv"
    votes = {"angry": (7, 2, 1), "happy": (1, 8, 1), "surprised": (0, 3, 7)}
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "angry", "happy", "surprise"])
        for folder, v in votes.items():
            for p in sorted((train_dir / folder).glob("*.png")):
                w.writerow([str(p), *v])
    r = train(TrainConfig(str(manifest), str(val_dir), str(tmp_path / "soft"), labels="soft", consistency=1.0,
                          **FAST))
    assert math.isfinite(r.history[0]["train_loss"])


def test_config_round_trips_and_resume_keeps_it(tiny_splits, tmp_path):
    cfg = _cfg(tiny_splits, tmp_path / "r", consistency=0.3, consistency_shift=3.0)
    again = TrainConfig(**json.loads(json.dumps({k: v for k, v in cfg.__dict__.items()})))
    assert again == cfg
    assert cfg.matches(cfg.identity())
    assert "consistency" in cfg.differences({**cfg.identity(), "consistency": 0.0})
    old = {k: v for k, v in _cfg(tiny_splits, tmp_path / "r").identity().items()
           if not k.startswith("consistency")}                   # a run saved before the option existed
    assert _cfg(tiny_splits, tmp_path / "r").matches(old) and not cfg.matches(old)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_weight_is_refused(tiny_splits, tmp_path, bad):
    with pytest.raises(FerkitError, match="consistency must be 0"):
        _cfg(tiny_splits, tmp_path / "r", consistency=bad)
    with pytest.raises(FerkitError, match="consistency-shift"):
        _cfg(tiny_splits, tmp_path / "r", consistency=1.0, consistency_shift=bad)


def test_negative_weight_is_one_line_via_the_cli(tiny_splits, tmp_path, capfd):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "r"
    capfd.readouterr()
    code = run(["train", "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", str(out),
                "--arch", "tiny", "--epochs", "1", "--no-progress", "--consistency", "-1"])
    assert code == 1
    assert "consistency must be 0 (off) or a positive weight (got -1.0)" in one_line_error(capfd)
    assert not out.exists()
