#!/usr/bin/env bash
# Every GPU measurement, for a lent GPU machine that allows 10-minute commands, in parts that each fit one
# command (`all` runs diagnose and table in one):
#   diagnose: bench.gpu_probe (where one request's time and memory go, ours against plain diffusers, at 1 and
#             8 images; the UNet at batch 1 eager and compiled, each also from a CUDA graph), then
#             bench.decoders (the VAE against the tiny autoencoder at 1024x1024, batches 1 and 8); after `targets`,
#             which times the compiled graphs as the bot serves them, PROBE_COMPILE_SECONDS=0 skips the probe's
#             compile and its compiled rows, for a session's remaining minutes;
#   compile:  bench.gpu --compile-only (the twins' cold compile, and eager requests served meanwhile; a child
#             process fills the compile cache first, as the bot does, or with COMPILE_IN=here it does not;
#             CHILD_IMAGES=2 makes the child's batches as small as on a 40 or 48 GB card; batches of one replay
#             CUDA graphs, captured again over the compiled UNet, and the twins serve from 2 images, as the bot
#             does by default, or with CUDA_GRAPHS=off, which bench.gpu reads as the bot does, from 1 image);
#   knobs:    bench.knobs (cuDNN attention, CUDA graphs, channels last, cuDNN search, fused QKV, PNG encoders), then
#             bench.styles' forward table (a style through peft's layers against fused, batches of 1 and 8);
#   targets:  bench.gpu --targets (plain, then the tiny autoencoder served by compiled twins, the bot's fastest
#             settings: the stream and lone-request ratios of the issue, in one command; CHILD_IMAGES as for compile);
#   float8:   bench.float8 (the UNet compiled with float8 matrix products against bfloat16, at 1, 8 and 16
#             images; its float8 rows need torchao's wheel in .whl/ and a GPU of compute capability 8.9+);
#   png:      bench.knobs' PNG rows alone (this machine's CPU, under a minute), for the minutes left after targets;
#   table:    bench.knobs' PNG rows, then bench.gpu, the issue's table (plain, executor, tiny VAE, compiled,
#             restarts, tiny+compiled; CUDA_GRAPHS as for compile), within BUDGET s.
# Each step has its own time limit, so one that hangs costs only its share. With CACHE_KEY_LOG=FILE, torch logs
# how it keys its compile caches (AOTAutograd's and inductor's, component by component) to FILE, and a restart's
# fresh process to FILE.restart-compile-cache-warm: a diff of the two shows what makes a restart miss the cache.
#
#   bench/gpu_session.sh [MODEL_CONFIGS_DIR] [diagnose|knobs|compile|targets|float8|png|table|all] [BUDGET]
#
# On a machine without diffusers, put its wheel, and those of the other packages it lacks, in `.whl/` in the
# checkout first (bench/README.md has the command). The lent H200 machine of 2026-11-27 lacked diffusers,
# imagecodecs, pydantic, pydantic-core, pydantic-settings, python-dotenv, annotated-types and typing-inspection.
set -u
cd "$(dirname "$0")/.."
configs=${1:-../shared/model-configs/ssd-1b}
part=${2:-all}
budget=${3:-230}
python=${PYTHON:-python3}
if [ -d .whl ]; then
    # torchao only for the part that measures it, in a folder of its own: where torchao is installed, diffusers
    # imports it with its own modules, and a torchao that does not fit this torch would break every other part.
    site=/tmp/lcm-bot-site
    wheels=$(ls .whl/*.whl | grep -v '/torchao-')
    if [ "$part" = float8 ]; then
        site=/tmp/lcm-bot-site-float8
        wheels=$(ls .whl/*.whl)
    fi
    # shellcheck disable=SC2086 # one path per wheel; their names have no spaces
    "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" $wheels
    export PYTHONPATH="$site:$PWD"
fi
# A missing package stops every step; say which here, before CACHE_KEY_LOG sends errors to its file.
"$python" -c "import bench.gpu, bench.gpu_probe, bench.knobs, bench.styles, bench.float8" || {
    echo "== a package is missing (above): carry its wheel in .whl/"
    exit 1
}
if [ -n "${CACHE_KEY_LOG:-}" ]; then
    export TORCH_LOGS="+torch._functorch._aot_autograd.autograd_cache,+torch._inductor.codecache"
    export TORCH_LOGS_OUT="$CACHE_KEY_LOG"
    exec 2>>"$CACHE_KEY_LOG.stderr" # torch writes those logs to standard error as well
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

step() {
    local limit=$1
    shift
    echo "== python -m $* (at most ${limit} s)"
    timeout "$limit" "$python" -m "$@" || echo "== exit status $?"
}

if [ "$part" = compile ]; then
    step $((budget + 20)) bench.gpu --configs "$configs" --budget "$budget" \
        --workdir "/tmp/lcm-bench-${COMPILE_IN:-child}${CHILD_IMAGES:-}-graphs-${CUDA_GRAPHS:-auto}" \
        --compile-only --compile-in "${COMPILE_IN:-child}" ${CHILD_IMAGES:+--child-images "$CHILD_IMAGES"}
    exit
fi
if [ "$part" = targets ]; then
    step $((budget + 20)) bench.gpu --configs "$configs" --budget "$budget" --workdir /tmp/lcm-bench-targets \
        --targets ${CHILD_IMAGES:+--child-images "$CHILD_IMAGES"}
    exit
fi
if [ "$part" = png ]; then
    step 60 bench.knobs --png-only
    exit
fi
if [ "$part" = float8 ]; then
    step 360 bench.float8 --configs "$configs"
    exit
fi
if [ "$part" = knobs ]; then
    step 200 bench.knobs --configs "$configs" --device cuda
    step 150 bench.styles --configs "$configs" --device cuda
    exit
fi
if [ "$part" != table ]; then
    step 320 bench.gpu_probe --configs "$configs" --compile-seconds "${PROBE_COMPILE_SECONDS:-150}"
    step 60 bench.decoders --configs "$configs" --device cuda --resolution 1024 --batches 1 8
fi
if [ "$part" != diagnose ]; then
    step 60 bench.knobs --png-only
    step $((budget + 20)) bench.gpu --configs "$configs" --budget "$budget" --workdir /tmp/lcm-bench
fi
