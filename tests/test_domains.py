"""Training on several sources (domains) with weights, real-photo augmentation, per-domain calibration."""
import io
import json

import numpy as np
import pytest
import torch
from conftest import make_folder
from PIL import Image
from test_votes import ferplus_folder

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.train import TrainConfig, train
from ferkit.train.augment import gaussian_blur, jpeg, photo_conditions
from ferkit.train.calibrate import calibrate_checkpoint, domain_weights, fit_temperature
from ferkit.train.domains import epoch_order, epoch_size, load_sources, parse_source

FAST = dict(image_size=32, batch_size=16, lr=2e-3, progress=False, patience=0)


# ----------------------------------------------------------------------------- sources and weights
@pytest.mark.parametrize("spec, path, weight", [("data/sfew", "data/sfew", 1.0), ("data/sfew:6", "data/sfew", 6.0),
                                                ("d:0.25", "d", 0.25), ("C:/faces", "C:/faces", 1.0),
                                                ("a:b", "a:b", 1.0)])
def test_a_source_is_a_path_and_an_optional_weight(spec, path, weight):
    src = parse_source(spec)
    assert (src.path, src.weight) == (path, weight)
    assert parse_source(src.spec()) == src


@pytest.mark.parametrize("spec", ["d:0", "d:-1", "d:1e9", "d:nan", "d:inf", ""])
def test_a_bad_weight_is_refused(spec):
    with pytest.raises(FerkitError):
        parse_source(spec)


def test_the_epoch_draws_each_source_by_its_weight():
    domain = np.array([0] * 100 + [1] * 10 + [2] * 7)
    weights = (0.25, 3.0, 1.5)
    assert epoch_size(domain, weights) == 25 + 30 + 7 + 4
    order = epoch_order(domain, weights, torch.Generator().manual_seed(0)).numpy()
    assert len(order) == 66
    drawn = np.bincount(domain[order], minlength=3)
    assert list(drawn) == [25, 30, 11]
    assert np.bincount(order[domain[order] == 1], minlength=110)[100:].tolist() == [3] * 10   # every face 3 times
    assert len(set(order[domain[order] == 0])) == 25            # a fraction: distinct faces, no repeats
    again = epoch_order(domain, weights, torch.Generator().manual_seed(0)).numpy()
    other = epoch_order(domain, weights, torch.Generator().manual_seed(1)).numpy()
    assert np.array_equal(order, again) and not np.array_equal(order, other)


def test_sources_with_fewer_classes_join_the_first_sources_classes(tmp_path):
    votes = ferplus_folder(tmp_path / "fp")                     # eight vote classes, soft
    films = make_folder(tmp_path / "films", ["angry", "happy", "surprise"], 4, seed=3)
    data = load_sources([parse_source(str(votes)), parse_source(f"{films}:3")], None, 32, progress=False,
                        labels="soft")
    assert data.classes == ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral", "contempt")
    assert list(np.bincount(data.domain)) == [5, 12] and data.domain_weights == (1.0, 3.0)
    film = data.domain == 1
    # hard labels became one-hot distributions over all eight classes, in the model's class order
    assert np.allclose(data.targets[film].sum(1), 1) and set(data.targets[film].max(1)) == {1.0}
    named = {p.rsplit("/", 2)[1] for p, lab in zip(np.asarray(data.paths)[film], data.labels[film])
             if data.classes[lab] == "surprised"}
    assert named == {"surprise"}
    assert np.array_equal(data.majority[film], data.labels[film])    # --oversample counts them by their label
    more = data.oversampled({"happy": 1})
    assert len(more) == len(data) + 1 + 4 and more.domain_weights == data.domain_weights
    assert list(np.bincount(more.domain)) == [6, 16]


def test_a_source_without_any_training_class_is_one_line(tmp_path):
    a = make_folder(tmp_path / "a", ["angry", "happy"], 3)
    b = make_folder(tmp_path / "b", ["sad", "neutral"], 3)
    with pytest.raises(FerkitError, match="has none of the training classes"):
        load_sources([parse_source(str(a)), parse_source(str(b))], None, 32, progress=False)


