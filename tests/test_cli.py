"""End-to-end commands: the ferkit CLI and the reference-compatible main.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_folder

from ferkit.cli import run

ROOT = Path(__file__).resolve().parents[1]
REF_CLASSES = ["angry", "disgusted", "fearful", "happy", "sad", "surprised"]


def _one_line_error(capsys_or_text):
    err = capsys_or_text if isinstance(capsys_or_text, str) else capsys_or_text.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.startswith("ferkit: error") or l.startswith("main.py: error")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_then_evaluate(tiny_splits, tmp_path, capsys):
    train_dir, val_dir = tiny_splits
    out = tmp_path / "run"
    assert run(["train", "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", str(out),
                "--epochs", "2", "--batch-size", "16", "--image-size", "32", "--lr", "1e-3", "--no-progress"]) == 0
    assert (out / "best.safetensors").exists()
    capsys.readouterr()
    assert run(["evaluate", str(out / "best.safetensors"), "--test-dir", str(val_dir), "--out", str(tmp_path / "ev"),
                "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    acc_lines = [l for l in stdout.splitlines() if l.startswith("accuracy: ")]
    assert len(acc_lines) == 1 and 0.0 <= float(acc_lines[0].split()[1]) <= 1.0
    assert (tmp_path / "ev" / "predictions.csv").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "unknown_class", "bad_checkpoint", "bad_number"])
def test_bad_input_one_line_nonzero(tmp_path, tiny_splits, capsys, case):
    train_dir, val_dir = tiny_splits
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    out = str(tmp_path / "o")
    args = {
        "missing": ["train", "--train-dir", str(tmp_path / "nope"), "--val-dir", str(val_dir), "--out", out],
        "empty": ["train", "--train-dir", str(tmp_path / "empty"), "--val-dir", str(val_dir), "--out", out],
        "unknown_class": ["train", "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", out,
                          "--classes", "happy,bored"],
        "bad_checkpoint": ["evaluate", str(tmp_path / "junk.safetensors"), "--test-dir", str(val_dir)],
        "bad_number": ["train", "--train-dir", str(train_dir), "--val-dir", str(val_dir), "--out", str(tmp_path / "o"),
                       "--epochs", "0"],
    }[case]
    if case == "bad_number":
        with pytest.raises(SystemExit) as info:
            run(args)
        assert info.value.code == 2
        err = capsys.readouterr().err  # argparse's usage block is replaced by one line
        assert err.count("\n") == 1 and err.startswith("ferkit train: error: argument --epochs"), err
        return
    assert run(args) == 1
    _one_line_error(capsys)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ferkit.cli", "evaluate", str(tmp_path / "missing"),
                           "--test-dir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    _one_line_error(proc.stderr)


def test_reference_main_py_readme_commands(tmp_path):
    """The reference README's two commands, verbatim except --num_epoch (50 -> 2) to keep tests fast."""
    make_folder(tmp_path / "train", REF_CLASSES, 6, seed=1, ext=".jpg")
    make_folder(tmp_path / "validation", REF_CLASSES, 3, seed=2, ext=".jpg")
    make_folder(tmp_path / "test", REF_CLASSES, 3, seed=3, ext=".jpg")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    train_cmd = ('--mode="train" --train_dir="./train"  --val_dir="./validation" --model_save_dir="./model" '
                 '--result_save_dir="./result" --num_train=600 --num_val=60 --batch_size=16 --num_epoch=2 '
                 '--image_size=64 --cnum=6 --stop_patient=5')
    test_cmd = ('--mode="test" --test_dir="./test" --CM_name="test" --model_save_dir="./model"  '
                '--result_save_dir="./result" --cnum=6 --image_size=64')
    for cmd in (train_cmd, test_cmd):
        proc = subprocess.run(f"{sys.executable} {ROOT / 'main.py'} {cmd}", shell=True, cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "model" / "best.safetensors").exists() and (tmp_path / "model" / "last.safetensors").exists()
    assert (tmp_path / "result" / "plot.png").stat().st_size > 0
    assert (tmp_path / "result" / "confusion_matrix_test.jpg").read_bytes()[:2] == b"\xff\xd8"  # a real JPEG
    line = [l for l in proc.stdout.splitlines() if l.startswith("Test accuracy is:")]
    assert len(line) == 1 and 0 <= float(line[0].split(":")[1]) <= 1
    assert "surprised" in proc.stdout  # the report names the classes
    cmd = f"{sys.executable} {ROOT / 'main.py'} --mode=test --model_save_dir=./nowhere --test_dir=./test"
    bad = subprocess.run(cmd,
                         shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    _one_line_error(bad.stderr)


def test_demo_runs_end_to_end_and_reuses_its_work(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--per-class", "8", "--epochs", "1", "--arch", "tiny", "--no-progress"]
    assert run(args) == 0
    first = capsys.readouterr()
    assert any(l.startswith("accuracy: ") for l in first.out.splitlines())
    for rel in ("data/train/happy", "data/val/sad", "data/test/angry", "run/best.safetensors", "run/curves.png",
                "run/eval-test/confusion_matrix.png", "run/eval-test/report.txt", "demo.json"):
        assert (out / rel).exists(), rel
    stamp = (out / "run" / "best.safetensors").stat().st_mtime_ns
    assert run(args) == 0
    assert "reusing" in capsys.readouterr().err
    assert (out / "run" / "best.safetensors").stat().st_mtime_ns == stamp


def test_synth_cli_bad_arguments(tmp_path, capsys):
    assert run(["synth", "faces", "--out", str(tmp_path / "s"), "--per-class", "0"]) == 1
    _one_line_error(capsys)
    assert run(["synth", "faces", "--out", str(tmp_path / "s"), "--per-class", "2", "--classes", "happy,bored"]) == 1
    _one_line_error(capsys)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("keep")
    assert run(["synth", "faces", "--out", str(tmp_path / "full"), "--per-class", "2", "--no-progress"]) == 1
    _one_line_error(capsys)
    assert (tmp_path / "full" / "x.txt").read_text() == "keep"
    assert run(["synth", "faces", "--out", str(tmp_path / "ok"), "--per-class", "2", "--classes", "happy,sad",
                "--no-progress"]) == 0
    assert len(list((tmp_path / "ok" / "happy").glob("*.png"))) == 2
    assert run(["synth", "preview", "--out", str(tmp_path / "p.png"), "--per-class", "2"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0
