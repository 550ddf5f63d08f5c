"""Issue 21's reliability fixes: state on disk checked before it is trusted, one line everywhere,
safe outputs. Each test fails without its fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_folder

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _ferkit(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferkit", *map(str, args)], capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=timeout)


def _one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The command failed with exactly one line on stderr (notes aside) that holds ``words``."""
    lines = [x for x in proc.stderr.strip().splitlines() if not x.startswith(("note:", "warning:"))]
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- the dataset cache
def _cache_files(cache: Path) -> tuple[Path, Path]:
    (npy,) = (cache / "datasets").glob("*.npy")
    return npy, npy.with_suffix(".json")


@pytest.mark.parametrize("damage", ["inverted", "shuffled", "indices", "shape", "dtype", "truncated", "json"])
def test_a_damaged_dataset_cache_is_rebuilt_with_a_note(tmp_path, monkeypatch, capsys, damage):
    from ferkit.data import load_dataset

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", ["happy", "sad"], 6, size=24)
    (data / "happy" / "broken.png").write_bytes(b"not a png")
    first = load_dataset(data, ("happy", "sad"), 16, progress=False)
    npy, meta = _cache_files(tmp_path / "cache")
    images = np.load(npy)
    record = json.loads(meta.read_text())
    if damage == "inverted":          # same dtype, shape and count: only the content tells
        np.save(npy, 255 - images)
    elif damage == "shuffled":
        np.save(npy, images[::-1].copy())
    elif damage == "indices":         # the pixels are right, but which file is which is not
        record["ok"] = record["ok"][1:] + [record["ok"][0]]
        meta.write_text(json.dumps(record))
    elif damage == "shape":
        np.save(npy, images[:, :8, :8].copy())
    elif damage == "dtype":
        np.save(npy, images.astype(np.float32))
    elif damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-100])
    else:
        meta.write_text("{")
    capsys.readouterr()
    again = load_dataset(data, ("happy", "sad"), 16, progress=False)
    err = capsys.readouterr().err
    assert "failed its check" in err and "decoding the images again" in err, err
    assert np.array_equal(again.images, first.images)
    assert np.array_equal(again.labels, first.labels) and again.paths == first.paths
    capsys.readouterr()
    third = load_dataset(data, ("happy", "sad"), 16, progress=False)    # rebuilt: trusted again, quietly
    assert "failed its check" not in capsys.readouterr().err
    assert np.array_equal(third.images, first.images)


def test_a_cache_header_asking_for_terabytes_is_not_read(tmp_path, monkeypatch, capsys):
    from ferkit.data import load_dataset

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    data = make_folder(tmp_path / "data", ["happy", "sad"], 3, size=24)
    first = load_dataset(data, ("happy", "sad"), 16, progress=False)
    npy, _ = _cache_files(tmp_path / "cache")
    raw = npy.read_bytes()
    header_end = raw.index(b"\n") + 1
    header = raw[:header_end].replace(b"(6, 16, 16)", b"(6, 16000000, 16000000)")
    npy.write_bytes(header + raw[header_end:])
    again = load_dataset(data, ("happy", "sad"), 16, progress=False)
    assert "failed its check" in capsys.readouterr().err
    assert np.array_equal(again.images, first.images)


# ----------------------------------------------------------------------------- checkpoint records
def _checkpoint(path: Path, arch: str = "tiny", classes=("happy", "sad"), size: int = 16, record_edit=None,
                tensor_edit=None) -> Path:
    """A real checkpoint, then its record and tensors changed as a damaged or hostile file would have them."""
    from safetensors.torch import save_file

    from ferkit.models import CheckpointRecord, InputSpec, create_model

    model = create_model(arch, len(classes), size)
    record = CheckpointRecord(arch, tuple(classes), InputSpec(size)).to_json()
    if record_edit:
        record_edit(record)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tensor_edit:
        tensor_edit(state)
    save_file(state, str(path), metadata={"ferkit": json.dumps(record)})
    return path


