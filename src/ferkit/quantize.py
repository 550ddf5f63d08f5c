"""int8 ONNX export: onnxruntime static quantisation (QDQ, per-channel weights), calibrated on faces.

Example::

    ferkit export runs/exp1 --int8 --out model.int8.onnx                      # calibrated on the run's validation faces
    ferkit export runs/exp1 --int8 --calib-dir data/val --out model.int8.onnx   # ... or on a folder of faces

The fp32 graph ``ferkit export`` writes (same input, outputs and metadata) is quantised with
``onnxruntime.quantization.quantize_static``: activations uint8 with ranges from the calibration
faces (MinMax), weights int8 per output channel with 7-bit range (``reduce_range``: on AVX2 CPUs
without VNNI, onnxruntime's uint8 x int8 kernels add pairs of products in 16 bits, which can
saturate with full 8-bit weights; 7-bit weights cannot). The input scaling and the softmax stay in
fp32. Calibration faces come from ``calib_dir`` (a folder, searched recursively), else from the
checkpoint's validation folder when that still exists, else are procedurally generated
(:mod:`ferkit.synth.procedural`); the export says which. The int8 model's top-1 agreement with the
fp32 graph is measured on other faces from the same source (not the calibration ones) and stored in
the file's ``ferkit`` metadata under ``quantization``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .console import log
from .errors import FerkitError
from .files import atomic_path, make_dir

DEFAULT_CALIB_FACES = 300
CHECK_FACES = 300


def calibration_faces(image_size: int, calib_dir=None, record=None, n: int = DEFAULT_CALIB_FACES + CHECK_FACES,
                      seed: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``n`` uint8 faces (N, S, S) for calibration and checking, and a phrase saying where they
    came from: ``calib_dir``, else the record's validation folder if it exists, else procedural faces."""
    from .data import find_files, load_face

    if calib_dir is not None:
        folder, what = Path(calib_dir), f"--calib-dir {calib_dir}"
        if not folder.is_dir():
            raise FerkitError(f"--calib-dir {folder} is not a folder (give a folder of face images; "
                              "sub-folders are searched)")
    else:
        val = (getattr(record, "train_config", None) or {}).get("val_dir")
        folder = Path(val) if val and Path(val).is_dir() else None
        what = f"the run's validation folder {val}" if folder else ""
    if folder is None:
        return _procedural_faces(image_size, n, seed), (f"{n} procedurally generated faces (ferkit.synth; no "
                                                        "--calib-dir given and no validation folder found)")
    files = find_files(folder)
    if not files:
        raise FerkitError(f"{what}: no image files found (searched recursively)")
    picked = sorted(np.random.default_rng(seed).permutation(len(files))[:n].tolist())
    faces = []
    for i in picked:
        try:
            faces.append(load_face(files[i], image_size))
        except (OSError, ValueError):
            continue
    if not faces:
        raise FerkitError(f"{what}: none of the {len(picked)} image files sampled could be decoded")
    return np.stack(faces), f"{len(faces)} faces sampled from {what}"


def _procedural_faces(image_size: int, n: int, seed: int) -> np.ndarray:
    from .labels import EXPRESSIONS
    from .synth.procedural import render_face, sample_face_params

    rng = np.random.default_rng(seed)
    classes = EXPRESSIONS[:8]
    size = max(image_size, 16)
    faces = [render_face(sample_face_params(rng, classes[i % len(classes)], identity_id=i, seed=seed), size)
             for i in range(n)]
    if size != image_size:
        from .data import preprocess_gray

        faces = [preprocess_gray(f, image_size) for f in faces]
    return np.stack(faces).astype(np.uint8)


def split_faces(faces: np.ndarray, n_calib: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(calibration faces, check faces, held_out): the first ``n_calib`` calibrate and the rest (at
    least 20) check; with fewer faces, the first half calibrates and the second checks; with fewer
    than 20, all do both (``held_out`` False)."""
    if len(faces) >= n_calib + 20:
        return faces[:n_calib], faces[n_calib:], True
    if len(faces) >= 20:
        half = len(faces) // 2
        return faces[:half], faces[half:], True
    return faces, faces, False


def _model_input(faces: np.ndarray) -> np.ndarray:
    return (faces.astype(np.float32) / np.float32(255.0))[:, None]


def _session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def onnx_logits(path_or_session, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """``logits`` of an exported graph for uint8 faces (N, S, S)."""
    sess = path_or_session if hasattr(path_or_session, "run") else _session(path_or_session)
    name = sess.get_inputs()[0].name
    out = [sess.run(["logits"], {name: _model_input(faces[s:s + batch_size])})[0]
           for s in range(0, len(faces), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def agreement(fp32_path, int8_path, faces: np.ndarray) -> dict:
    """Top-1 agreement and the largest probability difference between two graphs on ``faces``."""
    a, b = onnx_logits(fp32_path, faces), onnx_logits(int8_path, faces)
    pa, pb = _softmax(a.astype(np.float64)), _softmax(b.astype(np.float64))
    return {"n": int(len(faces)), "top1_agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
            "max_probability_difference": float(np.abs(pa - pb).max()),
            "mean_probability_difference": float(np.abs(pa - pb).max(1).mean())}


def quantize_onnx(fp32_path, out, calib: np.ndarray, reduce_range: bool = True) -> None:
    """Write ``out``: ``fp32_path`` statically quantised (QDQ, per-channel int8 weights, uint8
    activations calibrated with MinMax on ``calib``, uint8 faces (N, S, S))."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError:
        raise FerkitError("int8 export needs onnxruntime: pip install 'ferkit[onnx]'") from None
    import onnx

    proto = onnx.load(str(fp32_path))
    name = proto.graph.input[0].name
    # Quantise the convolutions and the classifier; the input scaling before the first convolution,
    # the temperature and the softmax after the last layer stay in fp32.
    keep_fp32 = [n.name for n in proto.graph.node if n.op_type in ("Sub", "Div", "Mul", "Softmax")]
    x = _model_input(calib)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[s:s + 64]} for s in range(0, len(x), 64)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="ferkit-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - an optimisation step only; quantise the graph as exported
            log(f"note: onnxruntime's pre-processing failed ({str(exc).splitlines()[0][:100]}); quantising as is")
            pre = Path(fp32_path)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_fp32, extra_options={"ActivationSymmetric": False})


