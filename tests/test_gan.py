"""The expression-editing GAN: training run folder, resume, synth edit, quality report, bad input."""
import csv
import json

import numpy as np
import pytest
import torch
from conftest import interrupt_gan_at, make_folder

from ferkit.cli import run
from ferkit.errors import FerkitError, Interrupted
from ferkit.train.gan import GanConfig, GanTrainer, train_gan

CLASSES = ["angry", "happy", "sad"]
TINY = dict(image_size=32, batch_size=8, g_width=8, d_width=8, g_res_blocks=1, d_layers=3, held_out=3,
            log_every=5, checkpoint_every=10, sample_every=10, progress=False)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan")
    return make_folder(root / "real", CLASSES, 14, seed=1, size=32)


def _history(run_dir):
    with open(run_dir / "history.csv") as fh:
        return [{k: round(float(v), 5) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def test_gan_training_writes_its_run_folder(faces, tmp_path):
    r = train_gan(GanConfig(str(faces), str(tmp_path / "run"), iterations=20, **TINY))
    run_dir = tmp_path / "run"
    for name in ("config.json", "history.csv", "curves.png", "generator.safetensors", "summary.json",
                 "samples/iter_000010.png", "samples/iter_000020.png", "state/state.json"):
        assert (run_dir / name).is_file(), name
    assert r.iterations == 20 and [h["iteration"] for h in r.history] == [5, 10, 15, 20]
    from PIL import Image
    grid = np.asarray(Image.open(run_dir / "samples" / "iter_000020.png"))
    assert grid.shape == (22 + 3 * 64, 64 * (1 + len(CLASSES)))       # rows: held-out faces; input + 3 targets
    config = json.loads((run_dir / "config.json").read_text())
    assert config["held_out"] == 3 and len(config["held_out_files"]) == 3   # the option's count; the files apart
    assert config["counts"] == {c: 14 for c in CLASSES}
    from ferkit.models import read_checkpoint_record
    rec = read_checkpoint_record(run_dir / "generator.safetensors")
    assert rec.kind == "generator" and rec.arch == "stargan" and rec.epoch == 20
    assert rec.model_args == {"width": 8, "res_blocks": 1, "in_channels": 1, "mask": False, "residual": False}
    assert rec.classes == tuple(CLASSES)


def test_interrupted_gan_run_resumes_to_the_same_weights(faces, tmp_path, monkeypatch):
    full = train_gan(GanConfig(str(faces), str(tmp_path / "full"), iterations=20, **TINY))
    real_step = interrupt_gan_at(monkeypatch, 13)
    with pytest.raises(Interrupted, match="keeps the state of iteration 10"):
        train_gan(GanConfig(str(faces), str(tmp_path / "cut"), iterations=20, **TINY))
    monkeypatch.setattr(GanTrainer, "step", real_step)
    resumed = train_gan(GanConfig(str(faces), str(tmp_path / "cut"), iterations=20, **TINY))
    assert _history(tmp_path / "cut") == _history(tmp_path / "full") and resumed.iterations == full.iterations
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "full" / "generator.safetensors")), load_file(str(tmp_path / "cut" /
                                                                                     "generator.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(FerkitError, match="larger --iterations"):
        train_gan(GanConfig(str(faces), str(tmp_path / "cut"), iterations=20, **TINY))
    longer = train_gan(GanConfig(str(faces), str(tmp_path / "cut"), iterations=25, **TINY))
    assert longer.iterations == 25
    config = json.loads((tmp_path / "cut" / "config.json").read_text())   # names the new length
    assert config["iterations"] == 25 and config["continued"] == [{"after": 20, "from": 20, "to": 25}]


def test_synth_edit_is_deterministic_and_writes_the_dataset_layout(faces, tmp_path):
    from ferkit.data import load_dataset
    train_gan(GanConfig(str(faces), str(tmp_path / "run"), iterations=10, **TINY))
    args = ["synth", "edit", str(tmp_path / "run"), "--source", str(faces), "--per-class", "7", "--no-progress"]
    assert run([*args, "--out", str(tmp_path / "a")]) == 0
    assert run([*args, "--out", str(tmp_path / "b")]) == 0
    assert run([*args, "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    a, b, c = (load_dataset(tmp_path / x, tuple(CLASSES), 32, use_cache=False, progress=False) for x in "abc")
    assert a.class_counts() == {k: 7 for k in CLASSES}
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    with open(tmp_path / "a" / "metadata.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 21 and all(r["source_class"] != r["class"] for r in rows)
    assert len({r["generator_sha256"] for r in rows}) == 1 and rows[0]["iteration"] == "10"
    assert not list(tmp_path.glob(".*tmp*"))


def test_quality_report_on_tiny_data(faces, tmp_path, capsys, monkeypatch):
    from ferkit.train import TrainConfig, train
    train_gan(GanConfig(str(faces), str(tmp_path / "gan"), iterations=10, **TINY))
    val = make_folder(tmp_path / "val", CLASSES, 5, seed=2, size=32)
    train(TrainConfig(str(faces), str(val), str(tmp_path / "clf"), arch="tiny", image_size=32, epochs=2,
                      batch_size=16, lr=1e-3, progress=False))
    assert run(["gan", "evaluate", str(tmp_path / "gan"), "--real", str(val), "--classifier", str(tmp_path / "clf"),
                "--per-class", "6", "--no-progress"]) == 0
    report = json.loads((tmp_path / "gan" / "quality" / "quality.json").read_text())
    acc = report["expression_accuracy"]
    assert report["generated_faces"] == 18 and 0 <= acc["generated"] <= 1 and 0 <= acc["real"] <= 1
    assert set(acc["per_class_generated"]) == set(CLASSES)
    # every edit moves a face to another expression: read as the target and as the source are disjoint
    assert 0 <= acc["generated_read_as_source"] and acc["generated"] + acc["generated_read_as_source"] <= 1
    assert report["kid"]["mean"] > report["kid_real_halves"]["mean"] - 0.05      # finite, and real-real is small
    assert 0 < report["identity"]["cycle_l1"] < 1
    assert (tmp_path / "gan" / "quality" / "quality.png").is_file()
    out = capsys.readouterr().out
    assert "expression accuracy: generated" in out and "KID" in out

    # A generator that changes nothing: its faces are read exactly as their source faces are, and
    # neither the edit nor the cycle moves a pixel.
    import ferkit.synth.quality as quality
    calls = []

    def unchanged(G, record, faces, targets, device):
        calls.append((faces.copy(), np.asarray(targets)))
        return faces.copy()
    monkeypatch.setattr(quality, "generate", unchanged)
    r = quality.evaluate_gan(tmp_path / "gan", val, classifier=tmp_path / "clf", out=tmp_path / "same",
                             per_class=6, progress=False)
    (src_faces, targets), (_, source_labels), _ = calls      # edits, their cycles, own-class edits
    from ferkit.models import load_checkpoint
    clf, rec = load_checkpoint(tmp_path / "clf" / "best.safetensors", "cpu", kind="classifier")
    pred = quality.predict_columns(clf.eval(), src_faces, rec.input, torch.device("cpu"),
                            [rec.classes.index(c) for c in CLASSES])
    acc = r["expression_accuracy"]
    assert acc["generated_read_as_source"] == pytest.approx((pred == source_labels).mean())
    assert acc["generated"] == pytest.approx((pred == targets).mean())
    assert r["identity"] == {"cycle_l1": 0.0, "edit_l1": 0.0, "identity_l1": 0.0}


def test_kid_is_zero_for_one_distribution_and_positive_for_two():
    from ferkit.synth.quality import kid
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    assert abs(kid(x, y, subsets=20, subset_size=200)[0]) < 0.02
    assert kid(x, y + 1.0, subsets=20, subset_size=200)[0] > 0.2


def test_gan_bad_input_is_one_clear_line(faces, tmp_path, capsys):
    few = make_folder(tmp_path / "few", CLASSES, 4, seed=3, size=32)
    cases = [
        (["gan", "train", "--data", str(few), "--out", str(tmp_path / "g1"), "--iterations", "2"],
         "too few images to train a GAN: angry has 4, happy has 4, sad has 4; need at least 10 per class"),
        (["gan", "train", "--data", str(faces), "--out", str(tmp_path / "g2"), "--image-size", "50"],
         "must be at least 16 and divisible by 16"),
        (["gan", "train", "--data", str(faces), "--out", str(tmp_path / "g3"), "--checkpoint-every", "7"],
         "must be a multiple of log-every"),
    ]
    gan_dir = tmp_path / "gan"
    train_gan(GanConfig(str(faces), str(gan_dir), iterations=10, **TINY))
    other = make_folder(tmp_path / "other", ["angry", "surprised"], 3, seed=4, size=32)
    empty_run = tmp_path / "empty-run"
    empty_run.mkdir()
    (empty_run / "config.json").write_text("{}")
    cases += [
        (["synth", "edit", str(gan_dir), "--source", str(other), "--out", str(tmp_path / "e1"), "--per-class", "2"],
         "does not know: surprised (it knows angry, happy, sad); choose the source classes with --from-classes"),
        (["gan", "evaluate", str(gan_dir), "--real", str(other), "--no-progress"], "choose the source classes with "
         "--classes"),
        (["gan", "evaluate", str(gan_dir), "--real", str(other), "--classes", "angry,sad", "--no-progress"],
         "source data has no sad faces"),
        (["synth", "edit", str(gan_dir), "--source", str(other), "--out", str(tmp_path / "e4"), "--per-class", "2",
          "--from-classes", "angry,sad"], "source data has no sad faces"),
        (["synth", "edit", str(empty_run), "--source", str(faces), "--out", str(tmp_path / "e2"), "--per-class", "2"],
         "has no generator checkpoint yet"),
        (["synth", "edit", "fer2013-vgg", "--source", str(faces), "--out", str(tmp_path / "e3"), "--per-class", "2"],
         "is a classifier (from `ferkit train`), but an expression generator"),
        (["evaluate", str(gan_dir), "--test-dir", str(faces)], "is a GAN run"),
        (["predict", str(gan_dir), str(faces)], "is a GAN run"),
        (["predict", str(gan_dir / "generator.safetensors"), str(faces)], "is an expression generator"),
        (["train", "--init", str(gan_dir), "--train-dir", str(faces), "--val-dir", str(faces),
          "--out", str(tmp_path / "t1")], "is a GAN run"),
        (["train", "--init", str(gan_dir / "generator.safetensors"), "--train-dir", str(faces), "--val-dir",
          str(faces), "--out", str(tmp_path / "t2")], "is an expression generator"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run(argv) == 1, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) >= 1 and message in err[-1] and "Traceback" not in "".join(err), (argv, err)
    for name in ("g1", "g2", "g3", "e1", "e2", "e3", "e4", "t1", "t2"):
        assert not (tmp_path / name).exists(), name
    assert not (gan_dir / "quality").exists()
    # the unknown class folder is fine once the source classes are chosen
    assert run(["synth", "edit", str(gan_dir), "--source", str(other), "--out", str(tmp_path / "e5"), "--per-class",
                "2", "--from-classes", "angry", "--classes", "happy,sad", "--no-progress"]) == 0
    with open(tmp_path / "e5" / "metadata.csv") as fh:
        assert {row["source_class"] for row in csv.DictReader(fh)} == {"angry"}


def test_ten_faces_a_class_train_with_held_out_0_as_the_refusal_says(tmp_path, capsys):
    """The least data a GAN trains on (10 faces a class) cannot spare a held-out face: the default
    --held-out is refused with a line that names --held-out 0, which then trains (the sample grid
    shows a training face of each class); --guide-views is bounded before a run folder exists."""
    ten = make_folder(tmp_path / "ten", CLASSES, 10, seed=3, size=32)
    assert run(["gan", "train", "--data", str(ten), "--out", str(tmp_path / "g1"), "--iterations", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold out at most 0 (--held-out 0 trains on every face" in err[0], err
    assert run(["gan", "train", "--data", str(ten), "--out", str(tmp_path / "g2"), "--guide", "fer2013-vgg",
                "--guide-views", "100000"]) == 1
    assert "guide-views must be 1 to 16" in capsys.readouterr().err and not (tmp_path / "g2").exists()
    tiny = {**TINY, "held_out": 0, "log_every": 1, "checkpoint_every": 2, "sample_every": 2}
    r = train_gan(GanConfig(str(ten), str(tmp_path / "g3"), iterations=2, **tiny))
    config = json.loads((r.run_dir / "config.json").read_text())
    assert config["held_out"] == 0 and config["held_out_files"] == [] and config["counts"] == {c: 10 for c in CLASSES}
    from PIL import Image
    grid = np.asarray(Image.open(r.run_dir / "samples" / "iter_000002.png"))
    assert grid.shape == (22 + len(CLASSES) * 64, 64 * (1 + len(CLASSES)))   # one training face per class


def test_kid_spread_is_not_zero_when_a_side_fits_in_one_subset():
    from ferkit.synth.quality import kid
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert kid(x, y, subsets=10, subset_size=500)[1] > 0       # subsets of the whole sets would all be equal
    with pytest.raises(FerkitError, match="at least 4 faces"):
        kid(x[:3], y)


def test_init_starts_the_generator_from_another_run_and_a_mismatch_is_one_line(faces, tmp_path, capsys):
    """--init: a fine-tune's generator starts from the given one (with a negligible learning rate it
    stays there), its discriminator afresh; the start's file is part of the run's identity; classes
    or architecture that differ are one line naming the option to give."""
    from ferkit.synth.gan import load_generator

    base = tmp_path / "base"
    train_gan(GanConfig(str(faces), str(base), iterations=10, **TINY))
    tuned = tmp_path / "tuned"
    r = train_gan(GanConfig(str(faces), str(tuned), iterations=10, init=str(base), g_lr=1e-12, **TINY))
    # (without --init the tuned run would stay at the random start, which 10 steps at 1e-4 left behind)
    a = load_generator(base)[0].state_dict()
    b = load_generator(tuned)[0].state_dict()
    assert r.iterations == 10 and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-4) for k in a)
    config = json.loads((tuned / "config.json").read_text())
    assert config["init"] == str(base) and len(config["init_sha256"]) == 64

    capsys.readouterr()
    for extra, words in ((["--classes", "angry,happy"], "--classes angry,happy,sad"),
                         (["--g-width", "16"], "--g-width")):
        argv = ["gan", "train", "--data", str(faces), "--out", str(tmp_path / "bad"), "--init", str(base),
                "--image-size", "32", "--batch-size", "8", "--g-width", "8", "--d-width", "8", "--g-res-blocks", "1",
                "--d-layers", "3", "--held-out", "3", "--iterations", "2", "--no-progress", *extra]
        assert run(argv) == 1
        err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note:")]
        assert len(err) == 1 and words in err[0] and "--init" in err[0], err
        assert not (tmp_path / "bad").exists()