def _set(d: dict, dotted: str, value):
    *parents, last = dotted.split(".")
    for p in parents:
        d = d[p]
    d[last] = value


def _nan_weights(state):
    state["0.weight"][0, 0, 0, 0] = float("nan")


def _int_weights(state):
    import torch

    state["0.weight"] = state["0.weight"].to(torch.int32)


RECORD_CASES = {
    "classes twice": (dict(record_edit=lambda r: _set(r, "classes", ["happy", "happy"])), "appears twice"),
    "unknown class": (dict(record_edit=lambda r: _set(r, "classes", ["happy", "=HYPERLINK(\"x\")"])), "unknown class"),
    "classes not names": (dict(record_edit=lambda r: _set(r, "classes", [1, 2])), "not a list of names"),
    "nan mean": (dict(record_edit=lambda r: _set(r, "input.mean", [float("nan")])), "finite"),
    "negative pixel_max": (dict(record_edit=lambda r: _set(r, "input.pixel_max", -1)), "pixel_max"),
    "huge image size": (dict(record_edit=lambda r: _set(r, "input.image_size", 10 ** 9)), "1-1024"),
    "infinite image size": (dict(record_edit=lambda r: _set(r, "input.image_size", float("inf"))), "damaged"),
    "terabyte model": (dict(arch="vgg", record_edit=lambda r: _set(r, "model_args", {"width": 10 ** 7})),
                       "larger than the"),
    "wrong shapes": (dict(arch="vgg", record_edit=lambda r: _set(r, "model_args", {"width": 8})),
                     "weights do not match"),
    "nan weights": (dict(tensor_edit=_nan_weights), "NaN or infinite"),
    "integer weights": (dict(tensor_edit=_int_weights), "must be floating point"),
}


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_checkpoint_records_and_weights_are_checked_on_load(tmp_path, case):
    from ferkit.errors import FerkitError
    from ferkit.models import load_checkpoint

    kwargs, message = RECORD_CASES[case]
    ckpt = _checkpoint(tmp_path / "m.safetensors", **kwargs)
    with pytest.raises(FerkitError) as err:
        load_checkpoint(ckpt)
    assert message in str(err.value) and str(ckpt) in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_good_checkpoint_still_loads(tmp_path):
    from ferkit.models import load_checkpoint

    for arch in ("tiny", "vgg", "seed"):
        model, record = load_checkpoint(_checkpoint(tmp_path / f"{arch}.safetensors", arch=arch, size=32))
        assert record.arch == arch and record.classes == ("happy", "sad")


def test_a_damaged_checkpoint_is_one_line_through_the_cli(tmp_path):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    ckpt = _checkpoint(tmp_path / "m.safetensors", tensor_edit=_nan_weights)
    _one_line(_ferkit("evaluate", ckpt, "--test-dir", data, "--out", tmp_path / "ev"), "NaN or infinite")
    _one_line(_ferkit("predict", ckpt, data, "--no-detect", "--out", tmp_path / "p"), "NaN or infinite")


# ----------------------------------------------------------------------------- non-finite outputs
def _overflowing(state):
    """Finite weights whose outputs overflow to infinity (and NaN after the softmax)."""
    state["0.bias"].fill_(1e30)
    last = [k for k in state if k.endswith(".weight") and state[k].ndim == 2][-1]   # the output layer
    state[last].fill_(3e38)


def _cli(argv, capsys) -> tuple[int, list[str]]:
    from ferkit.cli import run as cli_run

    try:
        code = cli_run([str(a) for a in argv])
    except SystemExit as exc:           # argparse: a usage error, exit status 2
        code = exc.code
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith(("note:", "warning:"))]
    return code, err


