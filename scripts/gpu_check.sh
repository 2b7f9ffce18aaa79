#!/usr/bin/env bash
# The GPU check, one command on a CUDA machine (PyTorch with CUDA, and Triton):
#
#     bash scripts/gpu_check.sh            # all the parts below, in order
#     bash scripts/gpu_check.sh tests      # pytest -m cuda (about 5 min on an H100 machine)
#     bash scripts/gpu_check.sh bench      # the serving benchmark, the example llama (4 min;
#                                          #   extra arguments go to it)
#     bash scripts/gpu_check.sh bench-hf   # the same, transformers' Llama (3 min)
#     bash scripts/gpu_check.sh warm-start # a saved forward in a fresh process, the kernel
#                                          #   launch and attention features (3 min or more)
#     bash scripts/gpu_check.sh warm-start-hf  # the same warm start, transformers' Llama
#                                          #   in the token layout (4 min or more)
#     bash scripts/gpu_check.sh engine     # transformers' continuous batching, eager, its
#                                          #   CUDA graphs and compile, Stitch (5-8 min;
#                                          #   extra arguments go to the benchmark)
#     bash scripts/gpu_check.sh decode     # decode against the weight-read floor: FULL,
#                                          #   FULL with its decode sizes tuned, FULL with
#                                          #   PDL, reduce-overhead (extra arguments go to
#                                          #   the benchmark; not yet timed there)
#
# The device tool runs one command for at most 10 minutes: run the parts in
# separate calls (docs/cuda_graphs.md).
#
# It installs this checkout with `pip install --no-deps --no-build-isolation -e .`
# and takes the pure-Python dependencies the CUDA image lacks (black, syrupy and
# theirs) from wheels in .whl/, made beforehand on a machine with network access:
#
#     bash scripts/gpu_check.sh --fetch-wheels
#
# Logs and results go to $OUT when it is set (the device tool brings them back),
# else to /tmp/stitch-gpu-check: gpu_check.log, pytest_cuda.xml, gpu_serving.md,
# gpu_serving_hf.md, gpu_profile.txt, gpu_warm_start.md, gpu_warm_start_hf.md,
# attention_launch.md, attention_features.md, transformers_engine.md,
# gpu_decode.md (the device tool brings back eight files a call; "all" leaves
# out engine and decode, run each in a call of its own).  The exit
# status is non-zero when a step failed.  PYTEST_ARGS adds pytest options (more
# xdist workers made the compiles slower there: each starts Inductor's workers).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
# black is pinned by pyproject.toml (goldens are its output); the rest are what
# black and syrupy need beyond the CUDA image's packages, tabulate (Stitch's
# tables) and msgspec (the cache's records).
WHEELS=(black==26.10.1 syrupy==7.0.2 pathspec==1.1.1 platformdirs==4.14.5 pytokens==0.4.1 pytest-xdist==3.8.0 tabulate==0.10.0 msgspec==0.22.0)

if [[ ${1:-} == --fetch-wheels ]]; then
    mkdir -p .whl
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
fi

part=${1:-all}
[[ $# -gt 0 ]] && shift
case $part in
    all | tests | bench | bench-hf | warm-start | warm-start-hf | engine | decode) ;;
    *)
        echo "usage: $0 [all|tests|bench [benchmark args...]|bench-hf|warm-start|warm-start-hf|engine [args...]|decode [args...]]" \
            "| --fetch-wheels" >&2
        exit 2
        ;;
esac

out=${OUT:-/tmp/stitch-gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
started=$SECONDS
status=0

echo "== setup"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/stitch-site .whl/*.whl || status=1
    export PYTHONPATH=/tmp/stitch-site${PYTHONPATH:+:$PYTHONPATH}
else
    echo "warning: no wheels in .whl/ (bash $0 --fetch-wheels where pip has network)"
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . || status=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$PY" - <<'PY' || status=1
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError as exc:
    print(f"triton: missing ({exc})")
import black, pytest, syrupy  # noqa: F401  (what the test suite imports)
print(f"pytest {pytest.__version__}, black {black.__version__}")
import stitch.runtime  # noqa: F401
PY

if [[ $part == all || $part == tests ]]; then
    echo "== tests: pytest -m cuda"
    "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --continue-on-collection-errors \
        --junitxml "$out/pytest_cuda.xml" -s ${PYTEST_ARGS:-} \
        || status=1
fi

if [[ $part == all || $part == bench ]]; then
    echo "== benchmark: bench/gpu_serving.py $*"
    rm -f "$out/gpu_profile.txt"
    "$PY" bench/gpu_serving.py --out "$out/gpu_serving.md" --profile "$out/gpu_profile.txt" "$@" \
        || status=1
fi

if [[ $part == all || $part == bench-hf ]]; then
    echo "== benchmark: bench/gpu_serving.py --model hf"
    "$PY" bench/gpu_serving.py --model hf --out "$out/gpu_serving_hf.md" || status=1
fi

if [[ $part == all || $part == warm-start ]]; then
    echo "== benchmark: bench/attention_launch.py (the host cost of one attention launch)"
    "$PY" bench/attention_launch.py | tee "$out/attention_launch.md" || status=1
    echo "== benchmark: bench/attention_features.py (sinks, softcap, window: kernel and fallback)"
    "$PY" bench/attention_features.py | tee "$out/attention_features.md" || status=1
    echo "== benchmark: bench/gpu_warm_start.py (a saved forward in a fresh process)"
    "$PY" bench/gpu_warm_start.py --out "$out/gpu_warm_start.md" --child-timeout 240 \
        || status=1
fi

if [[ $part == all || $part == warm-start-hf ]]; then
    # Issue 30's warm-start target for transformers' Llama in the token layout.
    echo "== benchmark: bench/gpu_warm_start.py --model hf"
    "$PY" bench/gpu_warm_start.py --model hf --out "$out/gpu_warm_start_hf.md" \
        --child-timeout 240 || status=1
fi

if [[ $part == engine ]]; then
    echo "== benchmark: bench/transformers_engine.py --device cuda $*"
    "$PY" bench/transformers_engine.py --device cuda "$@" | tee "$out/transformers_engine.md" \
        || status=1
fi

if [[ $part == decode ]]; then
    # Issue 30's batch-1 target: the best mode within 1.5x the weight-read floor.
    echo "== benchmark: bench/gpu_serving.py, decode variants $*"
    rm -f "$out/gpu_decode_profile.txt"
    "$PY" bench/gpu_serving.py --variants compile-ro,stitch-full,stitch-full-tuned,stitch-full-pdl \
        --decode 1,8,32,128 --out "$out/gpu_decode.md" --json "$out/gpu_decode.json" \
        --profile "$out/gpu_decode_profile.txt" "$@" || status=1
fi

echo "== done in $((SECONDS - started)) s, status $status (results in $out)"
exit $status
