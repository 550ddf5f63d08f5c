"""Export a ferkit checkpoint to ONNX (for onnxruntime, OpenCV DNN, browsers, mobile runtimes).

Example::

    ferkit export runs/exp1 --format onnx --out model.onnx
    ferkit predict model.onnx photos/ --backend onnx

The ONNX graph takes ``input``: float32 (batch, 1, S, S), the gray face scaled to [0, 1]
(uint8 / 255, after ferkit's decoding and resizing), with a dynamic batch axis; the model's own
normalisation (its input contract's mean/std) is part of the graph. It gives ``logits`` and
``probabilities`` (softmax), both (batch, classes). A calibrated checkpoint's temperature (``ferkit
calibrate``) is inside the graph: ``logits`` are the model's logits divided by it, so
``probabilities`` are the calibrated ones and no reader applies it again. The file's
metadata_props hold ``ferkit``: the checkpoint's JSON record (classes in output order, image size,
input contract, architecture and arguments, temperature, ferkit version) plus
``onnx_input``/``onnx_outputs`` descriptions; and plain ``classes`` (JSON list) and ``image_size``
keys for tools that do not parse the record.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .console import log
from .errors import FerkitError
from .files import atomic_path, file_sha256, make_dir
from .models import find_model, open_model
from .models.opened import export_beside  # noqa: F401  (its home before ferkit.models.opened)
from .runtime import require_finite

DEFAULT_OPSET = 17
#: Opsets the exporter is known to write and onnxruntime to run for ferkit's layers.
OPSETS = range(11, 22)


def _wrapped(model, spec, temperature: float = 1.0, per_domain: dict | None = None):
    """The exported module: [0, 1] gray input -> the model's normalisation -> logits (divided by the
    record's temperature unless it is 1), softmax. With a record's ``per_domain`` temperature
    (:mod:`ferkit.models.domain_temperature`) the logits are divided by each face's own, which is a
    third output."""
    class WithSoftmax(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            logits = self.net(spec.normalize(x))
            if temperature != 1.0:
                logits = logits / temperature
            return logits, torch.softmax(logits, dim=1)

    class WithDomainSoftmax(nn.Module):
        def __init__(self, net):
            super().__init__()
            from .models.domain_temperature import WithDomainTemperature

            self.net = WithDomainTemperature(net, per_domain)

        def forward(self, x):
            logits, t = self.net(spec.normalize(x))
            return logits, torch.softmax(logits, dim=1), t

    return (WithDomainSoftmax(model) if per_domain else WithSoftmax(model)).eval()


def _outputs(per_domain) -> tuple[str, ...]:
    return ("logits", "probabilities", "temperature") if per_domain else ("logits", "probabilities")


def _torch_export(module, example, path: Path, opset: int, outputs=("logits", "probabilities")) -> None:
    """torch.onnx.export with the TorchScript exporter (needs no onnxscript); the torch.export-based
    exporter is the fallback where the legacy one is gone."""
    kwargs = dict(input_names=["input"], output_names=list(outputs),
                  dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                  opset_version=opset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
            return
        except TypeError:  # an old torch without the dynamo argument
            torch.onnx.export(module, (example,), str(path), **kwargs)
            return
        except (RuntimeError, NotImplementedError, AttributeError) as exc:
            legacy_error = exc
        try:
            torch.onnx.export(module, (example,), str(path), dynamo=True, **kwargs)
        except ImportError as exc:
            raise FerkitError(f"ONNX export failed ({str(legacy_error).splitlines()[0][:120]}) and the new "
                              f"exporter needs {exc.name or 'onnxscript'}: pip install onnxscript") from None


def check_export_args(out, opset: int) -> None:
    """The output name and opset, checked before any work: one line saying what is accepted."""
    out = Path(out)
    if opset not in OPSETS:
        raise FerkitError(f"ONNX opset {opset} is not supported; accepted: {OPSETS.start}-{OPSETS.stop - 1} "
                          f"(default {DEFAULT_OPSET})")
    if out.is_dir():
        raise FerkitError(f"--out {out} is a folder; give a file name such as {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise FerkitError(f"--out {out} must end in .onnx")


def export_onnx(model_path, out, opset: int = DEFAULT_OPSET, check: bool = True) -> dict:
    """Write ``out`` (.onnx) from a checkpoint or run folder. Returns info: path, classes, image_size and
    (``check=True``) ``max_abs_diff`` between onnxruntime and PyTorch logits on random inputs."""
    try:
        import onnx  # optional (ferkit[onnx]): imported only where it is used
    except ImportError:
        raise FerkitError("ONNX export needs the onnx package: pip install 'ferkit[onnx]'") from None

    check_export_args(out, opset)
    out = Path(out)
    ckpt, _ = find_model(model_path, onnx_advice="export the ferkit checkpoint it was made from (a run folder or "
                                                 ".safetensors)")
    opened = open_model(ckpt, device="cpu", backend="torch")
    model, record = opened.module, opened.record
    size = record.image_size
    with torch.inference_mode():   # a model whose outputs are NaN or infinite is not exported
        probe = torch.from_numpy(np.random.default_rng(0).random((8, 1, size, size), dtype=np.float32))
        require_finite(_wrapped(model, record.input)(probe)[0], f"model {ckpt}")
    make_dir(out.parent)
    with atomic_path(out) as tmp:
        per_domain = record.domain_temperature
        _torch_export(_wrapped(model, record.input, record.temperature, per_domain), torch.zeros(2, 1, size, size),
                      tmp, opset, _outputs(per_domain))
        proto = onnx.load(str(tmp))
        outputs = {"logits": "float32 (batch, classes)" + (
                   ", the model's logits / each face's temperature (applied in the graph)" if per_domain else
                   f", the model's logits / temperature {record.temperature:g} (applied in the graph)"
                   if record.temperature != 1.0 else ""), "probabilities": "softmax of logits"}
        if per_domain:
            outputs["temperature"] = "float32 (batch,), each face's temperature (its domain read from the face)"
        meta = {**record.to_json(), "train_config": {}, "source_checkpoint": ckpt.name,
                "source_sha256": file_sha256(ckpt),
                "onnx_input": f"input: float32 (batch, 1, {size}, {size}), gray face / 255 in [0, 1]",
                "onnx_outputs": outputs}
        for key, value in (("ferkit", json.dumps(meta)), ("classes", json.dumps(list(record.classes))),
                           ("image_size", str(size))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "ferkit"
        proto.producer_version = __version__
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    info = {"path": str(out), "classes": list(record.classes), "image_size": size, "arch": record.arch}
    if check:
        info["max_abs_diff"] = parity(model, out, record.input, temperature=record.temperature,
                                      per_domain=record.domain_temperature)
    return info


def parity(model, onnx_path, spec, n: int = 8, seed: int = 0, inputs: np.ndarray | None = None,
           temperature: float = 1.0, per_domain: dict | None = None) -> float:
    """Max |logits_onnxruntime - logits_torch| on ``inputs`` (float32 (N,1,S,S) in [0,1]) or random ones;
    ``spec`` is the model's InputSpec and ``temperature`` its record's (the ONNX graph applies both
    inside, PyTorch gets them applied here)."""
    try:
        import onnxruntime as ort  # optional (ferkit[onnx])
    except ImportError:
        log("note: onnxruntime is not installed; skipped the parity check")
        return float("nan")
    if inputs is None:
        inputs = np.random.default_rng(seed).random((n, 1, spec.image_size, spec.image_size), dtype=np.float32)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": inputs})[0]
    with torch.inference_mode():
        want = _wrapped(model.eval(), spec, temperature, per_domain)(torch.from_numpy(inputs))[0].float().numpy()
    return float(np.abs(got - want).max())


def export_text(info: dict) -> str:
    """What ``ferkit export`` prints about :func:`export_onnx`'s ``info``."""
    text = (f"wrote {info['path']} ({info['arch']}, {info['image_size']}x{info['image_size']}, "
            f"classes: {', '.join(info['classes'])})")
    if info.get("max_abs_diff") is not None:
        text += f"\nonnxruntime vs PyTorch max |logit difference| on random inputs: {info['max_abs_diff']:.2e}"
    return text
