"""Temperature scaling: fitting, ECE/NLL, the record's temperature in evaluate, the Recognizer and ONNX."""
import csv
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_folder

from ferkit.cli import run
from ferkit.errors import FerkitError
from ferkit.train.calibrate import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_table,
)

CLASSES = ("angry", "happy", "sad")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ferkit: error: "), err
    return err


# ----------------------------------------------------------------------------- metrics
def test_ece_equals_the_hand_computed_value():
    probs = np.array([[0.95, 0.03, 0.02],    # bin 15 (14/15, 1], right
                      [0.95, 0.03, 0.02],    # bin 15, wrong            -> |0.5 - 0.95| x 2/5
                      [0.50, 0.30, 0.20],    # bin 8 (7/15, 8/15], right -> |1 - 0.5| x 1/5
                      [0.20, 0.62, 0.18],    # bin 10 (9/15, 10/15], wrong -> |0 - 0.62| x 1/5
                      [0.10, 0.20, 0.70]])   # bin 11 (10/15, 11/15], right -> |1 - 0.7| x 1/5
    labels = np.array([0, 1, 0, 0, 2])
    assert expected_calibration_error(probs, labels) == pytest.approx((2 * 0.45 + 0.5 + 0.62 + 0.3) / 5)
    table = reliability_table(probs, labels)
    assert table["count"][14] == 2 and table["count"][7] == 1 and sum(table["count"]) == 5
    assert table["accuracy"][14] == 0.5 and table["confidence"][9] == pytest.approx(0.62)
    assert table["accuracy"][0] is None
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0     # sure and right: calibrated


def test_nll_is_cross_entropy_for_labels_and_distributions():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(20, 4, generator=g, dtype=torch.float64) * 3, torch.randint(0, 4, (20,), generator=g)
    want = torch.nn.functional.cross_entropy(logits / 2.5, labels).item()
    assert negative_log_likelihood(logits, labels.numpy(), 2.5) == pytest.approx(want, rel=1e-9)
    votes = torch.rand(20, 4, generator=g, dtype=torch.float64) * 10     # vote counts: normalised to a distribution
    want = torch.nn.functional.cross_entropy(logits, votes / votes.sum(1, keepdim=True)).item()
    assert negative_log_likelihood(logits, votes.numpy()) == pytest.approx(want, rel=1e-9)


