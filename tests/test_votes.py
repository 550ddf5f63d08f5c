"""Vote labels (FER+): the majority and soft protocols, soft-label training, distillation."""
import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_folder, pattern_image

from ferkit.cli import run
from ferkit.data import VOTE_CLASSES, load_dataset, vote_targets
from ferkit.errors import FerkitError
from ferkit.train import TrainConfig, train

FAST = dict(image_size=32, batch_size=16, lr=2e-3, progress=False, patience=0)

#: FER+ columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
ROWS = [
    [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],   # happy, clear majority (the single surprise vote is dropped)
    [0, 0, 0, 0, 6, 4, 0, 0, 0, 0],   # angry 6 of 10: kept as angry; soft keeps disgust's 4 votes
    [4, 0, 0, 0, 0, 0, 3, 0, 3, 0],   # neutral 4 of 10: no majority -> dropped by majority, soft keeps it
    [0, 0, 0, 0, 0, 0, 0, 0, 6, 4],   # unknown / not a face: dropped by both
    [0, 0, 0, 0, 0, 7, 3, 0, 0, 0],   # disgusted majority
    [2, 0, 0, 0, 0, 0, 0, 8, 0, 0],   # contempt majority
]


def ferplus_folder(root, rows=ROWS, size=40):
    """A tiny FER+ layout as Microsoft ships it: PNG faces + label.csv without a header."""
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(root / "label.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        for i, votes in enumerate(rows):
            name = f"fer{i:07d}.png"
            cv2.imwrite(str(root / name), pattern_image(int(np.argmax(votes[:8])), rng, size))
            w.writerow([name, "(0, 0, 48, 48)", *votes])
    return root


def test_majority_protocol_keeps_and_drops_as_ferplus_does(tmp_path):
    ds = load_dataset(ferplus_folder(tmp_path / "fp"), image_size=32, progress=False)
    assert ds.classes == ("angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral", "contempt")
    assert ds.targets is None
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["fer0000000.png", "fer0000001.png", "fer0000004.png",
                                                      "fer0000005.png"]
    assert [ds.classes[i] for i in ds.labels] == ["happy", "angry", "disgusted", "contempt"]


def test_soft_protocol_keeps_the_minority_votes(tmp_path):
    ds = load_dataset(ferplus_folder(tmp_path / "fp"), image_size=32, labels="soft", progress=False)
    assert len(ds) == 5                                   # only the unknown/not-a-face face is dropped
    t = dict(zip([p.rsplit("/", 1)[1] for p in ds.paths], ds.targets))
    c = {name: i for i, name in enumerate(ds.classes)}
    assert t["fer0000000.png"][c["happy"]] == 1.0        # a single vote is an outlier
    assert t["fer0000001.png"][c["angry"]] == pytest.approx(0.6)
    assert t["fer0000001.png"][c["disgusted"]] == pytest.approx(0.4)
    assert t["fer0000002.png"][c["neutral"]] == pytest.approx(4 / 7)
    assert np.allclose(ds.targets.sum(1), 1.0)
    assert list(ds.labels) == list(ds.targets.argmax(1))


def test_selected_classes_drop_other_votes(tmp_path):
    root = ferplus_folder(tmp_path / "fp")
    ds = load_dataset(root, classes=("angry", "happy"), image_size=32, labels="soft", progress=False)
    assert ds.classes == ("angry", "happy") and np.allclose(ds.targets.sum(1), 1.0)
    maj = load_dataset(root, classes=("angry", "happy"), image_size=32, progress=False)
    assert [maj.classes[i] for i in maj.labels] == ["happy", "angry"]


def test_vote_manifest_with_one_column_per_class(tmp_path):
    make_folder(tmp_path / "imgs", ["angry", "happy"], 2)
    files = sorted((tmp_path / "imgs").rglob("*.png"))
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "anger", "happiness"])
        w.writerows([[str(files[0]), 0.7, 0.3], [str(files[1]), 0.2, 0.8], [str(files[2]), 1, 0]])
    ds = load_dataset(tmp_path / "m.csv", image_size=32, labels="soft", progress=False)
    assert ds.classes == ("angry", "happy")
    assert np.allclose(ds.targets, [[0.7, 0.3], [0.2, 0.8], [1, 0]])


