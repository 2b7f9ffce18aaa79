#!/usr/bin/env bash
# The ends of the supported torch range (docs/torch_versions.md), each in a
# fresh virtual environment of PyPI's builds: torch 2.11 (the GPU image's, with
# its transformers 5.17) and torch 2.15 (the newest release, with the
# transformers the test extra pins).  Runs the fast tests and, in the same
# pytest run, the slow tests of the AOT, warm-start, cache-guard,
# version-table, transformers and spawned-worker tests (a tiered start on a
# GPU spawns its compile workers, which read the pieces through torch's
# GraphPickler) and the residual adds' tests (torch 2.11, the GPU image's,
# marks Inductor's folds otherwise), which are marked slow, then compiles
# the example llama into one cache folder the releases share and checks that
# `stitch cache explain` names torch with both versions.  Any failure fails
# CI; every release runs even after one fails.
#
# .ci/run calls this after the main suite; it also runs alone from a fresh
# clone.  PIP_CONFIG_FILE=/dev/null lifts a pip configuration's cap on torch
# (pip's environment variables still apply).  The environments are kept
# between runs (NOTE: [CI's venvs kept between runs] in .ci/venvs.sh).
#
# NOTE: [a wheel folder instead of pip's HTTP cache]
# PyPI's torch builds are several GB each (CUDA libraries, Triton).  pip's own
# HTTP cache stores nothing behind a proxy that drops the responses' caching
# headers (as on our CI machines: `pip cache info` counts 0 files after a
# download), so every run would download them again.  The wheels are kept in
# STITCH_CI_WHEELS (default ~/.cache/stitch/ci-wheels) instead: the
# environment is installed from that folder alone, and `pip download` fills it
# (fetching only what is not there yet) when that install finds a wheel
# missing.  What the constraints leave open (numpy, say) is therefore the
# newest release in the folder, not on the index: delete the folder to take
# newer ones.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
started=$SECONDS

# torch, transformers: one line per release.
RELEASES=(
    "2.11.0 5.17.0"
    "2.15.0 5.24.0"
)
SLOW_TESTS=(
    tests/test_aot.py
    tests/test_warm_start.py
    tests/test_cache_guards.py
    tests/test_torch_versions.py
    tests/test_hf.py
    tests/test_tiered_spawn.py
    tests/test_residual_adds.py
)

export PIP_CONFIG_FILE=/dev/null
# NOTE: [CI's extended tests] (tests/conftest.py): each release runs the README
# suite's set without its slow tests; the extended modules (whole processes,
# servers, replicas) run once, on torch 2.13, in .ci/run.  The same run adds
# the slow tests of SLOW_TESTS, those of extended modules included (the AOT,
# warm-start and cache-guard tests, which read back what each release's torch
# wrote).  Every extended module on both releases took CI past 70 minutes.
unset STITCH_EXTENDED
wheels=${STITCH_CI_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/stitch/ci-wheels}
mkdir -p "$wheels"
# NOTE: [CI's venvs kept between runs] in .ci/venvs.sh; scratch files here.
source .ci/venvs.sh
venvs=$(mktemp -d)
trap 'rm -rf "$venvs"' EXIT

# NOTE: [a real miss for another torch]
# The entry key covers torch's version, so a cache filled under one torch is
# a miss under another; `stitch cache explain` must say so (docs/cache.md,
# "Why a run did not start warm").  tests/test_cache_explain.py can only write
# another version into a copied entry's factors.py; here each release
# compiles the example llama (one layer, the eager piece compiler: a few
# seconds) into the same folder, and after the loop the newest release's
# `stitch cache explain` compares the two entries: its output must hold
# "torch <oldest> there, <newest> here", with torch.__version__ of each.
explain_cache="$venvs/explain-cache"
rm -rf "$explain_cache"
explain_entries=()  # the entry each release compiled, in RELEASES order
explain_torch=()    # torch.__version__ of each

failed=()
for release in "${RELEASES[@]}"; do
    read -r torch_version transformers_version <<<"$release"
    venv="$venv_root/torch-$torch_version"
    echo "== torch $torch_version, transformers $transformers_version: $venv"
    step=$SECONDS
    printf 'torch==%s\ntransformers==%s\n' "$torch_version" "$transformers_version" \
        >"$venvs/constraints-$torch_version.txt"
    constraints="$venvs/constraints-$torch_version.txt"
    key=$(venv_key "$constraints" pyproject.toml .ci/torch_versions.sh)
    if venv_ready "$venv" "$key"; then
        # This clone, not the one that built the venv.
        "$venv/bin/pip" install -q --no-compile --no-deps --no-index \
            --find-links "$wheels" -e .
    else
        python3 -m venv "$venv"
        # --no-compile: byte-compiling torch's own files at install costs a
        # minute; Python compiles what the tests import anyway.  The folder
        # alone first: `pip download` asks the index for every package (40-80 s
        # a release even when nothing is missing), so it runs only when the
        # folder lacks a wheel.  setuptools: the build backend, for the
        # editable install.
        if ! "$venv/bin/pip" install -q --no-compile --no-index --find-links "$wheels" \
            -c "$constraints" -e '.[hf,test-tools]' 2>/dev/null; then
            "$venv/bin/pip" download -q -d "$wheels" -c "$constraints" \
                '.[hf,test-tools]' 'setuptools>=64'
            "$venv/bin/pip" install -q --no-compile --no-index --find-links "$wheels" \
                -c "$constraints" -e '.[hf,test-tools]'
        fi
        venv_built "$venv" "$key"
    fi
    "$venv/bin/python" -c 'import importlib.metadata as m, torch
