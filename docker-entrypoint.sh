#!/bin/sh
# The container's entrypoint. With no arguments the image runs its CMD (gunicorn on
# WHISPER_PORT, 8000). SageMaker starts a container as `docker run IMAGE serve` and sends
# /ping and /invocations to port 8080 (or SAGEMAKER_BIND_TO_PORT), so `serve` runs the
# same server there, on every address. Any other command runs as given (a shell, the
# command line: `python -m whisper_service ...`).
set -e

if [ "$1" = "serve" ]; then
    shift
    export WHISPER_HOST=0.0.0.0
    export WHISPER_PORT="${SAGEMAKER_BIND_TO_PORT:-8080}"
    exec gunicorn -c gunicorn.conf.py "$@"
fi
exec "$@"
