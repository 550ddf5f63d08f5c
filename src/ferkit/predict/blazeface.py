"""MediaPipe's face detectors (BlazeFace short-range, full-range) run in PyTorch, with six keypoints.

The weights ship in ``ferkit/weights/`` (converted from the .tflite files by
``scripts/convert_blazeface.py``; Apache-2.0, see ``weights/LICENSE-mediapipe.md``). A detection is
a box, a score and six keypoints: the eyes, the nose tip, the mouth and the two ear tragions.

The pieces, as MediaPipe's graphs do them (``ssd_anchors_calculator``,
``tensors_to_detections_calculator``, ``non_max_suppression_calculator`` with WEIGHTED):

- :func:`ssd_anchors`: one anchor centre per cell of each feature map, repeated per aspect ratio
  (short range: 16x16x2 + 8x8x6 = 896 anchors on 128x128; full range: 48x48x1 = 2304 on 192x192);
- :func:`decode`: box centre, size and keypoints are offsets in input pixels from their anchor;
  scores are sigmoids of clipped logits;
- :func:`weighted_nms`: overlapping detections (IoU > 0.3) are merged into their score-weighted mean.

Example::

    from ferkit.predict.blazeface import BlazeFaceDetector
    det = BlazeFaceDetector()
    for d in det.detect_faces(gray):    # gray or BGR uint8 image
        print(d.box, d.score, d.keypoints)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: the keypoints of a detection, in this order (the person's right eye is on the image's left)
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")

#: MediaPipe's anchor options per model (face_detection_{short,full}_range_common.pbtxt)
MODELS = {
    "short": {"file": "blazeface-short.safetensors", "size": 128, "strides": (8, 16, 16, 16), "repeats": 2},
    "full": {"file": "blazeface-full.safetensors", "size": 192, "strides": (4,), "repeats": 1},
}
RAW_SCORE_LIMIT = 80.0   # MediaPipe clips at 100; exp(100) overflows float32
MIN_SCORE = 0.5
NMS_IOU = 0.3
# Each extra look is another chance of a false positive: short range on the whole image asks for a
# higher score than full range's one look, the retries (padded, turned copies) higher still, and the
# tiles (up to 36 looks a photo) the most. Chosen on pasted FER+/SFEW faces and face-free scenes of
# benchmarks/bench_detect.py (another seed).
SHORT_SCORE_LIFT, RETRY_SCORE, TILE_SCORE_LIFT = 0.1, 0.65, 0.2
# Faces smaller than the whole image's look reaches are looked for on a pyramid of overlapping square
# tiles, each level half the side of the one above (the whole image, then halves, quarters) until a
# level reaches the smallest face asked for, and never below a quarter of the longer side (at most
# 6 x 5 tiles a level) nor 128 px (smaller ones are a small image's, whose whole look reaches its
# faces). Tiles overlap by a third of their side, so a face as small as a level looks for (a third
# of a tile) lies whole in one; larger ones may be cut. The tiles are seen by **short range**, which
# finds a face a third of what it looks at (43 px of its 128) far more surely than full range finds
# one a seventh of its view: whole film photos pasted into scenes, faces 48 / 96 px, found 0.96 /
# 0.74 by short range on tiles three times the face against 0.74 / 0.43 by full range on the same
# tiles and 0.22 / 0.00 by full range at five times, each at score 0.6 (docs/predict.md, "Short
# range on the tiles"). Where the faces asked for are smaller than a quarter of the finest level
# (FULL_BELOW; e.g. --min-face 0.05), full range looks at that level's tiles too: it reaches a seventh.
TILE_REACH, TILE_OVERLAP, MIN_TILE, MIN_TILE_PX, TILE_RATIO = 3.0, 1 / 3, 0.25, 128, 0.5
FULL_BELOW = 4.0
# Below the pyramid's last level, where that level does not reach the smallest face asked for (48 px
# at the default --min-face in 640x480 is 0.3 of its 160-px tiles; 24 px at --min-face 0.05 a sixth),
# one **fine level** of tiles TILE_REACH times that face, seen by short range: never under
# FINE_TILE_PX, never over FINE_RATIO of the last level, at most MAX_FINE_TILES of them (else full
# range on the last level, FULL_BELOW). Tiles upscaled by a third or more (under FINE_LIFT_BELOW px)
# answer more often on plain texture, so they ask FINE_SCORE_LIFT more than the other tiles. Chosen
# on bench_detect.py's photo scenes of another seed than its table (docs/predict.md, "A fine level
# for small faces"; 6 faces a size): 24 / 32 / 48-px faces found by 72 / 96 / 120-px tiles 0.83 /
# 1.00 / 1.00 at score 0.7, face-free photos answering 0.04 / 0.02 / 0.00 times; at 0.75 the 72-px
# tiles found 0.50 and no false positive.
FINE_TILE_PX, FINE_RATIO, MAX_FINE_TILES, FINE_SCORE_LIFT, FINE_LIFT_BELOW = 72, 0.75, 160, 0.05, 100
# A face that fills the whole image (a tight crop) is larger than either model saw in training:
# full range scores it low, short range often just under its threshold. Short range on a framed copy
# (black margins of a quarter of the longer side, so the face spans two thirds of the input) finds it,
# asked for the same score as short range's look at the whole image. Measured on the 860 SFEW train
# crops and 360 face-free images (52 scene photos, 208 crops of them, 100 LFW non-face patches):
# docs/predict.md, "A face that fills the image". The mirror image is looked at too (the model is not
# quite symmetric): a few more faces found, no more false positives there.
FRAME_MARGIN = 0.25
#: a detection's keypoints in the mirror image: left and right swap (eyes, ears)
MIRROR_ORDER = (1, 0, 2, 3, 5, 4)

# The crop is framed from the keypoints, as Haar frames a face (the crop margin and the classifiers
# were tuned on Haar's boxes) and whatever the roll: with d = eye distance + eyes-to-mouth distance
# (measured across the eye line), the side is KP_SIDE x d and the centre lies KP_DOWN x d below the
# eyes' midpoint. Medians over the 152 SFEW train crops (every 4th file) where Haar and BlazeFace each
# found one face (interquartile range of the side: 1.17-1.27).
KP_SIDE, KP_DOWN = 1.218, 0.123


def ssd_anchors(size: int, strides, repeats: int, offset: float = 0.5) -> np.ndarray:
    """(N, 2) anchor centres in [0, 1] (x, y), MediaPipe's ``SsdAnchorsCalculator`` with fixed anchor
    size: layers of the same stride share one feature map and add ``repeats`` anchors each."""
    out = []
    i = 0
    strides = list(strides)
    while i < len(strides):
        j = i
        n = 0
        while j < len(strides) and strides[j] == strides[i]:
            n += repeats
            j += 1
        cells = size // strides[i]
        ys, xs = np.meshgrid((np.arange(cells) + offset) / cells, (np.arange(cells) + offset) / cells, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)
        out.append(np.repeat(centres, n, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
           size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model outputs (N, 16), (N,) or (N, 1) -> boxes (N, 4) as x0, y0, x1, y1, keypoints (N, 6, 2)
    and scores (N,), coordinates in [0, 1] of the (square) model input."""
    raw = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1) / size
    cx, cy = raw[:, 0] + anchors[:, 0], raw[:, 1] + anchors[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    kps = raw[:, 4:].reshape(len(anchors), -1, 2) + anchors[:, None, :]
    logits = np.clip(np.asarray(raw_scores, np.float32).reshape(-1), -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT)
    return boxes, kps, 1.0 / (1.0 + np.exp(-logits))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one x0, y0, x1, y1 box with each of ``boxes``."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, min_score: float = MIN_SCORE,
                 iou_threshold: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's weighted non-maximum suppression: from the best remaining detection, every detection
    overlapping it by more than ``iou_threshold`` is merged into one whose box and keypoints are the
    score-weighted mean of the group and whose score is the best one's. Returns (box, keypoints,
    score) triples, best first, of those scoring at least ``min_score``."""
    keep = np.flatnonzero((scores >= min_score) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    order = keep[np.argsort(-scores[keep], kind="stable")]
    out = []
    while len(order):
        best = order[0]
        group = order[iou(boxes[best], boxes[order]) > iou_threshold]
        group = group if len(group) else order[:1]
        wts = scores[group][:, None]
        box = (boxes[group] * wts).sum(0) / wts.sum()
        kp = (keypoints[group] * wts[:, :, None]).sum(0) / wts.sum()
        out.append((box, kp, float(scores[best])))
        order = np.setdiff1d(order, group, assume_unique=True)
        order = order[np.argsort(-scores[order], kind="stable")]
    return out


def letterbox(image: np.ndarray, size: int, margin: float = 0.0) -> tuple[np.ndarray, float, float, float]:
    """``image`` (H, W, 3) uint8 padded with black to a centred square and resized to ``size``;
    returns the square and (scale, pad_x, pad_y) such that image px = square px / scale - pad.
    ``margin``: the square is wider by that fraction of the longer side on each side (a framed copy,
    in which a face that fills ``image`` is a face of ordinary size)."""
    import cv2

    h, w = image.shape[:2]
    side = max(h, w) + 2 * int(round(margin * max(h, w)))
    px, py = (side - w) // 2, (side - h) // 2
    sq = cv2.copyMakeBorder(image, py, side - h - py, px, side - w - px, cv2.BORDER_CONSTANT, value=0)
    scale = size / side
    sq = cv2.resize(sq, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return sq, scale, float(px), float(py)


def mirror_detection(found: tuple[np.ndarray, np.ndarray, float], width: float) -> tuple[np.ndarray, np.ndarray, float]:
    """A (box x0, y0, x1, y1, keypoints, score) detection made on the mirror image of an image
    ``width`` px wide, in the image's own pixels (its keypoints in :data:`KEYPOINT_NAMES` order)."""
    box, kps, score = found
    kps = np.asarray(kps)[list(MIRROR_ORDER)].copy()
    kps[:, 0] = width - kps[:, 0]
    return np.array([width - box[2], box[1], width - box[0], box[3]]), kps, score