def test_soft_labels_loss_equals_cross_entropy_for_one_hot_votes():
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    one_hot = F.one_hot(y, 4).float()
    keep, targets, _ = vote_targets(np.c_[one_hot.numpy() * 10, np.zeros((6, 6))][:, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]],
                                    VOTE_CLASSES[:4], "soft")
    assert len(keep) == 6
    assert torch.allclose(F.cross_entropy(logits, torch.from_numpy(targets)), F.cross_entropy(logits, y))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_one_label_path_gives_hard_labels_their_old_loss(smoothing, weighted):
    """Hard labels train as one-hot distributions through the same loss as vote labels; that loss
    is the class-index cross-entropy hard labels had before, label smoothing and class weights included."""
    from types import SimpleNamespace

    from ferkit.train.loop import Trainer
    from ferkit.votes import one_hot

    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 5, generator=gen), torch.randint(0, 5, (16,), generator=gen)
    weight = torch.rand(5, generator=gen) + 0.5 if weighted else None
    trainer = SimpleNamespace(cfg=SimpleNamespace(label_smoothing=smoothing), class_weight=weight)
    new = Trainer.loss(trainer, logits, torch.from_numpy(one_hot(y.numpy(), 5)))
    old = F.cross_entropy(logits, y, weight=weight, label_smoothing=smoothing)
    assert torch.allclose(new, old, atol=1e-6), (new, old)
    # mixup's two losses are one loss on the mixed distribution (without class weights: exactly)
    lam, perm = 0.3, torch.randperm(16, generator=gen)
    mixed = lam * F.one_hot(y, 5).float() + (1 - lam) * F.one_hot(y[perm], 5).float()
    if not weighted:
        two = lam * F.cross_entropy(logits, y, label_smoothing=smoothing) + \
            (1 - lam) * F.cross_entropy(logits, y[perm], label_smoothing=smoothing)
        assert torch.allclose(Trainer.loss(trainer, logits, mixed), two, atol=1e-6)


