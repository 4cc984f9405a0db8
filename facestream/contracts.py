"""The JSON Schemas in `contracts/` are the one truth for every event; this module loads them,
validates events against them, and (de)serialises events with orjson."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import orjson
from referencing import Registry, Resource

from facestream.errors import MalformedEvent

CONTRACTS_DIR = Path(__file__).resolve().parent.parent / "contracts"
EVENT_TYPES = ("image.submitted", "face.detected", "face.embedded", "match.result", "dead.letter")
_BASE = "https://facestream.dev/contracts/"


@functools.cache
def _registry() -> Registry:
    resources = []
    for path in sorted(CONTRACTS_DIR.glob("*.schema.json")):
        schema = orjson.loads(path.read_bytes())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    return Registry().with_resources(resources)


@functools.cache
def validator(event_type: str) -> jsonschema.protocols.Validator:
    """A compiled validator (with format checks) for one event type."""
    if event_type not in EVENT_TYPES:
        raise KeyError(event_type)
    schema = _registry().contents(f"{_BASE}{event_type}.schema.json")
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=_registry(), format_checker=cls.FORMAT_CHECKER)


def validate(event_type: str, event: Any) -> None:
    """Raise `MalformedEvent` naming the first offending field if `event` breaks its contract."""
    error = jsonschema.exceptions.best_match(validator(event_type).iter_errors(event))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise MalformedEvent(f"{event_type} v1 invalid at {where}: {error.message[:300]}")


def loads(raw: bytes, event_type: str) -> dict[str, Any]:
    """Parse and validate one record value."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise MalformedEvent("not a JSON object")
    validate(event_type, event)
    return event


def dumps(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)