@dataclass
class Detection:
    """One face found: ``box`` (x, y, w, h) in Haar's framing from the keypoints (:func:`keypoint_box`),
    ``score`` in [0, 1], ``keypoints`` (6, 2) image pixels (see :data:`KEYPOINT_NAMES`), ``tight``
    the detector's own box (x0, y0, x1, y1) and ``roll`` (degrees) the eye line's angle."""

    box: tuple[int, int, int, int]
    score: float
    keypoints: np.ndarray = field(repr=False)
    tight: tuple[float, float, float, float] = field(repr=False, default=(0.0, 0.0, 0.0, 0.0))

    @property
    def roll(self) -> float:
        (rx, ry), (lx, ly) = self.keypoints[0], self.keypoints[1]
        return math.degrees(math.atan2(ly - ry, lx - rx))


def keypoint_box(keypoints: np.ndarray) -> tuple[int, int, int, int]:
    """A square (x, y, w, h) framed as a Haar box from six keypoints (see :data:`KEYPOINT_NAMES`): the
    box of the face turned upright about its centre, so a rolled face keeps its size."""
    kp = np.asarray(keypoints, np.float64)
    eyes = (kp[0] + kp[1]) / 2
    across = kp[1] - kp[0]
    de = float(np.hypot(*across))
    u = across / de if de > 0 else np.array([1.0, 0.0])
    down = np.array([-u[1], u[0]])
    dm = abs(float(np.dot(kp[3] - eyes, down)))
    d = de + dm
    cx, cy = eyes + KP_DOWN * d * down
    side = KP_SIDE * d
    return int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)), int(round(side))