def test_training_on_weighted_sources_learns_and_records_them(tmp_path, capsys):
    classes = ["angry", "happy", "surprise"]
    a = make_folder(tmp_path / "a", classes, 12, seed=1)
    b = make_folder(tmp_path / "b", classes, 4, seed=2)
    val = make_folder(tmp_path / "val", classes, 6, seed=4)
    out = tmp_path / "run"
    args = ["train", "--train-dir", f"{a}:0.5", "--train-dir", f"{b}:2", "--val-dir", str(val), "--out", str(out),
            "--epochs", "4", "--batch-size", "8", "--image-size", "32", "--lr", "0.003", "--no-progress",
            "--photo", "0.1"]
    assert run(args) == 0
    err = capsys.readouterr().err
    assert "36 faces x 0.5" in err and "12 faces x 2 = 42 draws per epoch" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_dir"] == str(a) and cfg["train_weight"] == 0.5 and cfg["extra_train_dirs"] == [f"{b}:2"]
    assert json.loads((out / "summary.json").read_text())["best_val"]["val_acc"] >= 0.8
    # the sources are part of the run's identity: a larger --epochs continues it, another weight is refused
    longer = [x if x != "4" else "5" for x in args]
    assert run(longer[:4] + [f"{b}:3"] + longer[5:]) == 1
    assert "extra_train_dirs" in capsys.readouterr().err
    assert run(longer) == 0


def test_a_bad_weight_on_the_command_line_is_one_line(tiny_splits, tmp_path, capfd):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    assert run(["train", "--train-dir", f"{train_dir}:1e6", "--val-dir", str(val_dir), "--out", str(out)]) == 1
    assert "weight" in capfd.readouterr().err and not out.exists()
    with pytest.raises(FerkitError, match="photo"):
        TrainConfig(str(train_dir), str(val_dir), str(out), photo=1.5, **FAST)


def test_one_source_at_weight_one_trains_as_before(tiny_splits, tmp_path):
    """No weights: the epoch is the plain permutation of old, so earlier runs replay exactly."""
    train_dir, val_dir = tiny_splits
    plain = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "a"), epochs=2, **FAST))
    weighted = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "b"), epochs=2, train_weight=2.0,
                                 **FAST))
    again = train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "c"), epochs=2, **FAST))
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in again.history]
    assert [h["train_loss"] for h in plain.history] != [h["train_loss"] for h in weighted.history]


# ----------------------------------------------------------------------------- real-photo conditions
@pytest.mark.parametrize("quality", [10, 35, 75])
def test_jpeg_step_matches_a_real_encoder(quality):
    rng = np.random.default_rng(0)
    img = (rng.random((48, 48)) * 60 + np.linspace(0, 180, 48)[None, :]).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    real = np.asarray(Image.open(buf)).astype(float)
    mine = jpeg(torch.tensor(img / 255.0, dtype=torch.float32)[None, None], torch.tensor([float(quality)]))[0, 0]
    mine = mine.numpy() * 255
    assert np.abs(mine - real).mean() < 1.5                  # PIL's encoder, to about a gray level
    assert np.abs(mine - img).mean() > 0.5 * np.abs(real - img).mean()   # and it does lose what JPEG loses


def test_blur_keeps_the_mean_and_smooths():
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1
    y = gaussian_blur(x, torch.tensor([0.5, 2.0]))
    assert torch.allclose(y.sum((1, 2, 3)), torch.ones(2), atol=1e-5)
    assert y[0].max() > y[1].max() > 0.02


