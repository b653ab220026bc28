#!/usr/bin/env bash
# The whole GPU suite, one command from the repository root of the lent H200 machine:
#   bash bench/gpu/run.sh
# (prepared by bench/gpu/prepare.sh; carry .gpu-suite). Steps, each under its own time
# limit, each writing its table to $OUT/<step>.md (bench/gpu/results/ without $OUT):
#   tests         tests/test_gpu.py: fp16 equality with whisper, graph replay = eager tokens
#   peer          bench/peer.py: transformers generate() against decode_batch, large-v3
#   e2e-large     bench/transcribe.py, large-v3: 60 min through the Python API and HTTP,
#   e2e-turbo     and turbo; stock whisper.transcribe on the first 2 minutes as baseline
#   live          bench/live.py: 1 to 50 live sessions at real-time speed, turbo's shape with
#                 random weights (the target: first text <= 1 s after speech at p95 with 50)
# summary.txt gets each step's exit status and seconds. The same steps run on the CPU with
# small shapes: DEVICE=cpu LARGE=test-tiny TURBO=test-tiny MINUTES=2 SLOW_MINUTES=1 \
#   PEER="--windows 4 --tokens 8 --batch 4" PYTHON=.venv/bin/python bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
SUITE=$PWD/.gpu-suite
RESULTS=${OUT:-bench/gpu/results}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
LARGE=${LARGE:-large-v3}
TURBO=${TURBO:-turbo}
MINUTES=${MINUTES:-60}
SLOW_MINUTES=${SLOW_MINUTES:-2}
PEER=${PEER:-"--windows 48 --tokens 160 --batch 48"}
mkdir -p "$RESULTS"
: > "$RESULTS/summary.txt"

if [ -d "$SUITE/wheels" ] && ! "$PYTHON" -c "import whisper, flask, silero_vad" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$SUITE"/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! command -v espeak-ng > /dev/null; then  # the sentences spoken ahead of time
  export PATH=$PWD/bench/gpu:$PATH ESPEAK_CACHE=$SUITE/speech
fi
command -v nginx > /dev/null || export WHISPER_PROXY=off  # gunicorn answers itself
export PYTHONUNBUFFERED=1

# which steps run (their limits add up past one device call's 600 s: split across calls,
# e.g. STEPS="tests peer e2e-large" then STEPS="e2e-turbo live")
STEPS=${STEPS:-"tests peer e2e-large e2e-turbo live"}

step() {  # name, seconds allowed, command...
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name: $*" | tee -a "$RESULTS/summary.txt"
  timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.md"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$RESULTS/summary.txt"
}

"$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() \
  if torch.cuda.is_available() else 'no GPU')" | tee -a "$RESULTS/summary.txt"
step tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py
# shellcheck disable=SC2086  # PEER is a list of arguments
step peer 150 "$PYTHON" bench/peer.py --shape "$LARGE" --device "$DEVICE" $PEER
for model in "large:$LARGE" "turbo:$TURBO"; do
  step "e2e-${model%%:*}" 170 "$PYTHON" bench/transcribe.py --shape "${model#*:}" \
    --minutes "$MINUTES" --slow-minutes "$SLOW_MINUTES" --device "$DEVICE" --patience 1 \
    --engines baseline,batched,batched-http
done
step live 200 "$PYTHON" bench/live.py --model "synthetic:$TURBO" --device "$DEVICE" \
  --sessions "${LIVE_SESSIONS:-1,10,50}" --max-sessions 50 --sentences 2
