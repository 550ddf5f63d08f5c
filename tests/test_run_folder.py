"""Run folders are owned: recognised by ferkit's marker, locked while written, and nothing that
ferkit did not write is ever deleted (issue 21: a config.json of the user's used to empty the folder)."""
import json
import os

import pytest
from conftest import face_photo

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.files import LOCK_NAME, OutputLock
from ferkit.train import TrainConfig, train
from ferkit.train.run_folder import RUN_MARKER, is_run_folder

FAST = dict(image_size=32, batch_size=16, lr=1e-3, progress=False, epochs=1, patience=0)


def _users_folder(path):
    """A folder of the user's that happens to hold a config.json, beside their own files and data."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"learning_rate": 0.1}))
    (path / "notes.txt").write_text("my notes")
    (path / "faces").mkdir()
    (path / "faces" / "a.png").write_bytes(b"not really a png")
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_with_a_config_json_is_never_emptied(tiny_splits, tmp_path, overwrite):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "mine"
    before = _users_folder(out)
    with pytest.raises(FerkitError, match="not a ferkit run folder"):
        train(TrainConfig(str(train_dir), str(val_dir), str(out), **FAST), overwrite=overwrite)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "notes.txt").read_text() == "my notes"


def test_cli_train_and_gan_train_refuse_a_users_folder_in_one_line(tiny_splits, tmp_path, capsys):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "mine"
    before = _users_folder(out)
    for argv in (["train", "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", str(out),
                  "--epochs", "1", "--no-progress", "--overwrite"],
                 ["gan", "train", "--data", str(train_dir), "--out", str(out), "--iterations", "2",
                  "--no-progress", "--overwrite"]):
        assert run(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a ferkit run folder" in err[0], err
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_overwrite_replaces_a_run_but_refuses_files_ferkit_did_not_write(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    train(TrainConfig(str(train_dir), str(val_dir), str(out), **FAST))
    assert json.loads((out / "config.json").read_text())[RUN_MARKER] == 1
    assert is_run_folder(out)
    (out / "thesis.tex").write_text("two years of work")
    with pytest.raises(FerkitError, match="thesis.tex"):
        train(TrainConfig(str(train_dir), str(val_dir), str(out), **FAST), overwrite=True)
    assert (out / "thesis.tex").read_text() == "two years of work"
    (out / "thesis.tex").unlink()
    r = train(TrainConfig(str(train_dir), str(val_dir), str(out), seed=3, **FAST), overwrite=True)
    assert r.epochs_run == 1 and json.loads((out / "config.json").read_text())["seed"] == 3


def test_a_second_process_on_the_same_out_stops_in_one_line(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    out.mkdir()
    with OutputLock(out, "run folder"):   # another open file description: what a second process holds
        with pytest.raises(FerkitError, match="being written by another ferkit process"):
            train(TrainConfig(str(train_dir), str(val_dir), str(out), **FAST))
    assert not (out / "config.json").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_splits, tmp_path):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("pid 999999\n")   # its process is gone: the OS holds no lock
    r = train(TrainConfig(str(train_dir), str(val_dir), str(out), **FAST))
    assert r.epochs_run == 1
    assert (out / LOCK_NAME).read_text().strip() == f"pid {os.getpid()}"
    OutputLock(out).acquire().release()             # released when the run ended


def test_a_dataset_and_a_predictions_folder_take_the_same_kind_of_lock(tmp_path):
    """synth/mix datasets are locked beside the folder they replace whole; predict inside its --out."""
    from ferkit.predict.runner import predict_inputs
    from ferkit.synth.writer import AtomicDataset

    out = tmp_path / "faces"
    with AtomicDataset(out) as tmp:
        (tmp / "x.txt").write_text("1")
        with pytest.raises(FerkitError, match="dataset .*faces is being written by another ferkit process"):
            AtomicDataset(out).__enter__()
    assert (out / "x.txt").read_text() == "1"
    pred = tmp_path / "pred"
    pred.mkdir()
    with OutputLock(pred):
        with pytest.raises(FerkitError, match="being written by another ferkit process"):
            predict_inputs(None, [str(face_photo())], out=pred, progress=False)
