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


def test_checkpoint_round_trip_and_record(tmp_path):
    torch.manual_seed(0)
    m = models.create_model("seed", 3, 32).eval()
    path = models.save_checkpoint(m, tmp_path / "w.safetensors",
                                  {"arch": "seed", "classes": ["angry", "happy", "sad"], "image_size": 32})
    loaded, record = models.load_checkpoint(path)
    assert record["classes"] == ["angry", "happy", "sad"] and record["image_size"] == 32
    assert record["format"] == models.CHECKPOINT_FORMAT and "ferkit_version" in record
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(m(x), loaded(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


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
                                   {"arch": "tiny", "classes": ["a", "b", "c"], "image_size": 32})
    # a checkpoint whose record names another architecture than its weights
    from safetensors.torch import load_file
    weights = load_file(str(other))
    forged = tmp_path / "forged.safetensors"
    save_file(weights, str(forged), metadata={"ferkit": '{"arch": "seed", "classes": ["a","b","c"], "image_size": 32}'})
    with pytest.raises(FerkitError, match="do not match"):
        models.load_checkpoint(forged)
    with pytest.raises(FerkitError, match="not a ferkit run folder"):
        models.resolve_checkpoint(tmp_path / "..")
    with pytest.raises(FerkitError, match="does not exist"):
        models.load_checkpoint(tmp_path / "nope.safetensors")