def _toy_logits(scale: float, seed: int = 0):
    """A logistic-regression classifier on overlapping Gaussian classes, its weights x ``scale``:
    (validation logits, labels, test logits, labels)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [1.5, 0.0], [0.0, 1.5]])
    y = torch.randint(0, 3, (1200,), generator=g)
    x = centres[y] + torch.randn(1200, 2, generator=g)
    layer = torch.nn.Linear(2, 3)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(x[:400]), y[:400])
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        layer.weight *= scale
        layer.bias *= scale
        z = layer(x).numpy()
    return z[400:800], y[400:800].numpy(), z[800:], y[800:].numpy()


def test_calibration_lowers_the_nll_of_an_over_confident_model():
    val_z, val_y, test_z, test_y = _toy_logits(10.0)
    t = fit_temperature(val_z, val_y)
    assert t > 3                                                        # weights x10: T near 10
    assert t == fit_temperature(val_z, val_y)                           # deterministic
    grid = min(negative_log_likelihood(val_z, val_y, s) for s in np.geomspace(0.1, 50, 400))
    assert negative_log_likelihood(val_z, val_y, t) <= grid + 1e-9      # the minimum, not a point near it
    for z, y in ((val_z, val_y), (test_z, test_y)):                     # and it holds on unseen faces
        assert negative_log_likelihood(z, y, t) < 0.8 * negative_log_likelihood(z, y)
        p_raw, p_cal = (np.exp(z / s) / np.exp(z / s).sum(1, keepdims=True) for s in (1.0, t))
        assert expected_calibration_error(p_cal, y) < expected_calibration_error(p_raw, y)
        assert (p_raw.argmax(1) == p_cal.argmax(1)).all()             # accuracy unchanged
    fair_t = fit_temperature(*_toy_logits(1.0)[:2])                     # a fitted logistic regression is calibrated
    assert 0.8 < fair_t < 1.25


def test_fit_takes_vote_distributions():
    val_z, val_y, _, _ = _toy_logits(10.0)
    assert fit_temperature(val_z, np.eye(3)[val_y] * 10) == pytest.approx(fit_temperature(val_z, val_y), rel=1e-9)


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny trained checkpoint made over-confident (output layer x10), and the data."""
    from ferkit.models import load_checkpoint, save_checkpoint
    from ferkit.train import TrainConfig, train

    root = tmp_path_factory.mktemp("cal")
    tr = make_folder(root / "train", CLASSES, 16, seed=1)
    va = make_folder(root / "val", CLASSES, 8, seed=2)
    train(TrainConfig(str(tr), str(va), str(root / "run"), arch="tiny", epochs=2, image_size=32, batch_size=16,
                      lr=1e-3, progress=False))
    model, record = load_checkpoint(root / "run")
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.weight *= 10
        head.bias *= 10
    save_checkpoint(model, root / "over.safetensors", record)
    return root


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_calibrate_writes_a_copy_with_the_temperature(models, capsys):
    from safetensors.torch import load_file

    from ferkit.models import read_checkpoint_record

    over = models / "over.safetensors"
    before = _digest(over)
    assert run(["calibrate", str(over), "--val-dir", str(models / "val"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "after" in out
    cal = models / "over.calibrated.safetensors"
    record = read_checkpoint_record(cal)
    assert record.temperature > 1.5
    c = record.calibration
    assert c["n"] == 24 and c["after"]["nll"] < c["before"]["nll"] and c["before"]["temperature"] == 1.0
    assert c["after"]["accuracy"] == c["before"]["accuracy"]
    assert _digest(over) == before                                     # the original is untouched
    a, b = load_file(str(over)), load_file(str(cal))                   # weights copied exactly
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint_record(models / "run").temperature == 1.0  # an uncalibrated record
    # again: the copy exists, so --overwrite is needed; the input itself is never the output
    assert run(["calibrate", str(over), "--val-dir", str(models / "val")]) == 1
    assert "--overwrite" in _one_line_error(capsys)
    assert run(["calibrate", str(over), "--val-dir", str(models / "val"), "--out", str(over), "--overwrite"]) == 1
    assert "never overwrites" in _one_line_error(capsys)
    assert _digest(over) == before


def test_old_records_load_with_temperature_one(models, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ferkit.models import read_checkpoint_record

    src = models / "over.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ferkit"])
    meta.pop("temperature")
    meta.pop("calibration")
    save_file(load_file(str(src)), str(tmp_path / "old.safetensors"), metadata={"ferkit": json.dumps(meta)})
    record = read_checkpoint_record(tmp_path / "old.safetensors")
    assert record.temperature == 1.0 and record.calibration == {} and "temperature" not in record.extra


def test_evaluate_and_recognizer_apply_the_temperature(models, tmp_path):
    from ferkit.evaluate import evaluate
    from ferkit.models import load_checkpoint
    from ferkit.predict import Recognizer
    from ferkit.train.calibrate import calibrate_checkpoint

    over, cal = models / "over.safetensors", tmp_path / "cal.safetensors"
    r = calibrate_checkpoint(over, models / "val", cal, progress=False)
    raw = evaluate(over, models / "val", tmp_path / "raw", precision="fp32", progress=False)
    good = evaluate(cal, models / "val", tmp_path / "cal", precision="fp32", progress=False)
    assert good.accuracy == raw.accuracy and good.temperature == r.temperature and raw.temperature == 1.0
    assert good.nll < raw.nll and good.nll == pytest.approx(r.after["nll"], rel=1e-5)
    assert good.ece == pytest.approx(r.after["ece"], abs=1e-6)
    metrics = json.loads((tmp_path / "cal" / "metrics.json").read_text())
    assert metrics["temperature"] == r.temperature and metrics["ece_bins"] == 15
    assert metrics["nll"] == pytest.approx(good.nll) and sum(metrics["reliability"]["count"]) == good.n
    assert (tmp_path / "cal" / "reliability.png").stat().st_size > 1000
    assert "ECE" in (tmp_path / "cal" / "report.txt").read_text()
    with open(tmp_path / "cal" / "predictions.csv") as fh:     # ECE again, from the written probabilities
        rows = list(csv.DictReader(fh))
    probs = np.array([[float(row[f"p_{c}"]) for c in CLASSES] for row in rows])
    assert expected_calibration_error(probs, [CLASSES.index(row["true"]) for row in rows]) == pytest.approx(
        good.ece, abs=1e-4)
    # the Recognizer (torch backend): softmax(logits / T)
    faces = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    model, _ = load_checkpoint(over)
    with torch.no_grad():
        logits = model(torch.from_numpy(faces).float()[:, None] / 255)
    want = torch.softmax(logits / r.temperature, 1).numpy()
    got = Recognizer.load(cal, detect=False, device="cpu").probabilities(faces)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(Recognizer.load(over, detect=False, device="cpu").probabilities(faces)
                  - torch.softmax(logits, 1).numpy()).max() < 1e-5


def test_onnx_export_carries_the_temperature(models, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from ferkit.models import load_checkpoint
    from ferkit.predict import Recognizer

    cal = tmp_path / "cal.safetensors"
    assert run(["calibrate", str(models / "over.safetensors"), "--temperature", "3.5", "--out", str(cal)]) == 0
    assert run(["export", str(cal), "--out", str(tmp_path / "cal.onnx")]) == 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "cal.onnx")).metadata_props}
    assert json.loads(meta["ferkit"])["temperature"] == 3.5
    x = np.random.default_rng(1).random((6, 1, 32, 32), dtype=np.float32)
    sess = ort.InferenceSession(str(tmp_path / "cal.onnx"), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"input": x})[0]
    model, _ = load_checkpoint(models / "over.safetensors")
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)) / 3.5, 1).numpy()
    assert np.abs(probs - want).max() < 1e-5
    faces = (x[:, 0] * 255).astype(np.uint8)                     # both backends of the Recognizer agree
    p_onnx = Recognizer.load(tmp_path / "cal.onnx", detect=False).probabilities(faces)
    p_torch = Recognizer.load(cal, detect=False, device="cpu").probabilities(faces)
    assert np.abs(p_onnx - p_torch).max() < 1e-5


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e308", "0.001", "101"])
def test_bad_temperature_is_one_line(models, tmp_path, capsys, value):
    out = tmp_path / "x.safetensors"
    assert run(["calibrate", str(models / "over.safetensors"), f"--temperature={value}", "--out", str(out)]) == 1
    assert "--temperature must be a number from 0.01 to 100" in _one_line_error(capsys)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_calibrate_needs_data_or_a_temperature(models, capsys):
    assert run(["calibrate", str(models / "over.safetensors")]) == 1
    assert "--val-dir" in _one_line_error(capsys)


