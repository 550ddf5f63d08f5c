"""Recipes, batched augmentation, schedules and test-time augmentation."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_folder

from ferkit.errors import FerkitError
from ferkit.models import InputSpec, create_model
from ferkit.runtime import predict_logits, tta_views
from ferkit.train import RECIPES, TrainConfig, augment, resolve_config
from ferkit.train.loop import LRSchedule


def test_recipes_resolve_with_overrides():
    ref = resolve_config("reference", train_dir="a", val_dir="b", out="c")
    assert ref == TrainConfig("a", "b", "c")           # the reference recipe is TrainConfig's defaults
    fer = resolve_config("fer2013", train_dir="a", val_dir="b", out="c", lr=0.01, epochs=7)
    assert (fer.lr, fer.epochs, fer.recipe) == (0.01, 7, "fer2013")
    for key, value in RECIPES["fer2013"].items():
        if key not in ("lr", "epochs", "model_args"):
            assert getattr(fer, key) == value, key
    assert fer.model_args["width"] == 48 and fer.model_args["depths"] == (2, 2, 2, 2)  # defaults filled in
    other = resolve_config("fer2013", train_dir="a", val_dir="b", out="c", arch="tiny")
    assert other.arch == "tiny" and other.model_args == {}   # the recipe's vgg arguments do not carry over
    with pytest.raises(FerkitError, match="unknown recipe 'best'; accepted: reference, fer2013"):
        resolve_config("best", train_dir="a", val_dir="b", out="c")
    with pytest.raises(FerkitError, match="unknown optimizer 'rmsprop'; accepted: adam, adamw, sgd"):
        TrainConfig("a", "b", "c", optimizer="rmsprop")
    with pytest.raises(FerkitError, match="takes no argument widht"):
        TrainConfig("a", "b", "c", arch="vgg", model_args={"widht": 8})
    with pytest.raises(FerkitError, match="too small"):
        TrainConfig("a", "b", "c", arch="seed", image_size=7)


def test_cli_recipe_writes_resolved_values_into_config(tiny_splits, tmp_path):
    from ferkit.cli import run
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    assert run(["train", "--recipe", "fer2013", "--train-dir", str(train_dir), "--val-dir", str(val_dir),
                "--out", str(out), "--epochs", "2", "--model-arg", "width=8", "--model-arg", "depths=1,1,1",
                "--image-size", "32", "--mixup", "0.2", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "fer2013" and config["epochs"] == 2 and config["mixup"] == 0.2
    assert config["model_args"] == {"width": 8, "depths": [1, 1, 1], "dropout": 0.3, "in_channels": 1}
    assert config["optimizer"] == "sgd" and config["label_smoothing"] == 0.1 and config["erase"] == 0.5
    assert config["input"]["mean"] == [0.5] and config["input"]["std"] == [0.25]


def _old_augment(x, gen):
    """ferkit 0.1's augment_batch, verbatim: --recipe reference --augment must keep doing exactly this."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen, device="cpu").to(x.device)
    angle = (r[:, 0] - 0.5) * math.radians(20)
    scale = 1 + (r[:, 1] - 0.5) * 0.16
    flip = torch.where(torch.rand(n, generator=gen).to(x.device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, (r[:, 2] - 0.5) * 0.16], 1),
                         torch.stack([sin * flip, cos, (r[:, 3] - 0.5) * 0.16], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_augmentation_is_seeded_in_range_and_reference_compatible():
    x = torch.rand(16, 1, 24, 24)
    cfg = RECIPES["fer2013"]
    geo = {k: cfg[k] for k in ("rotate", "shift", "zoom", "aspect")}
    a = augment.geometric(x, torch.Generator().manual_seed(3), **geo)
    b = augment.geometric(x, torch.Generator().manual_seed(3), **geo)
    c = augment.geometric(x, torch.Generator().manual_seed(4), **geo)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(augment.geometric(x, torch.Generator().manual_seed(5)),
                       _old_augment(x, torch.Generator().manual_seed(5)))
    erased = augment.random_erase(x, torch.Generator().manual_seed(0), p=1.0)
    changed = (erased != x).flatten(1).float().mean(1)
    assert erased.shape == x.shape and (changed > 0.01).all() and (changed < 0.5).all()
    assert torch.equal(augment.random_erase(x, torch.Generator().manual_seed(0), p=0.0), x)
    y = torch.arange(16) % 3
    for kind in ({"mixup": 0.4}, {"cutmix": 1.0}):
        mx, ya, yb, lam = augment.mix(x, y, torch.Generator().manual_seed(1), **kind)
        assert mx.shape == x.shape and 0 <= lam <= 1 and torch.equal(ya, y)
        assert sorted(yb.tolist()) == sorted(y.tolist())
        again = augment.mix(x, y, torch.Generator().manual_seed(1), **kind)
        assert torch.equal(mx, again[0]) and lam == again[3]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "time_decay", "constant"])
