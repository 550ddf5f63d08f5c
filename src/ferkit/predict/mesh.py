"""The 468-point face mesh (MediaPipe's face_landmark model, bundled) and head pose from it.

For each detected face, a square region 1.4 times the face box, turned so the eyes are level (as
MediaPipe frames it from the detection), is resized to 192x192 and given to the mesh model, run in
PyTorch (:mod:`ferkit.predict.tflite_graph`). Its 468 (x, y, z) points are mapped back to image
pixels; z is depth in the same pixel scale (smaller = nearer the camera).

Head pose: the rotation, scale and shift that best map a canonical frontal mesh onto the x, y of
the face's mesh (weak perspective, least squares, started from the 3D Umeyama fit), split into degrees as
``R = Rz(roll) Ry(yaw) Rx(pitch)`` in image axes (x right, y down, z away from the camera):

- ``yaw`` > 0: the nose points to the image's left (the person turns to their own right);
- ``pitch`` > 0: the face tilts down (the nose points down);
- ``roll`` > 0: the eye line goes down to the image's right (as :mod:`ferkit.predict.align`).

The canonical mesh (``weights/face-mesh-canonical.safetensors``) is the mesh model's own output
on frontal photos averaged with its output on their mirror images, point by point, which cancels
their yaw and roll (``scripts/make_face_canonical.py``, on the frontal photo that ships with matplotlib;
no external face model is used).
"""
from __future__ import annotations

import math

import numpy as np

MESH_SIZE = 192
ROI_SCALE = 1.4      # the mesh region's side / the (Haar-framed) face box side
ROI_DOWN = 0.1       # its centre this fraction of the box side below the box centre (along the face)
CANONICAL_FILE = "face-mesh-canonical.safetensors"
POSE_ITERATIONS = 30  # Gauss-Newton steps of the head pose fit (it settles in 3-6)
_CANONICAL: list = []


def mesh_region(box, roll: float) -> tuple[tuple[float, float], float, float]:
    """(centre, side, angle) of the square region the mesh model is given for a face ``box``
    (x, y, w, h) with ``roll`` degrees."""
    x, y, w, h = box
    side = max(w, h)
    a = math.radians(roll)
    down = (-math.sin(a), math.cos(a))
    cx = x + w / 2 + ROI_DOWN * side * down[0]
    cy = y + h / 2 + ROI_DOWN * side * down[1]
    return (cx, cy), ROI_SCALE * side, roll


def _region_transform(centre, side: float, angle: float) -> np.ndarray:
    """2x3 affine map from image pixels to the 192x192 mesh input (turned by -angle)."""
    import cv2

    m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), float(angle), MESH_SIZE / side)
    m[0, 2] += MESH_SIZE / 2 - centre[0]
    m[1, 2] += MESH_SIZE / 2 - centre[1]
    return m


def face_mesh(image: np.ndarray, regions) -> tuple[np.ndarray, np.ndarray]:
    """Meshes (N, 468, 3) in image pixels and face-presence scores (N,) for ``regions`` (centre,
    side, angle) of a gray or BGR uint8 ``image``."""
    import cv2

    from .blazeface import _graph

    if not len(regions):
        return np.zeros((0, 468, 3), np.float32), np.zeros(0, np.float32)
    rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    batch, inverses = [], []
    for centre, side, angle in regions:
        m = _region_transform(centre, side, angle)
        batch.append(cv2.warpAffine(rgb, m, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT))
        inverses.append((cv2.invertAffineTransform(m), side / MESH_SIZE))
    pts, flags = _graph("mesh").run(np.stack(batch).astype(np.float32) / 255.0)
    pts = pts.reshape(len(batch), 468, 3)
    out = np.empty_like(pts)
    for i, (inv, scale) in enumerate(inverses):
        xy = pts[i, :, :2] @ inv[:, :2].T + inv[:, 2]
        out[i] = np.concatenate([xy, pts[i, :, 2:] * scale], 1)
    return out, 1.0 / (1.0 + np.exp(-np.clip(flags.reshape(-1), -80, 80)))