def test_non_finite_outputs_are_refused_by_evaluate_predict_and_export(tmp_path, capsys):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 3, size=16)
    ckpt = _checkpoint(tmp_path / "m.safetensors", tensor_edit=_overflowing)
    for argv in (["evaluate", ckpt, "--test-dir", data, "--out", tmp_path / "ev", "--no-progress"],
                 ["predict", ckpt, data, "--no-detect", "--out", tmp_path / "p", "--no-progress"],
                 ["export", ckpt, "--out", tmp_path / "m.onnx"]):
        code, err = _cli(argv, capsys)
        assert code == 1 and len(err) == 1 and "NaN or infinite outputs" in err[0], (argv[0], err)
    assert not (tmp_path / "ev" / "metrics.json").exists() and not (tmp_path / "m.onnx").exists()
    assert not (tmp_path / "p" / "predictions.csv").exists()       # the rows so far stay marked partial


def test_non_finite_generator_outputs_are_refused(tmp_path, capsys):
    from ferkit.models import CheckpointRecord, InputSpec, save_checkpoint
    from ferkit.models.gan import create_generator

    data = make_folder(tmp_path / "data", ["happy", "sad"], 3, size=16)
    g = create_generator(2, 16, width=4, res_blocks=1)
    with __import__("torch").no_grad():
        g.net[0].weight.fill_(3e38)
    run = tmp_path / "gan"
    run.mkdir()
    save_checkpoint(g, run / "generator.safetensors",
                    CheckpointRecord("stargan", ("happy", "sad"), InputSpec(16, mean=(0.5,), std=(0.5,)),
                                     model_args={"width": 4, "res_blocks": 1}, kind="generator"))
    code, err = _cli(["synth", "edit", run, "--source", data, "--out", tmp_path / "e", "--per-class", "2",
                      "--no-progress"], capsys)
    assert code == 1 and err[-1].startswith("ferkit: error:") and "NaN or infinite outputs" in err[-1], err
    assert not (tmp_path / "e").exists()
    code, err = _cli(["gan", "evaluate", run, "--real", data, "--per-class", "2", "--no-progress",
                      "--classifier", _checkpoint(tmp_path / "c.safetensors")], capsys)
    assert code == 1 and err[-1].startswith("ferkit: error:") and "NaN or infinite outputs" in err[-1], err
    assert not any("Traceback" in x for x in err)


# ----------------------------------------------------------------------------- CSV cells
def test_csv_cells_that_a_spreadsheet_would_run_are_escaped():
    import csv
    import io

    from ferkit.files import CsvDictWriter, csv_cell, csv_writer

    for text in ("=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1", "-", "+"):
        assert csv_cell(text) == "'" + text
    for kept in ("-0.5", "+1e-3", "-12", "happy", "a=b", "", -0.5, 3, None):
        assert csv_cell(kept) == kept
    buf = io.StringIO()
    csv_writer(buf).writerow(["=HYPERLINK(\"http://x\")", "-0.25", -1.5])
    w = CsvDictWriter(buf, fieldnames=["a", "b"])
    w.writeheader()
    w.writerow({"a": "@x", "b": "-3"})
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows == [["'=HYPERLINK(\"http://x\")", "-0.25", "-1.5"], ["a", "b"], ["'@x", "-3"]]


