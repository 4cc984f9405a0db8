"""The pipeline put together: the four services, and the `facestream` command over them."""

from __future__ import annotations

import sys

from facestream.cli import main as cli_main
from facestream.config import Settings
from facestream.io.kafka import ensure_topics as create_pipeline_topics
from facestream.runtime.service import Service, own_topics
from facestream.services import calibrate
from facestream.services.api.service import SERVICE as API
from facestream.services.audit.service import SERVICE as AUDIT
from facestream.services.detector.service import SERVICE as DETECTOR
from facestream.services.embedder.service import SERVICE as EMBEDDER
from facestream.services.matcher.service import SERVICE as MATCHER
from facestream.services.notifier.service import SERVICE as NOTIFIER
from facestream.services.review.service import SERVICE as REVIEW

SERVICES: tuple[Service, ...] = (DETECTOR, EMBEDDER, MATCHER, NOTIFIER, API, AUDIT, REVIEW)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the pipeline's topics and every service's own that do not exist yet."""
    return await create_pipeline_topics(settings, own_topics(settings, SERVICES))


def main(argv: list[str] | None = None) -> int:
    """`facestream ...` (the console script)."""
    return cli_main(SERVICES, argv, commands=(calibrate.add_parser,))


if __name__ == "__main__":
    sys.exit(main())
