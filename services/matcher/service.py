"""The matcher as the platform runs it: consumes `embeddings`, searches or enrols into the gallery."""

from __future__ import annotations

from concurrent.futures import Executor

from facestream.config import Settings
from facestream.runtime.service import Service
from facestream.services.matcher.stage import MatcherStage


def _stage(settings: Settings, executor: Executor) -> MatcherStage:
    return MatcherStage(settings)


SERVICE = Service("matcher", "embeddings", _stage)
