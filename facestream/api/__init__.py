"""What the HTTP API's parts share (the platform side): roles, problem details, and `require`,
the dependency an operation declares its roles with.

The API service (services/api) authenticates; each service may add its own operations (its
`Service.routes`), written against this module only, so no service imports another.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict

from facestream.api.problems import Problem

__all__ = ["Caller", "Problem", "Role", "Routes", "Strict", "require"]


class Role(enum.StrEnum):
    """What a token may do. A token has one or more."""

    publisher = "publisher"  # submit searches and enrolments
    reviewer = "reviewer"  # review candidate matches
    eraser = "eraser"  # erase subjects from the gallery
    auditor = "auditor"  # read the audit log, any search outcome, the gallery's listing, deliveries
    admin = "admin"  # subscriptions and tokens


class Caller(Protocol):
    """Who makes a request: the authenticated token's name is the identity recorded."""

    @property
    def name(self) -> str: ...
    @property
    def roles(self) -> tuple[str, ...]: ...


# Set by the API service on its app: (request, credentials or None, roles allowed) -> the caller.
Authenticate = Callable[[Request, HTTPAuthorizationCredentials | None, set[str]], Awaitable[Caller]]
_bearer = HTTPBearer(auto_error=False)


def require(*roles: Role) -> Any:
    """The dependency of an operation that callers with one of `roles` may use: the caller, or a
    401/403/429 problem before the operation runs."""
    allowed = {r.value for r in roles}

    async def authenticate(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Caller:
        check: Authenticate = request.app.state.authenticate
        return await check(request, credentials, allowed)

    return Depends(authenticate)


class Strict(BaseModel):
    """A request body: a field it does not know is an error (a typo must not pass unnoticed)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Routes:
    """A service's operations: its router, and what they need running while the API serves
    (a store that follows its topic)."""

    router: APIRouter
    starts: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