def test_photo_conditions_are_reproducible_bounded_and_off_at_zero():
    x = torch.rand(32, 1, 48, 48)
    a = photo_conditions(x, torch.Generator().manual_seed(3), 0.5)
    b = photo_conditions(x, torch.Generator().manual_seed(3), 0.5)
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    changed = (a - x).abs().flatten(1).max(1).values > 1e-6
    assert 0 < changed.sum() < 32 or changed.all()             # p = 0.5 of each of 6: almost every image changes
    assert torch.equal(photo_conditions(x, torch.Generator().manual_seed(3), 0.0), x)
    every = photo_conditions(x, torch.Generator().manual_seed(4), 1.0)
    assert ((every - x).abs().flatten(1).max(1).values > 1e-3).all()


# ----------------------------------------------------------------------------- calibration across domains
def test_domain_weights_make_every_domain_count_the_same():
    w = domain_weights([0] * 90 + [1] * 10)
    assert np.isclose(w[:90].sum(), w[90:].sum()) and np.isclose(w.mean(), 1)


def test_a_weighted_temperature_fit_listens_to_the_small_domain():
    rng = np.random.default_rng(0)
    big_z = rng.normal(size=(900, 3)) * 0.3
    big_y = big_z.argmax(1)                                  # right every time: sharpen (T < 1)
    small_z = rng.normal(size=(100, 3)) * 6
    small_y = rng.integers(0, 3, 100)                        # confident and random: soften (T > 1)
    z, y = np.concatenate([big_z, small_z]), np.concatenate([big_y, small_y])
    pooled = fit_temperature(z, y)
    equal = fit_temperature(z, y, weights=domain_weights([0] * 900 + [1] * 100))
    assert equal > pooled


def test_calibrate_on_several_domains_reports_each(tmp_path, capsys):
    classes = ["angry", "happy", "surprise"]
    train_dir = make_folder(tmp_path / "train", classes, 16, seed=1)
    run_dir = tmp_path / "run"
    train(TrainConfig(str(train_dir), str(train_dir), str(run_dir), epochs=2, **FAST))
    a = make_folder(tmp_path / "va", classes, 6, seed=5)
    b = make_folder(tmp_path / "vb", classes[:2], 6, seed=6)        # a domain without one of the classes
    out = tmp_path / "cal.safetensors"
    r = calibrate_checkpoint(run_dir, [a, b], out, progress=False)
    assert [d["n"] for d in r.domains] == [18, 12] and r.n == 30
    assert all(set(d["after"]) >= {"ece", "nll"} for d in r.domains)
    assert run(["calibrate", str(run_dir), "--val-dir", str(a), "--val-dir", str(b), "--out",
                str(tmp_path / "cli.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert f"{a} (18 faces): ECE" in printed and f"{b} (12 faces): ECE" in printed


# ----------------------------------------------------------------------------- fine-tuning with frozen batch norm
def test_freeze_bn_keeps_the_initial_statistics_and_trains_the_rest(tiny_splits, tmp_path):
    from safetensors.torch import load_file

    train_dir, val_dir = tiny_splits
    first = tmp_path / "first"
    train(TrainConfig(str(train_dir), str(val_dir), str(first), arch="vgg", model_args={"width": 8}, epochs=1, **FAST))
    start = load_file(str(first / "last.safetensors"))
    bn = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert bn, "the vgg has batch-norm layers"

    def tune(name, freeze):
        train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / name), arch="vgg", model_args={"width": 8},
                          init=str(first), epochs=1, freeze_bn=freeze, **FAST))
        return load_file(str(tmp_path / name / "last.safetensors"))

    frozen, free = tune("frozen", True), tune("free", False)
    affine = [k[:-len("running_mean")] + w for k in bn if k.endswith("running_mean") for w in ("weight", "bias")]
    for k in bn + affine:
        assert torch.equal(frozen[k], start[k]), k
    assert any(not torch.equal(free[k], start[k]) for k in bn)          # without the flag they move
    convs = [k for k in start if k.endswith("weight") and start[k].dim() == 4]
    assert all(not torch.equal(frozen[k], start[k]) for k in convs)      # the rest still learns