def test_predictions_and_reports_escape_formula_cells(tmp_path, monkeypatch, capsys):
    import csv

    from ferkit.cli import run as cli_run

    monkeypatch.chdir(tmp_path)
    data = make_folder(tmp_path / "@data", ["happy", "sad"], 3, size=16)
    (data / "happy" / "happy_000.png").rename(tmp_path / "=1+2.png")
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    assert cli_run(["predict", str(ckpt), "=1+2.png", "@data", "--no-detect", "--out", "p", "--no-progress"]) == 0
    with open("p/predictions.csv", newline="") as fh:
        sources = [r["source"] for r in csv.DictReader(fh)]
    assert "'=1+2.png" in sources and all(s.startswith("'") for s in sources), sources
    assert cli_run(["evaluate", str(ckpt), "--test-dir", "@data", "--out", "ev", "--no-progress"]) == 0
    with open("ev/predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["file"].startswith("'@data") for r in rows)
    float(rows[0]["confidence"])                    # numbers stay numbers


def test_checkpoints_get_the_permissions_of_other_outputs(tmp_path):
    from ferkit.files import write_text
    from ferkit.models import CheckpointRecord, InputSpec, create_model, save_checkpoint

    old = os.umask(0o022)
    try:
        save_checkpoint(create_model("tiny", 2, 16), tmp_path / "m.safetensors",
                        CheckpointRecord("tiny", ("happy", "sad"), InputSpec(16)))
        write_text(tmp_path / "t.txt", "x")
        os.umask(0o002)
        save_checkpoint(create_model("tiny", 2, 16), tmp_path / "g.safetensors",
                        CheckpointRecord("tiny", ("happy", "sad"), InputSpec(16)))
    finally:
        os.umask(old)
    mode = lambda p: (tmp_path / p).stat().st_mode & 0o777  # noqa: E731
    assert mode("m.safetensors") == mode("t.txt") == 0o644
    assert mode("g.safetensors") == 0o664


# ----------------------------------------------------------------------------- walking and opening
def test_fifos_in_data_are_skipped_and_listed_never_read(tmp_path):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 3, size=16)
    os.mkfifo(data / "happy" / "pipe.png")
    os.mkfifo(tmp_path / "lone.jpg")
    os.mkfifo(tmp_path / "manifest.csv")
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    env = {"FERKIT_CACHE": str(tmp_path / "cache")}
    ev = _ferkit("evaluate", ckpt, "--test-dir", data, "--out", tmp_path / "ev", env=env, timeout=120)
    assert ev.returncode == 0 and "pipe.png" in ev.stderr and "not a regular file" in ev.stderr, ev.stderr
    assert "Traceback" not in ev.stderr
    p = _ferkit("predict", ckpt, data, tmp_path / "lone.jpg", "--no-detect", "--out", tmp_path / "p", timeout=120)
    assert p.returncode == 0, p.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    reasons = {Path(b[0]).name: b[1] for b in summary["bad"]}
    assert "FIFO" in reasons["pipe.png"] and "FIFO" in reasons["lone.jpg"], reasons
    assert summary["images"] == 6
    _one_line(_ferkit("evaluate", ckpt, "--test-dir", tmp_path / "manifest.csv", timeout=120), "not a regular file")


def test_a_manifest_that_names_a_fifo_skips_it(tmp_path, capsys):
    from ferkit.data import load_dataset

    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    os.mkfifo(tmp_path / "pipe.png")
    rows = [f"{p},{p.parent.name}" for p in sorted(data.rglob("*.png"))] + [f"{tmp_path / 'pipe.png'},happy"]
    (tmp_path / "m.csv").write_text("path,class\n" + "\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "m.csv", ("happy", "sad"), 16, progress=False)
    assert len(ds) == 4 and "pipe.png" in ds.skipped[0][0] and "FIFO" in ds.skipped[0][1]


def test_folders_deeper_than_the_recursion_limit_are_walked(tmp_path):
    from ferkit.data import find_files

    depth = sys.getrecursionlimit() + 200
    here = tmp_path / "deep"
    here.mkdir()
    os.chdir(here)
    try:
        for _ in range(depth):
            os.mkdir("d")
            os.chdir("d")
        Path("face.png").write_bytes(b"x")
    finally:
        os.chdir(tmp_path)
    try:
        found = find_files(here)
        assert len(found) == 1 and found[0].name == "face.png" and len(found[0].parts) > depth
    finally:                      # shutil.rmtree would recurse as deep: remove from the bottom up
        leaf = here / Path(*["d"] * depth)
        (leaf / "face.png").unlink()
        for _ in range(depth):
            leaf.rmdir()
            leaf = leaf.parent


def test_find_files_keeps_the_order_of_a_recursive_walk(tmp_path):
    from ferkit.data import find_files

    for rel in ("b/2.png", "b/a/1.png", "a.png", "c/z.png", "b/0.png", ".hidden/x.png", "b/.h.png", "c/y.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    got = [p.relative_to(tmp_path).as_posix() for p in find_files(tmp_path)]
    assert got == ["a.png", "b/0.png", "b/2.png", "b/a/1.png", "c/z.png"]


# ----------------------------------------------------------------------------- signals, crashes, memory
def test_sigterm_is_handled_like_ctrl_c_and_the_run_resumes(tmp_path):
    import signal
    import time

    data = tmp_path / "data"
    make_folder(data / "train", ["happy", "sad"], 48, seed=1, size=24)
    make_folder(data / "val", ["happy", "sad"], 6, seed=2, size=24)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ferkit", "train", "--train-dir", str(data / "train"), "--val-dir",
           str(data / "val"), "--out", str(out), "--arch", "tiny", "--image-size", "16", "--epochs", "400",
           "--batch-size", "4", "--patience", "0", "--no-progress"]
    env = {**ENV, "FERKIT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and not (out / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("ferkit: terminated (SIGTERM): training stopped during epoch",
                            "ferkit: terminated (SIGTERM): training stopped after epoch")) and "resume" in last, err
    assert "Traceback" not in err
    done = (out / "history.csv").read_text().count("\n") - 1
    assert done >= 1 and not (out / "summary.json").exists()
    cmd[cmd.index("400")] = str(done + 1)            # the same run, one more epoch: resumed, not restarted
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    assert (out / "history.csv").read_text().count("\n") - 1 == done + 1


