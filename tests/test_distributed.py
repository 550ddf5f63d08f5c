"""Data-parallel training with torchrun (2 gloo processes on the CPU) and sharded studies."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_folder

from ferkit.errors import FerkitError
from ferkit.train.distributed import Dist, from_env

# Each rank runs ferkit's CLI, recording every file it renames into place (ferkit writes all files
# through files.atomic_path), so the test can tell which rank wrote what.
_RANK_RECORDER = """
import os, sys
import ferkit.files as files
log = open(os.environ["FERKIT_WRITES"] + "." + os.environ.get("RANK", "0"), "a")
real = files.atomic_path
def recording(path):
    log.write(str(path) + "\\n"); log.flush()
    return real(path)
files.atomic_path = recording
from ferkit.cli import main
sys.argv = ["ferkit"] + sys.argv[1:]
main()
"""


def _torchrun(script: Path, args: list, env: dict, nproc: int = 2, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port",
           str(29500 + os.getpid() % 1000), str(script), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture
def ddp_data(tmp_path):
    data = tmp_path / "data"
    make_folder(data / "train", ["happy", "sad", "angry"], 16, seed=1, size=32)
    make_folder(data / "val", ["happy", "sad", "angry"], 6, seed=2, size=32)
    script = tmp_path / "rank.py"
    script.write_text(_RANK_RECORDER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FERKIT_CACHE": str(tmp_path / "cache"),
           "FERKIT_WRITES": str(tmp_path / "writes"), "FERKIT_DIST_TIMEOUT": "60",
           "TMPDIR": str(tmp_path)}   # torchrun's own torchelastic_* folders go with the test's
    return data, script, env


def _args(data: Path, out: Path, epochs: int = 3) -> list:
    return ["train", "--train-dir", data / "train", "--val-dir", data / "val", "--out", out, "--arch", "tiny",
            "--image-size", "32", "--epochs", epochs, "--batch-size", "8", "--lr", "1e-3", "--patience", "0"]


def _history(run: Path) -> list[list[float]]:
    with open(run / "history.csv") as fh:
        return [[round(float(v), 5) for k, v in r.items() if k != "seconds"] for r in csv.DictReader(fh)]


def test_two_process_training_writes_one_run_folder_from_rank_0(ddp_data, tmp_path):
    data, script, env = ddp_data
    out = tmp_path / "ddp"
    proc = _torchrun(script, _args(data, out), env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.count("best epoch") == 1                         # rank 0 reports, rank 1 does not
    rank0 = Path(f"{env['FERKIT_WRITES']}.0").read_text().splitlines()
    rank1 = Path(f"{env['FERKIT_WRITES']}.1").read_text().splitlines() if Path(f"{env['FERKIT_WRITES']}.1").exists() \
        else []
    assert any(p.endswith("best.safetensors") for p in rank0) and any(p.endswith("state.json") for p in rank0)
    assert not [p for p in rank1 if p.startswith(str(out))]        # rank 1 wrote nothing in the run folder
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and len(_history(out)) == 3
    from safetensors import safe_open
    with safe_open(str(out / "best.safetensors"), framework="pt") as fh:
        assert not [k for k in fh.keys() if k.startswith("module.")]
    from ferkit.evaluate import evaluate
    r = evaluate(out, data / "val", out_dir=False, progress=False)
    assert r.n == 18 and 0 <= r.accuracy <= 1


def test_interrupted_two_process_run_resumes_to_the_same_history(ddp_data, tmp_path):
    data, script, env = ddp_data
    full = _torchrun(script, _args(data, tmp_path / "full", 40), env)
    assert full.wait(timeout=300) == 0
    cut = tmp_path / "cut"
    proc = _torchrun(script, _args(data, cut, 40), env, start_new_session=True)
    state = cut / "state" / "state.json"
    deadline = time.time() + 240
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text())["history"]):
        time.sleep(0.05)
    # every process of the job at once (torchrun's workers are not all in its process group)
    subprocess.run(["pkill", "-9", "-f", "--", f"--out {cut}"])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists()
    again = _torchrun(script, _args(data, cut, 40), env)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert _history(cut) == _history(tmp_path / "full")
    # the same folder with another number of processes is refused, in one line
    single = subprocess.run([sys.executable, "-m", "ferkit", *map(str, _args(data, cut, 50))], env=env,
                            capture_output=True, text=True)
    assert single.returncode == 1 and "trained by 2 process(es)" in single.stderr.strip().splitlines()[-1]


def test_torchrun_environment_is_checked(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert from_env() == Dist()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FerkitError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        from_env()
    for k, v in (("RANK", "3"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "localhost"), ("MASTER_PORT", "1")):
        monkeypatch.setenv(k, v)
    with pytest.raises(FerkitError, match="inconsistent torchrun environment: RANK=3"):
        from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(FerkitError, match="whole numbers"):
        from_env()


def test_a_dead_rank_ends_the_other_with_one_line(ddp_data, tmp_path):
    """Rank 1 dies in its first epoch; rank 0 must not hang but end with one clear line. The two
    ranks are started by hand (torchrun's launcher would kill rank 0 itself, hiding ferkit's line)."""
    import socket

    data, _, env = ddp_data
    dying = tmp_path / "dying.py"
    dying.write_text(_RANK_RECORDER.replace("main()\n", "") + """
