# Whisper transcription service.
#   GPU (default):  docker build --build-arg WHISPER_MODEL=turbo -t whisper-service .
#   CPU (smaller):  docker build --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#                     --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t whisper-service:cpu .
# The install steps are the README's and CI's: pip install -r requirements.txt, then
# requirements-nodeps.txt without dependencies, then the project itself, from this tree.

# A CUDA runtime matching the CUDA build of torch==2.13.0 that pip installs below
ARG BASE_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

# the model baked into the image, so a GPU host starts without downloading ("" = none)
ARG WHISPER_MODEL=turbo
# empty: torch from the default index (a CUDA build); set for another build, e.g. CPU-only
ARG TORCH_INDEX_URL=

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# nginx stands in front of gunicorn, started by it (web/http/proxy.py): slow clients meet nginx
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates nginx \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
    && pip install -r requirements.txt \
    && pip install --no-deps -r requirements-nodeps.txt

COPY app.py gunicorn.conf.py docker-entrypoint.sh ./
COPY web ./web
COPY whisper_service ./whisper_service
COPY templates ./templates
COPY static ./static
# the `whisper-service` command (the CLI and `whisper-service worker`) on the PATH
COPY pyproject.toml README.md ./
RUN pip install --no-deps .

# a non-root user; the model and data directories are volumes it owns
RUN useradd --create-home --uid 10001 whisper \
    && mkdir -p /models /data \
    && chown -R whisper:whisper /models /data /app
USER whisper

# the app's configuration; every name is in the README's table and in spec.yaml
ENV WHISPER_MODEL=${WHISPER_MODEL} \
    WHISPER_MODEL_DIR=/models \
    WHISPER_DATA_DIR=/data \
    WHISPER_DEVICE=auto \
    WHISPER_HOST=0.0.0.0 \
    WHISPER_PORT=8000 \
    WHISPER_PRELOAD=true \
    WHISPER_MAX_UPLOAD_MB=1024 \
    WHISPER_MAX_DURATION=7200

# bake the weights in at build time (same download code as at run time)
RUN if [ -n "$WHISPER_MODEL" ]; then \
      WHISPER_DEVICE=cpu python3 -c "import whisper, os; whisper.load_model(os.environ['WHISPER_MODEL'], device='cpu', download_root='/models')"; \
    fi

VOLUME ["/models", "/data"]
# 8080: SageMaker's port, served when started as `docker run IMAGE serve` (the entrypoint)
EXPOSE 8000 8080
# whichever of the two ports the server was started on answers
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD python3 -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)" \
     || python3 -c "import urllib.request, sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"

# `serve` (SageMaker): the same server on port 8080; anything else runs as given
ENTRYPOINT ["./docker-entrypoint.sh"]
CMD ["gunicorn", "-c", "gunicorn.conf.py"]