def test_schedules_start_peak_and_end_where_documented(schedule):
    cfg = TrainConfig("a", "b", "c", schedule=schedule, epochs=10, warmup_epochs=2)
    s = LRSchedule(cfg, steps_per_epoch=100)
    factors = [s.factor(i) for i in range(1000)]
    assert all(0 < f <= 1 for f in factors)
    if schedule == "cosine":
        assert factors[0] < 0.01 and max(factors) == pytest.approx(1, abs=0.01) and factors[-1] < 1e-3
        assert factors.index(max(factors)) == pytest.approx(200, abs=2)
    if schedule == "onecycle":
        assert factors[0] == pytest.approx(1 / 25) and factors[-1] < 1e-3 and factors.index(max(factors)) == 300
    if schedule == "time_decay":
        assert factors[999] == pytest.approx(1 / (1 + 1e-6 * 999))


def test_plateau_halves_after_patience():
    s = LRSchedule(TrainConfig("a", "b", "c", schedule="plateau", plateau_patience=2), 10)
    for improved in (True, False, False):
        s.epoch_end(improved)
    assert s.factor(0) == 0.5


def test_tta_views_and_none_equals_plain_evaluation():
    torch.manual_seed(0)
    model = create_model("vgg", 3, 24, width=4, depths=(1, 1)).eval()
    spec = InputSpec(24, mean=(0.5,), std=(0.25,))
    faces = torch.randint(0, 256, (5, 24, 24), dtype=torch.uint8)
    x = spec.to_tensor(faces)
    assert [len(tta_views(x, m)) for m in ("none", "flip", "crops")] == [1, 2, 10]
    assert all(v.shape == x.shape for v in tta_views(x, "crops"))
    cpu = torch.device("cpu")
    with torch.no_grad():
        plain = model(x)
    assert torch.allclose(predict_logits(model, faces, spec, cpu, batch_size=2), plain, atol=1e-6)
    flip = torch.softmax(predict_logits(model, faces, spec, cpu, tta="flip"), 1)
    with torch.no_grad():
        want = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
    assert torch.allclose(flip, want, atol=1e-5)
    crops = predict_logits(model, faces, spec, cpu, tta="crops")
    assert crops.shape == (5, 3) and torch.allclose(torch.softmax(crops, 1).sum(1), torch.ones(5), atol=1e-5)
    with pytest.raises(FerkitError, match="accepted: none, flip, crops"):
        predict_logits(model, faces, spec, cpu, tta="mirror")


def test_evaluate_records_tta(tiny_splits, tmp_path):
    from ferkit.evaluate import evaluate
    from ferkit.train import train
    train_dir, val_dir = tiny_splits
    train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "run"), epochs=2, image_size=32,
                      batch_size=16, lr=1e-3, progress=False))
    plain = evaluate(tmp_path / "run", val_dir, tmp_path / "e0", progress=False)
    flip = evaluate(tmp_path / "run", val_dir, tmp_path / "e1", progress=False, tta="flip")
    assert json.loads((tmp_path / "e1" / "metrics.json").read_text())["tta"] == "flip"
    assert json.loads((tmp_path / "e0" / "metrics.json").read_text())["tta"] == "none"
    assert plain.n == flip.n == 30


