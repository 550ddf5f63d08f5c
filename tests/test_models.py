import pickle

import pytest
import torch

from ferkit import models
from ferkit.errors import FerkitError


def test_seed_model_matches_reference_parameter_count():
    m = models.create_model("seed", num_classes=6, image_size=64)
    assert models.count_parameters(m) == 4_966_022
    convs = [l for l in m if isinstance(l, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    assert [l.p for l in m if isinstance(l, torch.nn.Dropout)] == [0.25, 0.25, 0.5]


@pytest.mark.parametrize("name", models.list_models())
def test_every_registered_model_forward_backward(name):
    torch.manual_seed(0)
    m = models.create_model(name, num_classes=4, image_size=48)
    x = torch.rand(3, 1, 48, 48)
    out = m(x)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_registry_refuses_duplicates_and_unknown_names():
    with pytest.raises(ValueError):
        models.register_model("seed")(lambda **k: None)
    with pytest.raises(FerkitError, match="unknown architecture"):
        models.create_model("resnet9000", 3)


def _record(arch="seed", classes=("angry", "happy", "sad"), size=32, **model_args):
    return models.CheckpointRecord(arch, tuple(classes), models.InputSpec(size), model_args)


def test_checkpoint_round_trip_and_record(tmp_path):
    torch.manual_seed(0)
    m = models.create_model("seed", 3, 32).eval()
    path = models.save_checkpoint(m, tmp_path / "w.safetensors", _record())
    loaded, record = models.load_checkpoint(path)
    assert record.classes == ("angry", "happy", "sad") and record.image_size == 32
    assert record.format_version == models.FORMAT_VERSION and record.ferkit_version
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(m(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


@pytest.mark.parametrize("arch,args", [("vgg", {"width": 8, "depths": (1, 2, 1), "dropout": 0.1}),
                                       ("resnet", {"width": 8, "depths": (1, 1, 1), "in_channels": 3})])
def test_model_arguments_round_trip_through_a_checkpoint(tmp_path, arch, args):
    torch.manual_seed(0)
    full = models.resolve_model_args(arch, 40, args)
    m = models.create_model(arch, 3, 40, **full).eval()
    spec = models.InputSpec(40, channels=full["in_channels"], mean=(0.5,), std=(0.25,))
    rec = models.CheckpointRecord(arch, ("angry", "happy", "sad"), spec, full)
    path = models.save_checkpoint(m, tmp_path / "m.safetensors", rec)
    loaded, back = models.load_checkpoint(path)
    assert back.model_args == full and back.input == spec
    faces = torch.randint(0, 256, (2, 40, 40), dtype=torch.uint8)
    x = spec.to_tensor(faces)
    assert x.shape == (2, full["in_channels"], 40, 40)
    assert torch.equal(m(x), loaded(back.input.to_tensor(faces)))
    # fp16 storage (the bundled model's): half the bytes, loads back as float32, outputs close
    half = models.save_checkpoint(m, tmp_path / "h.safetensors", rec, dtype=torch.float16)
    small, _ = models.load_checkpoint(half)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    assert next(small.parameters()).dtype == torch.float32
    assert torch.allclose(m(x), small(x), atol=1e-2)


def test_checkpoint_of_ferkit_0_1_still_loads():
    """tests/data/format1-tiny.safetensors was written by ferkit 0.1's save_checkpoint (format 1)."""
    from pathlib import Path
    model, rec = models.load_checkpoint(Path(__file__).parent / "data" / "format1-tiny.safetensors")
    assert rec.format_version == 1 and rec.arch == "tiny" and rec.model_args == {}
    assert rec.classes == ("angry", "happy", "sad") and rec.input == models.InputSpec(16)
    x = rec.input.to_tensor(torch.linspace(0, 255, 16 * 16 * 2).reshape(2, 16, 16).round().to(torch.uint8))
    want = torch.tensor([[0.0822, 0.0991, -0.1122], [0.0832, 0.1029, -0.1137]])  # logits under ferkit 0.1
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=2e-3)


def test_newer_format_and_bad_model_arguments_are_one_clear_error(tmp_path):
    import json

    from safetensors.torch import save_file
    m = models.create_model("tiny", 3, 16)
    newer = tmp_path / "newer.safetensors"
    save_file(m.state_dict(), str(newer), metadata={"ferkit": json.dumps(
        {**_record("tiny", size=16).to_json(), "format": "ferkit-checkpoint-99"})})
    with pytest.raises(FerkitError, match="newer ferkit"):
        models.load_checkpoint(newer)
    with pytest.raises(FerkitError, match="takes no argument depth .*accepted: width=32"):
        models.create_model("vgg", 3, 48, depth=3)
    with pytest.raises(FerkitError, match="too small for architecture 'seed' \\(minimum 24\\)"):
        models.create_model("seed", 3, 20)
    with pytest.raises(FerkitError, match="bad argument"):
        models.create_model("vgg", 3, 48, width=0)
    assert models.parse_model_args(["width=48", "depths=2,3", "dropout=0.5"]) == \
        {"width": 48, "depths": (2, 3), "dropout": 0.5}
    with pytest.raises(FerkitError, match="NAME=VALUE"):
        models.parse_model_args(["width"])


def test_bad_checkpoints_are_rejected_without_unpickling(tmp_path):
    from safetensors.torch import save_file

    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(FerkitError, match="not a safetensors checkpoint"):
        models.load_checkpoint(text)

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(FerkitError):
        models.load_checkpoint(pickled)

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(FerkitError, match="not a ferkit checkpoint"):
        models.load_checkpoint(plain)

    other = models.save_checkpoint(models.create_model("tiny", 3, 32), tmp_path / "tiny.safetensors",
                                   _record("tiny", ("angry", "happy", "sad")))
    # a checkpoint whose record names another architecture than its weights
    from safetensors.torch import load_file
    weights = load_file(str(other))
    forged = tmp_path / "forged.safetensors"
    import json
    save_file(weights, str(forged), metadata={"ferkit": json.dumps(_record("seed").to_json())})
    with pytest.raises(FerkitError, match="do not match"):
        models.load_checkpoint(forged)
    with pytest.raises(FerkitError, match="not a ferkit run folder"):
        models.resolve_checkpoint(tmp_path / "..")
    with pytest.raises(FerkitError, match="does not exist"):
        models.load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", models.list_models())
def test_batch_norm_folding_keeps_outputs(name):
    from ferkit.runtime import fuse_for_inference
    torch.manual_seed(0)
    m = models.create_model(name, num_classes=4, image_size=48).eval()
    for mod in m.modules():  # trained-looking statistics, so folding has something to fold
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    fused = fuse_for_inference(m)
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(m(x), fused(x), atol=1e-5)
    assert not [mod for mod in fused.modules() if isinstance(mod, torch.nn.BatchNorm2d)]  # all folded
    assert any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules()) == (name != "seed")  # m untouched