import ferkit.train.loop as loop
real_epoch = loop.Trainer.train_one_epoch
def die(self, *a, **k):
    if self.dist.rank == 1:
        os._exit(3)
    return real_epoch(self, *a, **k)
loop.Trainer.train_one_epoch = die
main()
""")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(dying), *map(str, _args(data, tmp_path / "dead"))],
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "FERKIT_DIST_TIMEOUT": "30"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=240) for p in procs]
    assert procs[1].returncode == 3 and procs[0].returncode == 1
    last = results[0][1].strip().splitlines()[-1]
    assert last.startswith("ferkit: error: rank 0: another process stopped or timed out"), results[0][1]
    assert "Traceback" not in results[0][1]


def test_a_study_in_two_shards_equals_the_unsharded_study(tmp_path, capsys):
    from ferkit.cli import run
    from ferkit.synth import generate_faces

    def faces(name, n, seed):
        return generate_faces(tmp_path / name, per_class=n, classes=["happy", "sad"], size=32, seed=seed, workers=1,
                              progress=False)
    real, val, test, syn = faces("real", 8, 1), faces("val", 4, 2), faces("test", 6, 3), faces("syn", 16, 4)

    def study(out, *extra):
        return run(["study", "--real-train", str(real), "--val", str(val), "--test", str(test), "--synthetic",
                    str(syn), "--out", str(out), "--arch", "tiny", "--epochs", "1", "--image-size", "32",
                    "--batch-size", "16", "--ratios", "0,1", "--seeds", "2", "--real-per-class", "6",
                    "--no-progress", *extra])
    assert study(tmp_path / "whole") == 0
    assert study(tmp_path / "split", "--shard", "1/2") == 0
    assert "remain" in capsys.readouterr().out and not (tmp_path / "split" / "table.csv").exists()
    assert study(tmp_path / "split", "--report") == 1                     # shard 2 not run yet: one line
    assert "not finished yet" in capsys.readouterr().err
    assert study(tmp_path / "split", "--shard", "2/2") == 0
    assert (tmp_path / "split" / "table.csv").read_text() == (tmp_path / "whole" / "table.csv").read_text()
    ran = {p.name for p in (tmp_path / "split" / "runs").iterdir()}
    assert ran == {p.name for p in (tmp_path / "whole" / "runs").iterdir()} and len(ran) == 8
    assert study(tmp_path / "split", "--report") == 0
    for bad in ("3/2", "0/2", "1-2", "x/y", "1/0"):
        capsys.readouterr()
        assert study(tmp_path / "bad", "--shard", bad) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--shard" in err[0], err


def test_two_shards_finishing_side_by_side_still_write_the_table(tmp_path, capsys, monkeypatch):
    """Shard 2 starts while shard 1 is still training and finishes first; shard 1, finishing last,
    must find shard 2's runs on disk (not only those finished when it started) and write the table."""
    from ferkit.cli import run
    from ferkit.experiments import study as study_mod
    from ferkit.synth import generate_faces

    def faces(name, n, seed):
        return generate_faces(tmp_path / name, per_class=n, classes=["happy", "sad"], size=32, seed=seed, workers=1,
                              progress=False)
    real, val, test, syn = faces("real", 8, 1), faces("val", 4, 2), faces("test", 6, 3), faces("syn", 16, 4)
    out = tmp_path / "split"

    def study(*extra):
        return run(["study", "--real-train", str(real), "--val", str(val), "--test", str(test), "--synthetic",
                    str(syn), "--out", str(out), "--arch", "tiny", "--epochs", "1", "--image-size", "32",
                    "--batch-size", "16", "--ratios", "0,1", "--seeds", "1", "--real-per-class", "6",
                    "--no-progress", *extra])
    real_execute, calls = study_mod._execute, []

    def execute(*a, **k):
        result = real_execute(*a, **k)
        calls.append(1)
        if len(calls) == 1:              # shard 1's first run is done: shard 2 starts and finishes now
            assert study("--shard", "2/2") == 0
            assert not (out / "table.csv").exists()
        return result
    monkeypatch.setattr(study_mod, "_execute", execute)
    assert study("--shard", "1/2") == 0
    assert (out / "table.csv").exists(), capsys.readouterr().out
    assert len(list((out / "runs").iterdir())) == 4 and len(calls) == 4


def test_two_process_gan_training(ddp_data, tmp_path):
    data, script, env = ddp_data
    out = tmp_path / "gan"
    args = ["gan", "train", "--data", data / "train", "--out", out, "--image-size", "32", "--iterations", "10",
            "--batch-size", "8", "--g-width", "8", "--d-width", "8", "--g-res-blocks", "1", "--d-layers", "3",
            "--held-out", "3", "--log-every", "5", "--checkpoint-every", "5", "--sample-every", "5"]
    proc = _torchrun(script, args, env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.count("iterations,") == 1
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    rank1 = Path(f"{env['FERKIT_WRITES']}.1")
    assert not rank1.exists() or not [p for p in rank1.read_text().splitlines() if p.startswith(str(out))]
    from ferkit.synth.gan import load_generator
    g, rec, _ = load_generator(out)
    assert rec.epoch == 10 and rec.kind == "generator"