def tile_levels(h: int, w: int, want: float) -> list[int]:
    """The tile sides of the pyramid that finds faces down to ``want`` px in an ``h`` x ``w`` image
    (see :data:`TILE_REACH`): empty when the whole image's look reaches them."""
    longer, levels = max(h, w), []
    side = float(longer)
    while side / TILE_REACH > want and side * TILE_RATIO >= max(MIN_TILE * longer - 1e-6, MIN_TILE_PX):
        side *= TILE_RATIO
        levels.append(int(math.ceil(side)))
    return levels


def fine_levels(h: int, w: int, want: float, levels: list[int]) -> list[int]:
    """The sides of the fine levels' tiles (see :data:`FINE_TILE_PX`) below ``levels``, each
    TILE_REACH x ``want`` but at least FINE_TILE_PX and at most FINE_RATIO of the level above, until
    one reaches ``want`` px. None where there is no pyramid (a small image: its whole look reaches
    its faces) or its last level already reaches them; they stop before a level of more than
    :data:`MAX_FINE_TILES` tiles or larger than the image's shorter side."""
    out: list[int] = []
    last = levels[-1] if levels else 0
    while last and last / TILE_REACH > want:
        tile = int(math.ceil(min(FINE_RATIO * last, max(FINE_TILE_PX, TILE_REACH * want))))
        if tile > min(h, w) or len(tile_starts(h, tile)) * len(tile_starts(w, tile)) > MAX_FINE_TILES:
            break
        out.append(tile)
        last = tile
    return out


