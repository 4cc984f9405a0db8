"""Face detection with YuNet on ONNX Runtime, quality gates and 5-point alignment.

YuNet (2023mar) takes a BGR input, unnormalised. Its file pins the input to 640x640, but the graph
itself is size-free (reshapes to -1, 2x upsampling), so the session is built with the height and
width left open: an image runs at about its own size (long side brought into 256..640, padded to a
multiple of 32), so a 250x250 photo does not pay for a 640x640 pass. The three stride heads (8, 16, 32) are
decoded as in the model's reference decoder and filtered with NMS. Alignment maps the 5 landmarks
onto the 112x112 template the embedder was trained on with a least-squares similarity transform.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from facestream.errors import EnrolmentRejected
from facestream.models import ALIGNED_SIZE, YUNET, path_of, session_options

Image = np.ndarray[Any, np.dtype[np.uint8]]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]

# Images are scaled down to fit MAX_SIDE, and small ones up to MIN_SIDE: at a 142 px photo's own
# size YuNet's landmarks are off enough to wreck the embedding (a mated sample pair scored 0.10,
# 0.52 at 256). Upscaling everything to 640, as the fixed input did, costs 4x on a 320 px photo
# and found fewer faces on the devset (639 of 642; bench/calibrate.py).
MAX_SIDE = 640
MIN_SIDE = 256
STRIDES = (8, 16, 32)
ALIGN = 32  # the coarsest stride: the input's sides are padded to a multiple of it
# Landmark template for 112x112 crops (eyes, nose tip, mouth corners) used by SFace/ArcFace.
TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Face:
    bbox: tuple[float, float, float, float]  # x, y, w, h in source pixels
    landmarks: tuple[tuple[float, float], ...]  # 5 points
    score: float

    @property
    def size(self) -> float:
        return min(self.bbox[2], self.bbox[3])

    @property
    def area(self) -> float:
        return self.bbox[2] * self.bbox[3]


@dataclass(frozen=True)
class Quality:
    face_px: float
    sharpness: float


@functools.cache  # bounded: sides are multiples of 32 up to 640
def _anchor_grids(height: int, width: int) -> dict[int, tuple[FloatArray, FloatArray]]:
    grids = {}
    for stride in STRIDES:
        rows, cols = np.mgrid[0 : height // stride, 0 : width // stride].astype(np.float32)
        grids[stride] = (cols.reshape(-1), rows.reshape(-1))
    return grids


@functools.cache
def size_free_yunet() -> bytes:
    """The YuNet graph with its input's height and width (and so every head's length) left open."""
    import onnx  # here, not at the top: 80 ms of every command's start, needed by the detector alone

    model = onnx.load(str(path_of(YUNET)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del model.graph.value_info[:]  # inferred shapes would pin the sizes again
    return bytes(model.SerializeToString())


class FaceDetector:
    """YuNet through ONNX Runtime. Thread-safe: `detect` may run in parallel threads."""

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 50) -> None:
        self.session = ort.InferenceSession(size_free_yunet(), session_options(), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k

    def detect(self, image: Image) -> list[Face]:
        """Faces in `image` (BGR), highest score first."""
        height, width = image.shape[:2]
        scale = min(max(1.0, MIN_SIDE / max(height, width)), MAX_SIDE / max(height, width))
        resized_w, resized_h = max(1, round(width * scale)), max(1, round(height * scale))
        input_h, input_w = -(-resized_h // ALIGN) * ALIGN, -(-resized_w // ALIGN) * ALIGN
        canvas = np.zeros((input_h, input_w, 3), dtype=np.uint8)
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        canvas[:resized_h, :resized_w] = (
            image if scale == 1 else cv2.resize(image, (resized_w, resized_h), interpolation=interpolation)
        )
        blob = canvas.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        grids = _anchor_grids(input_h, input_w)
        outputs = dict(
            zip(self.output_names, self.session.run(self.output_names, {self.input_name: blob}), strict=True)
        )

        boxes, landmarks, scores = [], [], []
        for stride in STRIDES:
            cols, rows = grids[stride]
            cls = np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1)
            obj = np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1)
            score = np.sqrt(cls * obj)
            keep = score >= self.score_threshold
            if not keep.any():
                continue
            bbox = outputs[f"bbox_{stride}"][0][keep]
            kps = outputs[f"kps_{stride}"][0][keep]
            c, r = cols[keep], rows[keep]
            cx, cy = (c + bbox[:, 0]) * stride, (r + bbox[:, 1]) * stride
            w, h = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
            pts = kps.reshape(-1, 5, 2)
            pts = np.stack([(pts[..., 0] + c[:, None]) * stride, (pts[..., 1] + r[:, None]) * stride], axis=-1)
            landmarks.append(pts)
            scores.append(score[keep])
        if not boxes:
            return []
        all_boxes = np.concatenate(boxes) / scale
        all_pts = np.concatenate(landmarks) / scale
        all_scores = np.concatenate(scores)
        kept = cv2.dnn.NMSBoxes(
            all_boxes.tolist(), all_scores.tolist(), self.score_threshold, self.nms_threshold, top_k=self.top_k
        )
        faces = []
        for i in np.asarray(kept).reshape(-1):
            x, y, w, h = (float(v) for v in all_boxes[i])
            # Clip to the image: faces at the border keep their visible part.
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 <= x0 or y1 <= y0:
                continue
            pts = tuple((float(px), float(py)) for px, py in all_pts[i])
            faces.append(Face((x0, y0, x1 - x0, y1 - y0), pts, float(all_scores[i])))
        faces.sort(key=lambda f: f.score, reverse=True)
        return faces


@functools.cache
def detector_for(score_threshold: float) -> FaceDetector:
    """One detector per process (and threshold): ONNX Runtime sessions are thread-safe, and in a
    model worker process this is loaded once by the pool's initializer."""
    return FaceDetector(score_threshold=score_threshold)


