"""A small PyTorch executor for the converted MediaPipe graphs (BlazeFace detectors, face mesh).

``scripts/convert_blazeface.py`` turns each .tflite file into one safetensors file: float16
constants ``t<index>`` and the operator list as JSON in the metadata under ``graph``. This module
runs that list in PyTorch (no TensorFlow, no LiteRT): 4-D tensors are kept NCHW inside and turned
back to TFLite's NHWC where a RESHAPE flattens them, so the outputs match the .tflite model's.
TFLite's SAME padding (the extra pixel after, not before) is applied explicitly.
"""
from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# The graphs run on one thread: their inputs are small (128-192 px), so a second thread gains little,
# and on a busy machine every operator's thread barrier waits for a core (bench_video.py, 2 threads,
# other jobs running: BlazeFace's video pipeline at 1.7 frames/s of CPU time against 24.2 on one).
# Process-wide in torch, so counted: the first run in sets 1, the last one out puts the count back.
_THREADS_LOCK = threading.Lock()
_threads = {"inside": 0, "outside": 1}


@contextmanager
def one_thread():
    """torch on one intra-op thread for the block (nested and concurrent blocks share one setting)."""
    with _THREADS_LOCK:
        if _threads["inside"] == 0:
            _threads["outside"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads["inside"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads["inside"] -= 1
            if _threads["inside"] == 0:
                torch.set_num_threads(_threads["outside"])


_ACT = {"NONE": lambda x: x, None: lambda x: x, "RELU": F.relu, "RELU6": lambda x: F.relu6(x)}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _same_pad(x: torch.Tensor, kernel, stride, dilation=(1, 1), value: float = 0.0) -> torch.Tensor:
    """TFLite's SAME padding: total = max((ceil(in/stride) - 1) * stride + eff_kernel - in, 0), the
    smaller half before."""
    pads = []
    for size, k, s, d in zip(x.shape[2:], kernel, stride, dilation):
        eff = (k - 1) * d + 1
        total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
        pads.append((total // 2, total - total // 2))
    (t, b), (left, r) = pads
    return F.pad(x, (left, r, t, b), value=value) if t or b or left or r else x


class TFLiteGraph(torch.nn.Module):
    """The converted graph in ``path`` (a .safetensors written by scripts/convert_blazeface.py).
    ``forward`` takes an NHWC float tensor (as the .tflite input) and returns its outputs in order."""

    def __init__(self, path: str | Path):
        super().__init__()
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if "graph" not in meta:
                raise ValueError(f"{path} is not a converted MediaPipe graph (no 'graph' metadata)")
            self.graph = json.loads(meta["graph"])
            consts = {k: fh.get_tensor(k).float() for k in fh.keys()}
        self.meta = {k: v for k, v in meta.items() if k != "graph"}
        self.input_shape = tuple(self.graph["input_shape"])
        self._consts: dict[int, torch.Tensor] = {}
        for op in self.graph["ops"]:   # weights into PyTorch's layouts once
            name = op["op"]
            if name == "CONV_2D":
                w = consts[f"t{op['in'][1]}"]
                self._consts[op["in"][1]] = w.permute(0, 3, 1, 2).contiguous()        # OHWI -> OIHW
            elif name == "DEPTHWISE_CONV_2D":
                w = consts[f"t{op['in'][1]}"]
                self._consts[op["in"][1]] = w.permute(3, 0, 1, 2).contiguous()        # 1HWC -> C1HW
            elif name == "PRELU":
                a = consts[f"t{op['in'][1]}"]
                self._consts[op["in"][1]] = a.reshape(1, -1, 1, 1)
            for i in op["in"]:
                if f"t{i}" in consts and i not in self._consts:
                    self._consts[i] = consts[f"t{i}"]
        for i, t in self._consts.items():
            self.register_buffer(f"t{i}", t, persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        env: dict[int, torch.Tensor] = {self.graph["input"]: x.permute(0, 3, 1, 2)}

        def get(i):
            return env[i] if i in env else getattr(self, f"t{i}")

        for op in self.graph["ops"]:
            name, ins = op["op"], op["in"]
            a = get(ins[0])
            if name == "CONV_2D" or name == "DEPTHWISE_CONV_2D":
                w = get(ins[1])
                bias = get(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
                pad = 0
                if op["padding"] == "SAME":
                    if op["stride"] == [1, 1] and all(k % 2 for k in w.shape[2:]):   # symmetric: inside the conv
                        pad = tuple((k - 1) * d // 2 for k, d in zip(w.shape[2:], op["dilation"]))
                    else:
                        a = _same_pad(a, w.shape[2:], op["stride"], op["dilation"])
                groups = a.shape[1] if name == "DEPTHWISE_CONV_2D" else 1
                y = F.conv2d(a, w, bias, stride=op["stride"], padding=pad, dilation=op["dilation"], groups=groups)
                y = _ACT[op["act"]](y)
            elif name == "MAX_POOL_2D":
                if op["padding"] == "SAME":
                    a = _same_pad(a, op["kernel"], op["stride"], value=-math.inf)
                y = _ACT[op["act"]](F.max_pool2d(a, op["kernel"], op["stride"]))
            elif name == "ADD":
                b = get(ins[1])
                if a.dim() == 4 and b.dim() < 4:
                    b = b.reshape(1, -1, 1, 1)
                y = _ACT[op["act"]](a + b)
            elif name == "RELU":
                y = F.relu(a)
            elif name == "PRELU":
                alpha = get(ins[1])
                y = torch.where(a >= 0, a, a * alpha)
            elif name == "PAD":
                (_, _), (t, b), (left, r), (c0, c1) = op["paddings"]
                y = F.pad(a, (left, r, t, b, c0, c1))
            elif name == "RESHAPE":
                if a.dim() == 4:
                    a = a.permute(0, 2, 3, 1)
                y = a.reshape([a.shape[0], *op["shape"][1:]])   # any batch size
                if y.dim() == 4:
                    y = y.permute(0, 3, 1, 2)
            elif name == "CONCATENATION":
                parts = [get(i) for i in ins]
                axis = op["axis"] % parts[0].dim()
                if parts[0].dim() == 4:
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                y = _ACT[op["act"]](torch.cat(parts, axis))
            elif name == "RESIZE_BILINEAR":
                if op["align_corners"] or not op["half_pixel_centers"]:
                    raise NotImplementedError("RESIZE_BILINEAR without half-pixel centres")
                y = F.interpolate(a, size=tuple(op["size"]), mode="bilinear", align_corners=False)
            else:   # pragma: no cover - the converter refuses other operators
                raise NotImplementedError(name)
            env[op["out"]] = y
        outs = []
        for i in self.graph["outputs"]:
            t = env[i]
            outs.append(t.permute(0, 2, 3, 1) if t.dim() == 4 else t)
        return outs

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """``batch``: float32 NHWC array; the outputs as float32 numpy arrays (run on one thread)."""
        with one_thread():
            return [o.numpy() for o in self.forward(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))]
