"""Shared fixtures. Kafka is the real local broker (scripts/test.sh starts it; these fixtures
start it too when a test is run on its own). The devset fixtures run only where
../shared/data/faces/devset exists; everything else uses the committed sample photos."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from devtools.qdrant import QdrantCluster, qdrant_binary
from facestream.config import Settings
from facestream.services.detector.logic import FaceDetector
from facestream.services.embedder.logic import EmbeddingBackend, load_backend, prepared_path
from tests.figures import FIGURES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
MODEL = prepared_path(ROOT / "models")  # the prepared SFace (install step)
DEVSET = ROOT.parent / "shared" / "data" / "faces" / "devset"


def sample(subject: str, index: int = 0) -> Path:
    """The index-th photo of a sample subject, gallery photo first."""
    photos = sorted((SAMPLES / "gallery" / subject).glob("*")) + sorted((SAMPLES / "probes" / subject).glob("*"))
    return photos[index]


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image


@pytest.fixture(scope="session")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="session")
def backend() -> EmbeddingBackend:
    """The embedded default (`embedder_runtime`), as the model processes load it."""
    return load_backend(MODEL)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "state", image_roots=(SAMPLES, tmp_path), workers=2)


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """The bootstrap address of the real local broker, started here if it is not running."""
    script = ROOT / "scripts" / "kafka.sh"
    started = subprocess.call(["bash", str(script), "status"], stdout=subprocess.DEVNULL) != 0
    if started:
        subprocess.check_call(["bash", str(script), "up"])
    yield "127.0.0.1:9092"
    if started:
        subprocess.call(["bash", str(script), "down"])


@pytest.fixture(scope="session")
def qdrant_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real single-node Qdrant server (../shared/bin/qdrant.xz or a `qdrant` on PATH),
    started for the session; tests keep apart by collection name."""
    if qdrant_binary() is None:
        pytest.skip("no Qdrant server binary here: ../shared/bin/qdrant.xz is absent and PATH has no `qdrant`")
    server = QdrantCluster(tmp_path_factory.mktemp("qdrant")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def devset() -> Path:
    if not (DEVSET / "labels.csv").exists():
        pytest.skip("../shared/data/faces/devset is absent here; the suite passes without it")
    return DEVSET


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("figures measured by this run")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def browser(tmp_path: Path):  # type: ignore[no-untyped-def]
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (scripts/install.sh installs them as root)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--window-size=900,700",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
