"""Where and how models run: device, precision, batched inference and test-time augmentation.

Used by training, evaluation and prediction alike; imports nothing from training code.

Example::

    from ferkit.runtime import predict_logits, select_device
    logits = predict_logits(model, faces_uint8, record.input, select_device("auto"), tta="flip")
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .choices import PRECISIONS, TTA_MODES, check_choice, check_device_name
from .errors import FerkitError

__all__ = ["PRECISIONS", "TTA_MODES", "autocast", "check_device_name", "cpu_supports_bf16", "face_views",
           "forward_logits", "global_rng_state", "predict_logits", "resolve_precision", "select_device",
           "set_global_rng_state", "tta_logits", "tta_views"]


def select_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; anything else is one clear error."""
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise FerkitError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
        if ":" in name and int(name[5:]) >= torch.cuda.device_count():
            raise FerkitError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels here (AVX512-BF16/AMX); emulated bf16 is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to use, or None for plain fp32."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" or cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)


def global_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The states of torch's global generators, for a resume that continues exactly: the CPU's,
    and on a GPU that device's too (dropout there draws from it, not from the CPU's)."""
    t = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        t["rng.cuda"] = torch.cuda.get_rng_state(device)
    return t


def set_global_rng_state(t: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`global_rng_state` saved. A CUDA state is restored on a CUDA device
    only: a run saved on a GPU and resumed on the CPU (or the reverse) continues, but not exactly."""
    torch.set_rng_state(t["rng.torch"].cpu())
    if device.type == "cuda" and "rng.cuda" in t:
        torch.cuda.set_rng_state(t["rng.cuda"].cpu(), device)


def check_tta(mode: str) -> str:
    check_choice("test-time augmentation", mode, TTA_MODES)
    return mode


def tta_views(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views of a model-input batch (N, C, H, W) that ``mode`` averages over."""
    check_tta(mode)
    if mode == "none":
        return [x]
    views = [x]
    if mode == "crops":  # shifted by ~1/16 of the side, edges replicated (the size of training's shifts)
        k = max(1, round(x.shape[-1] / 16))
        padded = F.pad(x, (k, k, k, k), mode="replicate")
        h, w = x.shape[-2:]
        views += [padded[..., k + dy:k + dy + h, k + dx:k + dx + w] for dy, dx in ((-k, 0), (k, 0), (0, -k), (0, k))]
    return views + [v.flip(-1) for v in views]


#: How many views each test-time augmentation averages over.
TTA_VIEWS = {"none": 1, "flip": 2, "crops": 10}


def face_views(faces, mode: str) -> torch.Tensor:
    """The views ``mode`` averages over of uint8 faces (N, H, W), as uint8 (V * N, H, W), view-major
    (all faces' first view, then all faces' second view, ...). Flips and replicate-padded shifts
    only move pixels, so making the views before the model's scaling and normalisation gives
    exactly the views of its normalised input."""
    x = torch.as_tensor(faces)
    if mode == "none":
        return x
    views = tta_views(x[:, None].float(), mode)
    return torch.cat([v[:, 0] for v in views]).round_().to(torch.uint8)


@torch.inference_mode()
def tta_logits(run, faces, tta: str = "none", batch_size: int = 256) -> torch.Tensor:
    """Class scores (float32, on CPU) of uint8 faces (N, H, W) by ``run``, over the views of ``tta``.

    This is the one place test-time augmentation is averaged, whatever runs the model.

    Args:
        run: a batch of uint8 faces (n, H, W) -> its logits (n, classes), a torch tensor or numpy array
            (the PyTorch model with its input contract, an onnxruntime session, ...).
        tta: ``none`` returns ``run``'s logits; ``flip``/``crops`` return the log of the softmax
            probabilities averaged over the views, so ``softmax`` of the result is that average.
        batch_size: the most faces per call of ``run``: all views of ``batch_size // views`` faces go
            through it together.
    """
    check_tta(tta)
    n_views = TTA_VIEWS[tta]
    if not isinstance(faces, torch.Tensor):
        import numpy as np

        faces = torch.from_numpy(np.ascontiguousarray(faces))
    step = max(1, int(batch_size) // n_views)
    out = []
    for start in range(0, len(faces), step):
        part = faces[start:start + step]
        logits = torch.as_tensor(run(face_views(part, tta))).float().cpu()
        if n_views == 1:
            out.append(logits)
            continue
        probs = torch.softmax(logits.reshape(n_views, len(part), -1), -1).mean(0)
        out.append(probs.clamp_min(1e-12).log())
    return torch.cat(out) if out else torch.zeros(0)


@torch.inference_mode()
def predict_logits(model, faces, spec, device: torch.device, amp_dtype: torch.dtype | None = None,
                   batch_size: int = 256, tta: str = "none", temperature: float = 1.0) -> torch.Tensor:
    """Class scores (float32, on CPU) of a PyTorch model for uint8 faces (N, H, W), in batches.

    Args:
        spec: the model's :class:`ferkit.models.InputSpec` (scaling and normalisation).
        tta: ``none`` returns logits; ``flip``/``crops`` return log of the probabilities averaged
            over the views, so ``softmax`` of the result is that average (:func:`tta_logits`).
        temperature: the checkpoint record's ``temperature`` (``ferkit calibrate``): every view's
            logits are divided by it, so ``softmax`` of the result is the calibrated probability.
            Evaluation and the Recognizer pass it here; the ONNX export divides inside its graph.
    """
    temperature = float(temperature)
    model.eval()
    return tta_logits(lambda batch: forward_logits(model, batch, spec, device, amp_dtype, temperature), faces, tta,
                      batch_size)


@torch.inference_mode()
def forward_logits(model, faces, spec, device: torch.device, amp_dtype: torch.dtype | None = None,
                   temperature: float = 1.0) -> torch.Tensor:
    """One batch of uint8 faces (n, H, W) through a PyTorch model: float32 logits on the CPU,
    divided by ``temperature``."""
    x = spec.to_tensor(faces, device).contiguous(memory_format=torch.channels_last)
    with autocast(device, amp_dtype):
        return _scaled(model(x).float(), float(temperature)).cpu()


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return logits if temperature == 1.0 else logits / temperature


def fuse_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy with each batch norm that follows a convolution in an ``nn.Sequential``
    folded into it (same outputs to float rounding, 10-20% faster on a CPU)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(model).eval()
    for seq in [m for m in fused.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
    return fused


def require_finite(outputs, what: str = "the model") -> None:
    """Refuse NaN or infinite model outputs (a torch tensor or numpy array, one row per face) with
    one line, instead of reporting chance accuracy or ``nan`` as a result."""
    import numpy as np

    arr = outputs.detach().cpu().numpy() if isinstance(outputs, torch.Tensor) else np.asarray(outputs)
    if arr.size == 0 or (arr.dtype.kind != "f") or np.isfinite(arr).all():
        return
    rows = arr.reshape(len(arr), -1) if arr.ndim else arr.reshape(1, 1)
    bad = int((~np.isfinite(rows)).any(axis=1).sum())
    raise FerkitError(f"{what} gave NaN or infinite outputs for {bad} of {len(rows)} face(s) (damaged or diverged "
                      "weights, or inputs it cannot handle): no result is reported from them")
