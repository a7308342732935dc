#!/usr/bin/env bash
# Every GPU measurement in one run, for a lent GPU machine that allows one 10-minute command:
#   1. bench.gpu_probe: where one request's time and memory go, ours against plain diffusers;
#   2. bench.decoders: the VAE against the tiny autoencoder (MODEL_TINY_VAE) at 1024x1024, batches 1 and 8;
#   3. bench.styles: a style switch on the full-size module tree;
#   4. bench.gpu: the issue's table (plain, executor, tiny VAE, compiled, restarts) in the time left.
# Each step has its own time limit, so one that hangs costs only its share.
#
#   bench/gpu_session.sh [MODEL_CONFIGS_DIR]
#
# On a machine without diffusers, put its wheel (and pydantic-settings') in `.whl/` beside the checkout first.
set -u
cd "$(dirname "$0")/.."
configs=${1:-../shared/model-configs/ssd-1b}
python=${PYTHON:-python3}
if [ -d .whl ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/lcm-bot-site .whl/*.whl
    export PYTHONPATH="/tmp/lcm-bot-site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step() {
    local limit=$1
    shift
    echo "== python -m $* (at most ${limit} s)"
    timeout "$limit" "$python" -m "$@" || echo "== exit status $?"
}

step 200 bench.gpu_probe --configs "$configs" --compile-seconds 90
step 60 bench.decoders --configs "$configs" --device cuda --resolution 1024 --batches 1 8
step 60 bench.styles --configs "$configs"
step 250 bench.gpu --configs "$configs" --budget 230 --workdir /tmp/lcm-bench
