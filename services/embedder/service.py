"""The embedder as the platform runs it: consumes `faces`; SFace on Triton when `triton_url` is
set, otherwise in each model process."""

from __future__ import annotations

import argparse
import functools
from concurrent.futures import Executor
from pathlib import Path

from facestream.config import Settings, load_settings
from facestream.io.acls import Access
from facestream.runtime.service import ModelLoader, Service
from facestream.services.embedder.logic import load_backend, prepared_path
from facestream.services.embedder.prepare import describe, prepare_sface
from facestream.services.embedder.stage import EmbedderStage
from facestream.services.embedder.triton import TritonBackend


def _stage(settings: Settings, executor: Executor) -> EmbedderStage:
    if settings.triton_url:
        backend = TritonBackend(
            settings.triton_url,
            settings.triton_model,
            settings.triton_model_version,
            timeout_s=settings.triton_timeout_s,
            max_in_flight=settings.triton_max_in_flight,
            retry_for_s=settings.triton_retry_for_s,
        )
        return EmbedderStage(settings, backend)
    return EmbedderStage(settings, executor=executor)


def _models(settings: Settings) -> ModelLoader | None:
    if settings.triton_url:
        return None
    return functools.partial(load_backend, prepared_path(settings.model_repository), settings.embedder_runtime)


def _cmd_prepare(args: argparse.Namespace) -> int:
    repository = args.repository or load_settings(args.config).model_repository
    print(describe(prepare_sface(repository)))
    return 0


def _commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prepare-model", help="prepare SFace for serving (dynamic batch), checked equal to the original")
    p.add_argument("--repository", type=Path, help="model repository (default: the model_repository setting)")
    p.set_defaults(func=_cmd_prepare)


def _access(settings: Settings) -> Access:
    return Access(writes=("embeddings", "dlq", "audit.entries"))


SERVICE = Service("embedder", "faces", _stage, model_loader=_models, commands=_commands, access=_access)
