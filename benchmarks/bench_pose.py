"""Head pose from the bundled face mesh on faces turned by a known yaw (not a test).

    .venv/bin/python benchmarks/bench_pose.py [--faces 60] [--angles 10,20,30,40]

Real faces (Grace Hopper, matplotlib's sample photo, and SFEW train crops that the mesh sees as
near-frontal, |yaw| < 15 degrees) are turned in 3D by re-rendering their own pixels: the mesh the
model finds on the face (468 points, with depth) is triangulated (Delaunay on the frontal points),
turned about its centre by the yaw, and each triangle of the photo is warped to where the turned mesh
puts it (far triangles first, back-facing ones dropped). ``ferkit``'s detector, mesh and head pose then
run on the new image; the error is (yaw found on the turned copy - yaw found on the original) - the
turn. Roll is checked the same way on copies turned in the image plane (an exact ground truth).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402


def turn_face(img: np.ndarray, mesh: np.ndarray, tris: np.ndarray, yaw: float) -> np.ndarray:
    """``img`` with the face under ``mesh`` (468, 3 image pixels) re-rendered turned by ``yaw`` degrees."""
    from ferkit.predict.mesh import rotation

    c = mesh.mean(0)
    turned = (mesh - c) @ rotation(yaw, 0, 0).T + c
    out = img.copy()
    order = np.argsort(-turned[tris].mean(1)[:, 2])       # far first
    for t in tris[order]:
        src, dst = mesh[t, :2].astype(np.float32), turned[t, :2].astype(np.float32)
        e1, e2 = dst[1] - dst[0], dst[2] - dst[0]
        s1, s2 = src[1] - src[0], src[2] - src[0]
        if np.sign(e1[0] * e2[1] - e1[1] * e2[0]) != np.sign(s1[0] * s2[1] - s1[1] * s2[0]):
            continue                                       # turned away from the camera
        x, y, w, h = cv2.boundingRect(dst)
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > img.shape[1] or y + h > img.shape[0]:
            continue
        local = (dst - np.float32([x, y])).astype(np.float32)
        m = cv2.getAffineTransform(src, local)
        patch = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.round(local).astype(np.int32), 1)
        roi = out[y:y + h, x:x + w]
        roi[mask > 0] = patch[mask > 0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=60, help="SFEW train crops to try (near-frontal ones kept)")
    ap.add_argument("--angles", default="10,20,30,40")
    ap.add_argument("--sfew-dir", default="/tmp/ferkit-data/sfew-train")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import torch
    from scipy.spatial import Delaunay

    from ferkit.bundled import sample_photo
    from ferkit.predict.detect import create_detector, locate_faces
    from ferkit.predict.mesh import face_mesh_and_pose

    torch.set_num_threads(1)
    det = create_detector("blazeface")
    rng = np.random.default_rng(a.seed)
    sfew = sorted(Path(a.sfew_dir).glob("*/*.png"))
    paths = [sample_photo()] + [sfew[i] for i in rng.choice(len(sfew), min(a.faces, len(sfew)), replace=False)]

    def pose(gray):
        found = locate_faces(det, gray, retry=False)
        if len(found) != 1:
            return None, None
        meshes, poses = face_mesh_and_pose(gray, found)
        return meshes[0], poses[0]

    angles = [float(v) for s in a.angles.split(",") for v in (s, f"-{s}")]
    yaw_err: dict[float, list[float]] = {t: [] for t in angles}
    roll_err: list[float] = []
    used = 0
    for p in paths:
        gray = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        pad = gray.shape[1] // 2          # room for the turned face and context for the detector
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        mesh, p0 = pose(gray)
        if mesh is None or abs(p0[0]) >= 15:
            continue
        used += 1
        tris = Delaunay(mesh[:, :2]).simplices
        for t in angles:
            _, pt = pose(turn_face(gray, mesh, tris, t))
            if pt is not None:
                yaw_err[t].append((pt[0] - p0[0]) - t)
        h, w = gray.shape
        for r in (-30.0, 30.0):
            turned = cv2.warpAffine(gray, cv2.getRotationMatrix2D((w / 2, h / 2), r, 1.0), (w, h),
                                    borderMode=cv2.BORDER_REPLICATE)
            _, pr = pose(turned)
            if pr is not None:
                roll_err.append((pr[2] - p0[2]) + r)    # cv2's +r turns the face anticlockwise: roll -r
    print(f"{machine()}; {used} near-frontal faces (Grace Hopper + SFEW train), turned in 3D by their own mesh")
    allerr = np.abs([e for v in yaw_err.values() for e in v])
    for t in angles:
        e = np.abs(yaw_err[t])
        print(f"  yaw {t:+5.0f}: found {len(e)}/{used}, median |error| {np.median(e):.1f}, "
              f"mean signed {np.mean(yaw_err[t]):+.1f}" if len(e) else f"  yaw {t:+5.0f}: none found")
    print(f"  all turns: median |yaw error| {np.median(allerr):.1f} deg, "
          f"90th percentile {np.percentile(allerr, 90):.1f}")
    r = np.abs(roll_err)
    print(f"  roll +-30 in the image plane: median |roll error| {np.median(r):.1f} deg over {len(r)} copies")


if __name__ == "__main__":
    main()
