"""The detector as the platform runs it: consumes `images`, loads YuNet in each model process."""

from __future__ import annotations

import functools
from concurrent.futures import Executor

from facestream.config import Settings
from facestream.io.acls import Access
from facestream.runtime.service import ModelLoader, Service
from facestream.services.detector.logic import detector_for
from facestream.services.detector.stage import DetectorStage


def _stage(settings: Settings, executor: Executor) -> DetectorStage:
    return DetectorStage(settings, executor)


def _models(settings: Settings) -> ModelLoader:
    # The detector runs at a lower score than the gate so that enrolment sees every face.
    return functools.partial(detector_for, min(0.5, settings.det_score_threshold))


def _access(settings: Settings) -> Access:
    return Access(writes=("faces", "crops", "dlq", "audit.entries"))


# Images are independent: one from a slow source must not hold the images behind it.
SERVICE = Service("detector", "images", _stage, model_loader=_models, independent=True, access=_access)