def similarity(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares (scale, R, shift) with target ~ scale * R @ source + shift (Umeyama), R a proper rotation."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = float((s * np.diag(fix)).sum() / max((a ** 2).sum(), 1e-12))
    return scale, rot, md - scale * rot @ ms


def euler(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of a rotation ``Rz(roll) Ry(yaw) Rx(pitch)`` (see the module)."""
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -rot[2, 0]))))
    pitch = math.degrees(math.atan2(rot[2, 1], rot[2, 2]))
    roll = math.degrees(math.atan2(rot[1, 0], rot[0, 0]))
    return yaw, pitch, roll


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """The rotation matrix of (yaw, pitch, roll) degrees (the inverse of :func:`euler`)."""
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    return rz @ ry @ rx


def canonical() -> np.ndarray:
    """The canonical frontal mesh (468, 3), centred, unit RMS radius."""
    if not _CANONICAL:
        from safetensors.numpy import load_file

        from ..bundled import WEIGHTS_DIR
        from ..errors import FerkitError

        path = WEIGHTS_DIR / CANONICAL_FILE
        if not path.is_file():
            raise FerkitError(f"the canonical face mesh {path} is missing from this installation; reinstall ferkit")
        _CANONICAL.append(load_file(str(path))["canonical"].astype(np.float64))
    return _CANONICAL[0]


def head_pose(mesh: np.ndarray, reference: np.ndarray | None = None) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees of one (468, 3) mesh against ``reference`` (default: :func:`canonical`):
    the turned, scaled and shifted reference whose x, y best match the mesh's (weak perspective, least
    squares; Gauss-Newton from the 3D similarity fit). The mesh's own depth only starts the fit: the
    mesh model flattens it on turned faces (0.65-0.8 of the true depth spread at 45 degrees of yaw in
    ``benchmarks/bench_pose.py``), which made the 3D fit read about half the yaw."""
    ref = canonical() if reference is None else np.asarray(reference, np.float64)
    target = np.asarray(mesh, np.float64)[:, :2]
    scale, rot, shift = similarity(ref, mesh)
    x = np.array([*euler(rot), scale, shift[0], shift[1]])

    def residual(p):
        return ((p[3] * ref @ rotation(*p[:3]).T)[:, :2] + p[4:6] - target).ravel()

    steps = np.array([1e-3, 1e-3, 1e-3, 1e-4 * max(scale, 1e-9), 1e-3, 1e-3])
    for _ in range(POSE_ITERATIONS):
        r = residual(x)
        jac = np.stack([(residual(x + np.eye(6)[k] * steps[k]) - r) / steps[k] for k in range(6)], 1)
        step = np.linalg.lstsq(jac, -r, rcond=None)[0]
        x = x + step
        if np.abs(step[:3]).max() < 1e-4:
            break
    yaw, pitch, roll = euler(rotation(*x[:3]))    # back to the principal range
    return yaw, pitch, roll


def make_canonical(meshes: list[np.ndarray], mirrored: list[np.ndarray]) -> np.ndarray:
    """A canonical frontal mesh from meshes of frontal faces and of their mirror images (same point
    order): each pair averaged after aligning by translation and scale only, so that yaw and roll
    cancel; then all pairs averaged; centred, unit RMS radius."""
    def norm(m):
        m = np.asarray(m, np.float64)
        m = m - m.mean(0)
        return m / math.sqrt((m ** 2).sum(1).mean())

    acc = np.zeros((468, 3))
    for a, b in zip(meshes, mirrored):
        acc += (norm(a) + norm(b)) / 2
    return norm(acc / len(meshes))


def face_mesh_and_pose(gray: np.ndarray, found) -> tuple[list, list]:
    """Meshes (468, 3; image pixels) and (yaw, pitch, roll) of :class:`ferkit.predict.detect.FoundFace`
    records in ``gray``; the roll of a face found without keypoints is the angle it was found at."""
    regions = [mesh_region(f.box, f.roll) for f in found]
    meshes, _ = face_mesh(gray, regions)
    return list(meshes), [head_pose(m) for m in meshes]
