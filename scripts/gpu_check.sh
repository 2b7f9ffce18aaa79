#!/usr/bin/env bash
# The GPU check on a CUDA machine (PyTorch with CUDA, and Triton), in parts that
# each fit one device call of at most 5 minutes on an H100 (docs/development.md,
# "A GPU window", says how to spend a 15-minute window):
#
#     bash scripts/gpu_check.sh first        # the window's first call: every cuda-marked
#                                            #   test (xdist), then the warm restart's
#                                            #   first token with lazy capture (~4-5 min)
#     bash scripts/gpu_check.sh tests [ID..] # the cuda-marked tests (~3 min), or only the
#                                            #   named node ids: the rerun of what failed
#     bash scripts/gpu_check.sh warm-lazy    # the warm restart's first token, lazy capture,
#                                            #   PIECEWISE and FULL (~1.5 min)
#     bash scripts/gpu_check.sh bench        # the serving benchmark, the example llama
#                                            #   (~4 min; extra arguments go to it)
#     bash scripts/gpu_check.sh bench-hf     # the same, transformers' Llama (~3 min)
#     bash scripts/gpu_check.sh warm-start   # one attention launch's host cost, the
#                                            #   attention features, the warm start with
#                                            #   an empty and a lazy warm process (~3 min)
#     bash scripts/gpu_check.sh warm-start-hf  # the warm start, transformers' Llama in
#                                            #   the token layout, lazy (~2.5 min)
#     bash scripts/gpu_check.sh engine       # transformers' continuous batching through
#                                            #   Stitch, bf16, sized to fit (~2.5 min;
#                                            #   extra arguments go to the benchmark)
#     bash scripts/gpu_check.sh engine-fp32  # the same in fp32, TF32 off: tokens equal
#                                            #   eager's, chunked prefill (~2 min)
#     bash scripts/gpu_check.sh tiered       # the tiered start under PIECEWISE graphs,
#                                            #   3 layers (~4 min on an H200)
#     bash scripts/gpu_check.sh tiered-32    # the same at 32 layers (~4-5 min)
#     bash scripts/gpu_check.sh decode       # batch-1..128 decode against the weight-read
#                                            #   floor, FULL with and without its copies
#                                            #   (~4-5 min; extra arguments go to it)
#     bash scripts/gpu_check.sh profile      # where a warm restart's time goes, and one
#                                            #   decode step's kernels and gaps (~2 min)
#     bash scripts/gpu_check.sh all          # every part but engine, tiered, decode, profile
#                                            #   (about 20 min: never in one device call)
#
# Each part prints its own elapsed time ("== part P: done in N s") and is
# stopped at $STITCH_PART_LIMIT seconds (default 300), so that one hung part
# cannot spend a window; a test is stopped at $STITCH_TEST_TIMEOUT (180 s).
#
#     bash scripts/gpu_check.sh --rehearse PART
#
# runs PART's Python on this machine without a GPU, up to its first CUDA call:
# the tests are collected (every cuda-marked one must be selected), each
# benchmark runs its CPU dry run with tiny shapes.  Run it with the GPU image's
# versions (torch 2.11, transformers 5.17, triton 3.6) before a window:
# PYTHON=/path/to/venv/bin/python bash scripts/gpu_check.sh --rehearse first,
# with this checkout installed in that venv (a rehearsal installs nothing).
# CI rehearses `first` and `decode` at every commit (NOTE: [the GPU window's
# parts rehearsed at every commit] in .ci/torch_versions.sh).
#
# On the device it installs this checkout with `pip install --no-deps --no-build-isolation -e .`
# and takes the pure-Python packages the CUDA image lacks from wheels in .whl/,
# made beforehand on a machine with network access (carry .whl in the call):
#
#     bash scripts/gpu_check.sh --fetch-wheels
#
# Logs and results go to $OUT when it is set (the device tool brings back at
# most eight files a call), else to /tmp/stitch-gpu-check.  The exit status is
# non-zero when a step failed.  PYTEST_ARGS adds pytest options.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
# What the tests and benchmarks import that the CUDA image lacks (its package
# list: the device tool's KINDS.md): black (pinned by pyproject.toml: goldens
# are its output) with pytokens, syrupy (the golden fixture), msgspec (the
# cache's records), platformdirs (the cache's default folder).  The rest are
# on the image but pinned here to what CI runs: tabulate, pathspec, xdist;
# pytest-timeout ends a test that hangs (pyproject.toml's ``timeout``).
WHEELS=(black==26.10.1 syrupy==7.0.2 pathspec==1.1.1 platformdirs==4.14.5 pytokens==0.4.1 pytest-xdist==3.8.0 pytest-timeout==2.4.0 tabulate==0.10.0 msgspec==0.22.0)