def test_an_unexpected_exception_is_one_line_and_a_crash_report(tmp_path, monkeypatch, capsys):
    import ferkit.models

    monkeypatch.setenv("FERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FERKIT_DEBUG", raising=False)

    def boom():
        raise ZeroDivisionError("a bug deep inside")
    monkeypatch.setattr(ferkit.models, "list_models_info", boom)
    code, err = _cli(["models"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "internal error (ZeroDivisionError: a bug deep inside)" in err[0] and "FERKIT_DEBUG=1" in err[0]
    report = Path(err[0].split("the traceback is in ")[1].split(" (FERKIT_DEBUG")[0])
    text = report.read_text()
    assert report.parent == tmp_path / "cache" / "crash-reports"
    assert "Traceback (most recent call last)" in text and "a bug deep inside" in text and "def boom" not in text
    monkeypatch.setenv("FERKIT_DEBUG", "1")
    code, err = _cli(["models"], capsys)
    assert code == 1 and any("Traceback" in x for x in err) and "internal error" in err[-1]


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:121] . DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "1099511627776 bytes. Error code 12 (Cannot allocate memory)")])
def test_running_out_of_memory_is_one_honest_line(tmp_path, monkeypatch, capsys, error):
    import ferkit.evaluate

    def oom(*args, **kwargs):
        raise error
    monkeypatch.setattr(ferkit.evaluate, "evaluate", oom)
    code, err = _cli(["evaluate", "x", "--test-dir", "y"], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("ferkit: error: out of memory") and "this machine has" in err[0]
    assert "--batch-size and the test data's size" in err[0] and "try a smaller" not in err[0]
    if isinstance(error, RuntimeError):
        assert "1099511627776 bytes" in err[0]


# ----------------------------------------------------------------------------- parse-time checks
def test_out_of_range_values_are_one_line_before_any_work(tmp_path, capsys):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 12, size=16)
    out = tmp_path / "o"
    train = ["train", "--train-dir", data, "--val-dir", data, "--out", out, "--arch", "tiny"]
    cases = [
        ([*train, "--seed", "-1"], "a seed must be a whole number from 0"),
        ([*train, "--seed", str(2 ** 70)], "a seed must be a whole number from 0"),
        (["gan", "train", "--data", data, "--out", out, "--seed", "-3"], "a seed must be"),
        (["synth", "faces", "--out", out, "--per-class", "-2"], "must be a positive integer"),
        (["synth", "faces", "--out", out, "--per-class", "2", "--seed", "-5"], "a seed must be"),
        (["mix", "--real", data, "--synthetic", data, "--ratio", "1e6", "--out", tmp_path / "m.csv"],
         "at most 1000 generated images per real image"),
        ([*train, "--image-size", "5000"], "image-size must be at most 1024"),
        (["gan", "train", "--data", data, "--out", out, "--image-size", "4096"], "above the 1024"),
        (["gan", "train", "--data", data, "--out", out, "--held-out", "100", "--image-size", "16",
          "--iterations", "1"], "--held-out 100 is too many for this data"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code in (1, 2) and len(err) == 1 and message in err[0], (argv, err)
    assert not out.exists() and not (tmp_path / "m.csv").exists()


# ----------------------------------------------------------------------------- leftovers of killed runs
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_temporary_files_of_killed_runs_are_removed_by_the_next_run(tmp_path, capsys):
    import time

    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    ev = tmp_path / "ev"
    ev.mkdir()
    dead = _dead_pid()
    stale = ev / f".metrics.json.{dead}.ferkit.tmp"
    stale.write_text("{half")
    alive = ev / ".report.txt.1.ferkit.tmp"                  # a live process's (init's): kept
    alive.write_text("x")
    foreign = ev / ".notes.123.tmp"                           # not ferkit's: kept
    foreign.write_text("x")
    code, err = _cli(["evaluate", ckpt, "--test-dir", data, "--out", ev, "--no-progress"], capsys)
    assert code == 0 and not stale.exists() and alive.exists() and foreign.exists()
    # a killed dataset build: its hidden folder beside the output, with and without a process id
    (tmp_path / f".faces.tmp-{dead}-x1y2" / "happy").mkdir(parents=True)
    legacy = tmp_path / ".faces.tmp-abc123"
    legacy.mkdir()
    old = time.time() - 7200
    os.utime(legacy, (old, old))
    other = tmp_path / f".other.tmp-{dead}-zz"               # another dataset's: not touched here
    other.mkdir()
    code, err = _cli(["synth", "faces", "--out", tmp_path / "faces", "--per-class", "1", "--classes", "happy,sad",
                      "--size", "32", "--workers", "1", "--no-progress"], capsys)
    assert code == 0, err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".faces.tmp-"))
    assert left == [] and other.exists()