@pytest.mark.parametrize("row, why", [
    (["fer0000000.png", "(0, 0, 48, 48)", 1, 2, 3], "expected 12 columns"),
    (["fer0000000.png", "(0, 0, 48, 48)", "x", 0, 0, 0, 0, 0, 0, 0, 0, 0], "must be numbers"),
    (["fer0000000.png", "(0, 0, 48, 48)", -1, 5, 0, 0, 0, 0, 0, 0, 0, 0], "finite and >= 0"),
    (["fer0000000.png", "(0, 0, 48, 48)", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "has no votes"),
    (["missing.png", "(0, 0, 48, 48)", 0, 9, 0, 0, 0, 0, 0, 0, 0, 0], "does not exist"),
])
def test_a_bad_label_csv_is_one_line_naming_file_and_row(tmp_path, capsys, row, why):
    root = ferplus_folder(tmp_path / "fp")
    with open(root / "label.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(row)
    with pytest.raises(FerkitError, match=f"label.csv row 7: .*{why}"):
        load_dataset(root, image_size=32, progress=False)
    out = tmp_path / "run"
    assert run(["train", "--train-dir", str(root), "--val-dir", str(root), "--out", str(out), "--epochs", "1",
                "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "row 7" in err[0]
    assert not out.exists()


def test_soft_labels_on_class_folders_is_one_line(tiny_splits):
    with pytest.raises(FerkitError, match="--labels soft needs vote labels"):
        load_dataset(tiny_splits[0], image_size=32, labels="soft", progress=False)


def test_training_on_soft_votes_learns(tmp_path):
    rows = [[0, 9, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 8, 2, 0, 0, 0, 0], [0, 0, 7, 0, 3, 0, 0, 0, 0, 0]] * 16
    root = ferplus_folder(tmp_path / "fp", rows)
    r = train(TrainConfig(str(root), str(root), str(tmp_path / "run"), labels="soft", epochs=4,
                          classes=("angry", "happy", "surprised"), **FAST))
    assert r.best_val_acc >= 0.9


def _agreement(model_dir, teacher_dir, data):
    from ferkit.models import load_checkpoint, resolve_checkpoint
    from ferkit.runtime import predict_logits

    ds = load_dataset(data, image_size=32, progress=False)
    answers = []
    for run_dir in (model_dir, teacher_dir):
        model, record = load_checkpoint(resolve_checkpoint(run_dir))
        answers.append(predict_logits(model, ds.images, record.input, torch.device("cpu")).argmax(1))
    return float((answers[0] == answers[1]).float().mean())


def test_distillation_moves_the_student_towards_its_teacher(tmp_path):
    """A teacher trained on deliberately swapped labels: a student distilled from it (alpha 1)
    answers like the teacher, one trained on the true labels (alpha 0) does not."""
    classes = ["angry", "happy", "surprised"]
    real = make_folder(tmp_path / "real", classes, 24, seed=1)
    swapped = tmp_path / "swapped"
    for src, dst in zip(classes, classes[1:] + classes[:1]):
        (swapped / dst).mkdir(parents=True)
        for f in (real / src).iterdir():
            (swapped / dst / f.name).write_bytes(f.read_bytes())
    teacher = tmp_path / "teacher"
    train(TrainConfig(str(swapped), str(swapped), str(teacher), epochs=4, **FAST))
    agree = {}
    for alpha in (0.0, 1.0):
        out = tmp_path / f"student-{alpha}"
        train(TrainConfig(str(real), str(real), str(out), epochs=4, teacher=str(teacher), distill_alpha=alpha,
                          distill_temperature=2.0, **FAST))
        agree[alpha] = _agreement(out, teacher, str(real))
    assert agree[1.0] >= 0.8 and agree[0.0] <= 0.3, agree


def test_a_teacher_without_the_students_classes_is_one_line(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    teacher = tmp_path / "teacher"
    train(TrainConfig(str(train_dir), str(val_dir), str(teacher), epochs=1, classes=("angry", "happy"), **FAST))
    with pytest.raises(FerkitError, match="teacher .* has no class surprised"):
        train(TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "s"), epochs=1, teacher=str(teacher), **FAST))
    with pytest.raises(FerkitError, match="distill-temperature must be a positive"):
        TrainConfig(str(train_dir), str(val_dir), str(tmp_path / "s"), teacher=str(teacher), distill_temperature=0)


def test_oversampling_repeats_the_majority_faces_of_a_class(tmp_path):
    root = ferplus_folder(tmp_path / "fp")
    soft = load_dataset(root, image_size=32, labels="soft", progress=False)
    c = {name: i for i, name in enumerate(soft.classes)}
    # the majority protocol: happy, angry, (neutral 4 of 10: none), disgusted, contempt
    assert list(soft.majority) == [c["happy"], c["angry"], -1, c["disgusted"], c["contempt"]]
    more = soft.oversampled({"disgusted": 3, "angry": 1})
    names = [p.rsplit("/", 1)[1] for p in more.paths]
    assert len(more) == len(soft) + 4
    assert names.count("fer0000004.png") == 4 and names.count("fer0000001.png") == 2
    assert names.count("fer0000002.png") == 1                   # split votes: not any class's face
    assert np.array_equal(more.targets[-1], soft.targets[1])    # the copies keep their vote distributions
    with pytest.raises(FerkitError, match="no face of class neutral .by the majority protocol"):
        soft.oversampled({"neutral": 2})                        # its only face has no majority
    hard = load_dataset(root, image_size=32, progress=False)
    assert hard.majority is None and len(hard.oversampled({"happy": 2})) == len(hard) + 2


def test_train_oversample_option(tmp_path, capsys):
    root = ferplus_folder(tmp_path / "fp")
    out = tmp_path / "run"
    base = ["train", "--train-dir", str(root), "--val-dir", str(root), "--epochs", "1", "--batch-size", "4",
            "--image-size", "32", "--no-progress", "--labels", "soft"]
    assert run(base + ["--out", str(out), "--oversample", "disgust=2,Contempt=1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["oversample"] == "disgusted=2,contempt=1"
    assert "3 copies added by --oversample" in capsys.readouterr().err
    for spec, why in (("disgusted", "CLASS=N pairs"), ("disgusted=0", "CLASS=N pairs"), ("smug=2", "CLASS=N"),
                      ("fear=1,fearful=2", "twice")):
        bad = tmp_path / f"bad-{spec}"
        assert run(base + ["--out", str(bad), "--oversample", spec]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and not bad.exists()
    bad = tmp_path / "bad-class"
    assert run(base + ["--out", str(bad), "--oversample", "sad=2", "--classes", "happy,angry"]) == 1
    assert "do not include" in capsys.readouterr().err and not bad.exists()
