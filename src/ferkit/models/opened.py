"""One way to open a model: a bundled model's name, a run folder, a ``.safetensors`` checkpoint or
an ``.onnx`` export -> an :class:`OpenedModel` with its record and class scores.

Example::

    from ferkit.models import open_model
    m = open_model("ferplus-vgg16")          # or "runs/exp1", "runs/exp1/best.safetensors", "model.onnx"
    m.classes, m.image_size, m.name          # what it predicts, its face size, its backend (torch | onnx)
    probs = m.probabilities(faces, tta="flip")    # uint8 gray faces (N, S, S) -> (N, classes)

Evaluation, the Recognizer (``predict``, ``serve``), ``gan evaluate`` (``--judge``), ``gan train
--guide``, ``train --teacher``/``--init``, ``export``, ``export --int8`` and ``calibrate`` open models
here. The name is resolved once (:func:`model_file`), the kind is checked once (a generator given
where a classifier is needed is one line, and the reverse), the record and weights are validated
once (:func:`ferkit.models.load_checkpoint`) and the backend is chosen once:

* an ``.onnx`` file runs on onnxruntime (CPU, in the precision its file holds): a CUDA device or
  ``bf16`` asked of it is one clear error, not dropped;
* a checkpoint runs on PyTorch, or on onnxruntime when its export lies beside it
  (``<stem>.onnx`` made by ``ferkit export`` from this very file: its ``source_sha256`` matches),
  onnxruntime is installed and the model is to run on the CPU in fp32 (``backend="auto"``).

Test-time augmentation is the same for both backends: :func:`ferkit.runtime.tta_logits`.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..bundled import BUNDLED, bundled_names, resolve_model_path
from ..choices import PRECISIONS, check_choice, check_device_name
from ..console import log
from ..errors import FerkitError
from ..files import file_sha256, refuse_non_regular
from ..runtime import forward_logits, fuse_for_inference, require_finite, resolve_precision, select_device, tta_logits
from .record import (
    CheckpointRecord,
    InputSpec,
    check_kind,
    kind_mismatch,
    load_checkpoint,
    read_checkpoint_record,
    resolve_checkpoint,
)

KINDS = ("classifier", "generator")
BACKENDS = ("auto", "torch", "onnx")

__all__ = ["BACKENDS", "KINDS", "OnnxModel", "OpenedModel", "TorchModel", "export_beside", "find_model", "model_file",
           "open_export_beside", "open_model", "softmax_probabilities", "uses_export"]


# ----------------------------------------------------------------------------- resolving
def _is_onnx(path: Path) -> bool:
    return path.suffix.lower() == ".onnx" and not path.is_dir()


def model_file(name_or_path=None, kind: str = "classifier") -> Path:
    """The file a model is read from: None -> the default bundled classifier; a bundled model's
    name -> its file (a bundled model of the other kind is refused); a run folder -> its checkpoint
    (``best``/``last.safetensors`` of a classifier run, ``generator.safetensors`` of a GAN run); a
    ``.safetensors`` or ``.onnx`` file as given. One line for a missing file, a folder of the other
    kind and a pickled file (never unpickled)."""
    check_choice("model kind", kind, KINDS)
    if name_or_path is None and kind == "generator":
        raise FerkitError("no generator given: pass a GAN run folder, a generator checkpoint or a bundled generator "
                          f"({', '.join(bundled_names('generator')) or 'none'})")
    if isinstance(name_or_path, str) and name_or_path in BUNDLED and not Path(name_or_path).exists():
        if BUNDLED[name_or_path].kind != kind:
            raise kind_mismatch(BUNDLED[name_or_path].kind, kind, f"bundled model {name_or_path}")
    p = resolve_model_path(name_or_path)
    if _is_onnx(p):
        refuse_non_regular(p, "ONNX model")
        if not p.is_file():
            raise FerkitError(f"ONNX model {p} does not exist")
        return p
    if kind == "classifier":
        return resolve_checkpoint(p)
    if p.is_dir():
        if (p / "generator.safetensors").is_file():
            return p / "generator.safetensors"
        if (p / "best.safetensors").is_file() or (p / "last.safetensors").is_file():
            raise FerkitError(f"{p} is a classifier run (from `ferkit train`); this command needs a GAN run from "
                              "`ferkit gan train`")
        if (p / "config.json").is_file():
            raise FerkitError(f"GAN run {p} has no generator checkpoint yet (it is written every --checkpoint-every "
                              "iterations of `ferkit gan train`)")
        raise FerkitError(f"{p} is not a GAN run folder (no generator.safetensors)")
    if not p.exists():
        raise FerkitError(f"GAN run or generator checkpoint {p} does not exist")
    return resolve_checkpoint(p)   # refuses pickled files


def find_model(name_or_path=None, kind: str = "classifier",
               onnx_advice: str = "give the ferkit checkpoint it was exported from (a run folder or .safetensors)"
               ) -> tuple[Path, CheckpointRecord]:
    """(checkpoint file, its record with the kind checked), without reading the weights: for what
    needs the checkpoint itself or only its record (``export --int8``, ``calibrate``, ``train
    --init``). An ONNX file is refused with ``onnx_advice``: it is made from a checkpoint, not the reverse."""
    p = model_file(name_or_path, kind)
    if _is_onnx(p):
        raise FerkitError(f"{p} is an ONNX file: {onnx_advice}")
    record = read_checkpoint_record(p)
    check_kind(record, kind, p)
    return p, record


def _device_name(device) -> str:
    return check_device_name(device if isinstance(device, str) else str(torch.device(device)))


def _check_onnx_settings(device, precision: str, where) -> None:
    """The ONNX backend runs on the CPU in the precision its file holds: anything else is refused."""
    name = _device_name(device)
    check_choice("precision", precision, PRECISIONS)
    if name not in ("auto", "cpu"):
        raise FerkitError(f"{where}: the ONNX backend runs on the CPU only, not on {name!r}: use device cpu (or auto), "
                          "or run its checkpoint with the PyTorch backend")
    if precision not in ("auto", "fp32"):
        raise FerkitError(f"{where}: the ONNX backend runs in the precision its file holds (fp32, or int8 from "
                          f"`ferkit export --int8`), not {precision}: use precision fp32, or run its checkpoint "
                          "with the PyTorch backend")


# ----------------------------------------------------------------------------- opened models
def softmax_probabilities(logits, what: str = "the model") -> np.ndarray:
    """Probabilities (float32) from class scores; FerkitError when they are not finite (a damaged
    model is not reported as a prediction)."""
    logits = np.asarray(logits, np.float64)
    require_finite(logits, what)
    if not len(logits):
        return logits.astype(np.float32)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class OpenedModel:
    """A model opened by :func:`open_model`: ``record`` (classes, input contract, temperature ...),
    ``path`` (the file read), ``name`` (the backend: ``torch`` or ``onnx``) and, for a classifier,
    :meth:`logits` / :meth:`probabilities` of uint8 gray faces of ``image_size``."""

    name = "?"
    path: Path
    record: CheckpointRecord

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def classes(self) -> tuple[str, ...]:
        return self.record.classes

    @property
    def image_size(self) -> int:
        return self.record.image_size

    def _scores(self, faces: torch.Tensor, calibrated: bool) -> torch.Tensor | np.ndarray:
        """The logits of one batch of uint8 faces (n, S, S) (divided by the record's temperature
        when ``calibrated``)."""
        raise NotImplementedError

    def logits(self, faces, tta: str = "none", batch_size: int = 256, calibrated: bool = True) -> np.ndarray:
        """Class scores (float32, (N, classes)) of uint8 gray faces (N, S, S), ``batch_size`` faces a call.

        ``tta``: ``none``, ``flip`` or ``crops``; with a TTA mode the result is the log of the
        probabilities averaged over the views (``softmax`` of it is that average). ``calibrated``:
        the record's temperature applied (False: the model's own logits, which ``ferkit calibrate``
        fits the temperature on). NaN or infinite scores are one FerkitError."""
        if self.kind != "classifier":
            raise FerkitError(f"{self.path} is a generator: it makes faces, it gives no class scores")
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        out = tta_logits(lambda batch: self._scores(batch, calibrated), faces, tta, batch_size).numpy()
        require_finite(out, f"model {self.path}")
        return out.astype(np.float32, copy=False)

    def probabilities(self, faces, tta: str = "none", batch_size: int = 256) -> np.ndarray:
        """Calibrated probabilities (float32, (N, classes)) of uint8 gray faces (N, S, S)."""
        return softmax_probabilities(self.logits(faces, tta, batch_size), f"model {self.path}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.kind}, classes={list(self.classes)})"


class TorchModel(OpenedModel):
    """A ferkit checkpoint (run folder or ``.safetensors``) on PyTorch: ``module`` is the model as
    stored (eval mode, on ``device``; a generator's too), ``model`` the faster inference copy
    (batch norms folded into their convolutions, channels_last) that :meth:`logits` runs."""

    name = "torch"

    def __init__(self, path, device="auto", precision: str = "fp32", kind: str = "classifier"):
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.amp = resolve_precision(precision, self.device)
        self.path = resolve_checkpoint(path)
        self.module, self.record = load_checkpoint(self.path, self.device, kind=kind)

    @cached_property
    def model(self) -> torch.nn.Module:
        return fuse_for_inference(self.module).to(memory_format=torch.channels_last)

    @cached_property
    def _per_domain(self) -> torch.nn.Module | None:
        """The inference copy with the record's per-domain temperature (None where it has none)."""
        if not self.record.domain_temperature:
            return None
        from .domain_temperature import WithDomainTemperature

        return WithDomainTemperature(self.model, self.record.domain_temperature).to(self.device).eval()

    def _scores(self, faces, calibrated: bool):
        if calibrated and self._per_domain is not None:   # each face its own temperature
            return forward_logits(lambda x: self._per_domain(x)[0], faces, self.record.input, self.device, self.amp)
        return forward_logits(self.model, faces, self.record.input, self.device, self.amp,
                              self.record.temperature if calibrated else 1.0)


class OnnxModel(OpenedModel):
    """An ONNX file written by ``ferkit export`` on onnxruntime (CPU); its record comes from the
    file's metadata. A calibrated model's temperature is applied inside the graph (its ``logits``
    output is already divided by it)."""

    name = "onnx"

    def __init__(self, path, threads: int | None = None, device="auto", precision: str = "fp32"):

        p = Path(path)
        _check_onnx_settings(device, precision, p)
        try:
            import onnxruntime as ort  # optional (ferkit[onnx]): imported only where it is used
        except ImportError:
            raise FerkitError("the onnx backend needs onnxruntime: pip install 'ferkit[onnx]'") from None
        if p.is_dir():
            raise FerkitError(f"{p} is a folder; --backend onnx needs an .onnx file (make one with `ferkit export`)")
        if not p.is_file():
            raise FerkitError(f"ONNX model {p} does not exist")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FerkitError(f"{p} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            raw = json.loads(meta["ferkit"])
            if str(raw.get("format", "")).startswith("ferkit-onnx-"):  # ferkit 0.1's export
                self.record = CheckpointRecord(raw["arch"], tuple(raw["classes"]), InputSpec(int(raw["image_size"])),
                                               format_version=1)
            else:
                self.record = CheckpointRecord.from_json(raw, where=str(p))
        except (KeyError, ValueError, TypeError, AttributeError):
            raise FerkitError(f"{p} has no ferkit metadata (classes, image size): export it with "
                              "`ferkit export`") from None
        check_kind(self.record, "classifier", p)
        self.path = p
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in names else names[0]
        if self.record.domain_temperature and "temperature" not in names:
            raise FerkitError(f"{p} has a per-domain temperature but no 'temperature' output: export it again")

    def _scores(self, faces, calibrated: bool):
        x = np.ascontiguousarray((torch.as_tensor(faces).numpy().astype(np.float32) / np.float32(255.0))[:, None])
        if self.record.domain_temperature:   # the graph divides each face by its own temperature, an output too
            logits, t = self.session.run([self.output_name, "temperature"], {self.input_name: x})
            return logits if calibrated else logits * t[:, None]
        logits = self.session.run([self.output_name], {self.input_name: x})[0]
        # the graph divides by the temperature; undone for the model's own logits
        return logits * np.float32(self.record.temperature) if not calibrated and self.record.temperature != 1.0 \
            else logits


# ----------------------------------------------------------------------------- the one entry point
def open_model(name_or_path=None, kind: str = "classifier", device="auto", precision: str = "fp32",
               backend: str = "auto", beside: bool = True, threads: int | None = None) -> OpenedModel:
    """Open a model to classify faces (``kind="classifier"``) or edit them (``kind="generator"``).

    Args:
        name_or_path: None (the default bundled classifier), a bundled model's name, a run folder,
            a ``.safetensors`` checkpoint, or an ``.onnx`` file from ``ferkit export``.
        kind: ``classifier`` or ``generator``; a model of the other kind is one FerkitError.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 where it is fast); PyTorch only.
        backend: ``torch`` (PyTorch; an .onnx file is refused), ``onnx`` (an .onnx file, or the export
            beside a checkpoint, which must then exist and match it) or ``auto``: an .onnx file runs
            on onnxruntime; a checkpoint on onnxruntime when its export lies beside it (see the
            module docstring) and ``beside`` is True, else on PyTorch.
        threads: onnxruntime's intra-op threads (None: its default).

    Returns a :class:`TorchModel` or :class:`OnnxModel`. The ONNX backend refuses a CUDA device and
    bf16 with one line instead of ignoring them; a generator runs on PyTorch only.
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("precision", precision, PRECISIONS)
    device_name = _device_name(device)   # spelling checked before any file is read
    path = model_file(name_or_path, kind)
    if kind == "generator":
        if _is_onnx(path):
            raise FerkitError(f"{path} is an ONNX file: a generator is opened from its checkpoint (a GAN run folder "
                              "or generator .safetensors)")
        if backend == "onnx":
            raise FerkitError("a generator runs on PyTorch only: backend 'onnx' is for classifiers")
        return TorchModel(path, device, precision, kind="generator")
    if _is_onnx(path):
        if backend == "torch":
            raise FerkitError(f"{path} is an ONNX file: use backend 'onnx' or 'auto'")
        return OnnxModel(path, threads, device, precision)
    if backend == "onnx":
        _check_onnx_settings(device, precision, f"{path} (backend onnx)")
        return open_export_beside(path, threads, required=True)
    if backend == "auto" and beside and uses_export(device_name, precision):
        found = open_export_beside(path, threads)
        if found is not None:
            return found
    return TorchModel(path, device, precision)


def uses_export(device, precision: str) -> bool:
    """Does the ``auto`` backend consider a checkpoint's export: on the CPU (``auto`` without CUDA), in fp32."""
    name = _device_name(device)
    return precision == "fp32" and (name == "cpu" or (name == "auto" and not torch.cuda.is_available()))


def export_beside(checkpoint) -> Path:
    """Where an export stands in for a checkpoint: ``<stem>.onnx`` in the same folder (a run's
    ``best.safetensors`` -> ``best.onnx``). The Recognizer uses it only when its metadata's
    ``source_sha256`` is this checkpoint's (see :func:`ferkit.models.open_model`)."""
    return Path(checkpoint).with_suffix(".onnx")


def open_export_beside(ckpt: Path, threads: int | None = None, required: bool = False) -> OnnxModel | None:
    """An :class:`OnnxModel` on the export that stands in for checkpoint ``ckpt`` (``<stem>.onnx``
    beside it, used only when its metadata's ``source_sha256`` is the checkpoint's and onnxruntime
    is installed), or None (with a note when an export is there but unusable); ``required``:
    FerkitError instead of None."""
    def no(reason: str, note: bool = False):
        if required:
            raise FerkitError(reason)
        if note:
            log(f"note: {reason}; using PyTorch")
        return None

    try:
        import onnxruntime  # noqa: F401  (optional, ferkit[onnx]: is it installed?)
    except ImportError:
        return no("the onnx backend needs onnxruntime: pip install 'ferkit[onnx]'")
    side = export_beside(ckpt)
    if not side.is_file():
        return no(f"{ckpt} has no ONNX export beside it ({side.name}): make one with "
                  f"`ferkit export {ckpt} --out {side}`")
    try:
        found = OnnxModel(side, threads)
    except FerkitError as exc:
        return no(f"cannot use {side} ({exc})", note=True)
    if found.record.extra.get("source_sha256") != file_sha256(ckpt):
        return no(f"{side} was not exported from {ckpt} as it is now (export it again)", note=True)
    return found