# The test files that hold cuda-marked tests: collecting only these keeps the
# other modules' imports (redis, fastapi, ...: not on the image) out of the run.
# --rehearse checks that the whole suite selects no cuda test outside them.
cuda_test_files() { grep -lE 'pytest\.mark\.cuda\b' tests/test_*.py; }

if [[ ${1:-} == --fetch-wheels ]]; then
    mkdir -p .whl
    exec "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
fi

rehearse=0
if [[ ${1:-} == --rehearse ]]; then
    rehearse=1
    shift
fi

part=${1:-all}
[[ $# -gt 0 ]] && shift
PARTS=(first tests warm-lazy bench bench-hf warm-start warm-start-hf engine engine-fp32 tiered tiered-32 decode profile)
if [[ $part != all ]] && ! printf '%s\n' "${PARTS[@]}" | grep -qxF -- "$part"; then
    echo "usage: $0 [--rehearse] [all|${PARTS[*]// /|}] [args...] | --fetch-wheels" >&2
    exit 2
fi

out=${OUT:-/tmp/stitch-gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
# Every test, the extended modules too (NOTE: [CI's extended tests] in tests/conftest.py).
export STITCH_EXTENDED=1
started=$SECONDS
status=0
limit=${STITCH_PART_LIMIT:-300}
# A rehearsal times nothing: the limits are for the device's window.
[[ $rehearse == 1 ]] && limit=${STITCH_PART_LIMIT:-1800}

# A tiny model for a benchmark's CPU dry run (--rehearse): later arguments win.
TINY=(--layers 2 --hidden 64 --heads 4 --intermediate 128 --vocab 256)
# and the warm-start benchmark's processes may take minutes on a CPU.
WARM_CPU=(--device cpu --child-timeout 900 "${TINY[@]}" --capture-sizes 1,2,4)

# run_step LABEL CMD...: CMD under the part's time limit; a failure marks status.
run_step() {
    local label=$1
    shift
    echo "== $label: $*"
    timeout -k 15 "$limit" "$@"
    local rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "== $label: stopped at the part's limit of $limit s (STITCH_PART_LIMIT)"
    fi
    [[ $rc -eq 0 ]] || status=1
    return $rc
}

# run_tee FILE LABEL CMD...: run_step, its output also written to FILE.
run_tee() {
    local file=$1
    shift
    run_step "$1" bash -c 'set -o pipefail; f=$1; shift; "$@" | tee "$f"' _ "$file" "${@:2}"
}

setup() {
    echo "== setup"
    if [[ $rehearse == 0 ]]; then
        if compgen -G ".whl/*.whl" >/dev/null; then
            "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
                --upgrade --target /tmp/stitch-site .whl/*.whl || status=1
            export PYTHONPATH=/tmp/stitch-site${PYTHONPATH:+:$PYTHONPATH}
        else
            echo "warning: no wheels in .whl/ (bash $0 --fetch-wheels where pip has network)"
        fi
        "$PY" -m pip install -q --no-deps --no-build-isolation -e . || status=1
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    fi
    "$PY" - <<'PY' || status=1
import importlib.util
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"device {torch.cuda.get_device_name()}, {torch.cuda.device_count()} visible")
for name in ("triton", "transformers"):
    try:
        print(f"{name} {__import__(name).__version__}")
    except ImportError as exc:
        print(f"{name}: missing ({exc})")
# engine_compat refuses SDPA models on CUDA with transformers 5.17 where either
# is installed (NOTE: [SDPA on CUDA under 5.17] in stitch/runtime/hf/engine_compat).
for name in ("flash_attn", "kernels"):
    print(f"{name}: {'installed' if importlib.util.find_spec(name) else 'absent'}")
import black, pytest, syrupy  # noqa: F401,E401  (what the test suite imports)
print(f"pytest {pytest.__version__}, black {black.__version__}")
import stitch.runtime  # noqa: F401
PY
}

part_tests() {
    local junit=$out/pytest_cuda.xml
    local files
    mapfile -t files < <(cuda_test_files)
    if [[ $rehearse == 1 ]]; then
        # Every cuda-marked test of the whole suite must be in the part's files.
        local all_ids part_ids
        all_ids=$("$PY" -m pytest -q -p no:cacheprovider -n 0 --collect-only -m cuda tests |
            grep '::' | sort)
        part_ids=$("$PY" -m pytest -q -p no:cacheprovider -n 0 --collect-only -m cuda \
            "${files[@]}" | grep '::' | sort)
        echo "cuda-marked tests: $(grep -c '::' <<<"$all_ids") in the suite," \
            "$(grep -c '::' <<<"$part_ids") in ${files[*]}"
        if [[ $all_ids != "$part_ids" ]]; then
            echo "error: cuda-marked tests outside the part's files:"
            comm -23 <(echo "$all_ids") <(echo "$part_ids")
            status=1
        fi
        # Each test up to its first CUDA call (NOTE: [rehearsing the cuda tests]).
        export STITCH_REHEARSE_CUDA=1
        run_step "tests, rehearsed to their first CUDA call" "$PY" -m pytest -m cuda -q \
            -rfEs -p no:cacheprovider -n 2 --dist load "${files[@]}"
        unset STITCH_REHEARSE_CUDA
        return
    fi
    local targets=("${files[@]}")
    if [[ $# -gt 0 ]]; then # a rerun of the named tests
        targets=("$@")
        junit=$out/pytest_cuda_rerun.xml
    fi
    local timeout_opt=()
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then
        timeout_opt=(--timeout "${STITCH_TEST_TIMEOUT:-180}")
    fi
    # Four workers, tests dealt one by one (no module here compiles a shared
    # fixture for its cuda tests); more workers made the compiles slower.
    # shellcheck disable=SC2086  # PYTEST_ARGS: one word per option
    run_step "tests: pytest -m cuda" "$PY" -m pytest -m cuda -q -rfEs -p no:cacheprovider \
        -n "${STITCH_TEST_WORKERS:-4}" --dist load --durations 15 "${timeout_opt[@]}" \
        --junitxml "$junit" ${PYTEST_ARGS:-} "${targets[@]}"
}

# The warm restart's first token: lazy capture (size 1 before the first token,
# the rest after it), PIECEWISE and FULL; never --warm empty,empty here.
part_warm_lazy() {
    local extra=(--warm lazy --child-timeout 150 --out "$out/gpu_warm_start_lazy.md")
    [[ $rehearse == 1 ]] && extra+=("${WARM_CPU[@]}")
    run_step "warm restart, lazy capture: bench/gpu_warm_start.py" \
        "$PY" bench/gpu_warm_start.py "${extra[@]}" "$@"
}

part_bench() {
    local extra=(--out "$out/gpu_serving.md" --profile "$out/gpu_profile.txt")
    rm -f "$out/gpu_profile.txt"
    # --max-full: stitch-fp's full graphs within the rehearsal's capture sizes.
    [[ $rehearse == 1 ]] && extra+=(--device cpu --emulate "${TINY[@]}" --iters 2
        --warmup 1 --prefill 16 --decode 1,2 --capture-sizes 1,2,4 --max-full 2)
    run_step "benchmark: bench/gpu_serving.py" "$PY" bench/gpu_serving.py "${extra[@]}" "$@"
}

part_bench_hf() {
    local extra=(--model hf --out "$out/gpu_serving_hf.md")
    [[ $rehearse == 1 ]] && extra+=(--device cpu --emulate "${TINY[@]}" --iters 2
        --warmup 1 --prefill 16 --decode 1,2 --capture-sizes 1,2,4 --max-full 2)
    run_step "benchmark: bench/gpu_serving.py --model hf" \
        "$PY" bench/gpu_serving.py "${extra[@]}" "$@"
}

part_warm_start() {
    if [[ $rehearse == 0 ]]; then
        run_tee "$out/attention_launch.md" "benchmark: bench/attention_launch.py" \
            "$PY" bench/attention_launch.py
    fi
    run_tee "$out/attention_features.md" "benchmark: bench/attention_features.py" \
        "$PY" bench/attention_features.py
    local extra=(--warm empty,lazy --child-timeout 150 --out "$out/gpu_warm_start.md")
    [[ $rehearse == 1 ]] && extra+=("${WARM_CPU[@]}")
    run_step "warm start, empty and lazy: bench/gpu_warm_start.py" \
        "$PY" bench/gpu_warm_start.py "${extra[@]}" "$@"
}

part_warm_start_hf() {
    local extra=(--model hf --warm lazy --child-timeout 150 --out "$out/gpu_warm_start_hf.md")
    [[ $rehearse == 1 ]] && extra+=("${WARM_CPU[@]}")
    run_step "warm start, transformers' Llama: bench/gpu_warm_start.py --model hf" \
        "$PY" bench/gpu_warm_start.py "${extra[@]}" "$@"
}

# transformers' engine (issue 60): bf16, every run but the engine's own compile
# (engine+graphs: the costliest, and no target needs it), the 2,048-token
# prompt against plain SDPA and decode at 64 requests.
part_engine() {
    local extra=(--device cuda --table gpu --prompts 16 --new-tokens 32
        --runs sdpa,eager,eager+graphs,stitch,stitch+graphs --out "$out/transformers_engine.md")
    [[ $rehearse == 1 ]] && extra+=(--device cpu --shape tiny --decode-requests 4
        --long-prompt 64)
    run_step "benchmark: bench/transformers_engine.py" \
        "$PY" bench/transformers_engine.py "${extra[@]}" "$@"
}

# The engine in fp32 with TF32 off: tokens equal eager's, chunked prefill
# (max_batch_tokens 64) beside decode steps, 16 prompts of 8-200 tokens.
part_engine_fp32() {
    local extra=(--device cuda --table gpu --dtype float32 --prompts 16 --shortest 8
        --longest 200 --new-tokens 24 --max-batch-tokens 64 --decode-requests 0
        --long-prompt 0 --runs eager,stitch,stitch+graphs
        --out "$out/transformers_engine_fp32.md")
    [[ $rehearse == 1 ]] && extra+=(--device cpu --shape tiny --prompts 4 --new-tokens 4)
    run_step "benchmark: bench/transformers_engine.py --dtype float32" \
        "$PY" bench/transformers_engine.py "${extra[@]}" "$@"
}

# The tiered start under PIECEWISE graphs (issue 60): Dynamo alone, cold,
# tiered (spawned workers), the same with serving first off, warm.  On an H200
# (2026-11-27) the 3-layer runs took 157 s without the serving-first-off row,
# and 32 layers did not fit beside them: one part each.
part_tiered() {
    local extra=(--device cuda --layers 3 --child-timeout 120 --settle-s 80
        --out "$out/tiered_start.md")
    [[ $rehearse == 1 ]] && extra+=(--device cpu --layers 2 --child-timeout 420 --settle-s 360)
    run_step "benchmark: bench/tiered_start.py" "$PY" bench/tiered_start.py "${extra[@]}" "$@"
}

part_tiered_32() {
    local extra=(--layers 32 --settle-s 60 --runs dynamo,cold,tiered,warm)
    [[ $rehearse == 1 ]] && extra=(--runs dynamo,cold,tiered,warm)
    part_tiered "${extra[@]}" --out "$out/tiered_start_32.md" "$@"
}

part_decode() {
    # Issue 30's batch-1 target: the best mode within 1.5x the weight-read floor;
    # issue 76: FULL with its residual adds' copies (stitch-full-copies, Stitch's
    # own passes off) beside copy-free FULL and reduce-overhead.  The variants
    # take turns over 5 repeats (--repeats); --iters are split over them.
    local extra=(--variants compile-ro,stitch-full-copies,stitch-full,stitch-full-tuned,stitch-full-pdl
        --decode 1,8,32,128 --iters 200 --out "$out/gpu_decode.md"
        --json "$out/gpu_decode.json" --profile "$out/gpu_decode_profile.txt")
    rm -f "$out/gpu_decode_profile.txt"
    [[ $rehearse == 1 ]] && extra+=(--device cpu --emulate "${TINY[@]}" --iters 2
        --warmup 1 --prefill 16 --decode 1,2 --capture-sizes 1,2,4 --tuned-sizes 1)
    run_step "benchmark: bench/gpu_serving.py, decode variants" \
        "$PY" bench/gpu_serving.py "${extra[@]}" "$@"
}

# Issue 61's first window: where a warm restart's time goes (cProfile of the
# model's build, the load and the lazy capture to the first token, PIECEWISE) and one decode
# step of Stitch's FULL graphs and of reduce-overhead at batch 1 and 8
# (torch.profiler tables: the kernels and the gaps between them).
part_profile() {
    local warm=(--warm lazy --modes PIECEWISE --child-timeout 150
        --profile-warm "$out/warm_profile" --out "$out/gpu_warm_start_lazy.md")
    local decode=(--variants compile-ro,stitch-full --decode 1,8 --iters 50
        --profile "$out/decode_profile.txt" --out "$out/gpu_decode_profile.md")
    rm -f "$out/decode_profile.txt"
    if [[ $rehearse == 1 ]]; then
        warm+=("${WARM_CPU[@]}")
        decode+=(--device cpu --emulate "${TINY[@]}" --iters 2 --warmup 1 --prefill 16
            --capture-sizes 1,2,4,8)
    fi
    run_step "restart profile: bench/gpu_warm_start.py" \
        "$PY" bench/gpu_warm_start.py "${warm[@]}"
    # The summaries (.txt) stay; the binary profiles would take the device
    # tool's limit of eight files a call past it.
    rm -f "$out/warm_profile" "$out/warm_profile.build" "$out/warm_profile.capture"
    run_step "decode profile: bench/gpu_serving.py" "$PY" bench/gpu_serving.py "${decode[@]}" "$@"
}

# run_part P ARGS...: one part, with its own elapsed time.
run_part() {
    local p=$1
    shift
    local t0=$SECONDS
    echo "== part $p"
    case $p in
        first)
            part_tests
            part_warm_lazy
            ;;
        *) "part_${p//-/_}" "$@" ;;
    esac
    echo "== part $p: done in $((SECONDS - t0)) s"
}

setup
if [[ $part == all ]]; then
    for p in tests warm-lazy bench bench-hf warm-start warm-start-hf; do run_part "$p"; done
else
    run_part "$part" "$@"
fi
echo "== done in $((SECONDS - started)) s, status $status (results in $out)"
exit $status