def test_init_from_checkpoint_keeps_body_and_matches_output_rows_by_class(tmp_path):
    from ferkit.models import CheckpointRecord, init_from_checkpoint, save_checkpoint

    torch.manual_seed(0)
    old = create_model("tiny", 3, 24)
    spec = InputSpec(24, 1, 255.0, (0.5,), (0.25,))
    ckpt = save_checkpoint(old, tmp_path / "old.safetensors",
                           CheckpointRecord("tiny", ("angry", "happy", "surprised"), spec, {}, 4, {}, {}))
    torch.manual_seed(1)
    new = create_model("tiny", 3, 24)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    note = init_from_checkpoint(new, ckpt, ("happy", "sad", "angry"))
    assert "kept for 2 of 3 classes, new: sad" in note
    got, want = new.state_dict(), old.state_dict()
    head = [k for k in got if k.endswith(("weight", "bias"))][-2:]
    for k in got:
        if k not in head:
            assert torch.equal(got[k], want[k]), k
    for k in head:   # happy <- old row 1, sad keeps its fresh row, angry <- old row 0
        assert torch.equal(got[k][0], want[k][1]) and torch.equal(got[k][2], want[k][0]), k
        assert torch.equal(got[k][1], fresh[k][1]) and not torch.equal(got[k][1], want[k][1]), k
    with pytest.raises(FerkitError, match="do not fit this model"):
        init_from_checkpoint(create_model("vgg", 3, 24, width=8, depths=(1, 1)), ckpt, ("happy",))


def test_init_takes_the_model_from_the_checkpoint_and_refuses_a_different_one():
    cfg = resolve_config("reference", train_dir="a", val_dir="b", out="c", init="fer2013-vgg")
    assert (cfg.arch, cfg.image_size, cfg.model_args["width"]) == ("vgg", 48, 48)
    assert (cfg.input_mean, cfg.input_std, len(cfg.classes)) == (0.5, 0.25, 7)   # the bundled model's contract
    mine = resolve_config("fer2013", train_dir="a", val_dir="b", out="c", init="fer2013-vgg",
                          classes="happy,sad", model_args={"width": 48})
    assert mine.classes == ("happy", "sad")
    with pytest.raises(FerkitError, match=r"--arch tiny differs from the initial weights' vgg"):
        resolve_config("reference", train_dir="a", val_dir="b", out="c", init="fer2013-vgg", arch="tiny")
    with pytest.raises(FerkitError, match=r"--model-arg .*width=32.* differs"):
        resolve_config("reference", train_dir="a", val_dir="b", out="c", init="fer2013-vgg", model_args={"width": 32})
    with pytest.raises(FerkitError, match="no such checkpoint or run folder, and not a bundled model"):
        resolve_config("reference", train_dir="a", val_dir="b", out="c", init="no-such-model")


def test_cli_fine_tunes_a_run_and_resumes_without_reloading(tiny_splits, tmp_path, capsys):
    from ferkit.cli import run
    train_dir, val_dir = tiny_splits
    base = ["--train-dir", str(train_dir), "--val-dir", str(val_dir), "--no-progress"]
    assert run(["train", "--arch", "tiny", "--image-size", "24", "--epochs", "1", "--out", str(tmp_path / "a"),
                *base]) == 0
    assert run(["train", "--init", str(tmp_path / "a"), "--recipe", "fer2013", "--epochs", "1",
                "--out", str(tmp_path / "b"), *base]) == 0
    assert "initial weights:" in capsys.readouterr().err
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (config["arch"], config["image_size"], config["init"]) == ("tiny", 24, str(tmp_path / "a"))
    assert config["optimizer"] == "sgd"      # the rest of the recipe applies
    assert run(["train", "--init", str(tmp_path / "a"), "--recipe", "fer2013", "--epochs", "2",
                "--out", str(tmp_path / "b"), *base]) == 0
    err = capsys.readouterr().err
    assert "continuing the finished run" in err and "initial weights:" not in err   # its own state, not --init
    assert run(["train", "--init", str(tmp_path / "a"), "--arch", "seed", "--out", str(tmp_path / "c"), *base]) == 1
    assert "differs from the initial weights' tiny" in capsys.readouterr().err
    # the classes default to the initial weights'; data without one of them says how to choose
    assert run(["train", "--init", str(tmp_path / "a"), "--classes", "angry,happy,surprised,sad",
                "--out", str(tmp_path / "d"), *base]) == 1
    assert "has no images of class sad" in capsys.readouterr().err
    make_folder(tmp_path / "two", ["angry", "happy"], 12, seed=3)
    assert run(["train", "--init", str(tmp_path / "a"), "--train-dir", str(tmp_path / "two"), "--val-dir",
                str(val_dir), "--out", str(tmp_path / "e"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"the classes default to those of {tmp_path / 'a'}; --classes picks them")
    assert not (tmp_path / "e").exists()