@pytest.mark.parametrize("value", [-2.0, 0, "warm", math.inf, 1e308])
def test_damaged_temperature_in_a_record_is_one_line(models, tmp_path, capsys, value):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ferkit.models import CheckpointRecord, InputSpec

    src = models / "over.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ferkit"])
    meta["temperature"] = value
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(src)), str(bad), metadata={"ferkit": json.dumps(meta)})
    for argv in (["evaluate", str(bad), "--test-dir", str(models / "val"), "--out", str(tmp_path / "ev")],
                 ["predict", str(bad), str(next((models / "val").rglob("*.png"))), "--no-detect",
                  "--out", str(tmp_path / "pred")],
                 ["export", str(bad), "--out", str(tmp_path / "bad.onnx")]):
        assert run(argv) == 1
        line = _one_line_error(capsys)
        assert "bad.safetensors" in line and "temperature must be a number from 0.01 to 100" in line
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert written == ["bad.safetensors"]                        # nothing written (predict's output lock aside)
    with pytest.raises(FerkitError, match="temperature"):
        CheckpointRecord("tiny", CLASSES, InputSpec(32), temperature=-1.0)


# ----------------------------------------------------------------------------- a temperature per domain
@pytest.fixture(scope="module")
def per_domain(models):
    """``over`` calibrated per domain on two sets: the validation faces and a darker second domain."""
    from PIL import Image

    dark = make_folder(models / "dark", CLASSES, 8, seed=3)
    for f in dark.rglob("*.png"):
        Image.fromarray((np.asarray(Image.open(f).convert("L")) * 0.4).astype(np.uint8)).save(f)
    out = models / "per-domain.safetensors"
    assert run(["calibrate", str(models / "over.safetensors"), "--val-dir", str(models / "val"), "--val-dir",
                str(dark), "--per-domain", "--out", str(out), "--no-progress"]) == 0
    return out


def _by_hand(checkpoint, spec, faces):
    """Raw logits and softmax(logits / sum_d P(d | embedding) T_d), computed here from the record."""
    from ferkit.models import load_checkpoint

    model, record = load_checkpoint(checkpoint)
    body, head = torch.nn.Sequential(*list(model)[:-1]), list(model)[-1]
    assert isinstance(head, torch.nn.Linear)
    d = spec or record.domain_temperature
    with torch.no_grad():
        h = body(record.input.to_tensor(faces, torch.device("cpu")))
        z = head(h)
        read = torch.softmax(h @ torch.tensor(d["weight"]).T + torch.tensor(d["bias"]), 1)
        t = read @ torch.tensor(d["temperatures"])
    return z.numpy(), torch.softmax(z / t[:, None], 1).numpy(), t.numpy()