def test_a_killed_dataset_build_leaves_nothing_after_the_next_run(tmp_path):
    import signal
    import time

    out = tmp_path / "faces"
    cmd = [sys.executable, "-m", "ferkit", "synth", "faces", "--out", str(out), "--per-class", "400", "--size", "32",
           "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(tmp_path.glob(".faces.tmp-*/*/*.png")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".faces.tmp-*")) and not out.exists()
    cmd[cmd.index("400")] = "2"
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "removed 1 temporary file(s)" in again.stderr
    assert not list(tmp_path.glob(".faces.tmp-*")) and out.is_dir()


# ----------------------------------------------------------------------------- the right model, the right hint
def test_a_first_argument_that_looks_like_a_model_is_never_replaced_by_the_bundled_one(tmp_path, capsys):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    (tmp_path / "weights.pth").write_bytes(b"x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    for first, message in ((tmp_path / "model.pt", "never unpickles"), (tmp_path / "weights.pth", "never unpickles"),
                           (tmp_path / "missing.ckpt", "does not exist"), (run, "without a checkpoint yet")):
        code, err = _cli(["predict", first, data, "--no-detect", "--out", tmp_path / "p", "--no-progress"], capsys)
        assert code == 1 and len(err) == 1 and message in err[0], (first, err)
    assert not (tmp_path / "p" / "predictions.csv").exists()


def test_a_classifier_run_given_to_gan_commands_says_it_is_a_classifier(tmp_path, capsys):
    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    run = tmp_path / "run"
    run.mkdir()
    _checkpoint(run / "best.safetensors")
    (run / "config.json").write_text("{}")
    for argv in (["synth", "edit", run, "--source", data, "--out", tmp_path / "e", "--per-class", "1"],
                 ["gan", "evaluate", run, "--real", data]):
        code, err = _cli(argv, capsys)
        assert code == 1 and len(err) == 1 and "is a classifier run" in err[0], (argv[:2], err)


# ----------------------------------------------------------------------------- outputs over inputs
def test_outputs_that_would_overwrite_their_inputs_are_refused(tmp_path, capsys):
    real = make_folder(tmp_path / "real", ["happy", "sad"], 3, size=16)
    syn = make_folder(tmp_path / "syn", ["happy", "sad"], 6, size=16, seed=3)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    assert _cli(["mix", "--real", real, "--synthetic", syn, "--ratio", "1", "--out", tmp_path / "m.csv"],
                capsys)[0] == 0
    before = (tmp_path / "m.csv").read_text()
    cases = [
        (["mix", "--real", tmp_path / "m.csv", "--synthetic", syn, "--ratio", "1", "--out", tmp_path / "m.csv"],
         "is the input"),
        (["mix", "--real", real, "--synthetic", real, "--ratio", "1", "--out", tmp_path / "n.csv"],
         "is the real data"),
        (["evaluate", ckpt, "--test-dir", real, "--out", real / "happy" / "ev"], "inside the test data"),
        (["evaluate", ckpt, "--test-dir", real, "--out", real], "is the test data"),
        (["predict", ckpt, real, "--no-detect", "--annotate", "--out", real / "preds"], "inside the input folder"),
        (["synth", "edit", "x", "--source", syn, "--out", syn, "--per-class", "1", "--overwrite"], "is the --source"),
        (["study", "--real-train", real, "--val", real, "--test", real, "--synthetic", real, "--out",
          tmp_path / "st"], "is the real data"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 1 and len(err) == 1 and message in err[0], (argv[:2], err)
    assert (tmp_path / "m.csv").read_text() == before
    assert sorted(p.name for p in (real / "happy").iterdir()) == [f"happy_00{i}.png" for i in range(3)]
    assert not (real / "preds").exists() and not (tmp_path / "st").exists()


# ----------------------------------------------------------------------------- other libraries' chatter
def test_ffmpeg_and_matplotlib_chatter_stays_out_of_the_terminal(tmp_path):
    import cv2

    data = make_folder(tmp_path / "data", ["happy", "sad"], 2, size=16)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    vw = cv2.VideoWriter(str(tmp_path / "v.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (32, 32))
    for i in range(10):
        vw.write(np.full((32, 32, 3), i * 20, np.uint8))
    vw.release()
    whole = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])          # no index: FFmpeg complains
    p = _ferkit("predict", ckpt, tmp_path / "cut.mp4", data / "happy", "--no-detect", "--out", tmp_path / "p")
    assert p.returncode == 0, p.stderr
    assert "moov atom" not in p.stderr and "@ 0x" not in p.stderr, p.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert any("cut.mp4" in b[0] and "cannot open video" in b[1] for b in summary["bad"])
    (tmp_path / "afile").write_text("")           # a config folder that cannot be made
    env = {"MPLCONFIGDIR": str(tmp_path / "afile" / "mpl"), "FERKIT_CACHE": str(tmp_path / "cache")}
    ev = _ferkit("evaluate", ckpt, "--test-dir", data, "--out", tmp_path / "ev", env=env)
    assert ev.returncode == 0 and (tmp_path / "ev" / "confusion_matrix.png").exists()
    assert ev.stderr.strip() == "" or "matplotlib" not in ev.stderr.lower(), ev.stderr


def test_a_full_disk_during_predict_is_one_line_and_nothing_looks_complete(tmp_path, monkeypatch, capsys):
    import errno

    data = make_folder(tmp_path / "data", ["happy", "sad"], 3, size=16)
    ckpt = _checkpoint(tmp_path / "m.safetensors")
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("predictions.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", full)
    code, err = _cli(["predict", ckpt, data, "--no-detect", "--out", tmp_path / "p", "--no-progress"], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("ferkit: error: cannot write"), err
    assert "No space left" in err[0] and not (tmp_path / "p" / "predictions.csv").exists()
