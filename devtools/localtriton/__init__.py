"""A real `tritonserver` on loopback, from the `nvidia-pytriton` wheel (CPU, python backend).

For the Triton tests and the embedder benchmark on machines without a GPU or container engine.
The wheel's server only has the python backend, so the test repository serves the same prepared
SFace ONNX file through a python-backend model that runs it with ONNX Runtime
(`sface_model.py`); the embedder's Triton client cannot tell the difference.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from devtools.ports import free_port
from facestream.errors import FacestreamError

MODEL_SOURCE = Path(__file__).with_name("sface_model.py")


def _pytriton_dir() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FacestreamError("nvidia-pytriton is not installed (pip install '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def sface_config(name: str, onnx_path: Path, dims: tuple[int, ...] = (3, 112, 112), instances: int = 1) -> str:
    return f"""name: "{name}"
backend: "python"
max_batch_size: 64
input [ {{ name: "data", data_type: TYPE_FP32, dims: [ {", ".join(map(str, dims))} ] }} ]
output [ {{ name: "fc1", data_type: TYPE_FP32, dims: [ 128 ] }} ]
dynamic_batching {{ preferred_batch_size: [ 16, 32 ], max_queue_delay_microseconds: 5000 }}
instance_group [ {{ kind: KIND_CPU, count: {instances} }} ]
parameters {{ key: "onnx_path", value: {{ string_value: "{onnx_path}" }} }}
parameters {{ key: "facestream_model_version", value: {{ string_value: "2021dec" }} }}
"""


def build_repository(dest: Path, onnx_path: Path, *, wrong_model: bool = True, instances: int = 1) -> Path:
    """A model repository with `sface` (python backend over `onnx_path`) and, for tests of the
    start-up checks, `sface_wrong` whose input shape is not what the embedder expects."""
    models = [("sface", (3, 112, 112))] + ([("sface_wrong", (3, 96, 96))] if wrong_model else [])
    for name, dims in models:
        (dest / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(MODEL_SOURCE, dest / name / "1" / "model.py")
        (dest / name / "config.pbtxt").write_text(sface_config(name, onnx_path.resolve(), dims, instances))
    return dest


class LocalTritonServer:
    """`tritonserver` as a child process on 127.0.0.1; `start()` waits until it is ready."""

    def __init__(self, repository: Path, workdir: Path, ready_timeout_s: float = 90) -> None:
        self.repository = repository
        self.workdir = workdir
        self.ready_timeout_s = ready_timeout_s
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _backends(self) -> Path:
        # The python backend looks for its stub beside libtriton_python.so; the wheel keeps one
        # stub per Python version elsewhere, so link the right one in.
        root = _pytriton_dir()
        backends = self.workdir / "backends" / "python"
        backends.mkdir(parents=True, exist_ok=True)
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        for source in (
            root / "backends" / "python" / "libtriton_python.so",
            root / "backends" / "python" / "triton_python_backend_utils.py",
            root / "python_backend_stubs" / version / "triton_python_backend_stub",
        ):
            link = backends / source.name
            if not link.exists():
                link.symlink_to(source.resolve())
        return backends.parent

    def start(self) -> None:
        binary = _pytriton_dir() / "bin" / "tritonserver"
        env = {
            **os.environ,
            # The stub runs this interpreter's Python: its venv first on PATH, its libpython found.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "LD_LIBRARY_PATH": os.pathsep.join(
                p for p in (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")) if p
            ),
        }
        log = open(self.workdir / "tritonserver.log", "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            [
                str(binary),
                f"--model-repository={self.repository}",
                f"--backend-directory={self._backends()}",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={self.grpc_port}",
                "--http-address=127.0.0.1",
                f"--http-port={self.http_port}",
                "--metrics-address=127.0.0.1",
                f"--metrics-port={self.metrics_port}",
                "--exit-timeout-secs=3",
                "--log-verbose=0",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: the python backend's stub processes are ended with the server,
            # also when the server is killed (they would otherwise be left running, orphaned).
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FacestreamError(f"tritonserver exited {self.process.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise FacestreamError(f"tritonserver not ready after {self.ready_timeout_s} s: {self.log()[-2000:]}")

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self._signal_group(signal.SIGKILL)  # stubs left behind
        self.process = None

    def kill(self) -> None:
        """SIGKILL to the server and its stubs, as a crash or an OOM kill of the container would."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def log(self) -> str:
        path = self.workdir / "tritonserver.log"
        return path.read_text(errors="replace") if path.exists() else ""
