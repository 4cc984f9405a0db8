"""Detection, alignment and quality gates on real photos."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from facestream import client, contracts
from facestream.config import Settings
from facestream.contracts import ids
from facestream.errors import EnrolmentRejected, MalformedEvent
from facestream.models import YUNET, path_of
from facestream.runtime.compute import model_executor
from facestream.runtime.stage import Record, dead_letter
from facestream.services.detector.logic import (
    TEMPLATE,
    Face,
    FaceDetector,
    align,
    enrolment_face,
    passes,
    quality,
    size_free_yunet,
)
from facestream.services.detector.service import SERVICE as DETECTOR
from facestream.services.detector.stage import DetectorStage, analyse, analyse_image
from tests.conftest import read, sample

SUBJECTS = ["azure_family1_dad", "azure_family1_mom", "azure_family1_son", "azure_family2_lady", "azure_family2_man"]


def side_by_side(*images: np.ndarray, gap: int = 40) -> np.ndarray:
    height = max(i.shape[0] for i in images)
    padded = [cv2.copyMakeBorder(i, 0, height - i.shape[0], 0, gap, cv2.BORDER_CONSTANT) for i in images]
    return np.hstack(padded)


@pytest.mark.parametrize("subject", SUBJECTS)
def test_finds_the_one_face_like_the_reference_decoder(detector: FaceDetector, subject: str) -> None:
    image = read(sample(subject))
    faces = detector.detect(image)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8
    # OpenCV's own YuNet implementation on the same model and scale is the reference: the image's
    # long side brought into 256..640.
    h, w = image.shape[:2]
    scale = min(max(1.0, 256 / max(h, w)), 640 / max(h, w))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=interpolation)
    reference = cv2.FaceDetectorYN.create(str(path_of(YUNET)), "", (small.shape[1], small.shape[0]), 0.6, 0.3, 50)
    _, found = reference.detect(small)
    assert found is not None
    assert len(found) == 1
    ref_box = found[0][:4] / scale
    assert np.allclose(face.bbox, ref_box, atol=0.03 * max(ref_box[2:]))
    ref_pts = found[0][4:14].reshape(5, 2) / scale
    assert np.allclose(np.array(face.landmarks), ref_pts, atol=0.03 * max(ref_box[2:]))


def test_the_size_free_graph_computes_what_the_model_file_does() -> None:
    """Opening the input's size changes no weight and no output: at the file's own 640x640 both
    graphs agree, and a smaller input runs without padding to 640."""
    rng = np.random.default_rng(3)
    blob = rng.integers(0, 256, (1, 3, 640, 640)).astype(np.float32)
    fixed = ort.InferenceSession(str(path_of(YUNET)), providers=["CPUExecutionProvider"])
    free = ort.InferenceSession(size_free_yunet(), providers=["CPUExecutionProvider"])
    for a, b in zip(fixed.run(None, {"input": blob}), free.run(None, {"input": blob}), strict=True):
        assert np.allclose(a, b, atol=1e-5)
    small = free.run(["cls_8"], {"input": blob[:, :, :256, :320]})[0]
    assert small.shape == (1, (256 // 8) * (320 // 8), 1)


def test_alignment_puts_landmarks_on_the_template(detector: FaceDetector) -> None:
    image = read(sample("azure_family2_lady"))
    face = detector.detect(image)[0]
    crop = align(image, face)
    assert crop.shape == (112, 112, 3)
    assert crop.dtype == np.uint8
    # Detect again on the upscaled crop: eyes, nose and mouth land near the template points.
    again = detector.detect(cv2.resize(crop, (448, 448)))
    assert again, "the aligned crop still shows a face"
    pts = np.array(again[0].landmarks) / 4
    assert np.abs(pts - TEMPLATE).max() < 6.0


def test_every_face_of_a_group_photo(detector: FaceDetector) -> None:
    group = side_by_side(*(read(sample(s)) for s in SUBJECTS[:3]))
    faces = detector.detect(group)
    assert len(faces) == 3
    centres = sorted(f.bbox[0] + f.bbox[2] / 2 for f in faces)
    assert centres[0] < centres[1] < centres[2]


def test_no_face_in_a_blank_image(detector: FaceDetector) -> None:
    assert detector.detect(np.full((300, 400, 3), 127, np.uint8)) == []


def test_quality_gates(detector: FaceDetector) -> None:
    image = read(sample("azure_family2_man"))
    face = detector.detect(image)[0]
    q = quality(face, align(image, face))
    assert passes(q, face.score, min_face_px=24, min_sharpness=15, min_score=0.6) is None
    assert "px" in (passes(q, face.score, min_face_px=10_000, min_sharpness=15, min_score=0.6) or "")
    assert "score" in (passes(q, 0.3, min_face_px=24, min_sharpness=15, min_score=0.6) or "")
    blurred = cv2.GaussianBlur(image, (0, 0), 6)
    bface = detector.detect(blurred)
    if bface:  # if the detector still finds it, the sharpness gate must catch it
        bq = quality(bface[0], align(blurred, bface[0]))
        assert bq.sharpness < q.sharpness
        assert "sharpness" in (passes(bq, 0.9, min_face_px=24, min_sharpness=q.sharpness * 0.5, min_score=0.6) or "")


def _face(x: float, y: float, size: float, score: float) -> Face:
    return Face((x - size / 2, y - size / 2, size, size), ((0, 0),) * 5, score)


def test_enrolment_takes_the_subject_never_a_bystander() -> None:
    """Size, centrality and detection score together (a 1000x800 photo)."""
    subject = _face(500, 350, 200, 0.95)
    # A press photo: people behind, nearly as large but off-centre and less sharp, are not rivals.
    behind = [_face(150, 300, 180, 0.8), _face(870, 320, 170, 0.75)]
    assert enrolment_face([*behind, subject], 1000, 800, 1.5) is subject
    # The same face found twice (a smaller box inside it) is no rival either.
    assert enrolment_face([subject, _face(520, 360, 120, 0.7)], 1000, 800, 1.5) is subject
    # Two people side by side, or three in a row of equals: no face is clearly the subject.
    with pytest.raises(EnrolmentRejected, match="none clearly the subject") as info:
        enrolment_face([_face(330, 400, 200, 0.93), _face(670, 400, 200, 0.94)], 1000, 800, 1.5)
    assert info.value.reason == "enrolment_ambiguous"
    row = [_face(x, 300, 190, 0.93) for x in (170, 500, 830)]
    with pytest.raises(EnrolmentRejected, match="none clearly the subject"):
        enrolment_face(row, 1000, 800, 1.5)
    # A hint names the face: a point in it, or a box around it (fractions of the photo's sides).
    assert enrolment_face(row, 1000, 800, 1.5, {"point": [0.83, 0.37]}) is row[2]
    assert enrolment_face(row, 1000, 800, 1.5, {"box": [0.07, 0.25, 0.2, 0.25]}) is row[0]
    with pytest.raises(EnrolmentRejected, match="hinted point"):
        enrolment_face(row, 1000, 800, 1.5, {"point": [0.5, 0.9]})
    with pytest.raises(EnrolmentRejected, match="no face"):
        enrolment_face([], 1000, 800, 1.5)


def composite(size: tuple[int, int], *placed: tuple[np.ndarray, float, float, int]) -> np.ndarray:
    """A grey canvas of `size` (w, h) with each image scaled to a height, its centre at (x, y)
    given as fractions of the canvas."""
    width, height = size
    canvas = np.full((height, width, 3), 128, np.uint8)
    for image, fx, fy, h in placed:
        w = round(image.shape[1] * h / image.shape[0])
        scaled = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        x0, y0 = round(fx * width - w / 2), round(fy * height - h / 2)
        canvas[y0 : y0 + h, x0 : x0 + w] = scaled
    return canvas


def test_a_centred_subject_is_enrolled_past_a_smaller_bystander(detector: FaceDetector, settings: Settings) -> None:
    """Real photos, real detector: the subject in the middle, someone smaller at the side."""
    dad, man = read(sample("azure_family1_dad")), read(sample("azure_family2_man"))
    photo = composite((1800, 1000), (man, 0.16, 0.56, 800), (dad, 0.5, 0.5, 900))
    ok, data = cv2.imencode(".jpg", photo)
    assert ok
    both = sorted(detector.detect(photo), key=lambda f: f.area)
    assert len(both) == 2, "both faces are detected: the choice is made between them"
    assert both[0].area > both[1].area / 2, "size alone would not tell them apart (the bystander is over half)"
    [(face, _, _)] = analyse(data.tobytes(), detector, settings, enrol=True).faces
    assert 0.3 * 1800 < face.bbox[0] + face.bbox[2] / 2 < 0.7 * 1800, "the centred subject, not the bystander"


def test_two_equal_faces_are_refused_unless_the_enrolment_names_one(detector: FaceDetector, settings: Settings) -> None:
    dad, man = read(sample("azure_family1_dad")), read(sample("azure_family2_man"))
    photo = composite((1400, 800), (dad, 0.27, 0.5, 700), (man, 0.73, 0.5, 700))
    ok, data = cv2.imencode(".jpg", photo)
    assert ok
    with pytest.raises(EnrolmentRejected) as info:
        analyse(data.tobytes(), detector, settings, enrol=True)
    assert info.value.reason == "enrolment_ambiguous"
    faces = analyse(data.tobytes(), detector, settings, enrol=False).faces
    right = max(faces, key=lambda k: k[0].bbox[0])[0]
    point = [(right.bbox[0] + right.bbox[2] / 2) / 1400, (right.bbox[1] + right.bbox[3] / 2) / 800]
    [(chosen, _, _)] = analyse(data.tobytes(), detector, settings, enrol=True, hint={"point": point}).faces
    assert chosen.bbox == right.bbox


def test_enrolment_of_a_group_photo_is_refused(detector: FaceDetector, settings: Settings) -> None:
    group = side_by_side(read(sample("azure_family1_dad")), read(sample("azure_family2_man")))
    ok, data = cv2.imencode(".jpg", group)
    assert ok
    with pytest.raises(EnrolmentRejected) as info:
        analyse(data.tobytes(), detector, settings, enrol=True)
    assert info.value.reason == "enrolment_ambiguous"
    # A search of the same photo yields both faces.
    assert len(analyse(data.tobytes(), detector, settings, enrol=False).faces) == 2


def _record(event: dict[str, object] | bytes, offset: int = 0) -> Record:
    value = event if isinstance(event, bytes) else contracts.dumps(event)  # type: ignore[arg-type]
    return Record(value, b"k", "facestream.images", 0, offset)


async def test_stage_emits_valid_events_and_rejects_bad_input(settings: Settings) -> None:
    stage = DetectorStage(settings)
    await stage.start()
    try:
        intent = client.search_intent("test search", "CASE-9", "tester")
        photo = sample("azure_family1_mom").read_bytes()
        good = client.submission(
            "img-good",
            {"data_b64": base64.b64encode(photo).decode(), "sha256": hashlib.sha256(photo).hexdigest()},
            intent,
            "test",
        )
        blank_bytes = cv2.imencode(".png", np.full((200, 200, 3), 200, np.uint8))[1].tobytes()
        blank = client.submission("img-blank", {"data_b64": base64.b64encode(blank_bytes).decode()}, intent, "test")
        corrupt = client.submission(
            "img-corrupt", {"data_b64": base64.b64encode(b"\xff\xd8garbage").decode()}, intent, "test"
        )
        outcomes = await stage.process([_record(good), _record(blank, 1), _record(corrupt, 2), _record(b"{oops", 3)])
    finally:
        await stage.stop()
    crop, *faces = outcomes[0].outputs
    assert [o.topic for o in outcomes[0].outputs] == ["crops", "faces"]  # a search keeps its probe crop
    contracts.validate("face.crop", crop.value)
    sha = faces[0].value["image_sha256"]
    assert crop.value["event_id"] == ids.event_id("match", "img-good", 0, sha)  # the match it will produce
    assert cv2.imdecode(np.frombuffer(base64.b64decode(crop.value["data_b64"]), np.uint8), 1).shape == (112, 112, 3)
    assert outcomes[0].error is None
    contracts.validate("face.detected", faces[0].value)
    assert faces[0].value["intent"] == intent
    assert faces[0].value["trace_id"] == good["trace_id"]
    searched, no_face = outcomes[1].outputs  # a search without a face is audited all the same
    assert (searched.topic, searched.value["action"], searched.value["details"]["status"]) == (
        "audit.entries",
        "search",
        "no_face",
    )
    contracts.validate("audit.entry", searched.value)
    assert no_face.value["status"] == "no_face"
    contracts.validate("match.result", no_face.value)
    assert getattr(outcomes[2].error, "reason", None) == "undecodable"
    # Its dead letter names the submission (image id and submitted_at: any API worker finds it).
    letter = dead_letter("detector", _record(corrupt, 2), outcomes[2].error)  # type: ignore[arg-type]
    assert (letter["image_id"], letter["submitted_at"]) == ("k", corrupt["submitted_at"])
    contracts.validate("dead.letter", letter)
    assert "submitted_at" not in dead_letter("detector", _record(b"{oops", 3), outcomes[3].error)  # type: ignore[arg-type]
    assert isinstance(outcomes[3].error, MalformedEvent)
    # Deterministic ids: the same submission again gives the same event id.
    stage2 = DetectorStage(settings)
    await stage2.start()
    again = await stage2.process([_record(good)])
    await stage2.stop()
    assert again[0].outputs[1].value["event_id"] == faces[0].value["event_id"]
    await asyncio.sleep(0)


async def test_stage_reads_file_claim_checks_in_the_model_process(settings: Settings, tmp_path: Path) -> None:
    """File claim checks are read and digest-checked where they are decoded (here a real
    process pool, as in the worker); a wrong digest or a path outside the roots is refused."""

    photo = tmp_path / "probe.jpg"
    photo.write_bytes(sample("azure_family2_lady").read_bytes())
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    intent = client.search_intent("test search", "CASE-10", "tester")
    events = [
        client.submission("ok", {"uri": photo.as_uri(), "sha256": digest}, intent, "t"),
        client.submission("tampered", {"uri": photo.as_uri(), "sha256": "f" * 64}, intent, "t"),
        client.submission("outside", {"uri": "file:///etc/hostname", "sha256": digest}, intent, "t"),
    ]
    executor = model_executor(Settings(model_processes=1), [DETECTOR])
    stage = DetectorStage(settings, executor)
    await stage.start()
    try:
        ok, tampered, outside = await stage.process([_record(e, i) for i, e in enumerate(events)])
    finally:
        await stage.stop()
        executor.shutdown()
    assert ok.error is None
    assert [o.topic for o in ok.outputs] == ["crops", "faces"]
    assert getattr(tampered.error, "reason", None) == "digest_mismatch"
    assert getattr(outside.error, "reason", None) == "fetch_rejected"


def test_a_search_s_faces_come_back_from_the_model_call_as_jpeg(settings: Settings) -> None:
    """The probe crop's JPEG is encoded in the model process with the analysis (not on the faust
    process's loop); enrolment photos never become crops, so theirs are not encoded at all."""
    data = sample("azure_family2_lady").read_bytes()
    search = analyse_image(data, settings, enrol=False)
    assert len(search.jpegs) == len(search.faces) >= 1
    face = cv2.imdecode(np.frombuffer(search.jpegs[0], np.uint8), cv2.IMREAD_COLOR)
    assert face.shape == (112, 112, 3)
    assert analyse_image(data, settings, enrol=True).jpegs == []


async def test_a_reused_image_id_gets_ids_of_its_own(settings: Settings) -> None:
    """Another photo published under an image id already used gets its own face, match and crop
    ids (so its own webhook id: a receiver that de-duplicates does not drop it, and its crop link
    shows its face); the same photo sent again gets the same ids (redelivery stays idempotent)."""
    intent = client.search_intent("test search", "CASE-11", "tester")
    first, second = sample("azure_family2_lady", 0), sample("azure_family2_man", 0)

    def submitted(path: Path) -> dict[str, object]:
        data = path.read_bytes()
        image = {"data_b64": base64.b64encode(data).decode(), "sha256": hashlib.sha256(data).hexdigest()}
        return client.submission("img-reused", image, intent, "test")

    stage = DetectorStage(settings, ThreadPoolExecutor(2))
    await stage.start()
    try:
        outcomes = await stage.process([_record(submitted(p), i) for i, p in enumerate([first, second, first])])
    finally:
        await stage.stop()
    ids_of = [sorted(o.value["event_id"] for o in outcome.outputs) for outcome in outcomes]
    assert ids_of[0] == ids_of[2]
    assert not set(ids_of[0]) & set(ids_of[1])
    assert outcomes[1].outputs[-1].value["image_sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