def similarity_transform(src: np.ndarray[Any, Any], dst: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst (Umeyama)."""
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / n
    scale = (s * d).sum() / var_src
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rot
    matrix[:, 2] = dst_mean - scale * rot @ src_mean
    return matrix


def align(image: Image, face: Face) -> Image:
    """The 112x112 BGR crop of `face`, aligned to the embedder's landmark template."""
    matrix = similarity_transform(np.array(face.landmarks, dtype=np.float64), TEMPLATE)
    crop = cv2.warpAffine(
        image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    )
    return np.asarray(crop, dtype=np.uint8)


def quality(face: Face, aligned: Image) -> Quality:
    """Face size in source pixels and sharpness (variance of the Laplacian of the aligned crop)."""
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    return Quality(face_px=face.size, sharpness=sharpness)


def passes(q: Quality, score: float, *, min_face_px: float, min_sharpness: float, min_score: float) -> str | None:
    """None if the face passes the quality gates, else the reason it does not."""
    if score < min_score:
        return f"detection score {score:.2f} < {min_score}"
    if q.face_px < min_face_px:
        return f"face {q.face_px:.0f}px < {min_face_px}px"
    if q.sharpness < min_sharpness:
        return f"sharpness {q.sharpness:.1f} < {min_sharpness}"
    return None


# Enrolment: which face is the subject. Size, centrality and the detector's confidence together,
# as a person would judge a photo: a press photo's subject (central, sharp, large) over the people
# behind (smaller, off-centre, less sure detections); a refusal only when two faces are genuinely
# equal candidates, where the enrolment's intent may name the face (`face_hint`).
CENTRALITY_SCALE = 0.8  # distance from the centre (1 = a corner) at which a face counts e^-1 as much


def prominence(face: Face, width: int, height: int) -> float:
    """How much `face` looks like the photo's subject: its area, times its detection score squared
    (a blurred face behind, or something face-like, scores lower), times how central it is."""
    x, y, w, h = face.bbox
    dx = (x + w / 2 - width / 2) / (width / 2)
    dy = (y + h / 2 - height / 2) / (height / 2)
    distance = math.hypot(dx, dy) / math.sqrt(2)
    return face.area * face.score**2 * math.exp(-((distance / CENTRALITY_SCALE) ** 2))


def _inside(small: Face, big: Face) -> float:
    """The share of `small`'s box that lies within `big`'s."""
    sx, sy, sw, sh = small.bbox
    bx, by, bw, bh = big.bbox
    iw = max(0.0, min(sx + sw, bx + bw) - max(sx, bx))
    ih = max(0.0, min(sy + sh, by + bh) - max(sy, by))
    return iw * ih / small.area if small.area else 0.0


def _hinted(faces: list[Face], hint: dict[str, Any], width: int, height: int) -> Face:
    """The face the enrolment's hint names: the one containing the point (the nearest to it, if
    several do), or the one whose box covers most of the hinted box."""
    if "point" in hint:
        px, py = hint["point"][0] * width, hint["point"][1] * height
        holding = [
            f for f in faces if f.bbox[0] <= px <= f.bbox[0] + f.bbox[2] and f.bbox[1] <= py <= f.bbox[1] + f.bbox[3]
        ]
        if holding:
            return min(
                holding, key=lambda f: math.hypot(f.bbox[0] + f.bbox[2] / 2 - px, f.bbox[1] + f.bbox[3] / 2 - py)
            )
        raise EnrolmentRejected(
            f"no detected face contains the hinted point ({hint['point'][0]:.2f}, {hint['point'][1]:.2f})",
            reason="enrolment_ambiguous",
        )
    bx, by, bw, bh = hint["box"]
    box = Face((bx * width, by * height, bw * width, bh * height), (), 1.0)
    overlap = {id(f): _inside(f, box) * _inside(box, f) for f in faces}  # both ways: not a sliver
    best = max(faces, key=lambda f: overlap[id(f)])
    if overlap[id(best)] < 0.25:
        raise EnrolmentRejected("no detected face matches the hinted box", reason="enrolment_ambiguous")
    return best


def enrolment_face(
    faces: list[Face], width: int, height: int, margin: float, hint: dict[str, Any] | None = None
) -> Face:
    """For enrolment: the subject's face, never a bystander's. With a hint, the face it names;
    without, the most prominent face, if it is at least `margin` times as prominent as any other
    (a detection lying mostly within it is the same face found twice, not a rival)."""
    if not faces:
        raise EnrolmentRejected("no face passed the quality gates", reason="enrolment_no_face")
    if hint is not None:
        return _hinted(faces, hint, width, height)
    ranked = sorted(faces, key=lambda f: prominence(f, width, height), reverse=True)
    chosen = ranked[0]
    rivals = [f for f in ranked[1:] if _inside(f, chosen) < 0.5]
    if rivals and prominence(chosen, width, height) < margin * prominence(rivals[0], width, height):
        raise EnrolmentRejected(
            f"{1 + len(rivals)} faces, none clearly the subject (size, centrality and detection score); "
            "name the face with the enrolment's face_hint",
            reason="enrolment_ambiguous",
        )
    return chosen
