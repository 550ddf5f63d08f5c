"""One way to open a model (ferkit.models.open_model): bundled names, run folders, checkpoint files
and ONNX exports resolved once, the kind checked once, the backend chosen once, and test-time
augmentation averaged in one place for every backend."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.errors import FerkitError
from ferkit.models import CheckpointRecord, InputSpec, create_model, open_model, save_checkpoint

CLASSES = ("angry", "happy", "sad")
SIZE = 32


def _classifier(path: Path, temperature: float = 1.0, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("tiny", len(CLASSES), SIZE).eval()
    for m in model.modules():   # trained-looking batch norms, so folding them changes something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(model, path, CheckpointRecord("tiny", CLASSES, InputSpec(SIZE, mean=(0.5,), std=(0.25,)),
                                                         temperature=temperature))


def _generator(path: Path) -> Path:
    from ferkit.models.gan import create_generator

    path.parent.mkdir(parents=True, exist_ok=True)
    g = create_generator(len(CLASSES), SIZE, width=8, res_blocks=1)
    return save_checkpoint(g, path, CheckpointRecord("stargan", CLASSES, InputSpec(SIZE), kind="generator",
                                                     model_args={"width": 8, "res_blocks": 1}))


def _faces(n: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)


def _needs_onnx():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- resolving
def test_run_folder_checkpoint_file_and_bundled_name_open_the_same_way(tmp_path):
    ckpt = _classifier(tmp_path / "run" / "best.safetensors")
    by_folder = open_model(tmp_path / "run", device="cpu")
    by_file = open_model(str(ckpt), device="cpu")
    assert by_folder.path == by_file.path == ckpt
    assert by_folder.name == "torch" and by_folder.classes == CLASSES and by_folder.image_size == SIZE
    assert np.array_equal(by_folder.logits(_faces()), by_file.logits(_faces()))
    bundled = open_model("fer2013-vgg", device="cpu")
    assert bundled.path.name == "fer2013-vgg.safetensors" and len(bundled.classes) == 7
    default = open_model(None, device="cpu")   # the default, on onnxruntime through its export when installed
    assert default.path.name in ("wild-vgg16.safetensors", "wild-vgg16.onnx")
    assert open_model(None, device="cpu", backend="torch").path.name == "wild-vgg16.safetensors"
    assert open_model(tmp_path / "run").logits(_faces(0)).shape == (0, len(CLASSES))


def test_missing_and_pickled_models_are_one_line(tmp_path):
    with pytest.raises(FerkitError, match="does not exist") as exc:
        open_model(tmp_path / "nope.safetensors")
    _one_line(exc)
    (tmp_path / "m.pt").write_bytes(b"\x80\x04not really")
    with pytest.raises(FerkitError, match="never unpickles"):
        open_model(tmp_path / "m.pt")
    with pytest.raises(FerkitError, match="unknown backend 'tf'"):
        open_model(None, backend="tf")
    with pytest.raises(FerkitError, match="unknown device 'gpu'"):
        open_model(None, device="gpu")


# ----------------------------------------------------------------------------- kinds
def test_a_generator_where_a_classifier_is_needed_says_so_in_one_line(tmp_path):
    gen = _generator(tmp_path / "gan" / "generator.safetensors")
    clf = _classifier(tmp_path / "run" / "best.safetensors")
    with pytest.raises(FerkitError, match="is an expression generator .*but a classifier .*is needed here") as exc:
        open_model(gen)
    _one_line(exc)
    with pytest.raises(FerkitError, match="is a GAN run"):
        open_model(tmp_path / "gan")
    with pytest.raises(FerkitError, match="is a classifier .*but an expression generator .*is needed here"):
        open_model(clf, kind="generator")
    with pytest.raises(FerkitError, match="is a classifier run"):
        open_model(tmp_path / "run", kind="generator")
    with pytest.raises(FerkitError, match="bundled model fer2013-editor is an expression generator"):
        open_model("fer2013-editor")           # refused from its listing, whether or not its file is installed
    with pytest.raises(FerkitError, match="bundled model ferplus-vgg16 is a classifier"):
        open_model("ferplus-vgg16", kind="generator")
    with pytest.raises(FerkitError, match="unknown model kind"):
        open_model(clf, kind="editor")
    g = open_model(tmp_path / "gan", kind="generator", device="cpu")
    assert g.path == gen and g.record.kind == "generator" and isinstance(g.module, torch.nn.Module)
    with pytest.raises(FerkitError, match="gives no class scores"):
        g.logits(_faces())


# ----------------------------------------------------------------------------- TTA, once
def _reference(ckpt: Path, faces: np.ndarray, tta: str) -> np.ndarray:
    """The average as ferkit computed it before the seam: each view of the normalised input
    through the unfolded model, softmax of logits / temperature, mean over views, log."""
    from ferkit.models import load_checkpoint
    from ferkit.runtime import tta_views

    model, record = load_checkpoint(ckpt)
    with torch.no_grad():
        x = record.input.to_tensor(faces)
        probs = torch.stack([torch.softmax(model(v) / record.temperature, 1) for v in tta_views(x, tta)]).mean(0)
    return probs.clamp_min(1e-12).log().numpy()


@pytest.mark.parametrize("tta", ["flip", "crops"])
def test_tta_average_is_the_old_result_for_every_batch_size(tmp_path, tta):
    from ferkit.predict import Recognizer
    from ferkit.runtime import TTA_VIEWS, predict_logits

    ckpt = _classifier(tmp_path / "m.safetensors", temperature=2.0)
    m = open_model(ckpt, device="cpu")
    faces = _faces(13)
    want = _reference(ckpt, faces, tta)
    for batch in (1, 7, 256):                       # chunks of batch // views faces, and fewer than one view's worth
        got = m.logits(faces, tta=tta, batch_size=batch)
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert len(TTA_VIEWS) == 3 and TTA_VIEWS[tta] in (2, 10)
    # the bare-module path (training's validation, benchmarks) is the same function
    model, rec = m.module, m.record
    np.testing.assert_allclose(predict_logits(model, faces, rec.input, torch.device("cpu"), tta=tta,
                                              temperature=rec.temperature).numpy(), want, atol=1e-4)
    # the Recognizer's default TTA and a per-call one give the same
    probs = m.probabilities(faces, tta=tta)
    np.testing.assert_allclose(Recognizer(m, tta=tta).probabilities(faces), probs, atol=1e-6)
    np.testing.assert_allclose(Recognizer(m).probabilities(faces, tta=tta), probs, atol=1e-6)
    assert not np.allclose(m.probabilities(faces), probs, atol=1e-4)   # TTA did something


def test_a_backend_of_your_own_gets_the_same_tta(tmp_path):
    from ferkit.predict import Recognizer

    m = open_model(_classifier(tmp_path / "m.safetensors"), device="cpu")

    class Own:                                      # classes, image_size and logits(faces, batch_size=)
        classes, image_size, path = m.classes, m.image_size, "own"

        def logits(self, faces, batch_size=256):
            return m.logits(faces, batch_size=batch_size)

    faces = _faces(5)
    np.testing.assert_allclose(Recognizer(Own(), tta="crops").probabilities(faces),
                               m.probabilities(faces, tta="crops"), atol=1e-6)


def test_calibrated_false_gives_the_models_own_logits(tmp_path):
    ckpt = _classifier(tmp_path / "m.safetensors", temperature=4.0)
    m = open_model(ckpt, device="cpu")
    faces = _faces(4)
    np.testing.assert_allclose(m.logits(faces, calibrated=False), m.logits(faces) * 4.0, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- ONNX
def test_onnx_file_runs_on_onnxruntime_and_refuses_what_it_cannot_do(tmp_path):
    _needs_onnx()
    from ferkit.export import export_onnx
    from ferkit.models import find_model

    ckpt = _classifier(tmp_path / "run" / "best.safetensors", temperature=2.0)
    onnx_path = tmp_path / "m.onnx"
    export_onnx(tmp_path / "run", onnx_path)
    o = open_model(onnx_path)
    t = open_model(ckpt, backend="torch", device="cpu")
    assert o.name == "onnx" and o.path == onnx_path and o.classes == CLASSES and o.record.temperature == 2.0
    faces = _faces(11)
    for tta in ("none", "flip", "crops"):
        np.testing.assert_allclose(o.logits(faces, tta=tta, batch_size=8), t.logits(faces, tta=tta), atol=1e-4)
    np.testing.assert_allclose(o.logits(faces, calibrated=False), t.logits(faces, calibrated=False), atol=1e-4)
    for kwargs, why in (({"device": "cuda"}, "runs on the CPU only, not on 'cuda'"),
                        ({"device": "cuda:1"}, "runs on the CPU only"),
                        ({"precision": "bf16"}, "not bf16")):
        with pytest.raises(FerkitError, match=why) as exc:
            open_model(onnx_path, **kwargs)
        _one_line(exc)
        with pytest.raises(FerkitError, match=why):       # a checkpoint with backend onnx: its export, same rule
            open_model(ckpt, backend="onnx", **kwargs)
    assert open_model(onnx_path, device="cpu", precision="auto").name == "onnx"
    with pytest.raises(FerkitError, match="is an ONNX file: use backend 'onnx' or 'auto'"):
        open_model(onnx_path, backend="torch")
    with pytest.raises(FerkitError, match="a generator is opened from its checkpoint"):
        open_model(onnx_path, kind="generator")
    with pytest.raises(FerkitError, match="is an ONNX file: export the ferkit checkpoint"):
        export_onnx(onnx_path, tmp_path / "again.onnx")
    with pytest.raises(FerkitError, match="is an ONNX file: give the ferkit checkpoint"):
        find_model(onnx_path)
    with pytest.raises(FerkitError, match="ONNX model .* does not exist"):
        open_model(tmp_path / "none.onnx")


def test_export_beside_a_checkpoint_is_chosen_once(tmp_path):
    _needs_onnx()
    from ferkit.evaluate import evaluate
    from ferkit.export import export_onnx

    ckpt = _classifier(tmp_path / "run" / "best.safetensors")
    assert open_model(tmp_path / "run", device="cpu").name == "torch"            # no export yet
    export_onnx(tmp_path / "run", tmp_path / "run" / "best.onnx")
    assert open_model(tmp_path / "run", device="cpu").name == "onnx"
    assert open_model(tmp_path / "run", device="cpu").path == tmp_path / "run" / "best.onnx"
    assert open_model(ckpt, device="cpu", beside=False).name == "torch"
    assert open_model(ckpt, device="cpu", precision="bf16").name == "torch"      # not fp32: PyTorch
    # evaluate runs what it is given: the checkpoint on PyTorch, the .onnx file on onnxruntime
    from conftest import make_folder

    test = make_folder(tmp_path / "test", CLASSES, 3, size=SIZE)
    a = evaluate(tmp_path / "run", test, out_dir=False, precision="fp32", device="cpu", progress=False)
    b = evaluate(tmp_path / "run" / "best.onnx", test, out_dir=False, device="cpu", progress=False)
    assert a.n == b.n == 9 and a.accuracy == b.accuracy and abs(a.nll - b.nll) < 1e-4


# ----------------------------------------------------------------------------- the import circle
def test_bundled_does_not_import_the_prediction_code():
    import ferkit.bundled as bundled

    tree = ast.parse(Path(bundled.__file__).read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("predict")], imported
    code = ("import sys, ferkit.bundled as b; b.is_model_path('clip.mp4'); b.is_model_path('x.onnx'); "
            "print(sorted(m for m in sys.modules if m.startswith('ferkit.predict')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert not bundled.is_model_path("clip.mp4") and bundled.is_model_path("missing.onnx")
