"""Keys that come from configuration, or, on one machine, from a key file under `data_dir`.

A worker creates the file on first use; the command line never does (a new key could never read
what the workers wrote), so a missing key there is an error naming the setting.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cryptography.fernet import Fernet

from facestream.errors import ConfigError


def configured_key(configured: str, data_dir: Path, filename: str, setting: str, create: bool = True) -> str:
    """`configured` if set, else the key file `data_dir/filename` (created when `create`)."""
    if configured:
        return configured
    path = Path(data_dir) / filename
    if not path.exists() and not create:
        raise ConfigError(
            f"no {setting.replace('_', ' ')}: set {setting} (FACESTREAM_{setting.upper()}) to the workers' key, "
            f"or run where data_dir holds it ({path.resolve()} does not exist)"
        )
    if not path.exists():
        # Written whole, then linked into place: a process starting at the same moment either
        # wins or reads the winner's complete key, never a half-written file.
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()
