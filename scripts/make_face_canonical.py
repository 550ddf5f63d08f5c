"""Write ferkit's canonical frontal face mesh (weights/face-mesh-canonical.safetensors) for head pose.

    .venv/bin/python scripts/make_face_canonical.py [PHOTO ...]

The bundled face mesh model is run on each photo's face (default: Grace Hopper, the frontal,
public-domain photo that ships with matplotlib) and on its mirror image; each pair is averaged point
by point (yaw and roll cancel) and the pairs averaged (:func:`ferkit.predict.mesh.make_canonical`).
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from safetensors.numpy import save_file

from ferkit.bundled import WEIGHTS_DIR, sample_photo
from ferkit.predict.detect import create_detector, locate_faces
from ferkit.predict.mesh import CANONICAL_FILE, face_mesh, make_canonical, mesh_region


def main() -> int:
    photos = sys.argv[1:] or [str(sample_photo())]
    det = create_detector("blazeface")
    meshes, mirrored = [], []
    for p in photos:
        img = cv2.imread(p)
        for im, out in ((img, meshes), (img[:, ::-1].copy(), mirrored)):
            found = locate_faces(det, im, retry=False)
            if len(found) != 1:
                raise SystemExit(f"{p}: expected one face, found {len(found)}")
            out.append(face_mesh(im, [mesh_region(found[0].box, found[0].roll)])[0][0])
    canon = make_canonical(meshes, mirrored).astype(np.float32)
    path = WEIGHTS_DIR / CANONICAL_FILE
    save_file({"canonical": canon}, str(path), metadata={
        "what": "canonical frontal face mesh (468 x 3, centred, unit RMS radius) for ferkit's head pose",
        "made_by": "scripts/make_face_canonical.py", "photos": ", ".join(p.split("/")[-1] for p in photos)})
    print(f"{path}: from {len(photos)} photo(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