def test_per_domain_temperature_is_fitted_stored_and_applied(models, per_domain, capsys):
    from ferkit.models import open_model, read_checkpoint_record
    from ferkit.predict import Recognizer

    record = read_checkpoint_record(per_domain)
    d = record.domain_temperature
    assert d["domains"] == [f"{models.name}/val", "dark"] and len(d["temperatures"]) == 2 and len(d["weight"]) == 2
    assert all(t > 1 for t in d["temperatures"])            # the x10 head is over-confident in both domains
    faces = np.random.default_rng(2).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    raw, want, t = _by_hand(per_domain, None, faces)
    assert not np.allclose(t, t[0])                          # each face its own temperature
    got = Recognizer.load(per_domain, detect=False, device="cpu").probabilities(faces)
    assert np.abs(got - want).max() < 1e-5 and (got.argmax(1) == raw.argmax(1)).all()
    opened = open_model(per_domain, backend="torch", device="cpu")
    assert np.abs(opened.logits(faces, calibrated=False) - raw).max() < 1e-4      # the model's own logits
    # evaluate names what it applied: no single temperature, the domains instead
    assert run(["evaluate", str(per_domain), "--test-dir", str(models / "val"), "--out", str(models / "pd-eval"),
                "--no-progress"]) == 0
    metrics = json.loads((models / "pd-eval" / "metrics.json").read_text())
    assert metrics["temperature"] is None and metrics["temperature_per_domain"] == d["domains"]
    assert "a temperature per domain" in capsys.readouterr().out
    # calibrating again without --per-domain replaces it
    again = models / "pooled-again.safetensors"
    assert run(["calibrate", str(per_domain), "--val-dir", str(models / "val"), "--out", str(again)]) == 0
    assert read_checkpoint_record(again).domain_temperature == {}


def test_onnx_export_carries_the_per_domain_temperature(per_domain, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from ferkit.models import open_model

    assert run(["export", str(per_domain), "--out", str(tmp_path / "pd.onnx")]) == 0
    faces = np.random.default_rng(3).integers(0, 256, (9, 32, 32), dtype=np.uint8)
    torch_model = open_model(per_domain, backend="torch", device="cpu")
    onnx_model = open_model(tmp_path / "pd.onnx", backend="onnx")
    for calibrated in (True, False):
        a, b = torch_model.logits(faces, calibrated=calibrated), onnx_model.logits(faces, calibrated=calibrated)
        assert np.abs(a - b).max() < 1e-4, calibrated


@pytest.mark.parametrize("extra,message", [
    ([], "two or more --val-dir"),
    (["--domain-temperatures", "1.5,2"], "two or more --val-dir"),
])
def test_per_domain_needs_several_domains(models, tmp_path, capsys, extra, message):
    out = tmp_path / "x.safetensors"
    assert run(["calibrate", str(models / "over.safetensors"), "--val-dir", str(models / "val"), "--per-domain",
                "--out", str(out), *extra]) == 1
    assert message in _one_line_error(capsys) and not out.exists()


def test_domain_temperatures_are_checked(models, tmp_path, capsys):
    base = ["calibrate", str(models / "over.safetensors"), "--val-dir", str(models / "val"), "--val-dir",
            str(models / "val"), "--out", str(tmp_path / "x.safetensors")]
    assert run([*base, "--domain-temperatures", "1,2"]) == 1
    assert "needs --per-domain" in _one_line_error(capsys)
    assert run([*base, "--per-domain", "--domain-temperatures", "1,2,3"]) == 1
    assert "3 domain temperatures for 2" in _one_line_error(capsys)
    assert run([*base, "--per-domain", "--domain-temperatures", "1,-2"]) == 1
    assert "must be a number from 0.01 to 100" in _one_line_error(capsys)
    with pytest.raises(SystemExit) as stop:
        run([*base, "--per-domain", "--domain-temperatures", "abc"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2
    assert len(err.splitlines()) == 1 and "give numbers separated by commas" in err, err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("damage", [{"temperatures": [1.0]}, {"weight": [[float("nan")], [1.0]]}, {"bias": "x"}])
def test_damaged_per_domain_temperature_is_one_line(per_domain, tmp_path, capsys, damage):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(per_domain), framework="pt") as fh:
        meta = json.loads(fh.metadata()["ferkit"])
    meta["domain_temperature"].update(damage)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(per_domain)), str(bad), metadata={"ferkit": json.dumps(meta)})
    assert run(["predict", str(bad), str(next(per_domain.parent.joinpath("val").rglob("*.png"))), "--no-detect",
                "--out", str(tmp_path / "pred")]) == 1
    line = _one_line_error(capsys)
    assert "bad.safetensors" in line and "domain temperature" in line
