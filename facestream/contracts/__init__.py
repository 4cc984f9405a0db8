"""The JSON Schemas of every event (the repository's `contracts/` folder, shipped in the package as
`facestream/contracts/schemas/`) are the one truth for every event; this package loads them,
validates events against them, and (de)serialises events with orjson. `ids` derives the
deterministic ids events carry; `timeutil` their timestamps."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.resources import files
from typing import Any
from urllib.parse import urljoin

import fastjsonschema
import jsonschema
import orjson
from referencing import Registry, Resource

from facestream.errors import MalformedEvent

SCHEMAS = files("facestream.contracts") / "schemas"
EVENT_TYPES = (
    "image.submitted",
    "face.detected",
    "face.embedded",
    "match.result",
    "dead.letter",
    "webhook.delivery",
    "webhook.test",
    "delivery.attempt",
    "face.crop",
    "gallery.point",
    "gallery.key",
    "gallery.erasure",
    "subject.erasure_requested",
    "subject.erased",
    "gallery.replica",
    "subject.notified",
    "audit.entry",
    "audit.record",
    "audit.checkpoint",
    "review.decision",
)
_BASE = "https://facestream.dev/contracts/"
_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"


@functools.cache
def _registry() -> Registry:
    resources = []
    for entry in sorted(SCHEMAS.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".schema.json"):
            continue
        schema = orjson.loads(entry.read_bytes())
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


def _inline(node: Any, base: str) -> Any:
    """`node` with every $ref replaced by the schema it points to (our schemas are not recursive)."""
    if isinstance(node, list):
        return [_inline(item, base) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = urljoin(base, node["$ref"])
        resolved = _registry().resolver(base).lookup(target)
        return _inline(resolved.contents, target.split("#")[0])
    # contentEncoding is only an annotation in 2020-12, but fastjsonschema would decode every
    # base64 payload to check it; the stages decode (and reject) those payloads themselves.
    dropped = ("$id", "$schema", "$defs", "contentEncoding")
    return {k: _inline(v, base) for k, v in node.items() if k not in dropped}


@functools.cache
def _fast_validator(event_type: str) -> Callable[[Any], Any]:
    # The hot path: every stage validates every event it consumes. fastjsonschema compiles the
    # (ref-inlined) schema to Python, an order of magnitude faster than walking it; the schemas
    # only use keywords that draft-07 shares with 2020-12. tests/test_contracts.py checks that it
    # agrees with the reference validator above.
    uri = f"{_BASE}{event_type}.schema.json"
    schema = {"$schema": "http://json-schema.org/draft-07/schema#", **_inline(_registry().contents(uri), uri)}
    return fastjsonschema.compile(schema, formats={"uuid": _UUID})


def validate(event_type: str, event: Any) -> None:
    """Raise `MalformedEvent` naming the offending field if `event` breaks its contract."""
    try:
        _fast_validator(event_type)(event)
    except fastjsonschema.JsonSchemaValueException as exc:
        where = "/".join(str(p) for p in (exc.path or [])[1:]) or "(root)"
        raise MalformedEvent(f"{event_type} v1 invalid at {where}: {exc.message[:300]}") from None


def reference_errors(event_type: str, event: Any) -> list[str]:
    """Every error the reference (jsonschema, 2020-12) validator finds; for tests and tooling."""
    return [e.message for e in validator(event_type).iter_errors(event)]


def loads(raw: bytes | None, event_type: str) -> dict[str, Any]:
    """Parse and validate one record value."""
    if raw is None:
        raise MalformedEvent("record has no value (a tombstone)")
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