def export_int8(model_path, out, calib_dir=None, calib_faces: int = DEFAULT_CALIB_FACES, opset: int | None = None,
                reduce_range: bool = True, seed: int = 0, check_faces: int = CHECK_FACES) -> dict:
    """Export ``model_path`` (checkpoint, run folder or bundled name) to an int8 ONNX file ``out``.

    Up to ``calib_faces + check_faces`` faces are read (see :func:`calibration_faces` and
    :func:`split_faces`). Returns info: path, classes, image_size, arch, ``calibration`` (where the
    faces came from and how many calibrated), ``check`` (:func:`agreement` with the fp32 graph on
    other faces, ``held_out`` False when there were too few faces to hold any out), ``fp32_bytes``
    and ``int8_bytes``.
    """
    import onnx

    from .export import DEFAULT_OPSET, check_export_args, export_onnx
    from .models import find_model

    opset = DEFAULT_OPSET if opset is None else opset
    check_export_args(out, opset)
    if calib_faces < 1:
        raise FerkitError(f"--calib-faces must be at least 1 (got {calib_faces})")
    if opset < 13:
        raise FerkitError(f"int8 export needs opset 13 or newer (per-channel quantisation); got {opset}")
    out = Path(out)
    ckpt, record = find_model(model_path, onnx_advice="quantise the ferkit checkpoint it was exported from (a run "
                                                      "folder or .safetensors)")
    faces, source = calibration_faces(record.image_size, calib_dir, record, calib_faces + check_faces, seed)
    calib, check, held_out = split_faces(faces, calib_faces)
    make_dir(out.parent)
    with tempfile.TemporaryDirectory(prefix="ferkit-export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        info = export_onnx(ckpt, fp32, opset=opset)
        with atomic_path(out) as dest:
            quantize_onnx(fp32, dest, calib, reduce_range)
            stats = agreement(fp32, dest, check)
            proto = onnx.load(str(dest))
            meta = _meta_of(fp32)     # the fp32 export's metadata, whatever quantize_static kept
            ferkit = json.loads(meta["ferkit"])
            ferkit["quantization"] = {
                "method": "onnxruntime quantize_static, QDQ, uint8 activations (MinMax), int8 per-channel weights"
                          + (" (7-bit range)" if reduce_range else ""),
                "calibration": f"{len(calib)} of {source}", "check": {**stats, "held_out": held_out}}
            meta["ferkit"] = json.dumps(ferkit)
            del proto.metadata_props[:]
            for key, value in meta.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            onnx.checker.check_model(proto)
            onnx.save(proto, str(dest))
        fp32_bytes = fp32.stat().st_size
    info.pop("max_abs_diff", None)
    return {**info, "path": str(out), "calibration": {"source": source, "n": int(len(calib))},
            "check": {**stats, "held_out": held_out}, "fp32_bytes": fp32_bytes, "int8_bytes": out.stat().st_size}


def int8_text(info: dict) -> str:
    """What ``ferkit export --int8`` prints about :func:`export_int8`'s ``info``."""
    c = info["check"]
    return (f"wrote {info['path']} (int8, {info['int8_bytes'] / 1e6:.2f} MB; fp32 {info['fp32_bytes'] / 1e6:.2f} MB; "
            f"{info['arch']}, {info['image_size']}x{info['image_size']}, classes: {', '.join(info['classes'])})\n"
            f"int8 ranges from {info['calibration']['n']} of {info['calibration']['source']}\n"
            f"int8 vs fp32: same top class on {c['top1_agreement']:.1%} of {c['n']} "
            + ("other faces (not used for calibration)" if c["held_out"] else "faces (the calibration faces: too "
               "few to hold any out)")
            + f"; largest probability difference {c['max_probability_difference']:.3f}")


def _meta_of(path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