print("installed: torch", torch.__version__, "| " + ", ".join(
    f"{p} {m.version(p)}" for p in ("triton", "numpy", "transformers")))'
    echo "   venv in $((SECONDS - step)) s"
    step=$SECONDS
    # pytest exits 5 when it collects no tests; that fails like any other
    # status.
    status=0
    slow=("${SLOW_TESTS[@]}")
    if [[ $torch_version != "${RELEASES[0]%% *}" ]]; then
        # NOTE: [transformers' slow tests on the oldest torch only]
        # tests/test_hf.py's slow tests (every family compiled, about 100 s
        # here) run on the oldest release (the GPU image's torch and
        # transformers) and in the main suite (torch 2.13 with the newest
        # transformers); the newest torch runs their fast half with the rest.
        slow=("${slow[@]/tests\/test_hf.py/}")
    fi
    # The README's set without its slow tests, and the slow tests of the
    # modules in $slow, in one run (NOTE: [one run of a torch release] in
    # tests/conftest.py).
    STITCH_SLOW_MODULES="${slow[*]}" "$venv/bin/python" -m pytest -q --durations=20 ||
        status=1
    if [[ $torch_version == "${RELEASES[0]%% *}" ]]; then
        # NOTE: [the GPU window's parts rehearsed at every commit]
        # A GPU is lent to some sessions only, and the cuda-marked tests once
        # went 37 commits without running.  The window's first two calls
        # (scripts/gpu_check.sh: `first`, every cuda test and the warm
        # restart; `decode`, the decode variants) run here on the GPU image's
        # torch and transformers up to their first CUDA call (--rehearse:
        # every cuda test selected and run to that call, each benchmark's CPU
        # dry run), so that a window is not lost to a break that shows
        # without a GPU.  About 80 s.
        for part in first decode; do
            OUT="$venvs/gpu-$part" PYTHON="$venv/bin/python" \
                bash scripts/gpu_check.sh --rehearse "$part" >"$venvs/gpu-$part.log" 2>&1 ||
                {
                    cat "$venvs/gpu-$part.log"
                    echo "error: scripts/gpu_check.sh --rehearse $part failed (above)" >&2
                    status=1
                }
            grep -E '^== (part|done)' "$venvs/gpu-$part.log" || true
        done
    fi
    # See NOTE: [a real miss for another torch].
    explain_torch+=("$("$venv/bin/python" -c 'import torch; print(torch.__version__)')")
    if run=$("$venv/bin/stitch" run --example llama --layers 1 --sizes 8 \
        --backend eager --cache-dir "$explain_cache" \
        --dump "$venvs/explain-dump-$torch_version" 2>&1); then
        explain_entries+=("$(sed -n 's/^  cache: //p' <<<"$run")")
    else
        printf '%s\n' "$run" >&2
        echo "error: torch $torch_version: stitch run into $explain_cache failed" >&2
        explain_entries+=("")
        status=1
    fi
    if ((status)); then
        failed+=("$torch_version")
    fi
    echo "   tests in $((SECONDS - step)) s"
done

# See NOTE: [a real miss for another torch].
echo "== stitch cache explain: the entries of torch ${explain_torch[*]}"
explained=0
older=${explain_entries[0]:-} newer=${explain_entries[-1]:-}
want="- torch ${explain_torch[0]:-?} there, ${explain_torch[-1]:-?} here"
if [[ -f $older/factors.py && -f $newer/factors.py && $older != "$newer" ]]; then
    explain=$("$venv/bin/stitch" cache explain "$newer" "$older" 2>&1) || true
    printf '%s\n' "$explain"
    grep -qF -- "$want" <<<"$explain" && explained=1
fi
if ((!explained)); then
    echo "error: stitch cache explain did not name torch with both versions" \
        "(wanted '$want'; entries: '$older', '$newer')" >&2
fi

if ((${#failed[@]})); then
    echo "error: tests failed on torch ${failed[*]}" >&2
    exit 1
fi
if ((!explained)); then
    exit 1
fi
echo "== torch releases ok in $((SECONDS - started)) s"