def tile_starts(n: int, tile: int) -> list[int]:
    """Where the tiles of side ``tile`` start along a side of ``n`` px: a step of two thirds of a
    tile (:data:`TILE_OVERLAP`), the last one flush with the end; one when the side is shorter."""
    step = max(1, int(tile * (1 - TILE_OVERLAP)))
    return sorted({*range(0, max(1, n - tile + 1), step), max(0, n - tile)})


_GRAPHS: dict[str, object] = {}


def _graph(name: str):
    """The converted graph of ``name`` (short, full, mesh), loaded once per process (read-only)."""
    if name not in _GRAPHS:
        from ..bundled import WEIGHTS_DIR
        from ..errors import FerkitError
        from .tflite_graph import TFLiteGraph

        file = MODELS[name]["file"] if name in MODELS else "face-mesh.safetensors"
        path = WEIGHTS_DIR / file
        if not path.is_file():
            raise FerkitError(f"the bundled face detector weights {file} are missing from this installation "
                              f"({path}); reinstall ferkit or use --detector haar")
        _GRAPHS[name] = TFLiteGraph(path)
    return _GRAPHS[name]


class BlazeFaceDetector:
    """MediaPipe face detection in PyTorch: the same interface as :class:`ferkit.predict.FaceDetector`
    (``detect`` -> boxes) plus :meth:`detect_faces` (boxes, scores, keypoints).

    Args:
        min_face: smallest face side as a fraction of the image's shorter side (never below 24 px);
            faces smaller than the full-range model sees on the whole image are searched on tiles.
        max_side: accepted for the same interface; the models see 128 or 192 px anyway.
        model: "auto" (full range on the whole image, short range too when the faces asked for are
            large: tight crops are found more surely by it), "short" or "full".
        min_score: detections scoring less are dropped (MediaPipe's 0.5).
    """

    def __init__(self, min_face: float = 0.1, max_side: int = 640, model: str = "auto",
                 min_score: float = MIN_SCORE):
        from ..errors import FerkitError

        if model not in ("auto", "short", "full"):
            raise FerkitError(f"unknown BlazeFace model {model!r}; accepted: auto, short, full")
        self.min_face, self.max_side, self.model, self.min_score = min_face, max_side, model, min_score
        self._anchors = {k: ssd_anchors(m["size"], m["strides"], m["repeats"]) for k, m in MODELS.items()}
        for k in (("short", "full") if model == "auto" else (model,)):
            _graph(k)

    def _run(self, name: str, images: list[np.ndarray], min_score: float,
             margin: float = 0.0) -> list[list[tuple[np.ndarray, np.ndarray, float]]]:
        """Letterboxed runs of model ``name`` on RGB uint8 ``images``, batched; detections in each
        image's pixels (x0, y0, x1, y1), keypoints (6, 2), score. ``margin``: see :func:`letterbox`."""
        size = MODELS[name]["size"]
        boxes, batch = [], []
        for im in images:
            sq, scale, px, py = letterbox(im, size, margin)
            batch.append(sq)
            boxes.append((scale, px, py))
        x = np.stack(batch).astype(np.float32) / 127.5 - 1.0
        raw_boxes, raw_scores = _graph(name).run(x)
        out = []
        for k, (scale, px, py) in enumerate(boxes):
            b, kp, s = decode(raw_boxes[k], raw_scores[k], self._anchors[name], size)
            found = []
            for box, kps, score in weighted_nms(b, kp, s, min_score):
                box = box * size / scale - np.array([px, py, px, py])
                found.append((box, kps * size / scale - np.array([px, py]), score))
            out.append(found)
        return out

    def detect_faces(self, image: np.ndarray, min_size: int | None = None, thorough: bool = False,
                     quick: bool = False) -> list[Detection]:
        """Faces in a gray or BGR uint8 image, left to right. ``min_size``: smallest face side in
        ``image``'s pixels (default ``min_face`` of its shorter side).

        Full range on the whole image; a pyramid of overlapping tiles (:func:`tile_levels`, each seen
        by short range at 128 px, then fine levels (:func:`fine_levels`) for faces the pyramid's last
        level does not reach; where those would take too many tiles, full range on the last level's
        tiles where the faces asked for are smaller than a quarter of them) where faces smaller than
        that look reaches are asked for;
        short range on the whole image where nothing else was found or the faces asked for are large
        (tight crops), and where still nothing was found, short range on a framed copy and its mirror image
        (:data:`FRAME_MARGIN`: a face that fills the image). ``quick`` (video frames): no tiles, no
        framed copy.
        ``thorough`` (the retries on padded, turned copies): full and short range on the whole image
        (no tiles: their cost times five retries) with a higher score threshold (:data:`RETRY_SCORE`),
        as each retry is another chance of a false positive."""
        import cv2

        if image.size == 0 or min(image.shape[:2]) < 8:
            return []
        rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        h, w = rgb.shape[:2]
        want = max(24.0, self.min_face * min(h, w) if min_size is None else float(min_size))
        lift = RETRY_SCORE - MIN_SCORE if thorough else 0.0
        found: list[tuple[np.ndarray, np.ndarray, float]] = []
        if self.model in ("auto", "full"):
            found += self._run("full", [rgb], self.min_score + lift)[0]
        if self.model != "short" and not (quick or thorough):
            levels = tile_levels(h, w, want)
            for tile in levels:
                found += self._tiles(rgb, tile, self.min_score + TILE_SCORE_LIFT)
            fine = fine_levels(h, w, want, levels)
            for tile in fine:     # tiles upscaled by a third or more ask a little more
                lift = TILE_SCORE_LIFT + (FINE_SCORE_LIFT if tile < FINE_LIFT_BELOW else 0.0)
                found += self._tiles(rgb, tile, self.min_score + lift)
            levels += fine
            if levels and want < levels[-1] / FULL_BELOW:    # faces too small for short range's tiles
                found += self._tiles(rgb, levels[-1], self.min_score + SHORT_SCORE_LIFT, "full")
        short = self.min_score + SHORT_SCORE_LIFT + lift
        if self.model == "short" or (self.model == "auto" and (thorough or not found or want >= 0.3 * min(h, w))):
            found += self._run("short", [rgb], short)[0]
        if self.model != "full" and not (found or quick):      # a face that fills the image (a tight crop)
            framed, mirrored = self._run("short", [rgb, np.ascontiguousarray(rgb[:, ::-1])], short, FRAME_MARGIN)
            found += framed + [mirror_detection(d, w) for d in mirrored]
        dets = self._merge(found)
        out = []
        for box, kps, score in dets:
            x0, y0, x1, y1 = box
            side = max(x1 - x0, y1 - y0)
            if side < 0.6 * want:
                continue
            out.append(Detection(keypoint_box(kps), score, kps.astype(np.float32), tuple(map(float, box))))
        return sorted(out, key=lambda d: (d.box[0], d.box[1]))

    def _tiles(self, rgb: np.ndarray, tile: int, min_score: float, name: str = "short") -> list:
        h, w = rgb.shape[:2]        # tiles are squares; along a side shorter than one, a single strip
        crops, offsets = [], []
        for y in tile_starts(h, tile):
            for x in tile_starts(w, tile):
                crops.append(rgb[y:y + tile, x:x + tile])
                offsets.append((x, y))
        out = []
        for (x, y), dets in zip(offsets, self._run_batched(name, crops, min_score)):
            for box, kps, score in dets:
                out.append((box + np.array([x, y, x, y]), kps + np.array([x, y]), score))
        return out

    def _run_batched(self, name: str, crops: list[np.ndarray], min_score: float, batch: int = 16) -> list:
        out = []
        for i in range(0, len(crops), batch):
            out += self._run(name, crops[i:i + batch], min_score)
        return out

    @staticmethod
    def _merge(found):
        """One detection per face from several runs (whole image, short range, tiles): NMS again."""
        if len(found) <= 1:
            return found
        boxes = np.stack([f[0] for f in found])
        kps = np.stack([f[1] for f in found])
        scores = np.array([f[2] for f in found])
        return weighted_nms(boxes, kps, scores, min_score=0.0)

    def detect(self, image: np.ndarray, min_size: int | None = None,
               thorough: bool = False) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in Haar's framing, left to right (see :meth:`detect_faces`)."""
        return [d.box for d in self.detect_faces(image, min_size, thorough)]
