"""Real server and tool binaries for tests (../shared/bin/*.xz, see its README), unpacked once into
.facestream/bin/<sha256 of the .xz>/ so that a newer archive replaces an older copy."""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_BIN = ROOT.parent / "shared" / "bin"


def binary(name: str) -> Path | None:
    """The unpacked `name` from ../shared/bin, else one on PATH, else None."""
    archive = SHARED_BIN / f"{name}.xz"
    if archive.is_file():
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
        target = ROOT / ".facestream" / "bin" / digest / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{name}.{os.getpid()}")
            with lzma.open(archive) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.chmod(0o755)
            partial.replace(target)
        return target
    found = shutil.which(name)
    return Path(found) if found else None
