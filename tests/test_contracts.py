"""The JSON Schemas in contracts/ are valid, accept well-formed events and name what is wrong."""

from __future__ import annotations

import ast
import copy
from typing import Any

import jsonschema
import orjson
import pytest

from facestream import client, contracts
from facestream.errors import MalformedEvent
from tests.conftest import ROOT


def submission(kind: str = "search") -> dict[str, Any]:
    if kind == "search":
        intent = client.search_intent("locate a missing person", "CASE-1", "officer-7")
    else:
        intent = client.enroll_intent(
            "subj-1",
            "missing-persons",
            lawful_basis="explicit_consent",
            consent_ref="consent/1",
            retain_until="2027-01-31",
            source_attestation="photo provided by the family",
            enrolled_by="clerk-2",
        )
    return client.submission("img-1", {"data_b64": "aGVsbG8=", "sha256": "0" * 64}, intent, "camera-3")


def test_every_schema_is_valid() -> None:
    schemas = sorted((ROOT / "contracts").glob("*.schema.json"))
    assert set(contracts.EVENT_TYPES) == {p.name.removesuffix(".schema.json") for p in schemas} - {"common"}
    # The package reads the same files (facestream/contracts/schemas links to contracts/).
    packaged = sorted(e.name for e in contracts.SCHEMAS.iterdir() if e.name.endswith(".schema.json"))
    assert packaged == [p.name for p in schemas]
    for path in schemas:
        schema = orjson.loads(path.read_bytes())
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["$id"].endswith(path.name)


@pytest.mark.parametrize("kind", ["search", "enroll"])
def test_well_formed_submission_validates(kind: str) -> None:
    event = submission(kind)
    assert contracts.loads(contracts.dumps(event), "image.submitted") == event


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("intent", "consent"), "intent"),
        (("intent", "consent", "lawful_basis"), "lawful_basis"),
        (("intent", "consent", "retain_until"), "retain_until"),
        (("image_id",), "image_id"),
        (("captured_at",), "captured_at"),
    ],
)
def test_enrolment_missing_a_field_is_rejected_with_its_name(path: tuple[str, ...], expected: str) -> None:
    event = submission("enroll")
    target = event
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    with pytest.raises(MalformedEvent) as info:
        contracts.validate("image.submitted", event)
    assert expected in str(info.value) or "intent" in str(info.value)


def test_search_needs_purpose_case_and_requester() -> None:
    for field in ("purpose", "case_ref", "requester"):
        event = submission("search")
        del event["intent"][field]
        with pytest.raises(MalformedEvent):
            contracts.validate("image.submitted", event)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'{"schema_version": 2}', b"\xff\xfe"])
def test_garbage_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedEvent):
        contracts.loads(raw, "image.submitted")


def test_a_face_hint_is_a_point_or_a_box_in_fractions() -> None:
    event = submission("enroll")
    for good in ({"point": [0.5, 0.4]}, {"box": [0.1, 0.2, 0.3, 0.4]}):
        contracts.validate("image.submitted", {**event, "intent": {**event["intent"], "face_hint": good}})
    bad = (
        {"point": [0.5]},
        {"point": [120, 80]},
        {"box": [0.1, 0.2, 0.3]},
        {"point": [0.5, 0.5], "box": [0, 0, 1, 1]},
        {},
    )
    for hint in bad:
        with pytest.raises(MalformedEvent, match="face_hint"):
            contracts.validate("image.submitted", {**event, "intent": {**event["intent"], "face_hint": hint}})


def test_bad_dates_and_digests_are_rejected() -> None:
    event = submission("enroll")
    event["intent"]["consent"]["retain_until"] = "next year"
    with pytest.raises(MalformedEvent, match="retain_until"):
        contracts.validate("image.submitted", event)
    event = copy.deepcopy(submission())
    event["image"] = {"uri": "file:///x.jpg", "sha256": "not-a-digest"}
    with pytest.raises(MalformedEvent):
        contracts.validate("image.submitted", event)


def test_timestamps_must_be_rfc3339() -> None:
    event = submission()
    event["captured_at"] = "yesterday at noon"
    with pytest.raises(MalformedEvent, match="captured_at"):
        contracts.validate("image.submitted", event)


def test_fast_validator_agrees_with_the_reference_validator() -> None:
    """The hot-path validator (fastjsonschema, compiled) and the reference one (jsonschema,
    draft 2020-12) accept and reject the same events."""
    good = [submission("search"), submission("enroll")]
    bad = []
    for path in (("intent", "consent"), ("intent", "purpose"), ("image",), ("source",)):
        event = submission("enroll" if path[-1] == "consent" else "search")
        target = event
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
        bad.append(event)
    bad.append({**submission(), "schema_version": 2})
    bad.append({**submission(), "unexpected": True})
    bad.append({**submission(), "image": {"uri": "file:///x", "sha256": "XYZ"}})
    bad.append({**submission(), "image_id": " spaced id"})
    for event in good:
        assert contracts.reference_errors("image.submitted", event) == []
        contracts.validate("image.submitted", event)
    for event in bad:
        assert contracts.reference_errors("image.submitted", event), event
        with pytest.raises(MalformedEvent):
            contracts.validate("image.submitted", event)


def _emitted_reasons() -> set[str]:
    """Every dead-letter reason the code can produce: the `reason` of each `RejectedEvent` class,
    each `reason="..."` given when one is raised, and `internal_error` for anything else."""
    from facestream import errors

    rejections = {
        name for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, errors.RejectedEvent)
    }
    codes = {getattr(errors, name).reason for name in rejections} | {"internal_error"}
    for path in [*(ROOT / "facestream").rglob("*.py"), *(ROOT / "services").rglob("*.py")]:
        if path.relative_to(ROOT).parts[:2] == ("facestream", "services"):
            continue  # the link to services/, read once from there
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in rejections:
                codes |= {
                    k.value.value for k in node.keywords if k.arg == "reason" and isinstance(k.value, ast.Constant)
                }
    return codes


def test_every_dead_letter_reason_is_in_the_contract() -> None:
    schema = orjson.loads((ROOT / "contracts" / "dead.letter.schema.json").read_bytes())
    listed = set(schema["properties"]["reason"]["enum"])
    emitted = _emitted_reasons()
    assert {"enrolment_low_quality", "undecodable", "digest_mismatch", "too_large"} <= emitted  # the scan works
    assert emitted == listed, f"emitted, not listed: {emitted - listed}; listed, never emitted: {listed - emitted}"
